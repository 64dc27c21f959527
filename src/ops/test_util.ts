/**
 * Helpers for the engine's unit tests: a seeded rng, random data, closeness checks and a
 * finite-difference gradient check. Not used at run time.
 * @module
 */
import { backward } from "../tensor/autograd.ts";
import { tensor } from "../tensor/factories.ts";
import { noGrad, tidy } from "../tensor/scope.ts";
import { sizeOf } from "../tensor/shape.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { mul } from "./binary.ts";
import { sum } from "./reduce.ts";

/** Seeded uniform [0,1) generator (mulberry32). */
export function seededRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform random data in [lo, hi). */
export function randData(
  shape: readonly number[],
  rng: () => number,
  lo = -1,
  hi = 1,
): Float32Array {
  const out = new Float32Array(sizeOf(shape));
  for (let i = 0; i < out.length; i++) out[i] = lo + (hi - lo) * rng();
  return out;
}

/** Throws naming the first element where |a - e| > atol + rtol * |e|. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  opts: { atol?: number; rtol?: number; msg?: string } = {},
): void {
  const atol = opts.atol ?? 1e-5;
  const rtol = opts.rtol ?? 1e-4;
  if (actual.length !== expected.length) {
    throw new Error(
      `${opts.msg ?? "assertClose"}: length ${actual.length} != expected ${expected.length}`,
    );
  }
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected[i];
    if (!(Math.abs(a - e) <= atol + rtol * Math.abs(e))) {
      throw new Error(
        `${
          opts.msg ?? "assertClose"
        }: element ${i} is ${a}, expected ${e} (atol ${atol}, rtol ${rtol})`,
      );
    }
  }
}

/** Row-major strides of a shape. */
export function strides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i];
  }
  return s;
}

/** Input of gradCheck. */
export interface GradInput {
  data: Float32Array;
  shape: number[];
  /** false: the input gets no gradient (default true) */
  grad?: boolean;
}

/**
 * Compares the analytic gradients of sum(f(xs) * w) (w random) with central differences.
 * Checks at most `samples` elements per input.
 */
export function gradCheck(
  f: (xs: Tensor[]) => Tensor,
  inputs: GradInput[],
  opts: {
    h?: number;
    atol?: number;
    rtol?: number;
    samples?: number;
    seed?: number;
    msg?: string;
  } = {},
): void {
  const h = opts.h ?? 1e-2;
  const rng = seededRng(opts.seed ?? 7);
  tidy(() => {
    const xs = inputs.map((i) => tensor(i.data, i.shape, { requiresGrad: i.grad !== false }));
    const y = f(xs);
    const w = randData(y.shape, rng);
    const wt = tensor(w, [...y.shape]);
    backward(sum(mul(y, wt), "all"));
    const lossAt = (k: number, data: Float32Array): number =>
      noGrad(() =>
        tidy(() => {
          const ts = inputs.map((inp, j) => tensor(j === k ? data : inp.data, inp.shape));
          const out = f(ts).toArray();
          let s = 0;
          for (let i = 0; i < out.length; i++) s += out[i] * w[i];
          return s;
        })
      );
    inputs.forEach((inp, k) => {
      if (inp.grad === false) return;
      const analytic = xs[k].grad?.toArray();
      if (!analytic) throw new Error(`${opts.msg ?? "gradCheck"}: input ${k} got no gradient`);
      const n = inp.data.length;
      const count = Math.min(n, opts.samples ?? 64);
      for (let c = 0; c < count; c++) {
        const i = count === n ? c : Math.floor(rng() * n);
        const d = new Float32Array(inp.data);
        d[i] = inp.data[i] + h;
        const lp = lossAt(k, d);
        d[i] = inp.data[i] - h;
        const lm = lossAt(k, d);
        const num = (lp - lm) / (2 * h);
        const atol = opts.atol ?? 2e-3, rtol = opts.rtol ?? 2e-2;
        if (!(Math.abs(analytic[i] - num) <= atol + rtol * Math.abs(num))) {
          throw new Error(
            `${opts.msg ?? "gradCheck"}: input ${k} element ${i}: analytic ${
              analytic[i]
            }, numeric ${num}`,
          );
        }
      }
    });
  });
}
