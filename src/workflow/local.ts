/**
 * Running one step attempt as a local child process: its own process group (so a timeout or an
 * abort stops everything it started), output appended to the step's log file by the shell (so
 * the log survives the orchestrator), a time limit with SIGTERM then SIGKILL, and death with the
 * orchestrator: when the orchestrator dies in any way (SIGKILL, OOM killer, a crash), the step's
 * whole process group is killed at once.
 *
 * How the step notices its orchestrator's death: the step's stdin is a pipe whose only writer is
 * the orchestrator (Deno opens its pipes close-on-exec, so no other child inherits the write end).
 * The wrapper shell starts a watcher in the step's process group that blocks reading that pipe and
 * then execs the step's program. The orchestrator never writes to the pipe, so the read returns
 * only when the kernel closes the write end, that is when the orchestrator process is gone; the
 * watcher then sends SIGKILL to the whole group (`kill -KILL 0`). This needs no polling and no
 * pid checks (no recycled-pid trap), only sh and setsid (util-linux).
 * Not chosen: PR_SET_PDEATHSIG (`setpriv --pdeathsig KILL`) fires when the parent *thread* exits,
 * not the process, reaches only the one process it was set on (not what the step starts), and is
 * Linux-only; a heartbeat file needs polling and the orchestrator's pid plus start time.
 * When the step ends normally the watcher is left in the group, and the orchestrator's usual kill
 * of the group after the step's exit ends it.
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
  /** Called once the process is started (with its pid, which leads its process group). */
  onSpawn?: (pid: number) => void;
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
  const own = setsid !== null;
  // fd 3 keeps the orchestrator's pipe for the watcher; the step itself reads /dev/null. The
  // watcher ignores SIGTERM/SIGINT/SIGHUP so that it still acts if the orchestrator dies during
  // a stop's grace period. Without setsid (not Linux) the step would share the orchestrator's
  // group, which the watcher must not kill, so there is no watcher there.
  // The step starts only after a "go" line on that pipe, which the orchestrator writes once the
  // step's pid is recorded (onSpawn: the step lock), so the step never sees its lock without it.
  const script = own
    ? "exec 3<&0 </dev/null\n" +
      "read -r _ <&3 || exit 1\n" +
      "(trap '' TERM INT HUP; read -r _ <&3; kill -KILL 0) &\n" +
      'exec "$@" 3<&- >>"$COMODAL_LOG" 2>&1'
    : 'exec "$@" </dev/null >>"$COMODAL_LOG" 2>&1';
  const wrapper = ["/bin/sh", "-c", script, "sh", ...cmd.argv];
  const argv = setsid ? [setsid, ...wrapper] : wrapper;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      cwd: opts.cwd,
      env: { ...cmd.env, ...(opts.env ?? {}), COMODAL_LOG: opts.log },
      stdin: "piped", // never written: its end-of-file tells the step its orchestrator died
      stdout: "null",
      stderr: "null",
    }).spawn();
  } catch (err) {
    return { code: -1, signal: null, timedOut: false, aborted: false, startError: String(err) };
  }
  // Hold the writer (and so the pipe's write end) until the step is over.
  const lifeline = child.stdin.getWriter();
  try {
    opts.onSpawn?.(child.pid);
    if (own) await lifeline.write(new TextEncoder().encode("go\n"));
  } catch (err) {
    killGroup(child.pid, "SIGKILL", own);
    await child.status;
    await lifeline.close().catch(() => undefined);
    return { code: -1, signal: null, timedOut: false, aborted: false, startError: String(err) };
  }
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
  // The command may have left background children in its group (and the watcher): end them too.
  if (own) killGroup(child.pid, "SIGKILL", true);
  await lifeline.close().catch(() => undefined);
  // 127 from the wrapper shell means the program was not found.
  return { code: status.code, signal: status.signal, timedOut, aborted };
}
