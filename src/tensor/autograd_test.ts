import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { getBackend } from "../backend/backend.ts";
import { add, mul } from "../ops/binary.ts";
import { conv3d } from "../ops/conv.ts";
import { instanceNorm } from "../ops/norm.ts";
import { mean, sum } from "../ops/reduce.ts";
import { assertClose, gradCheck, randData, seededRng } from "../ops/test_util.ts";
import { leakyRelu, relu } from "../ops/unary.ts";
import { backward, zeroGrad } from "./autograd.ts";
import { ones, parameter, tensor } from "./factories.ts";
import { noGrad, tidy } from "./scope.ts";
import { detach, type Tensor } from "./tensor.ts";

const live = () => getBackend().memoryStats().liveBuffers;

Deno.test("gradients accumulate across two backward calls and zeroGrad clears them", () => {
  const w = parameter(new Float32Array([1, 2, 3]), [3]);
  tidy(() => {
    const x = tensor([2, -1, 0.5], [3]);
    backward(sum(mul(w, x), "all"));
    assertClose(w.grad!.toArray(), [2, -1, 0.5]);
    backward(sum(mul(w, x), "all"));
    assertClose(w.grad!.toArray(), [4, -2, 1]);
    equal(x.grad, null); // x does not require grad
  });
  equal(w.grad!.disposed, false); // grads are kept outside tidy
  const g = w.grad!;
  zeroGrad([w]);
  equal(w.grad, null);
  equal(g.disposed, true);
  w.dispose();
});

Deno.test("conv and norm parameter gradients accumulate in place into the existing grad (+= slot)", () => {
  const w = parameter(new Float32Array(2 * 1 * 27).fill(0.1), [2, 1, 3, 3, 3]);
  const b = parameter(new Float32Array([0, 0]), [2]);
  const gamma = parameter(new Float32Array([1, 1]), [2]);
  tidy(() => {
    const x = tensor(Float32Array.from({ length: 64 }, (_, i) => Math.sin(i)), [1, 1, 4, 4, 4]);
    const step = () =>
      backward(mean(mul(instanceNorm(conv3d(x, w, b, { padding: 1 }), gamma, null), x), "all"));
    step();
    const first = w.grad!.toArray(), firstG = gamma.grad!.toArray(), gw = w.grad, gg = gamma.grad;
    step();
    equal(w.grad, gw, "dw accumulated into the same tensor");
    equal(gamma.grad, gg, "dgamma accumulated into the same tensor");
    assertClose(w.grad!.toArray(), first.map((v) => 2 * v), { atol: 1e-6 });
    assertClose(gamma.grad!.toArray(), firstG.map((v) => 2 * v), { atol: 1e-6 });
  });
  for (const p of [w, b, gamma]) p.dispose();
});

Deno.test("shared and diamond-shaped graphs sum every path", () => {
  const w = parameter(new Float32Array([1.5, -0.5]), [2]);
  tidy(() => {
    backward(sum(add(w, w), "all"));
    assertClose(w.grad!.toArray(), [2, 2]);
    zeroGrad([w]);
    // c = a + a*a with a = relu(w): dc/dw = (1 + 2a) * [w > 0]
    const a = relu(w);
    backward(sum(add(a, mul(a, a)), "all"));
    assertClose(w.grad!.toArray(), [4, 0]);
  });
  w.dispose();
});

Deno.test("noGrad records nothing; detach shares data without a graph", () => {
  const w = parameter(new Float32Array([1, 2]), [2]);
  tidy(() => {
    const y = noGrad(() => mul(w, w));
    equal(y.requiresGrad, false);
    throws(() => backward(sum(y, "all")), /does not require grad/);
    const d = detach(w);
    equal(d.requiresGrad, false);
    assertClose(d.toArray(), [1, 2]);
    const z = mul(d, w);
    backward(sum(z, "all"));
    assertClose(w.grad!.toArray(), [1, 2]); // d is a constant
    equal(d.grad, null);
  });
  w.dispose();
});

Deno.test("backward with an explicit grad, and errors for non-scalar loss and reused graphs", () => {
  const w = parameter(new Float32Array([1, 2, 3]), [3]);
  tidy(() => {
    const y = mul(w, w);
    throws(() => backward(y), {
      message: "backward: loss [3] f32 has 3 elements; pass grad for a non-scalar loss",
    });
    backward(y, tensor([1, 0, -1], [3]));
    assertClose(w.grad!.toArray(), [2, 0, -6]);
    throws(() => backward(y, ones([3])), /does not require grad/); // graph was freed
  });
  w.dispose();
});

Deno.test("tidy disposes intermediates, keeps returned values, nests, and returns objects", () => {
  const base = live();
  const x = tensor([1, -2, 3], [3]);
  let inner: Tensor | null = null;
  const out = tidy(() => {
    const a = relu(x);
    const r = tidy(() => {
      inner = mul(a, a);
      return { y: add(inner, a), list: [relu(a)] };
    });
    equal(inner!.disposed, true);
    equal(a.disposed, false);
    return r;
  });
  equal(x.disposed, false);
  assertClose(out.y.toArray(), [2, 0, 12]);
  assertClose(out.list[0].toArray(), [1, 0, 3]);
  equal(live(), base + 3);
  out.y.dispose();
  out.list[0].dispose();
  x.dispose();
  equal(live(), base);
});

Deno.test("a tidy inside the forward pass keeps what backward needs until backward has run", () => {
  const w = parameter(new Float32Array([0.5, -1, 2]), [3]);
  const base = live();
  tidy(() => {
    const x = tensor([1, 2, 3], [3]);
    // relu's input (w*x) is disposed by the inner tidy, but relu's backward needs it
    const y = tidy(() => relu(mul(w, x)));
    const loss = sum(mul(y, y), "all");
    backward(loss);
    // d/dw sum(relu(w x)^2) = 2 relu(w x) x [w x > 0]
    assertClose(w.grad!.toArray(), [1, 0, 36]);
  });
  equal(live(), base + 1); // only w.grad remains
  w.dispose();
  equal(live(), base - 1);
});

Deno.test("a graph that never runs backward is freed with its outputs", () => {
  const w = parameter(new Float32Array(8).fill(0.3), [1, 1, 2, 2, 2]);
  const step = () =>
    tidy(() => {
      const x = tensor(Float32Array.from({ length: 64 }, (_, i) => i / 64), [1, 1, 4, 4, 4]);
      const h = tidy(() => leakyRelu(instanceNorm(conv3d(x, w, null), null, null)));
      sum(h, "all");
    });
  step(); // creates the cached constant gamma/beta of instance norm
  const base = live();
  step();
  equal(live(), base);
  w.dispose();
});

Deno.test("using a disposed tensor throws naming its shape and the op", () => {
  const x = tensor(new Float32Array(6), [2, 3]);
  x.dispose();
  throws(() => relu(x), { message: "Tensor [2,3] f32 was disposed (used by relu as x)" });
  throws(() => x.toArray(), { message: "Tensor [2,3] f32 was disposed (used by toArray)" });
  deepStrictEqual(x.disposed, true);
});

Deno.test("gradients are computed only for inputs that need them", () => {
  const w = parameter(new Float32Array(2 * 27).fill(0.1), [2, 1, 3, 3, 3]);
  tidy(() => {
    const x = tensor(new Float32Array(64).fill(1), [1, 1, 4, 4, 4]);
    const y = conv3d(x, w, null, { padding: 1 });
    backward(sum(y, "all"));
    equal(x.grad, null);
    deepStrictEqual(w.grad!.shape, [2, 1, 3, 3, 3]);
    // every weight of a 4^3 all-ones input with padding 1 sees between 27 and 64 ones
    const g = w.grad!.toArray();
    equal(g.every((v) => v >= 27 && v <= 64), true);
  });
  w.dispose();
});

Deno.test("an op output made under noGrad is a leaf: setting requiresGrad gives it a grad", () => {
  const w = parameter(new Float32Array([1, -2]), [2]);
  tidy(() => {
    const h = noGrad(() => mul(w, w));
    equal(h.isLeaf, true);
    h.requiresGrad = true;
    backward(sum(mul(h, tensor([3, 4], [2])), "all"));
    assertClose(h.grad!.toArray(), [3, 4]);
    equal(w.grad, null);
  });
  w.dispose();
});

Deno.test("a dropped graph releases the saved tensors the user disposed, once collected", async () => {
  const script = new URL("./testdata/gc_graph.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const r = JSON.parse(text.split("\n").pop()!);
  equal(r.held > r.base, true, `the graph held no buffers: ${text}`);
  equal(r.after, r.base, `buffers left after GC: ${text}`);
});

Deno.test("backward with releaseActivations frees saved intermediates as it goes, same gradients", () => {
  const rng = seededRng(30);
  const w1 = parameter(randData([8, 1, 3, 3, 3], rng, -0.3, 0.3), [8, 1, 3, 3, 3]);
  const w2 = parameter(randData([8, 8, 3, 3, 3], rng, -0.3, 0.3), [8, 8, 3, 3, 3]);
  const x = tensor(randData([1, 1, 8, 8, 8], rng), [1, 1, 8, 8, 8]);
  const be = getBackend();
  const run = (releaseActivations: boolean) => {
    const h: Tensor[] = [];
    let peak = 0, after = 0;
    tidy(() => {
      h.push(leakyRelu(conv3d(x, w1, null, { padding: 1 })));
      for (let i = 0; i < 4; i++) {
        h.push(leakyRelu(instanceNorm(conv3d(h[i], w2, null, { padding: 1 }), null, null)));
      }
      const loss = mean(mul(h[4], h[4]), "all");
      be.resetPeak();
      backward(loss, undefined, { releaseActivations });
      peak = be.memoryStats().peakBytes;
      after = be.memoryStats().liveBuffers;
      equal(loss.disposed, false);
      equal(h[0].disposed, releaseActivations);
    });
    const grads = [w1.grad!.toArray(), w2.grad!.toArray()];
    zeroGrad([w1, w2]);
    return { peak, after, grads };
  };
  const keep = run(false), rel = run(true);
  assertClose(rel.grads[0], keep.grads[0]);
  assertClose(rel.grads[1], keep.grads[1]);
  ok(
    rel.after < keep.after,
    `live buffers after backward: ${rel.after} with release, ${keep.after} without`,
  );
  ok(rel.peak <= keep.peak, `peak bytes: ${rel.peak} with release, ${keep.peak} without`);
  for (const t of [w1, w2, x]) t.dispose();
});

Deno.test("a second backward through a freed graph throws; retainGraph allows it", () => {
  const w = parameter(new Float32Array([1, 2]), [2]);
  const base = live();
  tidy(() => {
    const f = relu(mul(w, w));
    const l1 = sum(f, "all"), l2 = mean(f, "all");
    backward(l1);
    throws(() => backward(l2), /comes from relu, whose graph an earlier backward already freed/);
    zeroGrad([w]);
    const g = relu(mul(w, w));
    const m1 = sum(g, "all"), m2 = mean(g, "all");
    backward(m1, undefined, { retainGraph: true });
    backward(m2);
    // d/dw (sum + mean)(w^2) = 2w + w = 3w
    assertClose(w.grad!.toArray(), [3, 6]);
  });
  equal(live(), base + 1); // the retained graph went with its outputs; w.grad stays
  w.dispose();
});

Deno.test("in-place gradient accumulation mixes blocked (C = 16) and plain gradients correctly", () => {
  const rng = seededRng(32);
  const xs = [1, 16, 2, 2, 2];
  const ws = [16, 16, 1, 1, 1];
  // x gets gradients from conv (blocked layout natively) and from mul (plain), twice over.
  gradCheck(
    (t) => {
      const h = conv3d(t[0], t[1], null);
      return add(add(h, mul(t[0], t[0])), conv3d(h, t[1], null));
    },
    [{ data: randData(xs, rng), shape: xs }, { data: randData(ws, rng, -0.3, 0.3), shape: ws }],
    { samples: 6, h: 1e-3, atol: 5e-3 },
  );
});
