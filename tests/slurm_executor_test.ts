/**
 * The Slurm executor against a real single-node Slurm that this file starts (tests/slurm/
 * start_slurm.sh, installing Debian's packages if missing) and stops again by the PIDs it started.
 * Skipped, with the reason in the test name, only when Slurm cannot be installed or started.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadWorkflow } from "../src/workflow/schema.ts";
import { buildPlan } from "../src/workflow/plan.ts";
import { runSlurm } from "../src/workflow/slurm.ts";
import { readState } from "../src/workflow/state.ts";

const HERE = new URL(".", import.meta.url).pathname;

/** Why Slurm cannot be used here, or "" when it is installed or installable with apt-get. */
function unavailable(): string {
  const has = (cmd: string) =>
    new Deno.Command("sh", {
      args: ["-c", `command -v ${cmd} || [ -x /usr/sbin/${cmd} ]`],
      stdout: "null",
      stderr: "null",
    })
      .outputSync().success;
  if (has("sbatch") && has("slurmctld") && has("slurmd") && has("munged")) return "";
  if (!has("apt-get")) return "Slurm is not installed and apt-get is missing";
  const root = Deno.uid() === 0 || has("sudo") &&
      new Deno.Command("sudo", { args: ["-n", "true"], stdout: "null", stderr: "null" })
        .outputSync()
        .success;
  return root ? "" : "Slurm is not installed and apt-get needs root (no passwordless sudo)";
}

async function startSlurm(dir: string): Promise<void> {
  const out = await new Deno.Command("bash", {
    args: [join(HERE, "slurm", "start_slurm.sh"), dir],
    env: { SLURM_CPUS: "8", SLURM_PORT_BASE: String(20000 + (Deno.pid % 4000) * 2) },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const last = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
  const err = new TextDecoder().decode(out.stderr).trim();
  if (out.code !== 0 || !last.startsWith("SLURM_CONF=")) {
    throw new Error(`Cannot start the private Slurm (exit ${out.code}): ${err}`);
  }
  Deno.env.set("SLURM_CONF", last.slice("SLURM_CONF=".length));
}

async function stopSlurm(dir: string): Promise<void> {
  await new Deno.Command("bash", { args: [join(HERE, "slurm", "stop_slurm.sh"), dir] }).output();
}

const why = unavailable();
if (why) console.warn(`slurm tests skipped: ${why}`);

function planOf(yaml: string) {
  const dir = Deno.makeTempDirSync({ prefix: "wf_slurm_" });
  // The YAML texts sit indented inside the test; remove the common indentation.
  const lines = yaml.split("\n");
  const indent = Math.min(
    ...lines.slice(1).filter((l) => l.trim()).map((l) => l.length - l.trimStart().length),
  );
  const text = [lines[0], ...lines.slice(1).map((l) => l.slice(indent))].join("\n");
  Deno.writeTextFileSync(join(dir, "w.yaml"), text.replaceAll("DIR", dir));
  return {
    dir,
    plan: buildPlan(loadWorkflow(join(dir, "w.yaml")), { workdir: join(dir, "work") }),
  };
}

async function jobCount(): Promise<number> {
  const out = await new Deno.Command("squeue", {
    args: ["--states=all", "-h", "-o", "%i"],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.trim()).length;
}

Deno.test({
  name: `slurm executor against a real single-node Slurm${why ? ` (skipped: ${why})` : ""}`,
  ignore: why !== "",
  sanitizeResources: false,
  fn: async (t) => {
    const dir = Deno.makeTempDirSync({ prefix: "comodal_slurm_" });
    await startSlurm(dir);
    try {
      await t.step(
        "arrays, afterok edges, retries, time limit, failure skips dependents, rerun cached",
        async () => {
          const { dir, plan } = planOf(`name: sl
    slurm: {poll_interval: 0.2}
    steps:
      data:
        kind: command
        run: echo base > \${{ step.out }}/d.txt; echo data >> DIR/trace
        outputs: [d.txt]
      train:
        kind: command
        matrix: {ratio: [0.1, 0.5, 1.0]}
        resources: {cpus: 1, memory: 100M, time: 30s}
        run: cat \${{ steps.data.out }}/d.txt > \${{ step.out }}/m.txt; echo \${{ matrix.ratio }} >> \${{ step.out }}/m.txt; echo train >> DIR/trace
      eval:
        kind: command
        matrix: {ratio: [0.1, 0.5, 1.0]}
        run: '[ "\${{ matrix.ratio }}" != "0.5" ] && cp \${{ steps.train.out }}/m.txt \${{ step.out }}/'
      summary:
        kind: command
        needs: eval
        run: "true"
      flaky:
        kind: command
        retries: 2
        backoff: 0.1
        run: 'n=$(cat DIR/count 2>/dev/null || echo 0); echo $((n+1)) > DIR/count; [ $n -ge 1 ]'
      slow:
        kind: command
        resources: {time: 1s}
        run: sleep 30
    `);
          const s = await runSlurm(plan, { codeVersion: "v", pollSec: 0.2 });
          const by = new Map(s.results.map((r) => [r.id, r]));
          assert.equal(by.get("data")!.status, "done");
          for (const r of ["0.1", "0.5", "1"]) {
            assert.equal(by.get(`train[ratio=${r}]`)!.status, "done");
          }
          assert.equal(
            Deno.readTextFileSync(join(plan.workdir, "train", "ratio=0.5", "m.txt")),
            "base\n0.5\n",
          );
          assert.equal(by.get("eval[ratio=0.1]")!.status, "done");
          assert.equal(by.get("eval[ratio=0.5]")!.status, "failed");
          assert.equal(by.get("eval[ratio=0.5]")!.reason, "exit code 1");
          assert.equal(by.get("summary")!.status, "skipped");
          assert.equal(by.get("flaky")!.status, "done");
          assert.equal(Deno.readTextFileSync(join(dir, "count")).trim(), "2");
          assert.equal(by.get("slow")!.status, "failed");
          assert.match(by.get("slow")!.reason!, /time limit of 1s/);
          // The matrix of train went out as one job array with resources mapped to sbatch flags.
          const scripts = [...Deno.readDirSync(join(plan.workdir, ".comodal", "sbatch"))].map((e) =>
            Deno.readTextFileSync(join(plan.workdir, ".comodal", "sbatch", e.name))
          );
          const trainScript = scripts.find((t) => t.includes("comodal.sl.train"))!;
          assert.match(trainScript, /#SBATCH --cpus-per-task=1/);
          assert.match(trainScript, /#SBATCH --mem=100M/);
          assert.match(trainScript, /#SBATCH --time=00:02:00/);
          assert.match(trainScript, /^2\)/m);
          const st = readState(plan.workdir, "sl");
          assert.match(st.steps["train[ratio=1]"].jobId!, /^\d+_2$/);
          // Rerun: nothing finished is submitted again (only the failures).
          const before = await jobCount();
          const traceBefore = Deno.readTextFileSync(join(dir, "trace"));
          const s2 = await runSlurm(plan, { codeVersion: "v", pollSec: 0.2 });
          const by2 = new Map(s2.results.map((r) => [r.id, r]));
          assert.equal(by2.get("data")!.status, "cached");
          assert.equal(by2.get("train[ratio=0.5]")!.status, "cached");
          assert.equal(by2.get("eval[ratio=0.1]")!.status, "cached");
          assert.equal(by2.get("eval[ratio=0.5]")!.status, "failed");
          assert.equal(Deno.readTextFileSync(join(dir, "trace")), traceBefore);
          // Only the failures go out again: eval[ratio=0.5], slow, and summary which needs eval.
          assert.equal(await jobCount() - before, 3);
          assert.equal(by2.get("summary")!.status, "skipped");
        },
      );
      await t.step("sbatch refusing a job is reported with its message", async () => {
        const { plan } = planOf(`name: gpu
  steps:
    g: {kind: command, run: "true", resources: {gpus: 1}}
    after: {kind: command, needs: g, run: "true"}
  `);
        const s = await runSlurm(plan, { codeVersion: "v", pollSec: 0.2 });
        const by = new Map(s.results.map((r) => [r.id, r]));
        assert.equal(by.get("g")!.status, "failed");
        assert.match(
          by.get("g")!.reason!,
          /^sbatch failed \(exit 1\): .*(gres|generic resource|Invalid)/i,
        );
        assert.equal(by.get("after")!.status, "skipped");
      });
      await t.step("100 trivial steps as one job array in well under a minute", async () => {
        const { plan } = planOf(`name: many
  steps:
    t:
      kind: command
      matrix: {i: [${Array.from({ length: 100 }, (_, i) => i).join(", ")}]}
      run: echo \${{ matrix.i }} > \${{ step.out }}/x
  `);
        const t0 = performance.now();
        const s = await runSlurm(plan, { codeVersion: "v", pollSec: 0.2 });
        const sec = (performance.now() - t0) / 1000;
        assert.equal(
          s.counts.done,
          100,
          JSON.stringify(s.results.filter((r) => r.status !== "done").slice(0, 3)),
        );
        console.log(`100 trivial steps through Slurm: ${sec.toFixed(1)} s`);
        assert.ok(sec < 60, `took ${sec}s`);
      });
      await t.step(
        "SIGKILL of the orchestrator, rerun re-attaches to queued jobs and redoes nothing",
        async () => {
          const dir = Deno.makeTempDirSync({ prefix: "wf_slurm_kill_" });
          const file = join(dir, "w.yaml");
          const steps = Array.from(
            { length: 5 },
            (_, i) =>
              `  s${i}:\n    kind: command\n${i ? `    needs: s${i - 1}\n` : ""}` +
              `    run: 'sleep 0.6; echo s${i} >> ${dir}/trace; echo ${i} > "\${{ step.out }}/v"'\n`,
          ).join("");
          Deno.writeTextFileSync(
            file,
            `name: chain\nworkdir: ${dir}/work\nslurm: {poll_interval: 0.2}\nsteps:\n${steps}`,
          );
          const cli = new URL("../cli/workflow.ts", import.meta.url).pathname;
          const child = new Deno.Command(Deno.execPath(), {
            args: ["run", "-A", "--quiet", cli, file, "--executor", "slurm"],
            stdout: "null",
            stderr: "null",
          }).spawn();
          const deadline = Date.now() + 30_000;
          let done = 0;
          while (Date.now() < deadline && done < 1) {
            try {
              const st = JSON.parse(
                Deno.readTextFileSync(join(dir, "work", ".comodal", "state.json")),
              );
              done = Object.values(st.steps).filter((r) =>
                (r as { status: string }).status === "done"
              ).length;
            } catch { /* not yet */ }
            await new Promise((r) => setTimeout(r, 50));
          }
          child.kill("SIGKILL");
          await child.status;
          assert.ok(done >= 1, "the first step finished before the kill");
          const jobsBefore = await jobCount();
          const rerun = await new Deno.Command(Deno.execPath(), {
            args: ["run", "-A", "--quiet", cli, file, "--executor", "slurm"],
            stdout: "piped",
            stderr: "piped",
          }).output();
          assert.equal(rerun.code, 0, new TextDecoder().decode(rerun.stderr));
          const trace = Deno.readTextFileSync(join(dir, "trace")).trim().split("\n");
          assert.deepEqual(trace, ["s0", "s1", "s2", "s3", "s4"], "every step ran exactly once");
          assert.equal(await jobCount(), jobsBefore, "the rerun submitted no new job");
          // Steps finished while no orchestrator watched are adopted (cached); none is redone.
          const m = /chain: (\d+) done, (\d+) cached, 0 failed/.exec(
            new TextDecoder().decode(rerun.stdout),
          );
          assert.ok(
            m && Number(m[1]) + Number(m[2]) === 5 && Number(m[2]) >= done,
            rerun.stdout.length ? new TextDecoder().decode(rerun.stdout) : "",
          );
          assert.equal(Deno.readTextFileSync(join(dir, "work", "s4", "v")), "4\n");
        },
      );
      await t.step("SIGINT of the orchestrator cancels its jobs with scancel", async () => {
        const wdir = Deno.makeTempDirSync({ prefix: "wf_slurm_int_" });
        const file = join(wdir, "w.yaml");
        Deno.writeTextFileSync(
          file,
          `name: int\nworkdir: ${wdir}/work\nslurm: {poll_interval: 0.2}\nsteps:\n` +
            `  long: {kind: command, run: 'sleep 60'}\n  after: {kind: command, needs: long, run: 'true'}\n`,
        );
        const cli = new URL("../cli/workflow.ts", import.meta.url).pathname;
        const child = new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", "--quiet", cli, file, "--executor", "slurm"],
          stdout: "piped",
          stderr: "null",
        }).spawn();
        let jobs: string[] = [];
        const deadline = Date.now() + 20_000;
        while (Date.now() < deadline && jobs.length < 2) {
          try {
            const st = JSON.parse(
              Deno.readTextFileSync(join(wdir, "work", ".comodal", "state.json")),
            );
            jobs = Object.values(st.steps).map((r) => (r as { jobId: string }).jobId).filter(
              Boolean,
            );
          } catch { /* not yet */ }
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.equal(jobs.length, 2, "both steps submitted");
        child.kill("SIGINT");
        const out = await child.output();
        assert.notEqual(out.code, 0);
        assert.match(
          new TextDecoder().decode(out.stdout),
          /workflow aborted \(Slurm job cancelled\)/,
        );
        // A cancelled running job passes through COMPLETING while its processes are stopped.
        let states: string[] = [];
        for (let i = 0; i < 100; i++) {
          const q = await new Deno.Command("squeue", {
            args: ["--states=all", "-h", "-o", "%i %T", "-j", jobs.join(",")],
            stdout: "piped",
          }).output();
          states = new TextDecoder().decode(q.stdout).trim().split("\n").map((l) =>
            l.split(" ")[1]
          );
          if (!states.includes("COMPLETING")) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.deepEqual(states, ["CANCELLED", "CANCELLED"]);
      });
    } finally {
      await stopSlurm(dir);
      const left = (() => {
        try {
          return Deno.readTextFileSync(join(dir, "pids"));
        } catch {
          return "";
        }
      })();
      Deno.removeSync(dir, { recursive: true });
      assert.equal(left, "", "every process started for the test was stopped");
    }
  },
});
