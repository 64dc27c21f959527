/**
 * The Slurm executor: one sbatch script per step (a job array for matrix instances of one step
 * that need the same upstream jobs), edges as --dependency=afterok:<ids>, resources as
 * --cpus-per-task / --gres=gpu:N / --mem / --time, states polled with squeue, scancel on abort.
 *
 * The job script does what the local executor does for a step: retries with backoff, a time limit
 * per attempt (`timeout`), output into a temporary folder that is moved into place only after
 * exit 0 with the expected outputs present, and a status file with the reason of a failure. The
 * orchestrator records a step as done only after Slurm reports it COMPLETED and the output folder
 * is in place; if the orchestrator dies, a rerun adopts finished outputs and re-attaches to jobs
 * still queued or running (by the job id recorded in state.json, checked with squeue) instead of
 * submitting them again. A job left by an earlier orchestrator that must not be adopted (the step's
 * parameters changed since, or it waits on an upstream job that failed and so can never start) is
 * cancelled and waited out before its step is submitted again, so a step never runs twice at once.
 */
import { join } from "node:path";
import type { Plan, PlannedStep } from "./plan.ts";
import { stepCommand } from "./commands.ts";
import {
  cacheCheck,
  type EngineEvent,
  prepare,
  type Prepared,
  recordDone,
  recordFailed,
  type RunSummary,
  settleStepLocks,
  type StepResult,
  summarise,
} from "./engine.ts";
import { STEP_META_FILE } from "./hash.ts";
import {
  acquireLock,
  logPath,
  logsDir,
  stateDir,
  type StepMeta,
  tmpDir,
  writeState,
} from "./state.ts";

export interface SlurmOptions {
  only?: string[];
  force?: string[];
  codeVersion?: string;
  signal?: AbortSignal;
  onEvent?: (e: EngineEvent) => void;
  /** Seconds between squeue polls (default: the workflow's slurm.poll_interval, else 2). */
  pollSec?: number;
  /** Working directory of the jobs (default: the current one). */
  cwd?: string;
}

const TERMINAL = new Set([
  "COMPLETED",
  "FAILED",
  "CANCELLED",
  "TIMEOUT",
  "NODE_FAIL",
  "OUT_OF_MEMORY",
  "PREEMPTED",
  "BOOT_FAIL",
  "DEADLINE",
  "REVOKED",
  "SPECIAL_EXIT",
]);

/** Quotes a word for the POSIX shell. */
export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

interface SlurmTool {
  out: string;
  err: string;
  code: number;
}

async function tool(name: string, args: string[], cwd?: string): Promise<SlurmTool> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(name, {
      args,
      cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Error(
        `Cannot use the Slurm executor: '${name}' was not found on PATH (is Slurm's client installed?)`,
      );
    }
    throw err;
  }
  const dec = new TextDecoder();
  return { out: dec.decode(out.stdout), err: dec.decode(out.stderr).trim(), code: out.code };
}

function statusPath(workdir: string, id: string): string {
  return join(stateDir(workdir), "jobs", `${id.replace(/[^\w.=,+\[\]-]/g, "_")}.status`);
}

/** Slurm's --time value (minutes, rounded up) for a number of seconds. */
export function slurmTime(sec: number): string {
  const min = Math.max(1, Math.ceil(sec / 60));
  const d = Math.floor(min / 1440);
  const h = Math.floor((min % 1440) / 60);
  const m = min % 60;
  const hm = `${String(h).padStart(2, "0")}:${String(m).padStart(2, "0")}:00`;
  return d > 0 ? `${d}-${hm}` : hm;
}

interface Instance {
  step: PlannedStep;
  partial: string;
  status: string;
  log: string;
}

/** The shell function body that runs one instance (attempts, time limit, move into place). */
function instanceScript(p: Prepared, inst: Instance, cwd: string): string {
  const s = inst.step;
  const cmd = stepCommand(s, inst.partial, { workdir: p.plan.workdir, threads: s.resources.cpus });
  const meta: StepMeta = {
    id: s.id,
    name: s.name,
    kind: s.kind,
    hash: p.hashes.get(s.id)!,
    matrix: s.matrix,
    params: s.params,
  };
  const q = shellQuote;
  const attempts = s.retries + 1;
  const timeout = s.resources.timeSec !== undefined
    ? `timeout --kill-after=5 ${Math.ceil(s.resources.timeSec)} `
    : "";
  const env = Object.entries(cmd.env).map(([k, v]) => `export ${k}=${q(v)}`).join("\n  ");
  const checks = s.outputs.map((o) =>
    `[ -e "$PARTIAL"/${q(o)} ] || missing="$missing ${o.replace(/["$`\\]/g, "")}"`
  ).join("\n      ");
  const old = `${inst.partial}.old`;
  return `
  exec >>${q(inst.log)} 2>&1
  cd ${q(cwd)}
  ${env}
  export COMODAL_THREADS=\${SLURM_CPUS_PER_TASK:-1} OMP_NUM_THREADS=\${SLURM_CPUS_PER_TASK:-1}
  PARTIAL=${q(inst.partial)}
  attempt=1
  while :; do
    rm -rf "$PARTIAL"; mkdir -p "$PARTIAL"
    echo "=== $(date -Iseconds) ${
    s.id.replace(/["$`\\]/g, "")
  } attempt $attempt/${attempts} (slurm job \${SLURM_JOB_ID})"
    ${timeout}${cmd.argv.map(q).join(" ")}
    rc=$?
    if [ $rc = 0 ]; then
      missing=""
      ${checks}
      if [ -z "$missing" ]; then
        cat > "$PARTIAL"/${STEP_META_FILE} <<'COMODAL_META_EOF'
${JSON.stringify({ ...meta, finishedAt: undefined })}
COMODAL_META_EOF
        mkdir -p ${q(join(s.outDir, ".."))}
        rm -rf ${q(old)}
        if [ -e ${q(s.outDir)} ]; then mv ${q(s.outDir)} ${q(old)}; fi
        mv "$PARTIAL" ${q(s.outDir)} && rm -rf ${q(old)}
        echo "=== done"
        echo ok > ${q(inst.status)}
        exit 0
      fi
      reason="exit code 0 but outputs missing:$missing"
    elif [ $rc = 124 ] && [ -n "${timeout}" ]; then reason="killed after its time limit of ${s.resources.timeSec}s"
    elif [ $rc = 127 ]; then reason="exit code 127 (command not found)"
    elif [ $rc -gt 128 ]; then reason="killed by signal $((rc - 128))"
    else reason="exit code $rc"; fi
    echo "=== failed: $reason"
    if [ $attempt -ge ${attempts} ]; then echo "$reason" > ${q(inst.status)}; exit 1; fi
    sleep $(awk "BEGIN{print ${s.backoffSec} * 2^($attempt-1)}")
    attempt=$((attempt+1))
  done`;
}

/** Runs the plan through Slurm. */
export async function runSlurm(plan: Plan, opts: SlurmOptions = {}): Promise<RunSummary> {
  const startedAt = Date.now();
  const release = acquireLock(plan.workdir);
  try {
    return await runLocked(plan, opts, startedAt);
  } finally {
    release();
  }
}

async function runLocked(plan: Plan, opts: SlurmOptions, startedAt: number): Promise<RunSummary> {
  // A step of an earlier local run of this folder that is still running is not submitted beside it.
  await settleStepLocks(plan.workdir, opts);
  const p = prepare(plan, opts);
  const spec = plan.workflow.spec;
  const cfg = spec.slurm ?? {};
  const pollSec = opts.pollSec ?? cfg.poll_interval ?? 2;
  const cwd = opts.cwd ?? Deno.cwd();
  const workdir = plan.workdir;
  for (
    const d of [
      join(logsDir(workdir), "slurm"),
      tmpDir(workdir),
      join(stateDir(workdir), "jobs"),
      join(stateDir(workdir), "sbatch"),
    ]
  ) {
    Deno.mkdirSync(d, { recursive: true });
  }
  const results = new Map<string, StepResult>();
  const emit = (r: StepResult) => {
    results.set(r.id, r);
    opts.onEvent?.({ type: "finish", result: r });
  };
  for (const s of plan.steps) {
    if (!p.selected.has(s.id)) results.set(s.id, { id: s.id, status: "unselected" });
  }

  // Jobs still queued or running from an earlier (killed) orchestrator, by job reference; and
  // those of them that are not to be adopted, with why.
  const earlier = new Map<string, string>();
  const earlierState = new Map<string, string>();
  const unwanted = new Map<string, { ref: string; why: string }>();
  const submittedBefore = plan.steps.filter((s) =>
    p.state.steps[s.id]?.status === "submitted" && p.state.steps[s.id]?.jobId
  );
  if (submittedBefore.length > 0) {
    const states = await pollStates([
      ...new Set(submittedBefore.map((s) => p.state.steps[s.id].jobId!.split("_")[0])),
    ]);
    for (const s of submittedBefore) {
      const rec = p.state.steps[s.id];
      const st = states.get(rec.jobId!);
      if (!st || TERMINAL.has(st.state)) continue;
      if (rec.hash !== p.hashes.get(s.id)) {
        unwanted.set(s.id, {
          ref: rec.jobId!,
          why: "its parameters, inputs or code changed since",
        });
      } else if (neverStarts(st)) {
        unwanted.set(s.id, { ref: rec.jobId!, why: "it waits on a job that failed" });
      } else {
        earlier.set(s.id, rec.jobId!);
        earlierState.set(s.id, st.state);
      }
    }
  }

  // 1. Decide what runs (conservatively: a step runs when anything it needs runs).
  const toRun: PlannedStep[] = [];
  const runs = new Set<string>();
  for (const s of plan.steps) {
    if (!p.selected.has(s.id)) continue;
    const upstreamRuns = s.needs.some((n) => runs.has(n));
    if (!upstreamRuns) {
      const c = cacheCheck(p, s);
      if (c.ok) {
        emit({ id: s.id, status: "cached" });
        continue;
      }
      if (c.why === "finished but unrecorded" && s.cache && !p.forced.has(s.id)) {
        await recordDone(p, s, { log: logPath(workdir, s.id) });
        emit({ id: s.id, status: "cached", reason: "adopted finished output" });
        continue;
      }
    }
    runs.add(s.id);
    toRun.push(s);
  }
  // An earlier job waits on the earlier jobs of the steps it needs; if one of those is submitted
  // afresh, the old job would wait for a job that is gone (plan order, so this cascades).
  for (const s of toRun) {
    const ref = earlier.get(s.id);
    if (!ref) continue;
    const fresh = s.needs.filter((n) => runs.has(n) && !earlier.has(n));
    if (fresh.length === 0) continue;
    earlier.delete(s.id);
    unwanted.set(s.id, { ref, why: `${fresh.join(", ")}, which it waits on, is submitted again` });
  }
  if (unwanted.size > 0) {
    const refs = [...new Set([...unwanted.values()].map((u) => u.ref))];
    const r = await tool("scancel", refs);
    if (r.code !== 0) {
      throw new Error(
        `Cannot cancel the Slurm job(s) ${refs.join(", ")} left by an earlier run: scancel ` +
          `failed (exit ${r.code}): ${r.err}; cancel them yourself, then rerun`,
      );
    }
    for (const [id, u] of unwanted) {
      opts.onEvent?.({
        type: "note",
        id,
        message: `step ${id}: cancelled Slurm job ${u.ref} left by an earlier run (${u.why})`,
      });
    }
    await waitEnded(refs, pollSec, opts.signal);
  }
  for (const [id, ref] of earlier) {
    if (!runs.has(id)) continue;
    opts.onEvent?.({
      type: "note",
      id,
      message: `step ${id}: re-attached to Slurm job ${ref} (${
        earlierState.get(id)
      }) submitted by an earlier run`,
    });
  }

  // 2. Submit in topological order; instances of one step with the same upstream jobs form an array.
  const jobRef = new Map<string, string>(); // instance id -> "123" or "123_4"
  const submittedAt = new Map<string, number>();
  const instances = new Map<string, Instance>();
  const failedSubmit = new Set<string>();
  const groups: PlannedStep[][] = [];
  {
    const byKey = new Map<string, PlannedStep[]>();
    for (const s of toRun) {
      const key = `${s.name}\0${s.needs.filter((n) => runs.has(n)).sort().join(",")}`;
      if (!byKey.has(key)) {
        byKey.set(key, []);
        groups.push(byKey.get(key)!);
      }
      byKey.get(key)!.push(s);
    }
  }
  const useArrays = cfg.array ?? true;
  const sbatchArgsFor = (s: PlannedStep): string[] => {
    const a = [`--cpus-per-task=${s.resources.cpus}`];
    if (s.resources.gpus > 0) a.push(`--gres=gpu:${s.resources.gpus}`);
    if (s.resources.memoryMiB !== undefined) a.push(`--mem=${s.resources.memoryMiB}M`);
    if (s.resources.timeSec !== undefined) {
      // Room for every attempt, the backoff sleeps and a minute of slack.
      const total = s.resources.timeSec * (s.retries + 1) + s.backoffSec * (2 ** s.retries - 1) +
        60;
      a.push(`--time=${slurmTime(total)}`);
    }
    if (cfg.partition) a.push(`--partition=${cfg.partition}`);
    if (cfg.account) a.push(`--account=${cfg.account}`);
    a.push(...(cfg.extra_args ?? []));
    return a;
  };

  let aborted = false;
  for (const group of groups) {
    // Steps whose upstream could not be submitted are skipped.
    const live = group.filter((s) => {
      const bad = s.needs.filter((n) =>
        failedSubmit.has(n) || results.get(n)?.status === "failed" ||
        results.get(n)?.status === "skipped"
      );
      if (bad.length === 0) return true;
      failedSubmit.add(s.id);
      emit({ id: s.id, status: "skipped", reason: `needs ${bad.join(", ")} which could not run` });
      return false;
    });
    const fresh = live.filter((s) => {
      const ref = earlier.get(s.id);
      if (ref) jobRef.set(s.id, ref);
      return !ref;
    });
    // Re-attached instances still need their bookkeeping.
    for (const s of live.filter((x) => earlier.has(x.id))) {
      instances.set(s.id, {
        step: s,
        partial: "",
        status: statusPath(workdir, s.id),
        log: logPath(workdir, s.id),
      });
    }
    if (fresh.length === 0) continue;
    if (opts.signal?.aborted) {
      aborted = true;
      break;
    }
    const chunks = useArrays ? [fresh] : fresh.map((s) => [s]);
    for (const chunk of chunks) {
      const insts = chunk.map((s) => {
        const inst: Instance = {
          step: s,
          partial: Deno.makeTempDirSync({
            dir: tmpDir(workdir),
            prefix: `${s.id.replace(/[^\w.=,-]/g, "_")}.`,
          }),
          status: statusPath(workdir, s.id),
          log: logPath(workdir, s.id),
        };
        try {
          Deno.removeSync(inst.status);
        } catch { /* none */ }
        instances.set(s.id, inst);
        return inst;
      });
      const deps = new Set<string>();
      for (const s of chunk) for (const n of s.needs) if (jobRef.has(n)) deps.add(jobRef.get(n)!);
      const first = chunk[0];
      const isArray = chunk.length > 1;
      const lines = [
        "#!/bin/bash",
        `#SBATCH --job-name=${shellQuote(`comodal.${plan.name}.${first.name}`)}`,
        `#SBATCH --output=${shellQuote(join(logsDir(workdir), "slurm", "%j.out"))}`,
        ...sbatchArgsFor(first).map((a) => `#SBATCH ${a}`),
        `case "\${SLURM_ARRAY_TASK_ID:-0}" in`,
        ...insts.map((inst, i) => `${i})${instanceScript(p, inst, cwd)}\n  ;;`),
        `*) echo "comodal: no instance for array index $SLURM_ARRAY_TASK_ID" >&2; exit 1;;`,
        "esac",
        "",
      ];
      const scriptPath = join(
        stateDir(workdir),
        "sbatch",
        `${first.name}.${Date.now()}.${Math.random().toString(36).slice(2, 8)}.sh`,
      );
      Deno.writeTextFileSync(scriptPath, lines.join("\n"));
      const args = ["--parsable", `--chdir=${cwd}`];
      if (isArray) args.push(`--array=0-${chunk.length - 1}`);
      if (deps.size > 0) args.push(`--dependency=afterok:${[...deps].join(":")}`);
      args.push(scriptPath);
      const r = await tool("sbatch", args, cwd);
      const jobId = r.out.trim().split(";")[0];
      if (r.code !== 0 || !/^\d+$/.test(jobId)) {
        const why = `sbatch failed (exit ${r.code}): ${r.err || r.out.trim() || "no output"}`;
        for (const s of chunk) {
          failedSubmit.add(s.id);
          recordFailed(p, s, why, { log: logPath(workdir, s.id) });
          emit({ id: s.id, status: "failed", reason: why, log: scriptPath });
        }
        continue;
      }
      chunk.forEach((s, i) => {
        const ref = isArray ? `${jobId}_${i}` : jobId;
        jobRef.set(s.id, ref);
        submittedAt.set(s.id, Date.now());
        p.state.steps[s.id] = {
          hash: p.hashes.get(s.id)!,
          status: "submitted",
          jobId: ref,
          finishedAt: new Date().toISOString(),
          log: logPath(workdir, s.id),
        };
        opts.onEvent?.({ type: "start", id: s.id, attempt: 1, log: logPath(workdir, s.id) });
      });
      writeState(workdir, p.state);
    }
  }

  // 3. Poll until every submitted instance reached a final state; record results in plan order.
  const waiting = new Set([...jobRef.keys()].filter((id) => !results.has(id)));
  const submitted = new Map<string, number>(); // instance -> first poll time it was missing
  while (waiting.size > 0) {
    if (opts.signal?.aborted || aborted) {
      const ids = [...new Set([...waiting].map((id) => jobRef.get(id)!))];
      if (ids.length > 0) await tool("scancel", ids).catch(() => undefined);
      for (const id of waiting) {
        emit({ id, status: "skipped", reason: "workflow aborted (Slurm job cancelled)" });
      }
      break;
    }
    const states = await pollStates([
      ...new Set([...waiting].map((id) => jobRef.get(id)!.split("_")[0])),
    ]);
    const finished: string[] = [];
    for (const id of waiting) {
      const ref = jobRef.get(id)!;
      const st = states.get(ref);
      if (st && (TERMINAL.has(st.state) || neverStarts(st))) finished.push(id);
      else if (!st) {
        // Not listed (purged or not yet visible): trust the job's status file after a grace time.
        const inst = instances.get(id)!;
        let hasStatus = false;
        try {
          Deno.statSync(inst.status);
          hasStatus = true;
        } catch { /* not yet */ }
        const t = submitted.get(id) ?? Date.now();
        submitted.set(id, t);
        if (hasStatus || Date.now() - t > 30_000) finished.push(id);
      }
    }
    // Record in plan order so upstream output hashes are known before their dependents.
    const order = plan.steps.map((s) => s.id).filter((id) => finished.includes(id));
    for (const id of order) {
      waiting.delete(id);
      const s = plan.byId.get(id)!;
      const inst = instances.get(id)!;
      const st = states.get(jobRef.get(id)!);
      let statusText = "";
      try {
        statusText = Deno.readTextFileSync(inst.status).trim();
      } catch { /* none */ }
      const log = inst.log;
      if ((st?.state ?? "COMPLETED") === "COMPLETED" && statusText === "ok") {
        const durationMs = Date.now() - (submittedAt.get(id) ?? startedAt);
        await recordDone(p, s, { log, jobId: jobRef.get(id), durationMs });
        emit({ id, status: "done", log, durationMs });
      } else if (
        st && (neverStarts(st) || st.state === "CANCELLED" && /Dependency/i.test(st.reason))
      ) {
        // Slurm without kill_invalid_depend leaves such a job pending for ever: cancel it.
        if (neverStarts(st)) await tool("scancel", [jobRef.get(id)!]).catch(() => undefined);
        const failedUp = s.needs.filter((n) =>
          results.get(n)?.status === "failed" || results.get(n)?.status === "skipped"
        );
        const reason = `needs ${
          failedUp.length ? failedUp.join(", ") : "a step"
        } which did not finish`;
        delete p.state.steps[id];
        writeState(workdir, p.state);
        emit({ id, status: "skipped", reason });
      } else {
        const reason = statusText && statusText !== "ok"
          ? statusText
          : st
          ? `Slurm job ${jobRef.get(id)} ended ${st.state}${
            st.reason && st.reason !== "None" ? ` (${st.reason})` : ""
          }`
          : `Slurm job ${jobRef.get(id)} vanished without a status`;
        recordFailed(p, s, reason, { log, jobId: jobRef.get(id) });
        emit({ id, status: "failed", reason, log });
      }
    }
    if (waiting.size > 0) await new Promise((r) => setTimeout(r, pollSec * 1000));
  }
  return summarise(plan, results, startedAt);
}

interface JobState {
  state: string;
  reason: string;
}

/** A pending job whose afterok dependency failed: it can never start. */
function neverStarts(st: JobState): boolean {
  return st.state === "PENDING" && /DependencyNeverSatisfied/i.test(st.reason);
}

/** Waits until cancelled jobs have ended (a running one passes through COMPLETING first). */
async function waitEnded(refs: string[], pollSec: number, signal?: AbortSignal): Promise<void> {
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline && !signal?.aborted) {
    const states = await pollStates([...new Set(refs.map((r) => r.split("_")[0]))]);
    if (refs.every((r) => !states.has(r) || TERMINAL.has(states.get(r)!.state))) return;
    await new Promise((r) => setTimeout(r, Math.min(pollSec, 1) * 1000));
  }
  if (signal?.aborted) return; // the caller stops too
  throw new Error(`Slurm job(s) ${refs.join(", ")} did not end within 2 minutes of scancel`);
}

/** Job states by reference ("123", "123_4") from squeue, completed jobs included. */
async function pollStates(jobIds: string[]): Promise<Map<string, JobState>> {
  const out = new Map<string, JobState>();
  if (jobIds.length === 0) return out;
  const r = await tool("squeue", ["--states=all", "-h", "-o", "%i|%T|%r", "-j", jobIds.join(",")]);
  if (r.code !== 0) {
    if (/Invalid job id/i.test(r.err)) return out; // all purged: status files decide
    throw new Error(`Cannot poll Slurm: squeue failed (exit ${r.code}): ${r.err}`);
  }
  for (const line of r.out.split("\n")) {
    const [ref, state, reason] = line.trim().split("|");
    if (!ref || !state) continue;
    for (const r of expandJobRef(ref)) {
      out.set(r, { state: state.split(" ")[0], reason: reason ?? "" });
    }
  }
  return out;
}

/** Expands squeue's "123_[0-3,5%2]" (pending array tasks) into 123_0 .. 123_3, 123_5. */
export function expandJobRef(ref: string): string[] {
  const m = /^(\d+)_\[([^\]]+)\]$/.exec(ref);
  if (!m) return [ref];
  const out: string[] = [];
  for (const part of m[2].replace(/%\d+$/, "").split(",")) {
    const [a, b] = part.split("-").map(Number);
    if (!Number.isInteger(a)) continue;
    for (let i = a; i <= (Number.isInteger(b) ? b : a); i++) out.push(`${m[1]}_${i}`);
  }
  return out;
}
