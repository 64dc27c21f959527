import assert from "node:assert/strict";
import { planUNet } from "../nn/plan.ts";
import { parseTrainConfig } from "./config.ts";
import { modelSignature, sameModel } from "./run.ts";

const plan = planUNet({ patchSize: [8, 32, 32], spacing: [1, 1, 1], maxLevels: 3, baseWidth: 4 });

function sig(set: Record<string, unknown> = {}): string {
  const { network, ...rest } = set as { network?: Record<string, unknown> };
  const c = parseTrainConfig({
    task: "cardiac",
    network: { baseWidth: 4, maxLevels: 3, ...network },
    ...rest,
  });
  return modelSignature(c, ["C0", "LGE"], 4, plan);
}

Deno.test("model signatures: runs written before later config keys still match; real changes do not", () => {
  const now = sig();
  const o = JSON.parse(now);
  // A run from before the ViT backbone existed: no backbone and no vit block, other key order.
  const { backbone: _b, vit: _v, ...oldNet } = o.network;
  const old = JSON.stringify({ meanTeacher: o.meanTeacher, ...o, network: oldNet });
  assert.notEqual(old, now);
  assert.ok(sameModel(old, now));
  // ViT settings do not matter under the U-Net backbone.
  assert.ok(sameModel(sig({ network: { vit: { dim: 64 } } }), now));
  // A ViT run from before relPos/windowSize/globalAttnIndexes: same model as those keys at default.
  const vit = sig({ network: { backbone: "vit", vit: { patchSize: 8, dim: 16, heads: 2 } } });
  const vo = JSON.parse(vit);
  const { relPos: _r, windowSize: _w, globalAttnIndexes: _g, ...oldVit } = vo.network.vit;
  assert.ok(sameModel(JSON.stringify({ ...vo, network: { ...vo.network, vit: oldVit } }), vit));
  // Loading options (weights file, prefix, strict) are not part of the model.
  assert.ok(
    sameModel(
      sig({ network: { backbone: "vit", vit: { patchSize: 8, dim: 16, heads: 2, strict: true } } }),
      vit,
    ),
  );
  // Real differences.
  assert.ok(
    !sameModel(
      sig({ network: { backbone: "vit", vit: { patchSize: 8, dim: 16, heads: 2, relPos: true } } }),
      vit,
    ),
  );
  assert.ok(!sameModel(sig({ network: { baseWidth: 8 } }), now));
  assert.ok(!sameModel(sig({ network: { fusion: "concat" } }), now));
  assert.ok(!sameModel(sig({ method: "mutual" }), now));
  assert.ok(!sameModel(vit, now));
});
