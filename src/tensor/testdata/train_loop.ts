// Run by memory_test.ts in its own process (so RSS is this loop's alone): 1,000 training steps of
// a small conv -> instance norm -> leaky ReLU -> strided conv stack, printing native memory
// statistics and RSS after the warm-up steps (default 300) and at the end.
import { getBackend, initBackend } from "../../backend/backend.ts";
import { mul } from "../../ops/binary.ts";
import { conv3d } from "../../ops/conv.ts";
import { instanceNorm } from "../../ops/norm.ts";
import { sgdUpdate } from "../../ops/optim.ts";
import { mean } from "../../ops/reduce.ts";
import { randData, seededRng } from "../../ops/test_util.ts";
import { leakyRelu } from "../../ops/unary.ts";
import { backward, zeroGrad } from "../autograd.ts";
import { parameter, tensor, zeros } from "../factories.ts";
import { tidy } from "../scope.ts";

// Tiny shapes: one thread avoids OpenMP barrier costs when test processes share the cores.
initBackend({ threads: 1 });
const be = getBackend();
const steps = Number(Deno.args[0] ?? 1000);
const rng = seededRng(21);
const w1 = parameter(randData([4, 2, 3, 3, 3], rng, -0.3, 0.3), [4, 2, 3, 3, 3]);
const b1 = parameter(new Float32Array(4), [4]);
const g1 = parameter(new Float32Array(4).fill(1), [4]);
const be1 = parameter(new Float32Array(4), [4]);
const w2 = parameter(randData([2, 4, 3, 3, 3], rng, -0.3, 0.3), [2, 4, 3, 3, 3]);
const params = [w1, b1, g1, be1, w2];
const bufs = params.map((p) => zeros(p.shape).keep());
const x = tensor(randData([2, 2, 6, 6, 6], rng), [2, 2, 6, 6, 6]);

const step = () => {
  tidy(() => {
    const h = tidy(() => leakyRelu(instanceNorm(conv3d(x, w1, b1, { padding: 1 }), g1, be1)));
    const y = conv3d(h, w2, null, { padding: 1, stride: 2 });
    const loss = mean(mul(y, y), "all");
    backward(loss);
    loss.item();
  });
  params.forEach((p, i) => sgdUpdate(p, p.grad!, bufs[i], { lr: 1e-3, momentum: 0.9 }));
  zeroGrad(params);
};

const warm = Math.min(Number(Deno.args[1] ?? 300), steps);
for (let i = 0; i < warm; i++) step();
// Collect garbage before each reading when run with --expose-gc (RSS then shows retained memory).
const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});
gc();
const before = { ...be.memoryStats(), rss: Deno.memoryUsage().rss };
for (let i = warm; i < steps; i++) step();
gc();
const after = { ...be.memoryStats(), rss: Deno.memoryUsage().rss };
for (const t of [...params, ...bufs, x]) t.dispose();
const end = be.memoryStats();
console.log(JSON.stringify({ before, after, endLiveBuffers: end.liveBuffers }));
