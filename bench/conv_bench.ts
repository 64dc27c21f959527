/**
 * conv3d 3x3x3 (padding 1) forward and forward+backward through the engine, beside PyTorch measured
 * in the same run (bench/torch_conv.py, spawned with the Python of bench/torch_python.ts: the
 * .tools/torchvenv of `make bench-env` unless --torch-python or COMODAL_TORCH_PYTHON says otherwise). The first-layer case (2 input channels) needs no input gradient: both
 * sides skip it.
 *
 * @module
 */

import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { BENCH_ENV_HINT, torchPython } from "./torch_python.ts";
import * as E from "../src/engine.ts";
import {
  type BenchModule,
  type BenchOptions,
  type BenchResult,
  type Cell,
  median,
  timeRuns,
} from "./report.ts";

/** One convolution problem. */
export interface ConvCase {
  name: string;
  n: number;
  ci: number;
  co: number;
  size: [number, number, number];
  k: number;
  padding: number;
  /** False for a first layer: backward computes only dW and db. */
  inputGrad: boolean;
}

/** The published problem sizes (U-Net levels at 2 samples per batch). */
export const CONV_CASES: readonly ConvCase[] = [
  {
    name: "N2 C16->16 64^3",
    n: 2,
    ci: 16,
    co: 16,
    size: [64, 64, 64],
    k: 3,
    padding: 1,
    inputGrad: true,
  },
  {
    name: "N2 C32->32 32^3",
    n: 2,
    ci: 32,
    co: 32,
    size: [32, 32, 32],
    k: 3,
    padding: 1,
    inputGrad: true,
  },
  {
    name: "N2 C64->64 16^3",
    n: 2,
    ci: 64,
    co: 64,
    size: [16, 16, 16],
    k: 3,
    padding: 1,
    inputGrad: true,
  },
  {
    name: "N2 C2->16 96^3 (no dx)",
    n: 2,
    ci: 2,
    co: 16,
    size: [96, 96, 96],
    k: 3,
    padding: 1,
    inputGrad: false,
  },
];

/** Smaller sizes for a smoke run (--quick). */
function quickCases(): ConvCase[] {
  return CONV_CASES.map((c) => {
    const size = c.size.map((s) => s / 4) as [number, number, number];
    return { ...c, size, name: c.name.replace(/\d+\^3/, `${size[0]}^3`) };
  });
}

/** Floating-point operations of one forward pass (multiply-adds count 2). */
export function convForwardFlops(c: ConvCase): number {
  const out = c.size.map((s) => s + 2 * c.padding - c.k + 1);
  return 2 * c.n * c.co * out[0] * out[1] * out[2] * c.ci * c.k ** 3;
}

/** Forward + backward: backward data (when needed) and backward weights each cost one forward. */
export function convForwardBackwardFlops(c: ConvCase): number {
  return convForwardFlops(c) * (c.inputGrad ? 3 : 2);
}

function randomData(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = ((s >>> 8) / 16777216 - 0.5) * 3.4641 * scale; // uniform with unit variance * scale
  }
  return out;
}

interface OursTimes {
  forwardRunsMs: number[];
  forwardBackwardRunsMs: number[];
}

function timeOurs(c: ConvCase, opts: BenchOptions): OursTimes {
  const backend = E.getBackend();
  const xShape = [c.n, c.ci, ...c.size];
  const wShape = [c.co, c.ci, c.k, c.k, c.k];
  const x = E.tensor(randomData(xShape.reduce((a, b) => a * b), 1), xShape, {
    requiresGrad: c.inputGrad,
  }).keep();
  const w = E.parameter(randomData(c.co * c.ci * c.k ** 3, 2, (c.ci * c.k ** 3) ** -0.5), wShape);
  const b = E.parameter(new Float32Array(c.co), [c.co]);
  const yShape = E.noGrad(() => E.tidy(() => [...E.conv3d(x, w, b, { padding: c.padding }).shape]));
  const dy = E.tensor(randomData(yShape.reduce((a, v) => a * v), 3), yShape).keep();
  try {
    const forwardRunsMs = timeRuns(() => {
      E.noGrad(() => E.tidy(() => void E.conv3d(x, w, b, { padding: c.padding })));
      backend.synchronize();
    }, opts);
    const forwardBackwardRunsMs = timeRuns(() => {
      E.tidy(() => E.backward(E.conv3d(x, w, b, { padding: c.padding }), dy));
      E.zeroGrad(c.inputGrad ? [w, b, x] : [w, b]);
      backend.synchronize();
    }, opts);
    return { forwardRunsMs, forwardBackwardRunsMs };
  } finally {
    E.zeroGrad([w, b, x]);
    E.dispose([x, w, b, dy]);
  }
}

interface TorchTimes {
  forwardMs: number;
  forwardBackwardMs: number;
  forwardRunsMs: number[];
  forwardBackwardRunsMs: number[];
}

/** Runs bench/torch_conv.py; returns null (and why) when PyTorch cannot be used. */
async function timeTorch(
  cases: ConvCase[],
  opts: BenchOptions,
): Promise<{ version: string; cases: TorchTimes[] } | { error: string }> {
  const found = torchPython();
  if ("error" in found) return found;
  const python = found.python;
  const script = fileURLToPath(new URL("./torch_conv.py", import.meta.url));
  const cfg = { threads: opts.threads, warmup: opts.warmup, runs: opts.runs, cases };
  try {
    const out = await new Deno.Command(python, {
      args: [script, JSON.stringify(cfg)],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    if (!out.success) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" / ");
      return {
        error: `${python} ${script} exited with code ${out.code}: ${err}${
          /No module named/.test(err) ? `; ${BENCH_ENV_HINT}` : ""
        }`,
      };
    }
    const doc = JSON.parse(new TextDecoder().decode(out.stdout));
    return { version: doc.torch, cases: doc.cases };
  } catch (e) {
    return { error: `could not run ${python}: ${(e as Error).message}` };
  }
}

/** The conv3d benchmark module. */
export const convBench: BenchModule = {
  name: "conv3d",
  description: "conv3d 3x3x3 forward and forward+backward, engine vs PyTorch (same threads)",
  async run(opts: BenchOptions): Promise<BenchResult> {
    const cases = opts.quick ? quickCases() : [...CONV_CASES];
    const backend = E.initBackend({ device: "cpu", threads: opts.threads });
    backend.setThreads(opts.threads);
    // Case by case, ours then PyTorch, so both sides of a row see the same machine load.
    const loadBefore = loadavg();
    const ours: OursTimes[] = [];
    const torchCases: TorchTimes[] = [];
    let torchError = "";
    let torchVersion = "";
    for (const c of cases) {
      ours.push(timeOurs(c, opts));
      if (torchError) continue;
      const t = await timeTorch([c], opts);
      if ("error" in t) torchError = t.error;
      else {
        torchVersion = t.version;
        torchCases.push(t.cases[0]);
      }
    }
    const torch = torchError ? { error: torchError } : { version: torchVersion, cases: torchCases };
    const rows: Cell[][] = [];
    cases.forEach((c, i) => {
      const t = "error" in torch ? null : torch.cases[i];
      const passes: [string, number[], number[] | null, number][] = [
        ["forward", ours[i].forwardRunsMs, t ? t.forwardRunsMs : null, convForwardFlops(c)],
        [
          "fwd+bwd",
          ours[i].forwardBackwardRunsMs,
          t ? t.forwardBackwardRunsMs : null,
          convForwardBackwardFlops(c),
        ],
      ];
      for (const [pass, runs, torchRuns, flops] of passes) {
        const ms = median(runs);
        const torchMs = torchRuns ? median(torchRuns) : null;
        rows.push([
          c.name,
          pass,
          ms,
          torchMs,
          torchMs === null ? null : ms / torchMs,
          flops / ms / 1e6,
          torchMs === null ? null : flops / torchMs / 1e6,
          Math.min(...runs),
          torchRuns ? Math.min(...torchRuns) : null,
        ]);
      }
    });
    const notes = [
      `median of ${opts.runs} runs after ${opts.warmup} warm-up; ${opts.threads} threads on both sides; ` +
      `ratio = ours / torch medians (below 1: the engine is faster); min = fastest run`,
      `engine: ${backend.version}; 1-min load average ${loadBefore[0].toFixed(1)} at start, ` +
      `${loadavg()[0].toFixed(1)} at end (${navigator.hardwareConcurrency} cores)`,
      "error" in torch
        ? "PyTorch baseline unavailable: " + torch.error
        : `PyTorch ${torch.version}`,
    ];
    return {
      name: `conv3d${opts.threads === 2 ? "" : `_t${opts.threads}`}${opts.quick ? "_quick" : ""}`,
      title: "conv3d 3x3x3, padding 1 (ms per call, GFLOP/s)",
      columns: [
        "case",
        "pass",
        "ours ms",
        "torch ms",
        "ratio",
        "ours GFLOP/s",
        "torch GFLOP/s",
        "ours min ms",
        "torch min ms",
      ],
      rows,
      notes,
      details: {
        engine: backend.version,
        loadAverage: { before: loadBefore, after: loadavg() },
        torch: "error" in torch ? null : torch.version,
        torchError: "error" in torch ? torch.error : null,
        cases: cases.map((c, i) => ({
          ...c,
          forwardFlops: convForwardFlops(c),
          forwardBackwardFlops: convForwardBackwardFlops(c),
          ours: ours[i],
          torch: "error" in torch ? null : torch.cases[i],
        })),
      },
    };
  },
};
