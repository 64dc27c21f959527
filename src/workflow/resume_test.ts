/**
 * Interrupting the orchestrator: SIGKILL mid-run, then a rerun redoes no finished step; SIGKILL
 * mid-step kills the step's processes too, so a rerun at once runs it exactly once; a lost state
 * file is rebuilt from the output folders' metadata.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadWorkflow } from "./schema.ts";
import { buildPlan } from "./plan.ts";
import { runLocal } from "./engine.ts";
import { readState, statePath } from "./state.ts";

/** A CLI's output without colour codes (picocolors colours piped output where CI is set). */
function plain(bytes: Uint8Array): string {
  // deno-lint-ignore no-control-regex
  return new TextDecoder().decode(bytes).replace(/\x1b\[[0-9;]*m/g, "");
}

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

/** Whether a process is gone (a zombie waiting to be reaped counts as gone). */
function gone(pid: string): boolean {
  try {
    return /State:\s+Z/.test(Deno.readTextFileSync(`/proc/${pid}/status`));
  } catch {
    return true;
  }
}

Deno.test("resume: SIGKILL of the orchestrator mid-step kills the step; a rerun at once runs each step exactly once", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "wf_orphan_" });
  const file = join(dir, "w.yaml");
  // s1 sleeps (in a background child it waits for) and only then appends to the trace.
  Deno.writeTextFileSync(
    file,
    `name: orphan\nworkdir: ${dir}/work\nsteps:\n` +
      `  s0: {kind: command, run: 'echo s0 >> ${dir}/trace; echo 0 > "\${{ step.out }}/v"'}\n` +
      `  s1:\n    kind: command\n    needs: s0\n` +
      `    run: 'echo $$ > ${dir}/pid.tmp; sleep 3 & echo $! > ${dir}/bgpid; ` +
      `mv ${dir}/pid.tmp ${dir}/pid; wait; echo s1 >> ${dir}/trace; echo 1 > "\${{ step.out }}/v"'\n` +
      `  s2: {kind: command, needs: s1, run: 'echo s2 >> ${dir}/trace; ` +
      `cat "\${{ steps.s1.out }}/v" > "\${{ step.out }}/v"'}\n`,
  );
  const cli = (stdout: "null" | "piped") =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--quiet", CLI, file],
      stdout,
      stderr: "piped",
    }).spawn();
  const first = cli("null");
  let pid = "";
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !pid) {
    try {
      pid = Deno.readTextFileSync(join(dir, "pid")).trim();
    } catch { /* s1 not started yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(pid, "s1 started");
  const bg = Deno.readTextFileSync(join(dir, "bgpid")).trim();
  first.kill("SIGKILL");
  await first.status;
  await first.stderr.cancel();
  // Rerun at once, while checking that the killed run's step went with its orchestrator.
  const t0 = Date.now();
  const rerun = cli("piped");
  while (Date.now() - t0 < 2_000 && !(gone(pid) && gone(bg))) {
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(gone(pid), `the step's shell (pid ${pid}) outlived its orchestrator by 2 s`);
  assert.ok(gone(bg), `the step's child (pid ${bg}) outlived its orchestrator by 2 s`);
  const out = await rerun.output();
  const text = plain(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr) + text);
  assert.match(text, /note +step s1: took over the lock left by an earlier orchestrator/);
  // Past the time the killed attempt would have taken: it never appends.
  await new Promise((r) => setTimeout(r, Math.max(0, t0 + 3_500 - Date.now())));
  assert.deepEqual(
    Object.fromEntries(traceCounts(dir)),
    { s0: 1, s1: 1, s2: 1 },
    "each step ran exactly once in total",
  );
  const work = join(dir, "work");
  assert.equal(Deno.readTextFileSync(join(work, "s0", "v")), "0\n");
  assert.equal(Deno.readTextFileSync(join(work, "s1", "v")), "1\n");
  assert.equal(Deno.readTextFileSync(join(work, "s2", "v")), "1\n");
  const st = readState(work, "orphan");
  for (const id of ["s0", "s1", "s2"]) assert.equal(st.steps[id]?.status, "done");
  // No lock and no temporary folder is left behind.
  assert.deepEqual([...Deno.readDirSync(join(work, ".comodal", "tmp"))], []);
  for (const id of ["s0", "s1", "s2"]) {
    assert.throws(() => Deno.statSync(join(work, ".comodal", "steps", id, "lock")));
  }
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
