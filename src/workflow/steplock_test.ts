/**
 * Step locks (<workdir>/.comodal/steps/<id>/lock): a step still running from an earlier, killed
 * orchestrator is waited for or refused and never started twice; a lock whose process is gone, or
 * whose pid now belongs to another process, is taken over with a note. The locks are written here
 * by hand, as a killed orchestrator leaves them.
 */
import assert from "node:assert/strict";
import { hostname } from "node:os";
import { join } from "node:path";
import { loadWorkflow } from "./schema.ts";
import { buildPlan } from "./plan.ts";
import { type EngineEvent, runLocal } from "./engine.ts";

/** A CLI's output without colour codes (picocolors colours piped output where CI is set). */
function plain(bytes: Uint8Array): string {
  // deno-lint-ignore no-control-regex
  return new TextDecoder().decode(bytes).replace(/\x1b\[[0-9;]*m/g, "");
}

const CLI = new URL("../../cli/workflow.ts", import.meta.url).pathname;

function setup(yaml: string) {
  const dir = Deno.makeTempDirSync({ prefix: "wf_steplock_" });
  const file = join(dir, "w.yaml");
  Deno.writeTextFileSync(file, yaml.replaceAll("DIR", dir));
  return { dir, plan: buildPlan(loadWorkflow(file), { workdir: join(dir, "work") }) };
}

function lines(path: string): string[] {
  try {
    return Deno.readTextFileSync(path).split("\n").filter((l) => l !== "");
  } catch {
    return [];
  }
}

/** Field 22 of /proc/<pid>/stat: the process's start time. */
function startTime(pid: number): string {
  const t = Deno.readTextFileSync(`/proc/${pid}/stat`);
  return t.slice(t.lastIndexOf(")") + 2).split(" ")[19];
}

/** A pid that no process has now (a child that already exited and was reaped). */
async function deadPid(): Promise<number> {
  const c = new Deno.Command("true").spawn();
  await c.status;
  return c.pid;
}

/** The lock an orchestrator (now dead) leaves for a step it ran as process `pid`. */
async function leaveLock(workdir: string, id: string, pid: number, pidStart: string) {
  const d = join(workdir, ".comodal", "steps", id);
  Deno.mkdirSync(d, { recursive: true });
  Deno.writeTextFileSync(
    join(d, "lock"),
    JSON.stringify({
      step: id,
      pid,
      pidStart,
      orchestrator: await deadPid(),
      orchestratorStart: null,
      host: hostname(),
      boot: Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim(),
      tmp: join(workdir, ".comodal", "tmp", `${id}.left`),
      startedAt: new Date().toISOString(),
    }),
  );
  return join(d, "lock");
}

Deno.test("step lock: a step still running from an earlier orchestrator is waited for, or refused naming step and pid; never run twice", async () => {
  const { dir, plan } = setup(`name: busy
steps:
  long: {kind: command, run: 'echo long >> DIR/trace; echo x > \${{ step.out }}/x'}
  other: {kind: command, run: 'echo other >> DIR/trace'}
`);
  // The "step left running": a live process of its own, recorded with its real start time.
  const orphan = new Deno.Command("sleep", { args: ["30"] }).spawn();
  try {
    const lockFile = await leaveLock(plan.workdir, "long", orphan.pid, startTime(orphan.pid));
    const tmp = join(plan.workdir, ".comodal", "tmp", "long.left");
    Deno.mkdirSync(tmp, { recursive: true });
    Deno.writeTextFileSync(join(tmp, "partial"), "being written");
    // Refused after the wait: the message names the step and its pid; nothing ran or was deleted.
    const notes: string[] = [];
    const onEvent = (e: EngineEvent) => e.type === "note" && notes.push(e.message);
    const t0 = Date.now();
    await assert.rejects(
      runLocal(plan, { codeVersion: "v", waitRunningSec: 0.5, onEvent }),
      new RegExp(`step long is still running as pid ${orphan.pid}\\b.*kill -- -${orphan.pid}`),
    );
    assert.ok(Date.now() - t0 >= 450, "it waited before refusing");
    assert.match(notes.join("\n"), /step long is still running as pid \d+.*waiting up to 0\.5s/);
    assert.deepEqual(lines(join(dir, "trace")), [], "no step ran beside the running one");
    assert.equal(Deno.readTextFileSync(join(tmp, "partial")), "being written");
    assert.ok(Deno.statSync(lockFile).isFile, "the live step's lock stays");
    // The same through the CLI: a failing exit code and the message.
    const cli = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        CLI,
        join(dir, "w.yaml"),
        "--workdir",
        plan.workdir,
        "--wait-running",
        "0.2",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(cli.code, 1);
    assert.match(
      new TextDecoder().decode(cli.stderr),
      new RegExp(`error: Cannot run: step long is still running as pid ${orphan.pid} `),
    );
    assert.match(plain(cli.stdout), /note +step long is still running/);
    assert.deepEqual(lines(join(dir, "trace")), []);
    // Waiting long enough: the step ends meanwhile, its lock is taken over, each step runs once.
    notes.length = 0;
    const stopLater = setTimeout(() => orphan.kill("SIGKILL"), 700);
    const s = await runLocal(plan, { codeVersion: "v", waitRunningSec: 20, onEvent });
    clearTimeout(stopLater);
    assert.equal(s.ok, true, JSON.stringify(s.results));
    assert.match(notes[0], new RegExp(`step long is still running as pid ${orphan.pid}`));
    assert.match(notes[1], /step long: took over the lock .*not running any more/);
    assert.deepEqual(lines(join(dir, "trace")).sort(), ["long", "other"]);
    assert.throws(() => Deno.statSync(lockFile), "the lock is released when the step is done");
  } finally {
    try {
      orphan.kill("SIGKILL");
    } catch { /* already ended */ }
    await orphan.status;
  }
});

Deno.test("step lock: a stale lock (dead pid, or a pid recycled by another process) is taken over with a note; a running step holds its own", async () => {
  const { dir, plan } = setup(`name: stale
steps:
  a: {kind: command, run: 'echo a >> DIR/trace'}
  b: {kind: command, run: 'echo b >> DIR/trace'}
  c: {kind: command, run: 'echo $$ > DIR/c.pid; cp DIR/work/.comodal/steps/c/lock DIR/c.lock'}
`);
  const live = new Deno.Command("sleep", { args: ["30"] }).spawn();
  try {
    const dead = await deadPid();
    await leaveLock(plan.workdir, "a", dead, "12345");
    // The pid of b's lock is alive, but started at another time: a different process now.
    await leaveLock(plan.workdir, "b", live.pid, String(Number(startTime(live.pid)) - 100));
    const notes: string[] = [];
    const s = await runLocal(plan, {
      codeVersion: "v",
      onEvent: (e) => e.type === "note" && notes.push(e.message),
    });
    assert.equal(s.ok, true, JSON.stringify(s.results));
    assert.deepEqual(notes.sort(), [
      `step a: took over the lock left by an earlier orchestrator (pid ${dead} is not running any more)`,
      `step b: took over the lock left by an earlier orchestrator (pid ${live.pid} is another process now)`,
    ]);
    assert.deepEqual(lines(join(dir, "trace")).sort(), ["a", "b"]);
    // While c ran, its lock named c's own process (pid and start time) and this orchestrator.
    const held = JSON.parse(Deno.readTextFileSync(join(dir, "c.lock")));
    assert.equal(held.step, "c");
    assert.equal(String(held.pid), Deno.readTextFileSync(join(dir, "c.pid")).trim());
    assert.match(held.pidStart, /^\d+$/);
    assert.equal(held.orchestrator, Deno.pid);
    assert.equal(held.orchestratorStart, startTime(Deno.pid));
    for (const id of ["a", "b", "c"]) {
      assert.throws(() => Deno.statSync(join(plan.workdir, ".comodal", "steps", id, "lock")));
    }
  } finally {
    live.kill("SIGKILL");
    await live.status;
  }
});
