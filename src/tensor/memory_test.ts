// Memory stability: many forward+backward steps of a small conv -> instance norm -> leaky ReLU
// stack must not leak native buffers, bytes or resident memory.
import { equal, ok } from "node:assert/strict";
import { getBackend } from "../backend/backend.ts";
import { mul } from "../ops/binary.ts";
import { conv3d } from "../ops/conv.ts";
import { instanceNorm } from "../ops/norm.ts";
import { sgdUpdate } from "../ops/optim.ts";
import { mean } from "../ops/reduce.ts";
import { randData, seededRng } from "../ops/test_util.ts";
import { leakyRelu } from "../ops/unary.ts";
import { backward, zeroGrad } from "./autograd.ts";
import { parameter, tensor, zeros } from "./factories.ts";
import { tidy } from "./scope.ts";

Deno.test("1,000 forward+backward steps keep live buffers, bytes and RSS constant", () => {
  const be = getBackend();
  // Tiny shapes: one thread avoids OpenMP barrier costs when test processes share the cores.
  const threads = be.threads;
  be.setThreads(1);
  const rng = seededRng(21);
  const w1 = parameter(randData([4, 2, 3, 3, 3], rng, -0.3, 0.3), [4, 2, 3, 3, 3]);
  const b1 = parameter(new Float32Array(4), [4]);
  const g1 = parameter(new Float32Array(4).fill(1), [4]);
  const be1 = parameter(new Float32Array(4), [4]);
  const w2 = parameter(randData([2, 4, 3, 3, 3], rng, -0.3, 0.3), [2, 4, 3, 3, 3]);
  const params = [w1, b1, g1, be1, w2];
  const bufs = params.map((p) => zeros(p.shape).keep());
  const x = tensor(randData([2, 2, 6, 6, 6], rng), [2, 2, 6, 6, 6]);
  const target = tensor(randData([2, 2, 6, 6, 6], rng), [2, 2, 6, 6, 6]);

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

  for (let i = 0; i < 100; i++) step();
  const before = be.memoryStats();
  const rss0 = Deno.memoryUsage().rss;
  for (let i = 0; i < 900; i++) step();
  const after = be.memoryStats();
  const rss1 = Deno.memoryUsage().rss;
  equal(after.liveBuffers, before.liveBuffers, "live buffers");
  equal(after.liveBytes, before.liveBytes, "live bytes");
  ok(rss1 <= rss0 * 1.05, `RSS grew from ${rss0} to ${rss1} bytes (more than 5%)`);
  for (const t of [...params, ...bufs, x, target]) t.dispose();
  equal(be.memoryStats().liveBuffers, before.liveBuffers - 12);
  be.setThreads(threads);
});
