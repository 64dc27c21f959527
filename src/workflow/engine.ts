/**
 * The DAG engine: decides what is cached, runs the rest on the local machine within its
 * resources (CPU threads, GPUs, memory), retries with exponential backoff, enforces time limits,
 * skips what depends on a failure while independent branches go on, and records each finished
 * step in <workdir>/.comodal/state.json only after its process exited 0 and its output folder
 * was moved into place.
 *
 * A step's processes die with the orchestrator (see local.ts), and each running step holds a lock
 * (<workdir>/.comodal/steps/<id>/lock: its pid and that process's start time). A rerun that finds
 * a step still running from an earlier orchestrator waits for it (RunOptions.waitRunningSec) and
 * then refuses, naming the step and its pid, instead of starting it a second time; a lock whose
 * process is gone is taken over with a note.
 */
import { dirname, join } from "node:path";
import { totalmem } from "node:os";
import { type Plan, type PlannedStep, selectSteps, withAncestors } from "./plan.ts";
import { codeVersion, hashOutputs, STEP_META_FILE, stepHashes } from "./hash.ts";
import {
  acquireLock,
  acquireStepLock,
  describeBusy,
  listStepLocks,
  logPath,
  logsDir,
  readMeta,
  readState,
  type RunState,
  stepLockHolder,
  type StepMeta,
  type StepRecord,
  tmpDir,
  writeState,
} from "./state.ts";
import { PROJECT_ROOT, stepCommand } from "./commands.ts";
import { runProcess } from "./local.ts";

export type StepStatus = "done" | "cached" | "failed" | "skipped" | "unselected";

export interface StepResult {
  id: string;
  status: StepStatus;
  reason?: string;
  log?: string;
  durationMs?: number;
  attempts?: number;
}

export interface RunSummary {
  workflow: string;
  workdir: string;
  results: StepResult[];
  counts: Record<StepStatus, number>;
  ok: boolean;
  elapsedMs: number;
}

export type EngineEvent =
  | { type: "start"; id: string; attempt: number; log: string }
  | { type: "retry"; id: string; attempt: number; reason: string; delaySec: number }
  | { type: "finish"; result: StepResult }
  /** Something the user should know that is neither a start nor a result (a lock taken over). */
  | { type: "note"; id?: string; message: string };

export interface RunOptions {
  /** Step names or ids to run (with whatever they need that is not cached). */
  only?: string[];
  /** Step names or ids to run even when cached ("*" for all). */
  force?: string[];
  /** CPU threads available (default: workflow's local.cpus, else the machine's cores). */
  cpus?: number;
  /** GPUs available (default: workflow's local.gpus, else COMODAL_GPUS, else 0). */
  gpus?: number;
  /** Project version that enters the hashes of project steps (default: hash of src/, cli/, native/). */
  codeVersion?: string;
  /** Stops running steps and starts no new ones. */
  signal?: AbortSignal;
  onEvent?: (e: EngineEvent) => void;
  /** Working directory of child processes (default: the current one). */
  cwd?: string;
  /**
   * How long to wait for a step left running by an earlier orchestrator (killed, its step not)
   * before refusing to run (default 10 s).
   */
  waitRunningSec?: number;
}

/** What would happen to each step now (for --dry-run and status). */
export interface PlanEntry {
  id: string;
  kind: string;
  hash: string;
  action: "cached" | "run" | "unselected";
  /** Why it runs: never ran, failed last time, parameters/code changed, forced, upstream runs. */
  why: string;
  needs: string[];
  outDir: string;
  last?: StepRecord;
}

export interface Prepared {
  plan: Plan;
  hashes: Map<string, string>;
  state: RunState;
  selected: Set<string>;
  forced: Set<string>;
}

export function prepare(
  plan: Plan,
  opts: Pick<RunOptions, "only" | "force" | "codeVersion"> = {},
): Prepared {
  const code = opts.codeVersion ?? codeVersion(PROJECT_ROOT);
  const hashes = stepHashes(plan, code);
  const state = readState(plan.workdir, plan.name);
  const selected = opts.only && opts.only.length > 0
    ? withAncestors(plan, selectSteps(plan, opts.only))
    : new Set(plan.steps.map((s) => s.id));
  const forced = opts.force && opts.force.length > 0
    ? selectSteps(plan, opts.force)
    : new Set<string>();
  return { plan, hashes, state, selected, forced };
}

/**
 * Whether a step's recorded result can be reused: same hash, output folder in place with the
 * same hash in its metadata, and the outputs of the steps it needs unchanged since it ran.
 */
export function cacheCheck(p: Prepared, step: PlannedStep): { ok: boolean; why: string } {
  const hash = p.hashes.get(step.id)!;
  if (!step.cache) return { ok: false, why: "caching off" };
  if (p.forced.has(step.id)) return { ok: false, why: "forced" };
  const rec = p.state.steps[step.id];
  const meta = readMeta(step.outDir);
  if (!rec || rec.status === "submitted") {
    if (meta?.hash === hash) return { ok: false, why: "finished but unrecorded" };
    return {
      ok: false,
      why: rec ? `submitted as Slurm job ${rec.jobId}, not finished` : "never ran",
    };
  }
  if (rec.status === "failed" && rec.hash === hash) {
    return { ok: false, why: `failed last time: ${rec.reason}` };
  }
  if (rec.hash !== hash) return { ok: false, why: "parameters, inputs or code changed" };
  if (rec.status !== "done") return { ok: false, why: "not finished" };
  if (!meta || meta.hash !== hash) return { ok: false, why: "output folder missing or replaced" };
  for (const n of step.needs) {
    const up = p.state.steps[n];
    if (!up || up.status !== "done" || up.outputsHash !== rec.inputs?.[n]) {
      return { ok: false, why: `output of ${n} changed` };
    }
  }
  return { ok: true, why: "" };
}

/** The plan with what would run now; used by --dry-run and `status`. */
export function describePlan(p: Prepared): PlanEntry[] {
  const willRun = new Set<string>();
  return p.plan.steps.map((s) => {
    const base = {
      id: s.id,
      kind: s.kind,
      hash: p.hashes.get(s.id)!,
      needs: s.needs,
      outDir: s.outDir,
      last: p.state.steps[s.id],
    };
    if (!p.selected.has(s.id)) {
      return { ...base, action: "unselected" as const, why: "not selected by --only" };
    }
    const upstream = s.needs.filter((n) => willRun.has(n));
    const c = cacheCheck(p, s);
    if (c.ok && upstream.length === 0) return { ...base, action: "cached" as const, why: "" };
    willRun.add(s.id);
    const why = c.ok ? `upstream runs (${upstream.join(", ")})` : c.why;
    return { ...base, action: "run" as const, why };
  });
}

function newTmp(workdir: string, id: string): string {
  Deno.mkdirSync(tmpDir(workdir), { recursive: true });
  return Deno.makeTempDirSync({
    dir: tmpDir(workdir),
    prefix: `${id.replace(/[^\w.=,-]/g, "_")}.`,
  });
}

/** Moves a finished attempt's folder into place (old output removed only after the move). */
export function installOutput(workdir: string, partial: string, outDir: string): void {
  Deno.mkdirSync(dirname(outDir), { recursive: true });
  let old: string | null = null;
  try {
    Deno.statSync(outDir);
    old = `${newTmp(workdir, "replaced")}/old`;
    Deno.renameSync(outDir, old);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  Deno.renameSync(partial, outDir);
  if (old) Deno.removeSync(dirname(old), { recursive: true });
}

export function writeMeta(dir: string, step: PlannedStep, hash: string): void {
  const meta: StepMeta = {
    id: step.id,
    name: step.name,
    kind: step.kind,
    hash,
    matrix: step.matrix,
    params: step.params,
    finishedAt: new Date().toISOString(),
  };
  Deno.writeTextFileSync(join(dir, STEP_META_FILE), JSON.stringify(meta, null, 1));
}

/** Records a finished step: output hash and the output hashes of what it needed. */
export async function recordDone(
  p: Prepared,
  step: PlannedStep,
  extra: Partial<StepRecord> = {},
): Promise<StepRecord> {
  const inputs: Record<string, string> = {};
  for (const n of step.needs) inputs[n] = p.state.steps[n]?.outputsHash ?? "";
  const rec: StepRecord = {
    hash: p.hashes.get(step.id)!,
    status: "done",
    outputsHash: await hashOutputs(step.outDir),
    inputs,
    finishedAt: new Date().toISOString(),
    ...extra,
  };
  p.state.steps[step.id] = rec;
  writeState(p.plan.workdir, p.state);
  return rec;
}

export function recordFailed(
  p: Prepared,
  step: PlannedStep,
  reason: string,
  extra: Partial<StepRecord> = {},
): void {
  p.state.steps[step.id] = {
    hash: p.hashes.get(step.id)!,
    status: "failed",
    reason,
    finishedAt: new Date().toISOString(),
    ...extra,
  };
  writeState(p.plan.workdir, p.state);
}

/** Summary from results (in plan order). */
export function summarise(
  plan: Plan,
  results: Map<string, StepResult>,
  startedAt: number,
): RunSummary {
  const counts: Record<StepStatus, number> = {
    done: 0,
    cached: 0,
    failed: 0,
    skipped: 0,
    unselected: 0,
  };
  const list = plan.steps.map((s) =>
    results.get(s.id) ?? { id: s.id, status: "skipped" as const, reason: "not reached" }
  );
  for (const r of list) counts[r.status]++;
  return {
    workflow: plan.name,
    workdir: plan.workdir,
    results: list,
    counts,
    ok: counts.failed === 0 && counts.skipped === 0,
    elapsedMs: Date.now() - startedAt,
  };
}

function describeExit(r: Awaited<ReturnType<typeof runProcess>>, timeoutSec?: number): string {
  if (r.startError) return `could not start: ${r.startError}`;
  if (r.aborted) return "stopped (workflow aborted)";
  if (r.timedOut) return `killed after its time limit of ${timeoutSec}s`;
  if (r.code === 127) return "exit code 127 (command not found)";
  if (r.signal) return `killed by ${r.signal}`;
  return `exit code ${r.code}`;
}

function localGpus(): number {
  const env = Deno.env.get("COMODAL_GPUS");
  return env !== undefined && /^\d+$/.test(env) ? Number(env) : 0;
}

/** Runs the plan on this machine. */
export async function runLocal(plan: Plan, opts: RunOptions = {}): Promise<RunSummary> {
  const startedAt = Date.now();
  const release = acquireLock(plan.workdir);
  try {
    return await runLocked(plan, opts, startedAt);
  } finally {
    release();
  }
}

/**
 * Deals with the step locks an earlier orchestrator left: a lock whose process is gone is removed
 * with a note; a step still running is waited for, up to `waitRunningSec`, and then the run is
 * refused (nothing has been started or deleted by then). Called with the folder's lock held, so no
 * live orchestrator can take a step lock meanwhile.
 */
export async function settleStepLocks(
  workdir: string,
  opts: Pick<RunOptions, "waitRunningSec" | "onEvent" | "signal"> = {},
): Promise<void> {
  const waitMs = (opts.waitRunningSec ?? 10) * 1000;
  const t0 = Date.now();
  const told = new Set<string>();
  for (const { path, lock } of listStepLocks(workdir)) {
    if (!lock) {
      opts.onEvent?.({ type: "note", message: `removed an unreadable step lock ${path}` });
      Deno.removeSync(path);
      continue;
    }
    for (;;) {
      const h = stepLockHolder(lock);
      if (!h.alive) {
        opts.onEvent?.({
          type: "note",
          id: lock.step,
          message:
            `step ${lock.step}: took over the lock left by an earlier orchestrator (${h.why})`,
        });
        try {
          Deno.removeSync(path);
        } catch { /* gone meanwhile */ }
        break;
      }
      if (Date.now() - t0 >= waitMs || opts.signal?.aborted || h.what === "other host") {
        throw new Error(`Cannot run: ${describeBusy(lock, h, path)}`);
      }
      if (!told.has(path)) {
        told.add(path);
        opts.onEvent?.({
          type: "note",
          id: lock.step,
          message: `step ${lock.step} is still running as pid ${h.pid} (left by an earlier ` +
            `orchestrator); waiting up to ${+(waitMs / 1000).toFixed(1)}s for it to end`,
        });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function runLocked(plan: Plan, opts: RunOptions, startedAt: number): Promise<RunSummary> {
  await settleStepLocks(plan.workdir, opts);
  const p = prepare(plan, opts);
  const spec = plan.workflow.spec;
  const cpuCap = opts.cpus ?? spec.local?.cpus ?? navigator.hardwareConcurrency ?? 1;
  const gpuCap = opts.gpus ?? spec.local?.gpus ?? localGpus();
  const memCap = Math.floor(totalmem() / 2 ** 20);
  Deno.mkdirSync(logsDir(plan.workdir), { recursive: true });
  // Leftovers of killed runs: temporary folders are never taken as results.
  try {
    Deno.removeSync(tmpDir(plan.workdir), { recursive: true });
  } catch { /* none */ }

  const results = new Map<string, StepResult>();
  const emit = (r: StepResult) => {
    results.set(r.id, r);
    opts.onEvent?.({ type: "finish", result: r });
  };
  let freeCpus = cpuCap;
  let freeMem = memCap;
  const freeGpus: number[] = Array.from({ length: gpuCap }, (_, i) => i);
  const running = new Map<string, Promise<void>>();
  const pending = plan.steps.filter((s) => p.selected.has(s.id));
  for (const s of plan.steps) {
    if (!p.selected.has(s.id)) results.set(s.id, { id: s.id, status: "unselected" });
  }

  const need = (s: PlannedStep) => ({
    cpus: Math.min(s.resources.cpus, cpuCap),
    mem: Math.min(s.resources.memoryMiB ?? 0, memCap),
    gpus: s.resources.gpus,
  });

  const launch = (s: PlannedStep) => {
    const r = need(s);
    freeCpus -= r.cpus;
    freeMem -= r.mem;
    const gpus = freeGpus.splice(0, r.gpus);
    const job = runStep(p, s, { ...opts, cpus: r.cpus, gpuIds: gpus }).then((res) => {
      freeCpus += r.cpus;
      freeMem += r.mem;
      freeGpus.push(...gpus);
      running.delete(s.id);
      emit(res);
    });
    running.set(s.id, job);
  };

  while (pending.length > 0 || running.size > 0) {
    let progressed = false;
    for (let i = 0; i < pending.length; i++) {
      const s = pending[i];
      const states = s.needs.map((n) => results.get(n)?.status);
      const bad = s.needs.filter((_, k) => states[k] === "failed" || states[k] === "skipped");
      if (bad.length > 0) {
        const cause = bad.map((n) => `${n} ${results.get(n)!.status}`).join(", ");
        emit({ id: s.id, status: "skipped", reason: `needs ${cause}` });
        pending.splice(i--, 1);
        progressed = true;
        continue;
      }
      if (!states.every((st) => st === "done" || st === "cached")) continue;
      if (opts.signal?.aborted) {
        emit({ id: s.id, status: "skipped", reason: "workflow aborted" });
        pending.splice(i--, 1);
        progressed = true;
        continue;
      }
      const c = cacheCheck(p, s);
      if (c.ok) {
        emit({ id: s.id, status: "cached" });
        pending.splice(i--, 1);
        progressed = true;
        continue;
      }
      if (c.why === "finished but unrecorded" && s.cache && !p.forced.has(s.id)) {
        // The orchestrator died between moving the output into place and recording it.
        await recordDone(p, s, { log: logPath(plan.workdir, s.id) });
        emit({ id: s.id, status: "cached", reason: "adopted finished output" });
        pending.splice(i--, 1);
        progressed = true;
        continue;
      }
      if (s.resources.gpus > gpuCap) {
        const reason =
          `needs ${s.resources.gpus} GPU(s) but this machine offers ${gpuCap} (set local.gpus or COMODAL_GPUS)`;
        recordFailed(p, s, reason);
        emit({ id: s.id, status: "failed", reason });
        pending.splice(i--, 1);
        progressed = true;
        continue;
      }
      const r = need(s);
      if (r.cpus <= freeCpus && r.mem <= freeMem && r.gpus <= freeGpus.length) {
        launch(s);
        pending.splice(i--, 1);
        progressed = true;
      }
    }
    if (progressed) continue;
    if (running.size === 0) break; // nothing can start (cannot happen with a valid plan)
    await Promise.race(running.values());
  }
  return summarise(plan, results, startedAt);
}

interface StepRunOptions extends RunOptions {
  gpuIds: number[];
}

async function runStep(p: Prepared, s: PlannedStep, opts: StepRunOptions): Promise<StepResult> {
  const workdir = p.plan.workdir;
  const log = logPath(workdir, s.id);
  const started = Date.now();
  const env: Record<string, string> = {
    COMODAL_THREADS: String(opts.cpus ?? 1),
    OMP_NUM_THREADS: String(opts.cpus ?? 1),
  };
  if (opts.gpuIds.length > 0 || s.resources.gpus === 0) {
    env.CUDA_VISIBLE_DEVICES = opts.gpuIds.join(",");
  }
  let lock;
  try {
    lock = acquireStepLock(workdir, s.id, (why) =>
      opts.onEvent?.({
        type: "note",
        id: s.id,
        message: `step ${s.id}: took over the lock left by an earlier orchestrator (${why})`,
      }));
  } catch (err) {
    // Only reachable when a lock appeared after settleStepLocks (another run in this process).
    const reason = `not started: ${(err as Error).message}`;
    return { id: s.id, status: "failed", reason, log, durationMs: 0, attempts: 0 };
  }
  try {
    return await runAttempts(p, s, opts, log, started, env, lock.setPid);
  } finally {
    lock.release();
  }
}

async function runAttempts(
  p: Prepared,
  s: PlannedStep,
  opts: StepRunOptions,
  log: string,
  started: number,
  env: Record<string, string>,
  setPid: (pid: number, tmp: string) => void,
): Promise<StepResult> {
  const workdir = p.plan.workdir;
  let reason = "";
  const attempts = s.retries + 1;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const partial = newTmp(workdir, s.id);
    let cmd;
    try {
      cmd = stepCommand(s, partial, { workdir, threads: opts.cpus });
    } catch (err) {
      reason = (err as Error).message;
      break;
    }
    const header = `\n=== ${new Date().toISOString()} ${s.id} attempt ${attempt}/${attempts}\n$ ${
      cmd.argv.map((a) => /^[\w./=,:+-]+$/.test(a) ? a : JSON.stringify(a)).join(" ")
    }\n`;
    Deno.writeTextFileSync(log, header, { append: true });
    opts.onEvent?.({ type: "start", id: s.id, attempt, log });
    const r = await runProcess(cmd, {
      log,
      cwd: opts.cwd,
      timeoutSec: s.resources.timeSec,
      signal: opts.signal,
      env,
      onSpawn: (pid) => setPid(pid, partial),
    });
    if (r.code === 0 && !r.timedOut && !r.aborted) {
      const missing = s.outputs.filter((o) => {
        try {
          Deno.statSync(join(partial, o));
          return false;
        } catch {
          return true;
        }
      });
      if (missing.length === 0) {
        writeMeta(partial, s, p.hashes.get(s.id)!);
        installOutput(workdir, partial, s.outDir);
        const durationMs = Date.now() - started;
        await recordDone(p, s, { durationMs, attempts: attempt, log });
        Deno.writeTextFileSync(log, `=== done in ${(durationMs / 1000).toFixed(2)}s\n`, {
          append: true,
        });
        return { id: s.id, status: "done", durationMs, attempts: attempt, log };
      }
      reason = `exit code 0 but outputs missing: ${missing.join(", ")}`;
    } else {
      reason = describeExit(r, s.resources.timeSec);
    }
    Deno.writeTextFileSync(log, `=== failed: ${reason}\n`, { append: true });
    try {
      Deno.removeSync(partial, { recursive: true });
    } catch { /* gone */ }
    if (r.aborted || attempt === attempts) break;
    const delaySec = s.backoffSec * 2 ** (attempt - 1);
    opts.onEvent?.({ type: "retry", id: s.id, attempt, reason, delaySec });
    await new Promise((res) => setTimeout(res, delaySec * 1000));
    if (opts.signal?.aborted) break;
  }
  const durationMs = Date.now() - started;
  recordFailed(p, s, reason, { durationMs, attempts, log });
  return { id: s.id, status: "failed", reason, log, durationMs, attempts };
}

/** Human-readable summary: counts, then each failure with its reason and log. */
export function formatSummary(sum: RunSummary): string {
  const c = sum.counts;
  const lines = [
    `${sum.workflow}: ${c.done} done, ${c.cached} cached, ${c.failed} failed, ${c.skipped} skipped` +
    (c.unselected ? `, ${c.unselected} not selected` : "") +
    ` in ${(sum.elapsedMs / 1000).toFixed(1)}s`,
  ];
  for (const r of sum.results) {
    if (r.status === "failed") {
      lines.push(`  FAILED  ${r.id}: ${r.reason}${r.log ? ` (log: ${r.log})` : ""}`);
    }
  }
  for (const r of sum.results) {
    if (r.status === "skipped") lines.push(`  skipped ${r.id}: ${r.reason}`);
  }
  return lines.join("\n");
}
