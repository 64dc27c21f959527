/**
 * Interrupting the orchestrator: SIGKILL mid-run, then a rerun redoes no finished step; a lost
 * state file is rebuilt from the output folders' metadata.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadWorkflow } from "./schema.ts";
import { buildPlan } from "./plan.ts";
import { runLocal } from "./engine.ts";
import { readState, statePath } from "./state.ts";

const CLI = new URL("../../cli/workflow.ts", import.meta.url).pathname;

function chainYaml(dir: string, n: number): string {
  const steps = Array.from(
    { length: n },
    (_, i) =>
      `  s${i}:\n    kind: command\n${i > 0 ? `    needs: s${i - 1}\n` : ""}` +
      `    run: 'sleep 0.25; echo s${i} >> ${dir}/trace; echo ${i} > "\${{ step.out }}/v"'\n`,
  ).join("");
  return `name: chain\nworkdir: ${dir}/work\nsteps:\n${steps}`;
}

function traceCounts(dir: string): Map<string, number> {
  const m = new Map<string, number>();
  try {
    for (const l of Deno.readTextFileSync(join(dir, "trace")).split("\n")) {
      if (l) m.set(l, (m.get(l) ?? 0) + 1);
    }
  } catch { /* none yet */ }
  return m;
}

Deno.test("resume: SIGKILL of the orchestrator mid-run, then a rerun redoes no finished step", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "wf_kill_" });
  const file = join(dir, "w.yaml");
  Deno.writeTextFileSync(file, chainYaml(dir, 8));
  const spawn = () =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", CLI, file],
      stdout: "null",
      stderr: "piped",
    }).spawn();
  const child = spawn();
  // Wait until at least 3 steps are recorded as done, then kill without warning.
  let doneBefore: string[] = [];
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    try {
      const st = JSON.parse(Deno.readTextFileSync(statePath(join(dir, "work"))));
      doneBefore = Object.entries(st.steps).filter(([, r]) =>
        (r as { status: string }).status === "done"
      ).map(([k]) => k);
    } catch { /* not written yet or mid-rename */ }
    if (doneBefore.length >= 3) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill("SIGKILL");
  await child.status;
  await child.stderr.cancel();
  assert.ok(
    doneBefore.length >= 3 && doneBefore.length < 8,
    `killed after ${doneBefore.length} steps`,
  );
  // The lock of the dead orchestrator is taken over; the rerun finishes the chain.
  const rerun = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, file],
  }).output();
  assert.equal(rerun.code, 0, new TextDecoder().decode(rerun.stderr));
  const counts = traceCounts(dir);
  for (const id of doneBefore) assert.equal(counts.get(id), 1, `${id} was redone after the kill`);
  const st = readState(join(dir, "work"), "chain");
  for (let i = 0; i < 8; i++) assert.equal(st.steps[`s${i}`]?.status, "done");
  assert.equal(Deno.readTextFileSync(join(dir, "work", "s7", "v")), "7\n");
  const out = new TextDecoder().decode(rerun.stdout);
  assert.match(out, new RegExp(`${doneBefore.length} cached`));
});

Deno.test("resume: a lost state file is rebuilt from output metadata without rerunning", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "wf_adopt_" });
  const file = join(dir, "w.yaml");
  Deno.writeTextFileSync(file, chainYaml(dir, 3).replaceAll("sleep 0.25; ", ""));
  const plan = buildPlan(loadWorkflow(file));
  const s1 = await runLocal(plan, { codeVersion: "v" });
  assert.equal(s1.counts.done, 3);
  Deno.removeSync(statePath(plan.workdir));
  const s2 = await runLocal(plan, { codeVersion: "v" });
  assert.equal(s2.counts.cached, 3);
  assert.equal(traceCounts(dir).get("s2"), 1);
  assert.equal(readState(plan.workdir, "chain").steps.s2.status, "done");
  // A different code version changes nothing for command steps, but other inputs do.
  const s3 = await runLocal(plan, { codeVersion: "other" });
  assert.equal(s3.counts.cached, 3);
});

Deno.test("resume: SIGINT stops running steps (their whole process group) and starts no new ones", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "wf_sigint_" });
  const file = join(dir, "w.yaml");
  Deno.writeTextFileSync(
    file,
    `name: int\nworkdir: ${dir}/work\nsteps:\n` +
      `  long: {kind: command, run: 'sleep 60 & echo $! > ${dir}/bgpid; wait'}\n` +
      `  after: {kind: command, needs: long, run: 'touch ${dir}/after'}\n`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, file],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const deadline = Date.now() + 20_000;
  let bg = "";
  while (Date.now() < deadline && !bg) {
    try {
      bg = Deno.readTextFileSync(join(dir, "bgpid")).trim();
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(bg, "the step started");
  const t0 = Date.now();
  child.kill("SIGINT");
  const out = await child.output();
  assert.ok(Date.now() - t0 < 10_000, "stopped promptly");
  assert.equal(out.code, 1);
  assert.match(new TextDecoder().decode(out.stdout), /FAILED +long: stopped \(workflow aborted\)/);
  // The background child of the step was in the step's process group and is gone too.
  await new Promise((r) => setTimeout(r, 200));
  let state = "gone";
  try {
    state = /State:\s+(\S)/.exec(Deno.readTextFileSync(`/proc/${bg}/status`))![1];
  } catch { /* gone */ }
  assert.ok(state === "gone" || state === "Z", `background child still running (state ${state})`);
  assert.throws(() => Deno.statSync(join(dir, "after")));
  assert.equal(readState(join(dir, "work"), "int").steps.long.status, "failed");
});

Deno.test("resume: a second orchestrator on the same working folder is refused", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "wf_lock_" });
  const file = join(dir, "w.yaml");
  Deno.writeTextFileSync(
    file,
    `name: lock\nworkdir: ${dir}/work\nsteps:\n  long: {kind: command, run: 'touch ${dir}/started; sleep 30'}\n`,
  );
  const first = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, file],
    stdout: "null",
    stderr: "null",
  }).spawn();
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    try {
      Deno.statSync(join(dir, "started"));
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const second = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, file],
    stdout: "piped",
    stderr: "piped",
  }).output();
  first.kill("SIGINT");
  await first.status;
  assert.equal(second.code, 1);
  assert.match(
    new TextDecoder().decode(second.stderr),
    new RegExp(`another orchestrator \\(pid ${first.pid}\\) is running in ${dir}/work`),
  );
});
