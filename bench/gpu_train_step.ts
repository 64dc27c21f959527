/**
 * Training-step benchmark of the two models of issue 6 on the current backend (COMODAL_DEVICE=cuda
 * on a GPU machine): one step = upload the batch, forward, loss, backward, optimiser update, as
 * src/train/trainer.ts runs it. Prints the median step time and the backend's memory statistics,
 * beside PyTorch's numbers from bench/gpu_torch.py when its JSON is given. The PyTorch twins
 * (bench/torch_train_step.py) have the same parameter count, batch, loss terms and optimiser.
 *
 *   deno run -A bench/gpu_train_step.ts [--size 128] [--levels 4] [--steps 5] [--warmup 3]
 *       [--models unet,cmc] [--torch-json torch.json] [--json out.json] [--profile]
 *
 * Memory (backend memoryStats, after the warm-up steps the peak is reset):
 *   peak live    peakBytes: high-water mark of live tensor bytes over the timed steps (compare with
 *                PyTorch's max_memory_allocated)
 *   reserved     reservedBytes: the caching pool's reserved bytes (in use + cached,
 *                native/cuda/runtime.cu), read after the timed steps; the pool frees nothing except
 *                on an out-of-memory retry, so this is also its peak (compare with PyTorch's
 *                max_memory_reserved)
 *   device used  deviceTotalBytes - deviceFreeBytes: the whole process (CUDA context, cuDNN, pool)
 *
 * The step runs at ramp weight w = 1 (iteration = total), so every CMC loss term counts fully.
 *
 * --profile prints the ops of the timed steps by total time; run it with COMODAL_CUDA_SYNC_OPS=1 so
 * that every op waits for its GPU work (the step times are then not representative).
 *
 * The U-Net is the "supervised" method (one modality, batch 2 labeled); the CMC model is the "cmc"
 * method (two modalities, 1 labeled + 1 unlabeled case each, MIA and fusion on). SGD, Nesterov.
 * @module
 */
import { parseArgs } from "node:util";
import { readFileSync, writeFileSync } from "node:fs";
import {
  backward,
  getBackend,
  initBackend,
  noGrad,
  setOpProfiler,
  tensor,
  tidy,
  zeroGrad,
} from "../src/engine.ts";
import { planUNet } from "../src/nn/plan.ts";
import { parseTrainConfig } from "../src/train/config.ts";
import { buildMethod, type TrainBatch } from "../src/train/methods.ts";
import { Sgd } from "../src/train/optim.ts";

/** One model's figures (the --json file holds { ..., results: StepResult[] }). */
export interface StepResult {
  model: string;
  params: number;
  stepMs: number[];
  medianMs: number;
  /** Loss of every step, warm-up included. */
  losses: number[];
  /** The loss terms of the first step (methods.ts: ce_m, dice_m, sup, w, csc, cac, loss). */
  firstTerms: Record<string, number>;
  /** Peak live tensor bytes over the timed steps, MiB. */
  peakMiB: number;
  /** The allocator's reserved bytes after the timed steps (in use + cached), MiB. */
  poolMiB: number;
  /** Live tensor bytes after the timed steps (parameters, optimiser state), MiB. */
  liveMiB: number;
  /** Device memory in use by the whole process (CUDA), MiB; 0 on the CPU. */
  deviceUsedMiB: number;
}

/** What bench/gpu_torch.py writes for one model and precision under step[model][precision]. */
export interface TorchStep {
  params: number;
  median_ms: number;
  peak_alloc_mib?: number;
  peak_reserved_mib?: number;
  device_used_mib?: number;
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

interface Opts {
  size: number;
  levels: number;
  steps: number;
  warmup: number;
  profile: boolean;
}

function benchModel(kind: "unet" | "cmc", o: Opts): StepResult {
  const be = getBackend();
  const method = kind === "unet" ? "supervised" : "cmc";
  const modalities = kind === "unet" ? 1 : 2;
  const classes = 4;
  const cfg = parseTrainConfig({
    task: "bench",
    method,
    patchSize: [o.size, o.size, o.size],
    // The PyTorch twins have no deep-supervision heads and the paper's fusion (no gate scale).
    network: { maxLevels: o.levels, deepSupervision: 0, fusionZeroGate: false },
    optimizer: { kind: "sgd", lr: 0.01 },
  });
  const plan = planUNet({
    patchSize: [o.size, o.size, o.size],
    spacing: [1, 1, 1],
    maxLevels: o.levels,
  });
  const rnd = lcg(7);
  const model = buildMethod({
    config: cfg,
    plan,
    numClasses: classes,
    modalities,
    primary: 0,
    rng: () => lcg(Math.floor(rnd() * 1e9)),
  });
  const named = model.student.namedParameters();
  const params = named.reduce((s, [, p]) => s + p.size, 0);
  const opt = new Sgd(named, { momentum: 0.99, nesterov: true, weightDecay: 3e-5 });
  const nv = o.size ** 3;
  const labeled = kind === "unet" ? 2 : 1;
  const unlabeled = kind === "unet" ? 0 : 1;
  const img = (n: number) => Float32Array.from({ length: n * nv }, () => rnd() * 2 - 1);
  const lab = (n: number) => Int32Array.from({ length: n * nv }, () => Math.floor(rnd() * classes));
  const host = {
    images: [...Array(modalities)].map(() => img(labeled)),
    labels: [...Array(modalities)].map(() => lab(labeled)),
    unl: [...Array(modalities)].map(() => img(unlabeled)),
  };
  const shape = (n: number) => [n, 1, o.size, o.size, o.size];
  const times: number[] = [];
  const losses: number[] = [];
  let firstTerms: Record<string, number> = {};
  const prof = new Map<string, { ms: number; n: number }>();
  for (let it = 0; it < o.warmup + o.steps; it++) {
    if (it === o.warmup) {
      be.resetPeak();
      if (o.profile) {
        setOpProfiler((op, fn, ms) => {
          const k = `${op} (${fn})`;
          const e = prof.get(k) ?? { ms: 0, n: 0 };
          e.ms += ms;
          e.n++;
          prof.set(k, e);
        });
      }
    }
    be.synchronize();
    const t0 = performance.now();
    tidy(() => {
      const batch: TrainBatch = {
        labeled: {
          images: host.images.map((a) => tensor(a, shape(labeled))),
          labels: host.labels.map((a) => tensor(a, shape(labeled), { dtype: "i32" })),
          hasLabels: host.images.map(() => [...Array(labeled)].map(() => true)),
        },
        unlabeled: unlabeled > 0
          ? { images: host.unl.map((a) => tensor(a, shape(unlabeled))) }
          : null,
      };
      // iteration = total: ramp weight w(t) = 1, as the PyTorch twin's loss (w = 1)
      const r = model.loss(batch, 1000, 1000);
      backward(r.loss);
      if (losses.length === 0) firstTerms = r.terms;
      losses.push(r.terms.loss);
    });
    noGrad(() => opt.step(0.01));
    zeroGrad(model.student.parameters());
    be.synchronize();
    if (it >= o.warmup) times.push(performance.now() - t0);
  }
  setOpProfiler(null);
  if (o.profile) {
    const rows = [...prof.entries()].sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((s, [, e]) => s + e.ms, 0);
    console.log(`  ${kind}: ops over ${o.steps} step(s), ${total.toFixed(1)} ms in ops:`);
    for (const [k, e] of rows.slice(0, 25)) {
      console.log(
        `    ${(e.ms / o.steps).toFixed(2).padStart(9)} ms/step ${
          String(e.n / o.steps).padStart(5)
        } calls  ${k}`,
      );
    }
  }
  const st = be.memoryStats();
  const deviceUsed = st.deviceTotalBytes > 0 ? st.deviceTotalBytes - st.deviceFreeBytes : 0;
  opt.dispose();
  model.dispose();
  const sorted = [...times].sort((a, b) => a - b);
  return {
    model: kind,
    params,
    stepMs: times,
    medianMs: sorted[Math.floor(sorted.length / 2)],
    losses,
    firstTerms,
    peakMiB: st.peakBytes / 2 ** 20,
    poolMiB: st.reservedBytes / 2 ** 20,
    liveMiB: st.liveBytes / 2 ** 20,
    deviceUsedMiB: deviceUsed / 2 ** 20,
  };
}

export function main(args: string[]): number {
  const { values } = parseArgs({
    args,
    options: {
      size: { type: "string", default: "128" },
      levels: { type: "string", default: "4" },
      steps: { type: "string", default: "5" },
      warmup: { type: "string", default: "3" },
      models: { type: "string", default: "unet,cmc" },
      "torch-json": { type: "string" },
      json: { type: "string" },
      profile: { type: "boolean", default: false },
    },
  });
  const be = initBackend();
  const tf32 = Deno.env.get("COMODAL_CUDA_TF32") === "1";
  const precision = tf32 ? "tf32" : "fp32";
  console.log(`backend: ${be.device} ${be.version}, TF32 ${tf32 ? "allowed" : "off"}`);
  const o: Opts = {
    size: Number(values.size),
    levels: Number(values.levels),
    steps: Number(values.steps),
    warmup: Number(values.warmup),
    profile: values.profile === true,
  };
  let torch: Record<string, Record<string, TorchStep>> = {};
  if (values["torch-json"]) {
    try {
      torch = JSON.parse(readFileSync(values["torch-json"], "utf8")).step ?? {};
    } catch (e) {
      console.log(
        `(no PyTorch numbers: cannot read ${values["torch-json"]}: ${(e as Error).message})`,
      );
    }
  }
  const results: StepResult[] = [];
  for (const m of values.models!.split(",")) {
    if (m !== "unet" && m !== "cmc") throw new Error(`--models: unknown model "${m}" (unet, cmc)`);
    const r = benchModel(m, o);
    results.push(r);
    console.log(
      `${m.padEnd(5)} ${String(r.params).padStart(9)} params, batch 2 x ${o.size}^3: step ${
        r.medianMs.toFixed(1)
      } ms ` +
        `(runs ${r.stepMs.map((t) => t.toFixed(0)).join(" ")}), peak live ${
          r.peakMiB.toFixed(0)
        } MiB, reserved ${r.poolMiB.toFixed(0)} MiB, device used ${
          r.deviceUsedMiB.toFixed(0)
        } MiB; loss ${r.losses[0]?.toFixed(4)} -> ${r.losses[r.losses.length - 1]?.toFixed(4)}`,
    );
    const t = torch[m]?.[precision];
    if (t?.median_ms) {
      console.log(
        `      PyTorch (${precision}): ${t.params} params, step ${t.median_ms.toFixed(1)} ms` +
          (t.peak_alloc_mib !== undefined
            ? `, peak allocated ${t.peak_alloc_mib.toFixed(0)} MiB, reserved ${
              t.peak_reserved_mib?.toFixed(0)
            } MiB`
            : "") +
          `; ratio ours/torch ${(r.medianMs / t.median_ms).toFixed(2)}` +
          (t.params !== r.params ? ` (WARNING: parameter counts differ: ours ${r.params})` : ""),
      );
    }
  }
  if (values.json) {
    writeFileSync(
      values.json,
      JSON.stringify(
        {
          device: be.device,
          engine: be.version,
          precision,
          size: o.size,
          levels: o.levels,
          steps: o.steps,
          warmup: o.warmup,
          env: Object.fromEntries(
            Object.entries(Deno.env.toObject()).filter(([k]) => k.startsWith("COMODAL_")),
          ),
          results,
        },
        null,
        1,
      ),
    );
  }
  return 0;
}

if (import.meta.main) Deno.exit(main(Deno.args));
