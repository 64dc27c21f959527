// Randomised lifetime checks: random graphs built with nested tidy scopes, early disposal of
// intermediates and the backward options must give the same gradients as a plain run, and must
// leave no native buffer behind except the parameters and their gradients.
import { equal } from "node:assert/strict";
import { getBackend } from "../backend/backend.ts";
import { add, mul } from "../ops/binary.ts";
import { matmul } from "../ops/matmul.ts";
import { sum } from "../ops/reduce.ts";
import { concat, reshape, slice } from "../ops/shape_ops.ts";
import { softmax } from "../ops/softmax.ts";
import { assertClose, randData, seededRng } from "../ops/test_util.ts";
import { sigmoid, tanh } from "../ops/unary.ts";
import { backward, zeroGrad } from "./autograd.ts";
import { parameter } from "./factories.ts";
import { tidy } from "./scope.ts";
import type { Tensor } from "./tensor.ts";

type Op = (a: Tensor, b: Tensor) => Tensor;
const OPS: Op[] = [
  (a, b) => add(a, b),
  (a, b) => mul(a, tanh(b)),
  (a) => sigmoid(a),
  (a, b) => concat([slice(a, 0, 0, 2), slice(b, 0, 2, 2)], 0),
  (a, b) =>
    reshape(slice(reshape(matmul(reshape(a, [4, 3]), reshape(b, [3, 4])), [16]), 0, 0, 12), [4, 3]),
  (a) => softmax(a, 1),
];

interface Plan {
  ops: { op: number; i: number; j: number; tidy: boolean; dispose: boolean }[];
  release: boolean;
}

function makePlan(rng: () => number): Plan {
  const ops = [];
  const n = 3 + Math.floor(rng() * 6);
  for (let k = 0; k < n; k++) {
    const avail = 2 + k;
    ops.push({
      op: Math.floor(rng() * OPS.length),
      i: Math.floor(rng() * avail),
      j: Math.floor(rng() * avail),
      tidy: rng() < 0.5,
      dispose: rng() < 0.3,
    });
  }
  return { ops, release: rng() < 0.5 };
}

function run(plan: Plan, params: Tensor[], messy: boolean): Float32Array[] {
  tidy(() => {
    const vals: Tensor[] = [...params];
    for (const s of plan.ops) {
      const f = () => OPS[s.op](vals[s.i], vals[s.j]);
      vals.push(messy && s.tidy ? tidy(f) : f());
    }
    // Every value feeds the loss, so every path carries gradient.
    let loss = sum(vals[vals.length - 1], "all");
    for (let k = 2; k < vals.length - 1; k++) loss = add(loss, sum(mul(vals[k], vals[k]), "all"));
    if (messy) {
      for (let k = 2; k < vals.length - 1; k++) if (plan.ops[k - 2].dispose) vals[k].dispose();
    }
    backward(loss, undefined, { releaseActivations: messy && plan.release });
  });
  const g = params.map((
    p,
  ) => (p.grad ? p.grad.toArray() as Float32Array : new Float32Array(p.size)));
  zeroGrad(params);
  return g;
}

Deno.test("random graphs: early disposal, nested tidy and releaseActivations change nothing and leak nothing", () => {
  const rng = seededRng(99);
  const params = [
    parameter(randData([4, 3], rng, -1, 1), [4, 3]),
    parameter(randData([4, 3], rng, -1, 1), [4, 3]),
  ];
  const base = getBackend().memoryStats().liveBuffers;
  for (let t = 0; t < 100; t++) {
    const plan = makePlan(rng);
    const clean = run(plan, params, false);
    const messy = run(plan, params, true);
    assertClose(messy[0], clean[0], { msg: `case ${t} param 0 ${JSON.stringify(plan)}` });
    assertClose(messy[1], clean[1], { msg: `case ${t} param 1` });
    equal(getBackend().memoryStats().liveBuffers, base, `case ${t}: buffers left behind`);
  }
  for (const p of params) p.dispose();
});
