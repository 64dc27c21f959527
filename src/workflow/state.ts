/**
 * The run state of a working folder: <workdir>/.comodal/state.json (written atomically: temp file
 * then rename), a lock that keeps two orchestrators off one folder, and the layout of logs and
 * temporary output folders.
 */
import { join } from "node:path";
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

function pidAlive(pid: number): boolean {
  try {
    Deno.kill(pid, "SIGCONT"); // harmless; throws if the process does not exist
    return true;
  } catch (err) {
    return !(err instanceof Deno.errors.NotFound) && !String(err).includes("ESRCH") &&
      !String(err).includes("No such process");
  }
}

/**
 * Takes the working folder's lock (a file holding the orchestrator's pid). A lock left by a dead
 * process (an orchestrator killed with SIGKILL) is taken over.
 */
export function acquireLock(workdir: string): () => void {
  Deno.mkdirSync(stateDir(workdir), { recursive: true });
  const p = join(stateDir(workdir), "lock");
  for (let tries = 0; tries < 3; tries++) {
    try {
      const f = Deno.openSync(p, { write: true, createNew: true });
      f.writeSync(new TextEncoder().encode(String(Deno.pid)));
      f.close();
      return () => {
        try {
          if (Deno.readTextFileSync(p).trim() === String(Deno.pid)) Deno.removeSync(p);
        } catch { /* already gone */ }
      };
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
      let holder = NaN;
      try {
        holder = Number(Deno.readTextFileSync(p).trim());
      } catch { /* vanished meanwhile */ }
      if (Number.isInteger(holder) && holder > 0 && holder !== Deno.pid && pidAlive(holder)) {
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
