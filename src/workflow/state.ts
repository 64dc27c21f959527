/**
 * The run state of a working folder: <workdir>/.comodal/state.json (written atomically: temp file
 * then rename), a lock that keeps two orchestrators off one folder, a lock per running step (so a
 * step left running by a killed orchestrator is never started a second time), and the layout of
 * logs and temporary output folders.
 */
import { join } from "node:path";
import { hostname } from "node:os";
import { STEP_META_FILE } from "./hash.ts";

export interface StepRecord {
  /** Content hash of the step when it ran. */
  hash: string;
  /** submitted: handed to Slurm, outcome not yet seen by the orchestrator. */
  status: "done" | "failed" | "submitted";
  /** Hash of the output folder (done only). */
  outputsHash?: string;
  /** Output hashes of the needed steps at the time this one ran. */
  inputs?: Record<string, string>;
  finishedAt: string;
  durationMs?: number;
  attempts?: number;
  /** Why it failed. */
  reason?: string;
  log?: string;
  /** Slurm job id, when run through Slurm. */
  jobId?: string;
}

export interface RunState {
  version: 1;
  workflow: string;
  steps: Record<string, StepRecord>;
}

/** Metadata written into each output folder before it is moved into place. */
export interface StepMeta {
  id: string;
  name: string;
  kind: string;
  hash: string;
  matrix: Record<string, unknown>;
  params: Record<string, unknown>;
  finishedAt?: string;
}

export function stateDir(workdir: string): string {
  return join(workdir, ".comodal");
}
export function statePath(workdir: string): string {
  return join(workdir, ".comodal", "state.json");
}
export function logsDir(workdir: string): string {
  return join(workdir, "logs");
}
export function tmpDir(workdir: string): string {
  return join(workdir, ".comodal", "tmp");
}
/** A log file name for a step id (matrix brackets and commas kept readable but safe). */
export function logPath(workdir: string, id: string): string {
  return join(logsDir(workdir), `${id.replace(/[^\w.=,+\[\]-]/g, "_")}.log`);
}

export function readState(workdir: string, workflow: string): RunState {
  const p = statePath(workdir);
  let text: string;
  try {
    text = Deno.readTextFileSync(p);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return { version: 1, workflow, steps: {} };
    throw new Error(`Cannot read ${p}: ${err}`);
  }
  try {
    const s = JSON.parse(text) as RunState;
    if (s.version !== 1 || typeof s.steps !== "object") throw new Error("unknown format");
    return s;
  } catch (err) {
    throw new Error(`Cannot read ${p}: ${(err as Error).message}; delete it to start afresh`);
  }
}

/** Writes the state atomically (a crash leaves either the old or the new file, never half). */
export function writeState(workdir: string, state: RunState): void {
  const p = statePath(workdir);
  Deno.mkdirSync(stateDir(workdir), { recursive: true });
  const tmp = `${p}.tmp-${Deno.pid}`;
  const f = Deno.openSync(tmp, { write: true, create: true, truncate: true });
  try {
    f.writeSync(new TextEncoder().encode(JSON.stringify(state, null, 1)));
    f.syncSync();
  } finally {
    f.close();
  }
  Deno.renameSync(tmp, p);
}

/** Reads an output folder's metadata, or undefined when there is none. */
export function readMeta(outDir: string): StepMeta | undefined {
  try {
    return JSON.parse(Deno.readTextFileSync(join(outDir, STEP_META_FILE))) as StepMeta;
  } catch {
    return undefined;
  }
}

/** One line of /proc/<pid>/stat, split after the command name (which may hold spaces). */
function procStat(pid: number): string[] | undefined {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return text.slice(text.lastIndexOf(")") + 2).trim().split(" ");
  } catch {
    return undefined;
  }
}

let procUsable: boolean | undefined;
/** Whether /proc gives process start times here (Linux); elsewhere only "pid exists" is known. */
function hasProc(): boolean {
  return procUsable ??= procStat(Deno.pid) !== undefined;
}

/**
 * A process's start time (clock ticks since boot, field 22 of /proc/<pid>/stat), or null when it
 * cannot be read (no such process, or no /proc). With the pid it names one process for good: a
 * recycled pid has another start time.
 */
export function processStart(pid: number): string | null {
  return procStat(pid)?.[19] ?? null;
}

let boot: string | null | undefined;
/** This boot's id (a start time only means something within one boot). */
export function bootId(): string | null {
  if (boot !== undefined) return boot;
  try {
    return (boot = Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim());
  } catch {
    return (boot = null);
  }
}

function pidExists(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT"); // harmless; throws if the process does not exist
    return true;
  } catch (err) {
    return !(err instanceof Deno.errors.NotFound) && !String(err).includes("ESRCH") &&
      !String(err).includes("No such process");
  }
}

/**
 * Whether the process `pid` that started at `start` (from processStart) still runs. A zombie
 * counts as gone, and so does a live process with another start time (the pid was recycled).
 * Without /proc, or without a recorded start time, only whether the pid exists can be checked.
 */
export function processAlive(pid: number, start?: string | null): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (!hasProc()) return pidExists(pid);
  const st = procStat(pid);
  if (!st) return false;
  if (st[0] === "Z" || st[0] === "X") return false;
  return !start || st[19] === start;
}

/**
 * Whether the process group led by `pgid` (a step's group; its leader started at `start`) still
 * has a live member. The leader may be gone while processes it started live on in its group;
 * Linux hands out no pid that is still some group's id, so a leader pid with another start time
 * means the old group is empty and the number was reused.
 */
export function processGroupAlive(pgid: number, start: string | null): boolean {
  if (!hasProc()) return pidExists(pgid);
  const leader = procStat(pgid);
  if (leader && start && leader[19] !== start) return false;
  if (leader && leader[0] !== "Z" && leader[0] !== "X") return true;
  try {
    for (const e of Deno.readDirSync("/proc")) {
      if (!/^\d+$/.test(e.name)) continue;
      const st = procStat(Number(e.name));
      if (st && st[2] === String(pgid) && st[0] !== "Z" && st[0] !== "X") return true;
    }
  } catch { /* /proc unreadable: the leader decided */ }
  return false;
}

/**
 * Takes the working folder's lock (a file holding the orchestrator's pid and start time). A lock
 * left by a dead process (an orchestrator killed with SIGKILL), or whose pid now belongs to
 * another process, is taken over.
 */
export function acquireLock(workdir: string): () => void {
  Deno.mkdirSync(stateDir(workdir), { recursive: true });
  const p = join(stateDir(workdir), "lock");
  const mine = `${Deno.pid} ${processStart(Deno.pid) ?? ""}`.trim();
  for (let tries = 0; tries < 3; tries++) {
    try {
      const f = Deno.openSync(p, { write: true, createNew: true });
      f.writeSync(new TextEncoder().encode(mine));
      f.close();
      return () => {
        try {
          if (Deno.readTextFileSync(p).trim() === mine) Deno.removeSync(p);
        } catch { /* already gone */ }
      };
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
      let holder = NaN;
      let start: string | undefined;
      try {
        const [pid, st] = Deno.readTextFileSync(p).trim().split(/\s+/);
        holder = Number(pid);
        start = st;
      } catch { /* vanished meanwhile */ }
      if (
        Number.isInteger(holder) && holder > 0 && holder !== Deno.pid &&
        processAlive(holder, start)
      ) {
        throw new Error(
          `Cannot run: another orchestrator (pid ${holder}) is running in ${workdir} (lock ${p})`,
        );
      }
      try {
        Deno.removeSync(p);
      } catch { /* raced */ }
    }
  }
  throw new Error(`Cannot take the lock ${p}`);
}

/** A step's own folder in the state folder (its lock lives there). */
export function stepStateDir(workdir: string, id: string): string {
  return join(stateDir(workdir), "steps", id.replace(/[^\w.=,+\[\]-]/g, "_"));
}
export function stepLockPath(workdir: string, id: string): string {
  return join(stepStateDir(workdir, id), "lock");
}

/**
 * The lock of a running step: <workdir>/.comodal/steps/<id>/lock. (Not in the output folder: that
 * one is swapped in by a rename when the step finishes and its contents are hashed.)
 */
export interface StepLock {
  step: string;
  /** Pid of the step's process, which leads its process group; absent until it is started. */
  pid?: number;
  /** Its start time (processStart), so that a recycled pid is not taken for the step. */
  pidStart?: string | null;
  /** The orchestrator that runs the step (it holds the lock between attempts too). */
  orchestrator: number;
  orchestratorStart: string | null;
  host: string;
  boot: string | null;
  /** The attempt's temporary output folder. */
  tmp?: string;
  startedAt: string;
}

export function readStepLock(path: string): StepLock | undefined {
  try {
    const l = JSON.parse(Deno.readTextFileSync(path)) as StepLock;
    return typeof l === "object" && l && typeof l.step === "string" ? l : undefined;
  } catch {
    return undefined;
  }
}

/** Every step lock in a working folder (steps of any plan, renamed ones included). */
export function listStepLocks(workdir: string): { path: string; lock?: StepLock }[] {
  const out: { path: string; lock?: StepLock }[] = [];
  try {
    for (const e of Deno.readDirSync(join(stateDir(workdir), "steps"))) {
      const path = join(stateDir(workdir), "steps", e.name, "lock");
      try {
        Deno.statSync(path);
      } catch {
        continue;
      }
      out.push({ path, lock: readStepLock(path) });
    }
  } catch { /* no steps folder */ }
  return out;
}

/** What holds a step lock now: its step process (group), its orchestrator, or nothing (stale). */
export type LockHolder =
  | { alive: true; what: "step" | "orchestrator" | "other host"; pid: number }
  | { alive: false; why: string };

export function stepLockHolder(lock: StepLock): LockHolder {
  if (lock.host !== hostname()) {
    return { alive: true, what: "other host", pid: lock.pid ?? lock.orchestrator };
  }
  if (lock.boot && bootId() && lock.boot !== bootId()) {
    return { alive: false, why: "the machine was restarted since" };
  }
  if (lock.pid !== undefined && processGroupAlive(lock.pid, lock.pidStart ?? null)) {
    return { alive: true, what: "step", pid: lock.pid };
  }
  if (processAlive(lock.orchestrator, lock.orchestratorStart)) {
    return { alive: true, what: "orchestrator", pid: lock.orchestrator };
  }
  return {
    alive: false,
    why: lock.pid !== undefined
      ? (processStart(lock.pid) !== null && processStart(lock.pid) !== lock.pidStart
        ? `pid ${lock.pid} is another process now`
        : `pid ${lock.pid} is not running any more`)
      : `its orchestrator (pid ${lock.orchestrator}) is not running any more`,
  };
}

/** Raised when a step is still running elsewhere; names the step, the pid and the lock. */
export class StepBusyError extends Error {
  constructor(readonly step: string, readonly pid: number, readonly lockPath: string, msg: string) {
    super(msg);
  }
}

export function describeBusy(
  lock: StepLock,
  h: LockHolder & { alive: true },
  path: string,
): string {
  const since = lock.startedAt.replace("T", " ").slice(0, 19);
  if (h.what === "other host") {
    return `step ${lock.step} is locked by pid ${h.pid} on host ${lock.host} (since ${since}), ` +
      `which cannot be checked from here; if nothing runs it there any more, delete ${path}`;
  }
  if (h.what === "orchestrator") {
    return `step ${lock.step} is being run by another orchestrator (pid ${h.pid}, since ${since}; lock ${path})`;
  }
  return `step ${lock.step} is still running as pid ${h.pid} (process group ${h.pid}, since ${since}), ` +
    `left by an orchestrator (pid ${lock.orchestrator}) that is gone; it is not started a second time. ` +
    `Wait for it to end or stop it (kill -- -${h.pid}), then rerun (lock ${path})`;
}

/**
 * Takes a step's lock before its process starts. A stale lock (holder dead, or its pid recycled)
 * is taken over and `onStale` hears why; a live one raises StepBusyError. `setPid` records the
 * step's process once started; `release` removes the lock (only if it is still this one).
 */
export function acquireStepLock(
  workdir: string,
  id: string,
  onStale?: (why: string, old: StepLock | undefined) => void,
): { setPid: (pid: number, tmp: string) => void; release: () => void } {
  const path = stepLockPath(workdir, id);
  Deno.mkdirSync(stepStateDir(workdir, id), { recursive: true });
  const lock: StepLock = {
    step: id,
    orchestrator: Deno.pid,
    orchestratorStart: processStart(Deno.pid),
    host: hostname(),
    boot: bootId(),
    startedAt: new Date().toISOString(),
  };
  const write = (createNew: boolean) => {
    const text = new TextEncoder().encode(JSON.stringify(lock));
    if (createNew) {
      const f = Deno.openSync(path, { write: true, createNew: true });
      try {
        f.writeSync(text);
      } finally {
        f.close();
      }
      return;
    }
    const tmp = `${path}.tmp-${Deno.pid}`;
    Deno.writeFileSync(tmp, text);
    Deno.renameSync(tmp, path);
  };
  for (let tries = 0;; tries++) {
    try {
      write(true);
      break;
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists) || tries >= 3) throw err;
      const old = readStepLock(path);
      if (old) {
        const h = stepLockHolder(old);
        if (h.alive) throw new StepBusyError(id, h.pid, path, describeBusy(old, h, path));
        onStale?.(h.why, old);
      } else onStale?.("unreadable lock file", undefined);
      try {
        Deno.removeSync(path);
      } catch { /* raced */ }
    }
  }
  const mine = () => {
    const cur = readStepLock(path);
    return cur?.orchestrator === lock.orchestrator && cur.startedAt === lock.startedAt;
  };
  return {
    setPid: (pid, tmp) => {
      lock.pid = pid;
      lock.pidStart = processStart(pid);
      lock.tmp = tmp;
      if (mine()) write(false);
    },
    release: () => {
      try {
        if (mine()) Deno.removeSync(path);
      } catch { /* gone */ }
    },
  };
}
