/**
 * Parity of every engine op with PyTorch: forward outputs and gradients against the golden files of
 * tests/golden/ (written by tests/gen_golden.py), for every backend that can be initialised here.
 * A backend that cannot start (no CUDA device, no library) and cases whose kernels a backend lacks
 * (backend.supportsOp) are reported as ignored, never passed silently. Cases with a 5-D input whose
 * channel count is a multiple of 16 run a second time with that input routed through an identity
 * convolution, so the op also sees the backend's conv output layout (blocked on the CPU).
 *
 * Tolerance: |got - ref| <= atol + rtol * |ref| per element, per op (table below).
 */
import type { Tensor } from "../src/engine.ts";
import * as E from "../src/engine.ts";
import { type GoldenCase, type GoldenTensor, goldenTensor, readAllGolden } from "./golden_io.ts";
import {
  caseInputs,
  caseKernels,
  DEVICES,
  isBlockable,
  layoutVariantInputs,
  missingKernels,
  OP_SPECS,
  OPTIMIZER_KERNELS,
  probeBackends,
  throughConvLayout,
  useBackend,
} from "./op_invoke.ts";

interface Tol {
  atol: number;
  rtol: number;
}

const DEFAULT_TOL: Tol = { atol: 1e-5, rtol: 1e-4 };

/** Per-op tolerances; ops not listed use DEFAULT_TOL. */
const TOLERANCES: Readonly<Record<string, Tol>> = {
  conv3d: { atol: 1e-4, rtol: 5e-4 },
  convTranspose3d: { atol: 1e-4, rtol: 5e-4 },
  groupNorm: { atol: 5e-5, rtol: 5e-4 },
  instanceNorm: { atol: 5e-5, rtol: 5e-4 },
  matmul: { atol: 2e-5, rtol: 2e-4 },
  softmaxCrossEntropy: { atol: 2e-5, rtol: 2e-4 },
  diceStats: { atol: 2e-5, rtol: 1e-4 },
  l2Normalize: { atol: 2e-5, rtol: 2e-4 },
  sum: { atol: 2e-5, rtol: 1e-4 },
  mean: { atol: 2e-5, rtol: 1e-4 },
  exp: { atol: 1e-5, rtol: 2e-4 },
  sgdUpdate: { atol: 1e-6, rtol: 1e-5 },
  adamwUpdate: { atol: 1e-6, rtol: 1e-5 },
  emaUpdate: { atol: 1e-6, rtol: 1e-5 },
};

const PROBES = probeBackends();

/** A float32 value with the digits float32 holds (7 significant). */
function f32(v: number): string {
  return String(Number(v.toPrecision(7)));
}

function fmtIndex(flat: number, shape: readonly number[]): string {
  const idx: number[] = [];
  let r = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    idx.unshift(r % shape[d]);
    r = Math.floor(r / shape[d]);
  }
  return `[${idx.join(",")}]`;
}

/** Compares got against the golden tensor; returns "" when every element is within tolerance. */
export function closeness(
  label: string,
  got: { shape: readonly number[]; data: ArrayLike<number> },
  ref: GoldenTensor,
  tol: Tol,
): string {
  if (got.shape.length !== ref.shape.length || got.shape.some((d, i) => d !== ref.shape[i])) {
    return `${label}: shape [${got.shape}] but PyTorch gives [${ref.shape}]`;
  }
  let worst = -1;
  let worstRatio = 0;
  let bad = 0;
  let maxAbs = 0;
  for (let i = 0; i < ref.data.length; i++) {
    const g = got.data[i];
    const r = ref.data[i];
    const diff = Math.abs(g - r);
    const allowed = tol.atol + tol.rtol * Math.abs(r);
    const ratio = Number.isNaN(diff) ? Infinity : diff / allowed;
    if (ratio > 1) bad++;
    if (ratio > worstRatio || worst < 0) {
      worstRatio = ratio;
      worst = i;
    }
    if (diff > maxAbs) maxAbs = diff;
  }
  if (bad === 0) return "";
  const g = got.data[worst];
  const r = ref.data[worst];
  return `${label} [${ref.shape}]: ${bad} of ${ref.data.length} elements out of tolerance; worst at ` +
    `${fmtIndex(worst, ref.shape)}: got ${f32(g)}, PyTorch ${f32(r)}, |diff| ${
      Math.abs(g - r).toExponential(3)
    } > ` +
    `atol ${tol.atol} + rtol ${tol.rtol} * |ref| = ${
      (tol.atol + tol.rtol * Math.abs(r)).toExponential(3)
    } ` +
    `(max |diff| ${maxAbs.toExponential(3)})`;
}

function toGot(t: Tensor): { shape: readonly number[]; data: ArrayLike<number> } {
  return { shape: t.shape, data: t.toArray() };
}

function goldenToTensor(t: GoldenTensor, opts: { requiresGrad?: boolean } = {}): Tensor {
  return E.tensor(t.data.slice(), [...t.shape], {
    dtype: t.dtype,
    requiresGrad: opts.requiresGrad ?? false,
  });
}

/**
 * How a case runs: as stored; with its activation inputs routed through the conv output layout; or
 * with forward and backward run twice without clearing gradients (every gradient must then be
 * twice PyTorch's: `.grad` accumulates, and conv/norm kernels accumulate into the existing slot).
 */
type Variant = "plain" | "convLayout" | "accumulate";

const VARIANT_LABEL: Record<Variant, string> = {
  plain: "",
  convLayout: " [input through conv layout]",
  accumulate: " [backward twice: gradients accumulate]",
};

/** Ops whose parameter gradients use the native accumulate-into-slot convention. */
const ACCUMULATING_OPS = new Set(["conv3d", "convTranspose3d", "groupNorm", "instanceNorm"]);

function scaled(t: GoldenTensor, k: number): GoldenTensor {
  return { ...t, data: Float32Array.from(t.data, (v) => v * k) };
}

/** Runs a differentiable golden case; returns the list of mismatches. */
function runOpCase(c: GoldenCase, variant: Variant): string[] {
  const spec = OP_SPECS[c.op];
  const tol = TOLERANCES[c.op] ?? DEFAULT_TOL;
  const problems: string[] = [];
  const passes = variant === "accumulate" ? 2 : 1;
  E.tidy(() => {
    const xs = caseInputs(c);
    const route = layoutVariantInputs(c);
    const needGrad = c.inputs.some((i) => i.requiresGrad) && c.gradOutputs.length > 0;
    for (let pass = 0; pass < passes; pass++) {
      const ins = variant === "convLayout"
        ? xs.map((x, k) => route[k] ? throughConvLayout(x) : x)
        : xs;
      const outs = spec.run(ins, c.attrs);
      for (const o of pass === 0 ? c.outputs : []) {
        const t = outs[o];
        if (!t) {
          problems.push(
            `output ${o}: the engine op returned no such output (has ${Object.keys(outs)})`,
          );
          continue;
        }
        const msg = closeness(`forward ${o}`, toGot(t), goldenTensor(c, `out.${o}`), tol);
        if (msg) problems.push(msg);
      }
      if (!needGrad) continue;
      if (c.gradOutputs.length === 1) {
        const o = c.gradOutputs[0];
        E.backward(outs[o], goldenToTensor(goldenTensor(c, `dout.${o}`)));
      } else {
        const terms = c.gradOutputs.map((o) =>
          E.sum(E.mul(outs[o], goldenToTensor(goldenTensor(c, `dout.${o}`))), "all")
        );
        E.backward(terms.reduce((a, b) => E.add(a, b)));
      }
    }
    if (!needGrad) return;
    c.inputs.forEach((inp, k) => {
      const x = xs[k];
      if (!inp.requiresGrad) {
        if (x.grad !== null) {
          problems.push(`input ${inp.name} does not require grad but received one`);
        }
        return;
      }
      if (!x.grad) {
        problems.push(`grad ${inp.name}: no gradient reached the input`);
        return;
      }
      const ref = scaled(goldenTensor(c, `grad.${inp.name}`), passes);
      const label = passes > 1
        ? `grad ${inp.name} after ${passes} backward passes`
        : `grad ${inp.name}`;
      const msg = closeness(label, toGot(x.grad), ref, tol);
      if (msg) problems.push(msg);
      E.dispose(x.grad);
      x.grad = null;
    });
  });
  return problems;
}

/** Runs a two-step optimizer case; returns the list of mismatches. */
function runOptimizerCase(c: GoldenCase, variant: Variant): string[] {
  const viaConv = variant === "convLayout";
  const tol = TOLERANCES[c.op] ?? DEFAULT_TOL;
  const problems: string[] = [];
  E.tidy(() => {
    const load = (name: string): Tensor => {
      const g = goldenTensor(c, name);
      const t = goldenToTensor(g);
      return viaConv && isBlockable(g.shape, g.dtype) ? E.noGrad(() => throughConvLayout(t)) : t;
    };
    const check = (label: string, t: Tensor, ref: string) => {
      const msg = closeness(label, toGot(t), goldenTensor(c, ref), tol);
      if (msg) problems.push(msg);
    };
    const a = c.attrs as Record<string, number | boolean>;
    if (c.op === "emaUpdate") {
      const ema = load("in.ema");
      for (const step of [1, 2]) {
        E.emaUpdate(ema, load(`in.param${step}`), a.decay as number);
        check(`step ${step} ema`, ema, `out.ema${step}`);
      }
      return;
    }
    const param = load("in.param");
    if (c.op === "sgdUpdate") {
      const buf = load("in.momentumBuf");
      for (const step of [1, 2]) {
        E.sgdUpdate(param, load(`in.grad${step}`), buf, {
          lr: a.lr as number,
          momentum: a.momentum as number,
          weightDecay: a.weightDecay as number,
          nesterov: a.nesterov === true,
        });
        check(`step ${step} param`, param, `out.param${step}`);
        check(`step ${step} momentumBuf`, buf, `out.momentumBuf${step}`);
      }
    } else if (c.op === "adamwUpdate") {
      const m = load("in.m");
      const v = load("in.v");
      for (const step of [1, 2]) {
        E.adamwUpdate(param, load(`in.grad${step}`), m, v, {
          lr: a.lr as number,
          beta1: a.beta1 as number,
          beta2: a.beta2 as number,
          eps: a.eps as number,
          weightDecay: a.weightDecay as number,
          step,
        });
        check(`step ${step} param`, param, `out.param${step}`);
        check(`step ${step} m`, m, `out.m${step}`);
        check(`step ${step} v`, v, `out.v${step}`);
      }
    } else {
      problems.push(`unknown optimizer op ${c.op}`);
    }
  });
  return problems;
}

function runCase(c: GoldenCase, variant: Variant): void {
  const problems = OP_SPECS[c.op] ? runOpCase(c, variant) : runOptimizerCase(c, variant);
  if (problems.length > 0) {
    throw new Error(
      `Parity with PyTorch failed for ${c.op} case ${c.name}${VARIANT_LABEL[variant]}:\n  ` +
        problems.join("\n  "),
    );
  }
}

function hasLayoutVariant(c: GoldenCase): boolean {
  if (!OP_SPECS[c.op]) {
    return [...c.tensors.entries()].some(([k, t]) =>
      k.startsWith("in.") && isBlockable(t.shape, t.dtype)
    );
  }
  return layoutVariantInputs(c).some((b) => b);
}

const FILES = readAllGolden();

for (const device of DEVICES) {
  const { backend, error } = PROBES[device];
  Deno.test({
    name: `parity[${device}]: backend initialises` +
      (device !== "cpu" && backend === null
        ? ` (unavailable: ${error.split("\n")[0].slice(0, 120)})`
        : ""),
    // The CPU backend must always start; another backend is optional on this machine.
    ignore: device !== "cpu" && backend === null,
    fn() {
      if (!backend) throw new Error(`The ${device} backend could not be initialised: ${error}`);
      if (backend.device !== device) {
        throw new Error(`initBackend gave a ${backend.device} backend`);
      }
    },
  });
  for (const f of FILES) {
    for (const c of f.cases) {
      const kernels = caseKernels(c);
      const variants: Variant[] = ["plain"];
      if (hasLayoutVariant(c)) variants.push("convLayout");
      if (ACCUMULATING_OPS.has(c.op)) variants.push("accumulate");
      for (const variant of variants) {
        const need = variant === "convLayout"
          ? [...kernels, "CONV3D_FORWARD", "CONV3D_BACKWARD_DATA"] as typeof kernels
          : kernels;
        const missing = backend ? missingKernels(backend, need) : [];
        const why = !backend ? "" : missing.length ? ` (backend lacks ${missing.join(", ")})` : "";
        Deno.test({
          name: `parity[${device}] ${f.family}/${c.name}${VARIANT_LABEL[variant]}${why}`,
          ignore: backend === null || missing.length > 0,
          fn() {
            useBackend(device);
            runCase(c, variant);
          },
        });
      }
    }
  }
  Deno.test({
    name: `parity[${device}]: running cases leaves no live buffers behind`,
    ignore: backend === null,
    fn() {
      useBackend(device);
      const b = E.getBackend();
      const sample = FILES.map((f) =>
        f.cases.find((c) => missingKernels(b, caseKernels(c)).length === 0)
      )
        .filter((c): c is GoldenCase => c !== undefined);
      if (sample.length === 0) {
        throw new Error(`The ${device} backend supports no golden case at all`);
      }
      const runAll = () => {
        for (const c of sample) {
          try {
            runCase(c, "plain");
          } catch {
            // accuracy is the other tests' business; this one counts buffers
          }
        }
      };
      runAll(); // warm-up: lets the engine create any cached constants
      const before = b.memoryStats().liveBuffers;
      runAll();
      const after = b.memoryStats().liveBuffers;
      if (after !== before) {
        throw new Error(
          `${sample.length} golden cases (${sample.map((c) => c.name).join(", ")}) left ` +
            `${after - before} live buffers behind (before ${before}, after ${after})`,
        );
      }
    },
  });
}

Deno.test("parity: the comparison names the worst element, its index and the tolerance", () => {
  const ref = { dtype: "f32" as const, shape: [2, 3], data: Float32Array.of(1, 2, 3, 4, 5, 6) };
  const tol = { atol: 1e-5, rtol: 1e-4 };
  const same = closeness(
    "forward y",
    { shape: [2, 3], data: Float32Array.of(1, 2, 3, 4, 5, 6.0001) },
    ref,
    tol,
  );
  if (same !== "") throw new Error(`a difference within tolerance was reported: ${same}`);
  const msg = closeness(
    "forward y",
    { shape: [2, 3], data: Float32Array.of(1, 2, 3.01, 4, 5.1, 6) },
    ref,
    tol,
  );
  for (
    const want of ["forward y [2,3]", "2 of 6 elements", "worst at [1,1]", "got 5.1", "PyTorch 5"]
  ) {
    if (!msg.includes(want)) throw new Error(`message lacks "${want}": ${msg}`);
  }
  const nan = closeness(
    "grad x",
    { shape: [2, 3], data: Float32Array.of(1, NaN, 3, 4, 5, 6) },
    ref,
    tol,
  );
  if (!nan.includes("worst at [0,1]")) {
    throw new Error(`a NaN was not reported as the worst element: ${nan}`);
  }
  const shape = closeness("grad x", { shape: [3, 2], data: ref.data }, ref, tol);
  if (!shape.includes("shape [3,2] but PyTorch gives [2,3]")) {
    throw new Error(`shape mismatch not reported: ${shape}`);
  }
});

Deno.test("parity: every op the suites know has golden cases, and every golden op is known", () => {
  const used = new Set(FILES.flatMap((f) => f.cases.map((c) => c.op)));
  const known = [...Object.keys(OP_SPECS), ...Object.keys(OPTIMIZER_KERNELS)];
  const without = known.filter((op) => !used.has(op));
  if (without.length) throw new Error(`ops without golden cases: ${without.join(", ")}`);
  const unknown = [...used].filter((op) => !known.includes(op));
  if (unknown.length) throw new Error(`golden ops the suites cannot run: ${unknown.join(", ")}`);
  if (known.length < 40) throw new Error(`only ${known.length} ops are covered`);
});
