/**
 * The Slurm executor against a fake Slurm on PATH (sbatch, squeue, scancel as small bash scripts
 * below): jobs run in the background, detached from the orchestrator as real Slurm jobs are,
 * honour afterok dependencies, and a job whose dependency failed stays PENDING with reason
 * DependencyNeverSatisfied, as Slurm does without kill_invalid_depend. The real single-node Slurm
 * tests are in tests/slurm_executor_test.ts.
 *
 * Here: a rerun after SIGKILL of the orchestrator re-attaches to the jobs still queued or running
 * (by their recorded ids) instead of submitting them again; a leftover job that must not be
 * adopted (parameters changed, or waiting on a failed job) is cancelled before its step is
 * submitted again; a job that can never start is cancelled and its step skipped.
 */
import assert from "node:assert/strict";
import { join } from "node:path";

const CLI = new URL("../../cli/workflow.ts", import.meta.url).pathname;

const SBATCH = `#!/bin/bash
S=$FAKE_SLURM; array=""; deps=""; chdir=.
for a in "$@"; do
  case "$a" in
    --array=*) array=\${a#--array=};;
    --dependency=afterok:*) deps=\${a#--dependency=afterok:};;
    --chdir=*) chdir=\${a#--chdir=};;
    --*) ;;
    *) script=$a;;
  esac
done
id=$(cat "$S/next" 2>/dev/null || echo 100); echo $((id + 1)) > "$S/next"
echo "$id $script" >> "$S/sbatch.log"
if [ -n "$array" ]; then refs=$(for i in $(seq \${array%-*} \${array#*-}); do echo \${id}_$i; done)
else refs=$id; fi
for r in $refs; do echo "PENDING|None" > "$S/jobs/$r"; done
for r in $refs; do
  i=""; [ -n "$array" ] && i=\${r#*_}
  setsid bash "$S/run_job.sh" "$r" "$id" "$i" "$deps" "$script" "$chdir" </dev/null >/dev/null 2>&1 &
done
echo "$id"
`;

const RUN_JOB = `#!/bin/bash
S=$FAKE_SLURM; ref=$1; id=$2; idx=$3; deps=$4; script=$5; chdir=$6
echo $$ > "$S/pids/$ref"
cancelled() { [ "$(cut -d'|' -f1 "$S/jobs/$ref")" = CANCELLED ]; }
set_state() { cancelled && exit 0; echo "$1" > "$S/jobs/$ref.tmp"; mv "$S/jobs/$ref.tmp" "$S/jobs/$ref"; }
while :; do
  ok=1; never=0
  for d in \${deps//:/ }; do
    n=0
    for f in "$S/jobs/$d" "$S/jobs/$d"_*; do
      [ -e "$f" ] || continue; case $f in *.tmp) continue;; esac
      n=$((n + 1))
      case $(cut -d'|' -f1 "$f") in COMPLETED) ;; FAILED|CANCELLED|TIMEOUT) never=1;; *) ok=0;; esac
    done
    [ $n = 0 ] && ok=0
  done
  if [ $never = 1 ]; then set_state "PENDING|DependencyNeverSatisfied"; ok=0; fi
  [ $ok = 1 ] && break
  cancelled && exit 0
  sleep 0.05
done
set_state "RUNNING|None"
cd "$chdir" && SLURM_JOB_ID=$id SLURM_ARRAY_TASK_ID=$idx SLURM_CPUS_PER_TASK=1 bash "$script"
if [ $? = 0 ]; then set_state "COMPLETED|None"; else set_state "FAILED|NonZeroExitCode"; fi
`;

const SQUEUE = `#!/bin/bash
S=$FAKE_SLURM; ids=""
while [ $# -gt 0 ]; do case $1 in -j) ids=$2; shift;; esac; shift; done
found=0
for id in \${ids//,/ }; do
  for f in "$S/jobs/$id" "$S/jobs/$id"_*; do
    [ -e "$f" ] || continue; case $f in *.tmp) continue;; esac
    found=1; echo "\${f##*/}|$(cat "$f")"
  done
done
[ $found = 1 ] || { echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; }
`;

const SCANCEL = `#!/bin/bash
S=$FAKE_SLURM
for ref in "$@"; do
  echo "$ref" >> "$S/scancel.log"
  for f in "$S/jobs/$ref" "$S/jobs/$ref"_*; do
    [ -e "$f" ] || continue; case $f in *.tmp) continue;; esac
    case $(cut -d'|' -f1 "$f") in COMPLETED|FAILED|CANCELLED) continue;; esac
    pid=$(cat "$S/pids/\${f##*/}" 2>/dev/null) && kill -KILL -- -"$pid" 2>/dev/null
    echo "CANCELLED|None" > "$f"
  done
done
`;

interface Fake {
  dir: string;
  file: string;
  env: Record<string, string>;
  jobs: string;
}

/** A test folder with the workflow (DIR in its text becomes the folder) and a fake Slurm. */
function setup(yaml: string): Fake {
  const dir = Deno.makeTempDirSync({ prefix: "wf_fakeslurm_" });
  const slurm = join(dir, "slurm");
  const bin = join(slurm, "bin");
  for (const d of [bin, join(slurm, "jobs"), join(slurm, "pids")]) {
    Deno.mkdirSync(d, { recursive: true });
  }
  const tools = { sbatch: SBATCH, squeue: SQUEUE, scancel: SCANCEL };
  for (const [name, text] of Object.entries(tools)) {
    Deno.writeTextFileSync(join(bin, name), text, { mode: 0o755 });
  }
  Deno.writeTextFileSync(join(slurm, "run_job.sh"), RUN_JOB);
  const file = join(dir, "w.yaml");
  Deno.writeTextFileSync(file, yaml.replaceAll("DIR", dir));
  return {
    dir,
    file,
    jobs: join(slurm, "jobs"),
    env: { PATH: `${bin}:${Deno.env.get("PATH")}`, FAKE_SLURM: slurm },
  };
}

/** Stops every fake job still going (their process groups were started by the fake sbatch). */
function cleanup(f: Fake): void {
  const left = [...Deno.readDirSync(f.jobs)].map((e) => e.name).filter((n) => !n.endsWith(".tmp"));
  if (left.length > 0) {
    new Deno.Command("scancel", { args: left, env: f.env, stdout: "null", stderr: "null" })
      .outputSync();
  }
}

function lines(path: string): string[] {
  try {
    return Deno.readTextFileSync(path).split("\n").filter((l) => l !== "");
  } catch {
    return [];
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

function jobState(f: Fake, ref: string): string {
  try {
    return Deno.readTextFileSync(join(f.jobs, ref)).trim();
  } catch {
    return "";
  }
}

/** Job ids recorded in the working folder's state, by step. */
function recorded(f: Fake): Record<string, string> {
  try {
    const st = JSON.parse(Deno.readTextFileSync(join(f.dir, "work", ".comodal", "state.json")));
    return Object.fromEntries(
      Object.entries(st.steps as Record<string, { jobId?: string }>)
        .filter(([, r]) => r.jobId).map(([k, r]) => [k, r.jobId!]),
    );
  } catch {
    return {};
  }
}

function orchestrator(f: Fake, extra: string[] = []): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, f.file, "--executor", "slurm", "--json", ...extra],
    env: f.env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Starts an orchestrator, waits until it submitted `n` jobs, then kills it with SIGKILL. */
async function submitAndKill(f: Fake, n: number, extra: string[] = []): Promise<string[]> {
  const first = orchestrator(f, extra);
  try {
    await until(`${n} jobs submitted`, () => Object.keys(recorded(f)).length >= n);
  } finally {
    first.kill("SIGKILL");
    await first.output();
  }
  return lines(join(f.dir, "slurm", "sbatch.log")).map((l) => l.split(" ")[0]);
}

/** Runs an orchestrator to its end (killed after `limitMs`: an orchestrator waiting for ever). */
async function finish(f: Fake, extra: string[] = [], limitMs = 20_000, whileRunning?: () => void) {
  const child = orchestrator(f, extra);
  const timer = setTimeout(() => child.kill("SIGKILL"), limitMs);
  whileRunning?.();
  const out = await child.output();
  clearTimeout(timer);
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  let summary: { results: { id: string; status: string; reason?: string }[] } | undefined;
  try {
    summary = JSON.parse(stdout);
  } catch { /* killed, or no summary */ }
  const by = new Map((summary?.results ?? []).map((r) => [r.id, r]));
  return { code: out.code, stderr, by, killed: out.signal === "SIGKILL" };
}

const GATE = `while [ ! -e DIR/gate ]; do sleep 0.05; done`;

Deno.test({
  name:
    "slurm (fake): a rerun after SIGKILL of the orchestrator re-attaches to its queued and running jobs instead of submitting them again",
  sanitizeResources: false,
  fn: async () => {
    const steps = [0, 1, 2].map((i) =>
      `  s${i}:\n    kind: command\n${i ? `    needs: s${i - 1}\n` : ""}` +
      `    run: '${GATE}; echo s${i} >> DIR/trace; echo ${i} > "\${{ step.out }}/v"'\n`
    ).join("");
    const f = setup(
      `name: adopt\nworkdir: DIR/work\nslurm: {poll_interval: 0.1}\nsteps:\n${steps}`,
    );
    try {
      const ids = await submitAndKill(f, 3);
      assert.equal(ids.length, 3);
      await until("s0 running", () => jobState(f, ids[0]) === "RUNNING|None");
      assert.equal(jobState(f, ids[2]), "PENDING|None");
      const r = await finish(
        f,
        [],
        20_000,
        () => setTimeout(() => Deno.writeTextFileSync(join(f.dir, "gate"), ""), 1_000),
      );
      assert.equal(r.code, 0, r.stderr);
      for (const id of ["s0", "s1", "s2"]) assert.equal(r.by.get(id)?.status, "done", id);
      assert.equal(lines(join(f.dir, "slurm", "sbatch.log")).length, 3, "no job submitted again");
      assert.deepEqual(lines(join(f.dir, "trace")), ["s0", "s1", "s2"], "each step ran once");
      assert.equal(Deno.readTextFileSync(join(f.dir, "work", "s2", "v")), "2\n");
      assert.deepEqual(recorded(f), { s0: ids[0], s1: ids[1], s2: ids[2] });
      assert.match(
        r.stderr,
        new RegExp(`step s0: re-attached to Slurm job ${ids[0]} \\(RUNNING\\)`),
      );
      assert.match(
        r.stderr,
        new RegExp(`step s2: re-attached to Slurm job ${ids[2]} \\(PENDING\\)`),
      );
    } finally {
      cleanup(f);
    }
  },
});

Deno.test({
  name:
    "slurm (fake): a leftover job whose step changed is cancelled before the step is submitted again (never two at once)",
  sanitizeResources: false,
  fn: async () => {
    const f = setup(`name: changed
workdir: DIR/work
slurm: {poll_interval: 0.1}
vars: {x: 1}
steps:
  s:
    kind: command
    run: '${GATE}; echo "s \${{ vars.x }}" >> DIR/trace; echo \${{ vars.x }} > "\${{ step.out }}/v"'
`);
    try {
      const [old] = await submitAndKill(f, 1);
      const r = await finish(f, ["--set", "vars.x=2"], 20_000, () => {
        until("the second submission", () => lines(join(f.dir, "slurm", "sbatch.log")).length >= 2)
          .then(() => Deno.writeTextFileSync(join(f.dir, "gate"), ""), () => undefined);
      });
      assert.equal(r.code, 0, r.stderr);
      await sleep(500); // time for a job left running to write as well
      assert.deepEqual(lines(join(f.dir, "trace")), ["s 2"], "only the new job ran");
      assert.equal(Deno.readTextFileSync(join(f.dir, "work", "s", "v")), "2\n");
      assert.deepEqual(lines(join(f.dir, "slurm", "scancel.log")), [old]);
      assert.equal(jobState(f, old), "CANCELLED|None");
      assert.match(
        r.stderr,
        new RegExp(`step s: cancelled Slurm job ${old} left by an earlier run \\(its parameters`),
      );
    } finally {
      cleanup(f);
    }
  },
});

Deno.test({
  name:
    "slurm (fake): a leftover job waiting on a failed job is cancelled and submitted again after its upstream; a job that can never start is cancelled and its step skipped",
  sanitizeResources: false,
  fn: async (t) => {
    await t.step("rerun after SIGKILL, the upstream job having failed meanwhile", async () => {
      const f = setup(`name: upfail
workdir: DIR/work
slurm: {poll_interval: 0.1}
steps:
  s0: {kind: command, run: '${GATE}; [ ! -e DIR/fail ] || exit 1; echo s0 >> DIR/trace; echo 0 > "\${{ step.out }}/v"'}
  s1: {kind: command, needs: s0, run: 'echo s1 >> DIR/trace; cat "\${{ steps.s0.out }}/v" > "\${{ step.out }}/v"'}
`);
      try {
        Deno.writeTextFileSync(join(f.dir, "fail"), "");
        const ids = await submitAndKill(f, 2);
        Deno.writeTextFileSync(join(f.dir, "gate"), "");
        await until("s1 stuck", () => jobState(f, ids[1]) === "PENDING|DependencyNeverSatisfied");
        Deno.removeSync(join(f.dir, "fail"));
        const r = await finish(f);
        assert.ok(!r.killed, "the rerun waited for ever on the stuck job");
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.by.get("s0")?.status, "done");
        assert.equal(r.by.get("s1")?.status, "done");
        assert.deepEqual(lines(join(f.dir, "trace")), ["s0", "s1"]);
        assert.equal(Deno.readTextFileSync(join(f.dir, "work", "s1", "v")), "0\n");
        assert.deepEqual(lines(join(f.dir, "slurm", "scancel.log")), [ids[1]]);
        assert.equal(lines(join(f.dir, "slurm", "sbatch.log")).length, 4);
        assert.match(
          r.stderr,
          new RegExp(`step s1: cancelled Slurm job ${ids[1]} left by an earlier run`),
        );
      } finally {
        cleanup(f);
      }
    });
    await t.step(
      "first run: the dependent of a failed step is cancelled, not waited on",
      async () => {
        const f = setup(`name: stuck
workdir: DIR/work
slurm: {poll_interval: 0.1}
steps:
  bad: {kind: command, run: 'exit 3'}
  after: {kind: command, needs: bad, run: 'echo after >> DIR/trace'}
`);
        try {
          const r = await finish(f);
          assert.ok(!r.killed, "the orchestrator waited for ever on a job that cannot start");
          assert.equal(r.code, 1);
          assert.equal(r.by.get("bad")?.status, "failed");
          assert.equal(r.by.get("bad")?.reason, "exit code 3");
          assert.equal(r.by.get("after")?.status, "skipped");
          assert.match(r.by.get("after")!.reason!, /needs bad which did not finish/);
          const ids = lines(join(f.dir, "slurm", "sbatch.log")).map((l) => l.split(" ")[0]);
          assert.equal(ids.length, 2);
          assert.deepEqual(lines(join(f.dir, "slurm", "scancel.log")), [ids[1]], "after cancelled");
          assert.equal(jobState(f, ids[1]), "CANCELLED|None");
          assert.deepEqual(lines(join(f.dir, "trace")), []);
        } finally {
          cleanup(f);
        }
      },
    );
  },
});
