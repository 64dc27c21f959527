import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { backward, tidy, zeroGrad } from "../engine.ts";
import { Rng } from "../data/rng.ts";
import { saveSafetensorsFrom } from "../io/load_weights.ts";
import type { CmcNet } from "../nn/cmc.ts";
import { planUNet } from "../nn/plan.ts";
import { VitEncoder, VitUNet } from "../nn/vit.ts";
import { parseTrainConfig } from "./config.ts";
import { buildMethod, type MethodModel } from "./methods.ts";
import { AdamW } from "./optim.ts";
import { type HostBatch, toEngineBatch } from "./trainer.ts";

const PATCH: [number, number, number] = [4, 16, 16];
const VIT = { patchSize: 4, dim: 8, depth: 2, heads: 2, mlpRatio: 2 };

function tinyModel(
  method: string,
  set: Record<string, unknown> = {},
  pretrained = true,
): MethodModel {
  const { network, ...rest } = set as { network?: Record<string, unknown> };
  const config = parseTrainConfig({
    task: "cardiac",
    method,
    patchSize: PATCH,
    network: { baseWidth: 4, maxLevels: 3, backbone: "vit", vit: VIT, ...network },
    ...rest,
  });
  const plan = planUNet({ patchSize: PATCH, spacing: [1, 1, 1], maxLevels: 3, baseWidth: 4 });
  const root = new Rng(7);
  return buildMethod({
    config,
    plan,
    numClasses: 3,
    modalities: 2,
    primary: 0,
    pretrained,
    rng: () => {
      const r = root.derive("m", root.nextU32());
      return () => r.next();
    },
  });
}

function batch(seed: number): HostBatch {
  const r = new Rng(seed);
  const n = PATCH[0] * PATCH[1] * PATCH[2];
  const img = () => Float32Array.from({ length: n }, () => r.normal());
  const lab = new Int32Array(n).map((_, i) => (i % 16 < 5 ? 1 : i % 16 > 10 ? 2 : 0));
  return {
    patch: PATCH,
    labeled: { images: [img(), img()], labels: [lab, lab.slice()], count: 1 },
    unlabeled: { images: [img(), img()], count: 1 },
  };
}

Deno.test("ViT backbone: CMC trains 3 iterations with finite losses and changing weights; frozen blocks stay put", () => {
  const m = tinyModel("cmc", {
    network: { vit: { ...VIT, adapterDim: 2, frozenBlocks: 1 } },
    loss: { rampFraction: 0 },
  });
  const net = m.student as CmcNet;
  assert.ok(net.encoders.items.every((e) => e instanceof VitEncoder));
  const named = m.student.namedParameters();
  const before = new Map(named.map(([n, p]) => [n, p.toArray().slice()]));
  const opt = new AdamW(named);
  const losses: number[] = [];
  const t0 = performance.now();
  for (let it = 0; it < 3; it++) {
    const terms = tidy(() => {
      const r = m.loss(toEngineBatch(batch(it + 1)), it, 3);
      backward(r.loss);
      return r.terms;
    });
    assert.ok(
      Number.isFinite(terms.loss) && "csc" in terms && "cac" in terms,
      JSON.stringify(terms),
    );
    losses.push(terms.loss);
    opt.step(1e-3);
    zeroGrad(m.student.parameters());
  }
  const ms = (performance.now() - t0) / 3;
  const changed = (n: string) => {
    const p = named.find(([k]) => k === n)![1].toArray();
    return p.some((v, i) => v !== before.get(n)![i]);
  };
  for (const enc of ["encoders.0.", "encoders.1."]) {
    assert.ok(changed(`${enc}blocks.1.attn.qkv.weight`), `${enc} trainable block did not change`);
    assert.ok(
      changed(`${enc}blocks.0.adapter.fc2.weight`),
      `${enc} adapter of a frozen block did not change`,
    );
    assert.ok(changed(`${enc}skips.1.proj.weight`));
    for (
      const n of [
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.lin1.weight",
        "patch_embed.proj.weight",
        "pos_embed",
      ]
    ) {
      assert.ok(!changed(enc + n), `frozen ${enc}${n} changed`);
    }
  }
  assert.ok(changed("decoders.0.head.weight") && changed("fusion.b1.conv.weight"));
  console.log(
    `ViT CMC step at ${PATCH.join("x")}, batch 1+1: ${ms.toFixed(0)} ms; losses ${
      losses.map((l) => l.toFixed(4)).join(", ")
    }`,
  );
  opt.dispose();
  m.dispose();
});

Deno.test("ViT backbone: every method builds ViT encoders and computes a finite loss", () => {
  for (const method of ["supervised", "early-fusion", "mean-teacher", "mutual"]) {
    const m = tinyModel(method, method === "mutual" ? { loss: { pseudoThreshold: 0 } } : {});
    const encoder = m.student instanceof VitUNet
      ? m.student.encoder
      : (m.student as CmcNet).encoders.items[0];
    assert.ok(encoder instanceof VitEncoder, method);
    const terms = tidy(() => {
      const r = m.loss(toEngineBatch(batch(5)), 5, 10);
      backward(r.loss);
      return r.terms;
    });
    assert.ok(Number.isFinite(terms.loss), `${method}: ${JSON.stringify(terms)}`);
    zeroGrad(m.student.parameters());
    m.dispose();
  }
});

Deno.test("ViT backbone: network.vit.weights loads into every encoder (and a one-channel embedding into early fusion)", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "vit-weights-"));
  try {
    const src = tinyModel("cmc");
    const enc0 = (src.student as CmcNet).encoders.items[0] as VitEncoder;
    const file = path.join(dir, "sam_med3d_tiny.safetensors");
    saveSafetensorsFrom(enc0, file, { prefix: "image_encoder." });
    const m = tinyModel("cmc", {
      network: { vit: { ...VIT, weights: file, prefix: "image_encoder.", strict: true } },
    });
    for (const e of (m.student as CmcNet).encoders.items as VitEncoder[]) {
      assert.deepEqual(
        e.blocks.items[1].mlp.lin2.weight.toArray(),
        enc0.blocks.items[1].mlp.lin2.weight.toArray(),
      );
      assert.deepEqual(e.pos_embed.toArray(), enc0.pos_embed.toArray());
    }
    // Prediction rebuilds the model and then reads a checkpoint: no weights file is needed then.
    tinyModel("cmc", {
      network: { vit: { ...VIT, weights: path.join(dir, "absent.safetensors") } },
    }, false).dispose();
    const ef = tinyModel("early-fusion", {
      network: { vit: { ...VIT, weights: file, prefix: "image_encoder." } },
    });
    assert.equal((ef.student as VitUNet).encoder.patch_embed.proj.weight.shape[1], 2);
    assert.throws(
      () =>
        tinyModel("cmc", {
          network: { vit: { ...VIT, weights: path.join(dir, "absent.safetensors") } },
        }),
      /Cannot read safetensors file .*absent\.safetensors/,
    );
    for (const x of [src, m, ef]) x.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("ViT backbone: config combinations are validated with the keys named", () => {
  const base = { task: "cardiac", patchSize: [8, 80, 80], network: { backbone: "vit" } };
  assert.equal(parseTrainConfig(base).network.vit.patchSize, 8);
  assert.equal(parseTrainConfig({ task: "cardiac" }).network.backbone, "unet");
  const bad = (network: Record<string, unknown>, patchSize = [8, 80, 80]) => () =>
    parseTrainConfig({ ...base, patchSize, network: { backbone: "vit", ...network } });
  assert.throws(
    bad({ vit: { patchSize: 16 } }),
    /network\.vit\.patchSize: 16 does not divide patchSize \[8, 80, 80\] along D \(8 voxels\)/,
  );
  assert.throws(
    bad({ vit: { patchSize: [8, 16, 12] } }, [8, 32, 48]),
    /network\.vit\.patchSize: 12 along W is not a power of 2/,
  );
  assert.throws(
    bad({ vit: { dim: 10, heads: 4 } }),
    /network\.vit\.heads: 4 does not divide network\.vit\.dim 10/,
  );
  assert.throws(
    bad({ vit: { frozenBlocks: 9 } }),
    /network\.vit\.frozenBlocks: 9 exceeds network\.vit\.depth 4/,
  );
  assert.throws(bad({ vit: { dims: 3 } }), /network\.vit: Unrecognized key: "dims"/);
  assert.throws(
    () => parseTrainConfig({ task: "cardiac", network: { vit: { weights: "x.safetensors" } } }),
    /network\.vit\.weights: set, but network\.backbone is "unet"/,
  );
});

Deno.test("ViT backbone: relPos, windowSize and globalAttnIndexes from the config reach every encoder", () => {
  const m = tinyModel("cmc", {
    network: { vit: { ...VIT, relPos: true, windowSize: 2, globalAttnIndexes: [1] } },
  });
  try {
    const names = m.student.namedParameters().map(([n]) => n);
    // SAM's names: decomposed relative-position tables in every block of both encoders.
    for (const enc of [0, 1]) {
      for (const b of [0, 1]) {
        for (const ax of ["d", "h", "w"]) {
          const want = `.${enc}.blocks.${b}.attn.rel_pos_${ax}`;
          assert.ok(
            names.some((n) => n.endsWith(want)),
            `${want} in ${names.filter((n) => n.includes("rel_pos")).join(", ")}`,
          );
        }
      }
    }
    const terms = tidy(() => {
      const r = m.loss(toEngineBatch(batch(3)), 0, 3);
      backward(r.loss);
      return r.terms;
    });
    assert.ok(Number.isFinite(terms.loss), JSON.stringify(terms));
  } finally {
    m.dispose();
  }
});
