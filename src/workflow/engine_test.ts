import assert from "node:assert/strict";
import { join } from "node:path";
import { loadWorkflow } from "./schema.ts";
import { buildPlan } from "./plan.ts";
import { describePlan, prepare, runLocal } from "./engine.ts";
import { readState } from "./state.ts";

const CODE = "test-code-version";

/** Writes the workflow (DIR in the text becomes the test's temporary folder). */
function setup(yaml: string) {
  const dir = Deno.makeTempDirSync({ prefix: "wf_engine_" });
  const file = join(dir, "w.yaml");
  Deno.writeTextFileSync(file, yaml.replaceAll("DIR", dir));
  const plan = (set: string[] = []) =>
    buildPlan(loadWorkflow(file, { set }), { workdir: join(dir, "work") });
  return { dir, file, plan };
}

function lines(path: string): string[] {
  try {
    return Deno.readTextFileSync(path).split("\n").filter((l) => l !== "");
  } catch {
    return [];
  }
}

Deno.test("engine: diamond runs once, then everything is cached; a change reruns only what it affects", async () => {
  const { dir, plan } = setup(`name: diamond
vars: {greeting: hello}
steps:
  a:
    kind: command
    run: echo "\${{ vars.greeting }}" > "\${{ step.out }}/a.txt"; echo a >> DIR/trace
    outputs: [a.txt]
  b:
    kind: command
    run: cat "\${{ steps.a.out }}/a.txt" > "\${{ step.out }}/b.txt"; echo b >> DIR/trace
  c:
    kind: command
    run: echo c > "\${{ step.out }}/c.txt"; echo c >> DIR/trace
  d:
    kind: command
    needs: [b, c]
    run: cat "\${{ steps.b.out }}/b.txt" "\${{ steps.c.out }}/c.txt" > "\${{ step.out }}/d.txt"; echo d >> DIR/trace
`);
  const trace = join(dir, "trace");
  const p1 = plan();
  const s1 = await runLocal(p1, { codeVersion: CODE, cpus: 2 });
  assert.equal(s1.ok, true, JSON.stringify(s1.results));
  assert.equal(s1.counts.done, 4);
  assert.deepEqual(lines(trace).sort(), ["a", "b", "c", "d"]);
  assert.equal(Deno.readTextFileSync(join(p1.workdir, "d", "d.txt")), "hello\nc\n");
  const state = readState(p1.workdir, "diamond");
  assert.equal(state.steps.d.status, "done");
  assert.equal(state.steps.d.inputs?.b, state.steps.b.outputsHash);
  // Second run: all cached, nothing executed.
  const s2 = await runLocal(p1, { codeVersion: CODE, cpus: 2 });
  assert.equal(s2.counts.cached, 4);
  assert.equal(lines(trace).length, 4);
  // Change a's parameter: a, b, d rerun; c stays cached.
  const p3 = plan(["vars.greeting=bye"]);
  const entries = describePlan(prepare(p3, { codeVersion: CODE }));
  assert.deepEqual(entries.map((e) => `${e.id}:${e.action}`), [
    "a:run",
    "b:run",
    "c:cached",
    "d:run",
  ]);
  const s3 = await runLocal(p3, { codeVersion: CODE, cpus: 2 });
  assert.equal(s3.counts.done, 3);
  assert.equal(s3.counts.cached, 1);
  assert.equal(Deno.readTextFileSync(join(p3.workdir, "d", "d.txt")), "bye\nc\n");
  // Forcing c reruns it; identical output keeps d cached (content addressed).
  const s4 = await runLocal(p3, { codeVersion: CODE, force: ["c"] });
  assert.deepEqual(s4.results.map((r) => `${r.id}:${r.status}`), [
    "a:cached",
    "b:cached",
    "c:done",
    "d:cached",
  ]);
  // --only b runs nothing new (b and a cached) and leaves c, d unselected.
  const s5 = await runLocal(p3, { codeVersion: CODE, only: ["b"], force: ["b"] });
  assert.deepEqual(s5.results.map((r) => `${r.id}:${r.status}`), [
    "a:cached",
    "b:done",
    "c:unselected",
    "d:unselected",
  ]);
  // A missing output folder is not taken as cached.
  Deno.removeSync(join(p3.workdir, "c"), { recursive: true });
  assert.equal(
    describePlan(prepare(p3, { codeVersion: CODE })).find((e) => e.id === "c")!.action,
    "run",
  );
});

Deno.test("engine: a failure skips its dependents, independent branches finish, summary names reason and log", async () => {
  const { plan } = setup(`name: fail
steps:
  bad: {kind: command, run: "echo boom >&2; exit 3"}
  after: {kind: command, needs: bad, run: "true"}
  after2: {kind: command, needs: after, run: "true"}
  other: {kind: command, run: "echo ok > \${{ step.out }}/x"}
`);
  const p = plan();
  const s = await runLocal(p, { codeVersion: CODE });
  const by = new Map(s.results.map((r) => [r.id, r]));
  assert.equal(s.ok, false);
  assert.equal(by.get("bad")!.status, "failed");
  assert.equal(by.get("bad")!.reason, "exit code 3");
  assert.match(Deno.readTextFileSync(by.get("bad")!.log!), /boom/);
  assert.equal(by.get("after")!.status, "skipped");
  assert.match(by.get("after")!.reason!, /needs bad failed/);
  assert.match(by.get("after2")!.reason!, /needs after skipped/);
  assert.equal(by.get("other")!.status, "done");
  // No output folder for the failed step, and state says failed.
  assert.throws(() => Deno.statSync(join(p.workdir, "bad")));
  assert.equal(readState(p.workdir, "fail").steps.bad.status, "failed");
});

Deno.test("engine: retries with backoff, time limit, missing outputs", async () => {
  const { plan } = setup(`name: retry
steps:
  flaky:
    kind: command
    retries: 2
    backoff: 0.1
    run: 'n=$(cat DIR/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > DIR/count; [ $n -ge 3 ]'
  slow:
    kind: command
    resources: {time: 1s}
    run: sleep 20
  liar:
    kind: command
    outputs: [result.json]
    run: "true"
`);
  const p = plan();
  const events: string[] = [];
  const t0 = performance.now();
  const s = await runLocal(p, { codeVersion: CODE, cpus: 3, onEvent: (e) => events.push(e.type) });
  const secs = (performance.now() - t0) / 1000;
  const by = new Map(s.results.map((r) => [r.id, r]));
  assert.equal(by.get("flaky")!.status, "done");
  assert.equal(by.get("flaky")!.attempts, 3);
  assert.equal(events.filter((e) => e === "retry").length, 2);
  assert.equal(by.get("slow")!.status, "failed");
  assert.match(by.get("slow")!.reason!, /time limit of 1s/);
  assert.ok(secs < 8, `time limit not enforced: ${secs}s`);
  assert.equal(by.get("liar")!.status, "failed");
  assert.match(by.get("liar")!.reason!, /outputs missing: result\.json/);
  assert.throws(() => Deno.statSync(join(p.workdir, "liar")));
});

Deno.test("engine: concurrency stays within the CPU budget", async () => {
  const { dir, plan } = setup(`name: conc
steps:
  s:
    kind: command
    matrix: {i: [1, 2, 3, 4, 5, 6]}
    resources: {cpus: 2}
    run: 'echo "start $(date +%s%N)" >> DIR/events; sleep 0.3; echo "end $(date +%s%N)" >> DIR/events'
`);
  const log = join(dir, "events");
  const p = plan();
  const s = await runLocal(p, { codeVersion: CODE, cpus: 4 });
  assert.equal(s.counts.done, 6);
  const ev = lines(log).map((l) => l.split(" ")).map(([k, t]) => ({ k, t: BigInt(t) }));
  ev.sort((a, b) => (a.t < b.t ? -1 : a.t > b.t ? 1 : 0));
  let cur = 0, max = 0;
  for (const e of ev) {
    cur += e.k === "start" ? 1 : -1;
    max = Math.max(max, cur);
  }
  assert.equal(max, 2, "4 CPUs / 2 per step -> at most 2 at once, and 2 reached");
});

Deno.test("engine: orchestration overhead per step and 100 trivial steps locally", async () => {
  const n = 100;
  const { plan } = setup(`name: many
steps:
  t:
    kind: command
    matrix: {i: [${Array.from({ length: n }, (_, i) => i).join(", ")}]}
    run: echo \${{ matrix.i }} > \${{ step.out }}/x
`);
  const p = plan();
  const t0 = performance.now();
  const s = await runLocal(p, { codeVersion: CODE, cpus: 2 });
  const wide = (performance.now() - t0) / 1000;
  assert.equal(s.counts.done, n);
  const t1 = performance.now();
  const again = await runLocal(p, { codeVersion: CODE, cpus: 2 });
  const cachedSec = (performance.now() - t1) / 1000;
  assert.equal(again.counts.cached, n);
  // A chain: every step waits for the previous one, so time / steps = per-step overhead + `true`.
  const chain = setup(`name: chain
steps:
${
    Array.from({ length: 20 }, (_, i) =>
      `  c${i}: {kind: command, run: "true"${i ? `, needs: c${i - 1}` : ""}}`).join("\n")
  }
`).plan();
  const t2 = performance.now();
  const c = await runLocal(chain, { codeVersion: CODE });
  const perStep = (performance.now() - t2) / 20;
  assert.equal(c.counts.done, 20);
  console.log(
    `local: ${n} trivial steps ${wide.toFixed(2)} s on 2 slots; all cached ${
      cachedSec.toFixed(2)
    } s; ` +
      `sequential overhead ${perStep.toFixed(1)} ms/step (plan, hash, launch, record)`,
  );
  assert.ok(wide < 30, `100 trivial steps took ${wide}s`);
  assert.ok(perStep < 1000, `per-step overhead ${perStep}ms`);
});
