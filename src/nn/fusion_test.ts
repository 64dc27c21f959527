import assert from "node:assert/strict";
import { backward, mean, tensor, tidy } from "../engine.ts";
import { Rng } from "../data/rng.ts";
import { FusionLayer } from "./cmc.ts";

function inputs(seed: number) {
  const r = new Rng(seed);
  return [0, 1].map(() =>
    tensor(Float32Array.from({ length: 2 * 8 * 64 }, () => r.normal()), [2, 8, 4, 4, 4], {
      requiresGrad: true,
    })
  );
}

Deno.test("fusion: with the zero gate the layer starts as the identity and still learns its gate; without it, it adds G", () => {
  const r = new Rng(5);
  const rng = () => r.next();
  const zero = new FusionLayer(2, 8, "add", { rng, zeroGate: true });
  const plain = new FusionLayer(2, 8, "add", { rng });
  tidy(() => {
    const ys = inputs(1);
    const zs = zero.forward(ys);
    zs.forEach((z, m) =>
      assert.deepEqual(z.toArray(), ys[m].toArray(), `branch ${m} unchanged at step 0`)
    );
    backward(mean(zs[0], "all"));
    const g = zero.alpha!.grad!.toArray()[0];
    assert.ok(Number.isFinite(g) && g !== 0, `alpha gets a gradient (${g})`);
    const ps = plain.forward(ys);
    const d = (ps[0].toArray() as Float32Array).map((v, i) =>
      v - (ys[0].toArray() as Float32Array)[i]
    );
    assert.ok(d.every((v) => v > 0 && v < 1), "the paper's layer adds sigmoid(...) in (0, 1)");
  });
  zero.dispose();
  plain.dispose();
});
