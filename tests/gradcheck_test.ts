/**
 * Gradient checks of the engine against its own central finite differences, for every
 * differentiable op (on the tiny inputs of the golden cases) and for a small composite network
 * (conv -> instanceNorm -> leakyRelu -> conv -> softmaxCrossEntropy), on every backend that starts.
 *
 * Each check is one scalar: f(inputs) = sum_o <out_o, r_o> with a fixed random projection r_o,
 * evaluated in float64 from the engine's float32 outputs. For a few sampled elements of each input,
 * (f(x+e) - f(x-e)) / 2e is compared with the analytic gradient from backward(). Elements that sit
 * on a kink (relu, abs, max ties) are recognised by unequal one-sided differences and skipped.
 */
import type { OpName, Tensor } from "../src/engine.ts";
import * as E from "../src/engine.ts";
import { type GoldenCase, goldenTensor, readAllGolden } from "./golden_io.ts";
import {
  caseKernels,
  DEVICES,
  missingKernels,
  OP_SPECS,
  type OpSpec,
  probeBackends,
  useBackend,
} from "./op_invoke.ts";
import { seededRng as rng } from "../src/ops/test_util.ts";

/** COMODAL_GRADCHECK_VERBOSE=1 prints how close each check came to its tolerance. */
const VERBOSE = Deno.env.get("COMODAL_GRADCHECK_VERBOSE") === "1";

function normal(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

function seedOf(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** A scalar function of some float32 inputs, built from engine ops. */
interface Problem {
  name: string;
  /** Input values; entries flagged in `differentiable` are checked. */
  inputs: {
    name: string;
    shape: number[];
    data: Float32Array | Int32Array;
    differentiable: boolean;
  }[];
  /** Builds the outputs whose projections make the scalar. */
  forward(xs: Tensor[]): Tensor[];
  eps: number;
  /** Elements sampled per input. */
  samples: number;
  rtol: number;
}

interface Evaluated {
  value: number;
  /** sum |out_i * r_i|: the scale of float32 rounding in value. */
  magnitude: number;
}

class Projection {
  #r: Float64Array[] = [];
  readonly #rand: () => number;
  constructor(seed: number) {
    this.#rand = rng(seed);
  }
  /** f = sum_o <out_o, r_o>; r_o drawn on first use. */
  apply(outs: Tensor[]): Evaluated {
    let value = 0;
    let magnitude = 0;
    outs.forEach((o, k) => {
      const y = o.toArray();
      if (!this.#r[k]) {
        this.#r[k] = Float64Array.from({ length: y.length }, () => normal(this.#rand));
      }
      const r = this.#r[k];
      if (r.length !== y.length) {
        throw new Error(`output ${k} changed size from ${r.length} to ${y.length}`);
      }
      for (let i = 0; i < y.length; i++) {
        value += y[i] * r[i];
        magnitude += Math.abs(y[i] * r[i]);
      }
    });
    return { value, magnitude };
  }
  tensors(outs: Tensor[]): Tensor[] {
    return outs.map((o, k) => E.tensor(Float32Array.from(this.#r[k]), [...o.shape]));
  }
}

function makeTensors(p: Problem, grad: boolean): Tensor[] {
  return p.inputs.map((i) =>
    E.tensor(i.data.slice(), i.shape, {
      dtype: i.data instanceof Int32Array ? "i32" : "f32",
      requiresGrad: grad && i.differentiable,
    })
  );
}

function evaluate(p: Problem, proj: Projection): Evaluated {
  return E.tidy(() => E.noGrad(() => proj.apply(p.forward(makeTensors(p, false)))));
}

/** Runs the finite-difference check; throws with every mismatch found. */
function gradcheck(p: Problem): void {
  const proj = new Projection(seedOf(p.name));
  const base = evaluate(p, proj);
  // Analytic gradients.
  const analytic: (Float32Array | null)[] = E.tidy(() => {
    const xs = makeTensors(p, true);
    const outs = p.forward(xs);
    const loss = proj.tensors(outs).map((r, k) => E.sum(E.mul(outs[k], r), "all")).reduce((a, b) =>
      E.add(a, b)
    );
    E.backward(loss);
    return xs.map((x, k) => {
      if (!p.inputs[k].differentiable) return null;
      if (!x.grad) throw new Error(`${p.name}: no gradient reached input ${p.inputs[k].name}`);
      const g = x.grad.toArray() as Float32Array;
      E.dispose(x.grad);
      x.grad = null;
      return g;
    });
  });
  const rand = rng(seedOf(p.name) ^ 0x5bd1e995);
  // Rounding noise of f: a few ulps of every projected term; central differences divide by 2e.
  const noise = 16 * 2 ** -24 * base.magnitude / p.eps;
  const atol = Math.max(1e-4, noise);
  const failures: string[] = [];
  let checked = 0;
  let kinks = 0;
  let worst = 0;
  p.inputs.forEach((inp, k) => {
    if (!inp.differentiable) return;
    const data = inp.data as Float32Array;
    const n = data.length;
    const picks = new Set<number>();
    while (picks.size < Math.min(p.samples, n)) picks.add(Math.floor(rand() * n));
    for (const i of picks) {
      const x0 = data[i];
      const xp = Math.fround(x0 + p.eps);
      const xm = Math.fround(x0 - p.eps);
      data[i] = xp;
      const fp = evaluate(p, proj).value;
      data[i] = xm;
      const fm = evaluate(p, proj).value;
      data[i] = x0;
      const fd = (fp - fm) / (xp - xm);
      const right = (fp - base.value) / (xp - x0);
      const left = (base.value - fm) / (x0 - xm);
      if (Math.abs(right - left) > 0.5 * Math.max(Math.abs(right), Math.abs(left)) + 20 * atol) {
        kinks++;
        continue;
      }
      checked++;
      const an = analytic[k]![i];
      const allowed = atol + p.rtol * Math.max(Math.abs(an), Math.abs(fd));
      worst = Math.max(worst, Math.abs(fd - an) / allowed);
      if (!(Math.abs(fd - an) <= allowed)) {
        failures.push(
          `${inp.name}[${i}] (value ${x0}): analytic ${an.toPrecision(6)}, finite difference ` +
            `${fd.toPrecision(6)}, |diff| ${Math.abs(fd - an).toExponential(2)} > ${
              allowed.toExponential(2)
            }`,
        );
      }
    }
  });
  if (VERBOSE) {
    console.log(
      `${p.name}: ${checked} checked, ${kinks} on kinks, worst |fd-an|/allowed ${worst.toFixed(3)}`,
    );
  }
  if (checked === 0 || kinks > checked) {
    failures.push(`only ${checked} elements could be checked (${kinks} sat on kinks)`);
  }
  if (failures.length > 0) {
    throw new Error(
      `Gradient check failed for ${p.name} (eps ${p.eps}, atol ${
        atol.toExponential(2)
      }, rtol ${p.rtol}):\n  ` +
        failures.join("\n  "),
    );
  }
}

/** Step sizes and relative tolerances per op (f32 engine); others use the defaults. */
const FD_SETTINGS: Readonly<Record<string, { eps: number; rtol: number }>> = {
  log: { eps: 2e-3, rtol: 2e-2 },
  sqrt: { eps: 2e-3, rtol: 2e-2 },
  exp: { eps: 5e-3, rtol: 1e-2 },
  maximum: { eps: 5e-4, rtol: 2e-2 },
  max: { eps: 5e-3, rtol: 2e-2 },
};
const DEFAULT_FD = { eps: 1e-2, rtol: 1e-2 };

/**
 * A norm with a fused activation: moving gamma or beta shifts a whole channel's pre-activations,
 * and every one within eps of zero crosses the kink, so the step must be small.
 */
const FUSED_ACTIVATION_FD = { eps: 1e-3, rtol: 2e-2 };

function problemFromCase(c: GoldenCase, spec: OpSpec): Problem {
  const s = c.attrs.activation !== undefined
    ? FUSED_ACTIVATION_FD
    : FD_SETTINGS[c.op] ?? DEFAULT_FD;
  return {
    name: c.name,
    inputs: c.inputs.map((i) => {
      const t = goldenTensor(c, `in.${i.name}`);
      return {
        name: i.name,
        shape: [...t.shape],
        data: t.data.slice(),
        differentiable: i.requiresGrad,
      };
    }),
    forward: (xs) => {
      const outs = spec.run(xs, c.attrs);
      return c.gradOutputs.map((o) => outs[o]);
    },
    eps: s.eps,
    samples: 6,
    rtol: s.rtol,
  };
}

function compositeProblem(): Problem {
  const r = rng(7);
  const randn = (n: number, scale: number) =>
    Float32Array.from({ length: n }, () => scale * normal(r));
  const labels = Int32Array.from(
    { length: 64 },
    (_, i) => (i % 11 === 3 ? -100 : Math.floor(r() * 3)),
  );
  return {
    name: "composite conv -> instanceNorm -> leakyRelu -> conv -> softmaxCrossEntropy",
    inputs: [
      { name: "x", shape: [1, 2, 4, 4, 4], data: randn(128, 1), differentiable: true },
      { name: "w1", shape: [16, 2, 3, 3, 3], data: randn(16 * 2 * 27, 0.3), differentiable: true },
      { name: "b1", shape: [16], data: randn(16, 0.1), differentiable: true },
      {
        name: "gamma",
        shape: [16],
        data: Float32Array.from(randn(16, 0.2), (v) => 1 + v),
        differentiable: true,
      },
      { name: "beta", shape: [16], data: randn(16, 0.2), differentiable: true },
      { name: "w2", shape: [3, 16, 1, 1, 1], data: randn(48, 0.4), differentiable: true },
      { name: "b2", shape: [3], data: randn(3, 0.1), differentiable: true },
      { name: "labels", shape: [1, 4, 4, 4], data: labels, differentiable: false },
    ],
    forward: ([x, w1, b1, gamma, beta, w2, b2, lab]) => {
      const h = E.leakyRelu(E.instanceNorm(E.conv3d(x, w1, b1, { padding: 1 }), gamma, beta), 0.01);
      return [E.softmaxCrossEntropy(E.conv3d(h, w2, b2), lab).loss];
    },
    // Small steps: a shift of beta or b1 moves many leakyRelu inputs across the kink at once.
    eps: 1e-3,
    samples: 5,
    rtol: 2e-2,
  };
}

const COMPOSITE_KERNELS: OpName[] = [
  "CONV3D_FORWARD",
  "CONV3D_BACKWARD_DATA",
  "CONV3D_BACKWARD_WEIGHTS",
  "GROUP_NORM_FORWARD",
  "GROUP_NORM_BACKWARD",
  "UNARY_FORWARD",
  "UNARY_BACKWARD",
  "SOFTMAX_CROSS_ENTROPY_FORWARD",
  "SOFTMAX_CROSS_ENTROPY_BACKWARD",
];

const PROBES = probeBackends();
const CASES = readAllGolden().flatMap((f) => f.cases)
  .filter((c) =>
    OP_SPECS[c.op] && c.gradOutputs.length > 0 && c.inputs.some((i) => i.requiresGrad)
  );

for (const device of DEVICES) {
  const { backend } = PROBES[device];
  for (const c of CASES) {
    const missing = backend ? missingKernels(backend, [...caseKernels(c), "REDUCE", "BINARY"]) : [];
    Deno.test({
      name: `gradcheck[${device}] ${c.op}/${c.name}${
        missing.length ? ` (backend lacks ${missing.join(", ")})` : ""
      }`,
      ignore: backend === null || missing.length > 0,
      fn() {
        useBackend(device);
        gradcheck(problemFromCase(c, OP_SPECS[c.op]));
      },
    });
  }
  const missing = backend
    ? missingKernels(backend, [...COMPOSITE_KERNELS, "REDUCE", "BINARY"])
    : [];
  Deno.test({
    name:
      `gradcheck[${device}] composite conv->instanceNorm->leakyRelu->conv->softmaxCrossEntropy` +
      (missing.length ? ` (backend lacks ${missing.join(", ")})` : ""),
    ignore: backend === null || missing.length > 0,
    fn() {
      useBackend(device);
      gradcheck(compositeProblem());
    },
  });
}

Deno.test({
  name: "gradcheck: the checker itself catches a wrong gradient (x * detach(x))",
  ignore: PROBES.cpu.backend === null,
  fn() {
    useBackend("cpu");
    const p: Problem = {
      name: "x * detach(x)",
      inputs: [{
        name: "x",
        shape: [2, 3],
        data: Float32Array.of(0.5, -1, 1.5, 2, -0.7, 0.9),
        differentiable: true,
      }],
      forward: ([x]) => [E.mul(x, E.detach(x))],
      eps: 1e-2,
      samples: 4,
      rtol: 1e-2,
    };
    let message = "";
    try {
      gradcheck(p);
    } catch (e) {
      message = (e as Error).message;
    }
    if (!/Gradient check failed for x \* detach\(x\)/.test(message)) {
      throw new Error(
        `the checker accepted a gradient that is half the true one (message: "${message}")`,
      );
    }
  },
});
