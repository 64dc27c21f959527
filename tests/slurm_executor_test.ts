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
const SLURM_DIR = Deno.makeTempDirSync({ prefix: "comodal_slurm_" });

async function startSlurm(): Promise<{ ok: true } | { ok: false; reason: string }> {
  const out = await new Deno.Command("bash", {
    args: [join(HERE, "slurm", "start_slurm.sh"), SLURM_DIR],
    env: { SLURM_CPUS: "8", SLURM_PORT_BASE: String(20000 + (Deno.pid % 4000) * 2) },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
  const err = new TextDecoder().decode(out.stderr).trim();
  if (out.code === 0 && text.startsWith("SLURM_CONF=")) {
    Deno.env.set("SLURM_CONF", text.slice("SLURM_CONF=".length));
    return { ok: true };
  }
  return { ok: false, reason: `cannot start Slurm (exit ${out.code}): ${err.split("\n").pop()}` };
}

async function stopSlurm(): Promise<void> {
  await new Deno.Command("bash", { args: [join(HERE, "slurm", "stop_slurm.sh"), SLURM_DIR] })
    .output();
  Deno.removeSync(SLURM_DIR, { recursive: true });
}

const slurm = await startSlurm();
const skip = slurm.ok ? "" : ` (skipped: ${slurm.reason})`;
if (!slurm.ok) console.warn(`slurm tests skipped: ${slurm.reason}`);

function planOf(yaml: string) {
  const dir = Deno.makeTempDirSync({ prefix: "wf_slurm_" });
  Deno.writeTextFileSync(join(dir, "w.yaml"), yaml.replaceAll("DIR", dir));
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
  name:
    `slurm: arrays, afterok edges, retries, time limit, failure skips dependents, rerun cached${skip}`,
  ignore: !slurm.ok,
  sanitizeResources: false,
  fn: async () => {
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
    for (const r of ["0.1", "0.5", "1"]) assert.equal(by.get(`train[ratio=${r}]`)!.status, "done");
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
});

Deno.test({
  name: `slurm: sbatch refusing a job is reported with its message${skip}`,
  ignore: !slurm.ok,
  fn: async () => {
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
  },
});

Deno.test({
  name: `slurm: 100 trivial steps as one job array in well under a minute${skip}`,
  ignore: !slurm.ok,
  fn: async () => {
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
  },
});

Deno.test({
  name: `slurm: stop the private Slurm${skip}`,
  ignore: !slurm.ok,
  fn: async () => {
    await stopSlurm();
    const pidsLeft = (() => {
      try {
        return Deno.readTextFileSync(join(SLURM_DIR, "pids"));
      } catch {
        return "";
      }
    })();
    assert.equal(pidsLeft, "");
  },
});
