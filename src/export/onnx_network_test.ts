/**
 * ONNX export of freshly built networks of every U-Net-backbone kind: the file runs in ONNX Runtime
 * and gives the engine's logits on a random patch (max abs difference 1e-4).
 */
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { assign, noGrad, tensor, tidy } from "../engine.ts";
import { Rng } from "../data/rng.ts";
import { planUNet } from "../nn/plan.ts";
import { parseTrainConfig } from "../train/config.ts";
import { buildMethod, type MethodModel } from "../train/methods.ts";
import { networkGraph } from "./onnx_network.ts";

const PATCH: [number, number, number] = [4, 16, 16];
const VIT = { patchSize: 4, dim: 8, depth: 2, heads: 2, mlpRatio: 2 };

function tinyModel(method: string, network: Record<string, unknown> = {}): MethodModel {
  const config = parseTrainConfig({
    task: "cardiac",
    method,
    patchSize: PATCH,
    network: { baseWidth: 8, maxLevels: 3, ...network },
  });
  const plan = planUNet({ patchSize: PATCH, spacing: [1, 1, 1], maxLevels: 3, baseWidth: 8 });
  const root = new Rng(11);
  const model = buildMethod({
    config,
    plan,
    numClasses: 3,
    modalities: 2,
    primary: 1,
    regions: null,
    rng: () => {
      const r = root.derive("m", root.nextU32());
      return () => r.next();
    },
  });
  // Parameters that start at 0 or 1 (norm affines, MIA's gamma, the fusion gate scale) get random
  // values, so every term of the graph is exercised.
  const r = new Rng(3);
  for (const [name, p] of model.student.namedParameters()) {
    const norm = /(norm\d?\.|norms\.\d+\.|neck\.[13]\.)(weight|bias)$/.test(name);
    if (norm || /gamma$|alpha$|rel_pos_[dhw]$|adapter\.fc2\.weight$/.test(name)) {
      const offset = norm && name.endsWith("weight") ? 1 : 0;
      assign(p, Float32Array.from({ length: p.size }, () => 0.5 * r.normal() + offset));
    }
  }
  model.student.setTraining(false);
  return model;
}

/** Max abs difference between the engine's and ONNX Runtime's logits on one random batch. */
export async function compareOnnx(
  model: MethodModel,
  modalities: string[],
  patch: [number, number, number],
  batch = 2,
): Promise<number> {
  const net = networkGraph(model, modalities);
  const bytes = net.graph.encode({ graphName: "test" });
  const session = await ort.InferenceSession.create(bytes);
  const r = new Rng(17);
  const n = batch * patch[0] * patch[1] * patch[2];
  const images = modalities.map(() => Float32Array.from({ length: n }, () => r.normal()));
  const want = tidy(() =>
    noGrad(() =>
      model.predict(images.map((a) => tensor(a, [batch, 1, ...patch]))).map((t) =>
        t.toArray() as Float32Array
      )
    )
  );
  const feeds = Object.fromEntries(
    net.inputs.map((p) => [
      p.name,
      new ort.Tensor("float32", images[modalities.indexOf(p.modality)], [batch, 1, ...patch]),
    ]),
  );
  const got = await session.run(feeds);
  let worst = 0, scale = 0;
  net.outputs.forEach((p, i) => {
    const g = got[p.name];
    assert.deepEqual([...g.dims], [batch, net.channels, ...patch]);
    const a = g.data as Float32Array;
    assert.equal(a.length, want[i].length);
    for (let j = 0; j < a.length; j++) {
      worst = Math.max(worst, Math.abs(a[j] - want[i][j]));
      scale = Math.max(scale, Math.abs(want[i][j]));
    }
  });
  // The comparison means something only when the logits are not all near zero.
  assert.ok(scale > 0.1, `largest logit ${scale}`);
  await session.release();
  return worst;
}

const KINDS: [string, string, Record<string, unknown>][] = [
  ["supervised", "supervised (deep-supervision heads dropped)", { deepSupervision: 1 }],
  ["supervised", "supervised, group norm", { norm: "group", deepSupervision: 0 }],
  ["early-fusion", "early fusion", {}],
  ["mean-teacher", "mean teacher (its student)", {}],
  ["cmc", "CMC (MIA, add fusion with gate scale)", {}],
  ["cmc", "CMC (concat fusion, shared decoder)", { fusion: "concat", sharedDecoder: true }],
  ["cmc", "CMC (add fusion without gate scale, no MIA)", { fusionZeroGate: false, mia: false }],
  ["mutual", "mutual learning", {}],
  ["supervised", "ViT-backbone supervised", { backbone: "vit", vit: VIT }],
  ["early-fusion", "ViT-backbone early fusion (adapters, relative positions)", {
    backbone: "vit",
    vit: { ...VIT, adapterDim: 4, relPos: true },
  }],
  ["cmc", "ViT-backbone CMC (windowed attention, relative positions)", {
    backbone: "vit",
    vit: { ...VIT, windowSize: [1, 3, 3], globalAttnIndexes: [1], relPos: true },
  }],
  ["cmc", "ViT-backbone CMC (neck wider than the deepest level)", {
    backbone: "vit",
    vit: { ...VIT, patchSize: [2, 4, 4], neckChannels: 12 },
  }],
];

for (const [method, label, network] of KINDS) {
  Deno.test(`ONNX export of a fresh ${label} network matches the engine`, async () => {
    const model = tinyModel(method, network);
    try {
      const names = model.student.namedParameters().map(([n]) => n);
      assert.equal(names.some((n) => n.endsWith("pos_embed")), network.backbone === "vit");
      const d = await compareOnnx(model, ["C0", "LGE"], PATCH);
      assert.ok(d <= 1e-4, `max abs logit difference ${d}`);
    } finally {
      model.dispose();
    }
  });
}
