/**
 * Running one step attempt as a local child process: its own process group (so a timeout or an
 * abort stops everything it started), output appended to the step's log file by the shell (so
 * the log survives the orchestrator), a time limit with SIGTERM then SIGKILL.
 */
import type { StepCommand } from "./commands.ts";

export interface ProcessResult {
  code: number;
  signal: string | null;
  timedOut: boolean;
  aborted: boolean;
  /** Set when the program could not be started at all. */
  startError?: string;
}

export interface RunProcessOptions {
  log: string;
  cwd?: string;
  timeoutSec?: number;
  signal?: AbortSignal;
  /** Extra environment (added to the orchestrator's). */
  env?: Record<string, string>;
  /** Seconds between SIGTERM and SIGKILL. */
  graceSec?: number;
}

let setsidPath: string | null | undefined;
function findSetsid(): string | null {
  if (setsidPath !== undefined) return setsidPath;
  for (const p of ["/usr/bin/setsid", "/bin/setsid"]) {
    try {
      Deno.statSync(p);
      return (setsidPath = p);
    } catch { /* next */ }
  }
  return (setsidPath = null);
}

function killGroup(pid: number, sig: Deno.Signal, ownGroup: boolean): void {
  try {
    Deno.kill(ownGroup ? -pid : pid, sig);
  } catch { /* already gone */ }
}

/** Runs a command to completion; never throws for the command's own failures. */
export async function runProcess(
  cmd: StepCommand,
  opts: RunProcessOptions,
): Promise<ProcessResult> {
  const setsid = findSetsid();
  const wrapper = ["/bin/sh", "-c", 'exec "$@" >>"$COMODAL_LOG" 2>&1', "sh", ...cmd.argv];
  const argv = setsid ? [setsid, ...wrapper] : wrapper;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      cwd: opts.cwd,
      env: { ...cmd.env, ...(opts.env ?? {}), COMODAL_LOG: opts.log },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
  } catch (err) {
    return { code: -1, signal: null, timedOut: false, aborted: false, startError: String(err) };
  }
  const own = setsid !== null;
  let timedOut = false;
  let aborted = false;
  const timers: ReturnType<typeof setTimeout>[] = [];
  const stop = () => {
    killGroup(child.pid, "SIGTERM", own);
    timers.push(
      setTimeout(() => killGroup(child.pid, "SIGKILL", own), (opts.graceSec ?? 5) * 1000),
    );
  };
  if (opts.timeoutSec !== undefined) {
    timers.push(setTimeout(() => {
      timedOut = true;
      stop();
    }, opts.timeoutSec * 1000));
  }
  const onAbort = () => {
    aborted = true;
    stop();
  };
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener("abort", onAbort);
  const status = await child.status;
  timers.forEach(clearTimeout);
  opts.signal?.removeEventListener("abort", onAbort);
  // The command may have left background children in its group: end them too.
  if (own) killGroup(child.pid, "SIGKILL", true);
  // 127 from the wrapper shell means the program was not found.
  return { code: status.code, signal: status.signal, timedOut, aborted };
}
