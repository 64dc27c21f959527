import { deepStrictEqual, throws } from "node:assert/strict";
import { tensor } from "../tensor/factories.ts";
import { tidy } from "../tensor/scope.ts";
import { add, mul } from "./binary.ts";
import { diceStats, softmaxCrossEntropy } from "./losses.ts";
import { adamwUpdate, emaUpdate, sgdUpdate } from "./optim.ts";
import { adaptiveAvgPool3d, l2Normalize } from "./pool.ts";
import { sum } from "./reduce.ts";
import { slice } from "./shape_ops.ts";
import { assertClose, gradCheck, randData, seededRng } from "./test_util.ts";

function refSoftmaxCE(logits: Float32Array, shape: number[], labels: Int32Array, ignore: number) {
  const [N, K] = shape;
  const S = logits.length / (N * K);
  const probs = new Float32Array(logits.length);
  let loss = 0, count = 0;
  for (let n = 0; n < N; n++) {
    for (let s = 0; s < S; s++) {
      let m = -Infinity;
      for (let k = 0; k < K; k++) m = Math.max(m, logits[(n * K + k) * S + s]);
      let z = 0;
      for (let k = 0; k < K; k++) z += Math.exp(logits[(n * K + k) * S + s] - m);
      for (let k = 0; k < K; k++) {
        probs[(n * K + k) * S + s] = Math.exp(logits[(n * K + k) * S + s] - m) / z;
      }
      const l = labels[n * S + s];
      if (l === ignore) continue;
      loss -= Math.log(probs[(n * K + l) * S + s]);
      count++;
    }
  }
  return { loss: count ? loss / count : 0, probs };
}

Deno.test("softmaxCrossEntropy matches a reference, honours ignoreIndex, loss has shape []", () => {
  const rng = seededRng(17);
  tidy(() => {
    const shape = [2, 3, 2, 2, 2];
    const logits = randData(shape, rng, -2, 2);
    const labels = Int32Array.from({ length: 16 }, (_, i) => (i % 5 === 0 ? -100 : i % 3));
    const ref = refSoftmaxCE(logits, shape, labels, -100);
    for (const ls of [[2, 2, 2, 2], [2, 1, 2, 2, 2]]) {
      const { loss, probs } = softmaxCrossEntropy(tensor(logits, shape), tensor(labels, ls));
      deepStrictEqual(loss.shape, []);
      assertClose([loss.item()], [ref.loss], { atol: 1e-5 });
      assertClose(probs.toArray(), ref.probs);
    }
    throws(
      () => softmaxCrossEntropy(tensor(logits, shape), tensor(new Int32Array(8), [2, 2, 2])),
      /labels \[2,2,2\] i32 must have shape \[2,2,2,2\] or \[2,1,2,2,2\]/,
    );
  });
});

Deno.test("softmaxCrossEntropy: gradient through the loss and through probs", () => {
  const rng = seededRng(18);
  const labels = Int32Array.from([0, 2, 1, -100, 2, 0]);
  const lt = () => tensor(labels, [2, 3]);
  gradCheck((xs) => softmaxCrossEntropy(xs[0], lt()).loss, [{
    data: randData([2, 3, 3], rng),
    shape: [2, 3, 3],
  }], { h: 1e-3 });
  gradCheck(
    (xs) => {
      const { loss, probs } = softmaxCrossEntropy(xs[0], lt());
      return add(mul(sum(probs, [0, 2]), sum(probs, [0, 2])), loss); // both outputs feed the result
    },
    [{ data: randData([2, 3, 3], rng), shape: [2, 3, 3] }],
    { h: 1e-3 },
  );
  gradCheck((xs) => slice(softmaxCrossEntropy(xs[0], lt()).probs, 1, 0, 1), [{
    data: randData([2, 3, 3], rng),
    shape: [2, 3, 3],
  }], { h: 1e-3 });
});

Deno.test("diceStats with i32 labels and soft targets, and its gradient", () => {
  const rng = seededRng(19);
  tidy(() => {
    const p = randData([2, 3, 4], rng, 0, 1);
    const labels = Int32Array.from([0, 1, 2, 1, 2, 2, 0, 0]);
    const ref = new Float32Array(9);
    for (let n = 0; n < 2; n++) {
      for (let k = 0; k < 3; k++) {
        for (let s = 0; s < 4; s++) {
          const pv = p[(n * 3 + k) * 4 + s], t = labels[n * 4 + s] === k ? 1 : 0;
          ref[k] += pv * t;
          ref[3 + k] += pv;
          ref[6 + k] += t;
        }
      }
    }
    const st = diceStats(tensor(p, [2, 3, 4]), tensor(labels, [2, 4]));
    deepStrictEqual(st.shape, [3, 3]);
    assertClose(st.toArray(), ref);
    const soft = new Float32Array(24);
    for (let n = 0; n < 2; n++) {
      for (let s = 0; s < 4; s++) soft[(n * 3 + labels[n * 4 + s]) * 4 + s] = 1;
    }
    assertClose(diceStats(tensor(p, [2, 3, 4]), tensor(soft, [2, 3, 4])).toArray(), ref);
  });
  gradCheck((xs) => diceStats(xs[0], tensor(Int32Array.from([0, 1, 2, 1, 2, 2, 0, 0]), [2, 4])), [
    { data: randData([2, 3, 4], rng, 0, 1), shape: [2, 3, 4] },
  ]);
});

Deno.test("adaptiveAvgPool3d (PyTorch bins) and l2Normalize, forward and gradients", () => {
  const rng = seededRng(20);
  tidy(() => {
    const x = Float32Array.from({ length: 5 }, (_, i) => i + 1);
    // 1-D along W: In 5 -> Out 3: bins [0,2) [1,4) [3,5)
    const y = adaptiveAvgPool3d(tensor(x, [1, 1, 1, 1, 5]), [1, 1, 3]);
    deepStrictEqual(y.shape, [1, 1, 1, 1, 3]);
    assertClose(y.toArray(), [1.5, 3, 4.5]);
    const n = l2Normalize(tensor([3, 4, 0, 0], [2, 2]), 1);
    assertClose(n.toArray(), [0.6, 0.8, 0, 0]);
  });
  gradCheck((xs) => adaptiveAvgPool3d(xs[0], [2, 1, 3]), [{
    data: randData([1, 2, 3, 3, 4], rng),
    shape: [1, 2, 3, 3, 4],
  }]);
  gradCheck((xs) => l2Normalize(xs[0], 1), [{ data: randData([2, 4, 3], rng), shape: [2, 4, 3] }], {
    h: 1e-3,
  });
});

Deno.test("optimiser kernels update in place like PyTorch", () => {
  tidy(() => {
    const p = tensor([1, -2], [2]), g = tensor([0.5, 0.5], [2]), buf = tensor([0, 0], [2]);
    sgdUpdate(p, g, buf, { lr: 0.1, momentum: 0.9, weightDecay: 0.1 });
    // v = g + wd*p = [0.6, 0.3]; p -= 0.1 v
    assertClose(p.toArray(), [0.94, -2.03]);
    assertClose(buf.toArray(), [0.6, 0.3]);
    const q = tensor([1], [1]), m = tensor([0], [1]), v = tensor([0], [1]);
    adamwUpdate(q, tensor([2], [1]), m, v, { lr: 0.1, weightDecay: 0.01, step: 1 });
    // decay: 1 - 0.1*0.01 = 0.999; first Adam step moves by lr * g/|g| (~0.1)
    assertClose(q.toArray(), [0.999 - 0.1 * 2 / (2 + 1e-8)], { atol: 1e-6 });
    const e = tensor([1, 1], [2]);
    emaUpdate(e, tensor([3, -1], [2]), 0.75);
    assertClose(e.toArray(), [1.5, 0.5]);
    throws(
      () => emaUpdate(e, tensor([1], [1]), 0.5),
      /param \[1\] f32 must have the shape of ema \[2\] f32/,
    );
  });
});
