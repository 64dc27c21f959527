import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import {
  add,
  assign,
  backward,
  mean,
  mul,
  noGrad,
  sum,
  type Tensor,
  tensor,
  tidy,
  zeroGrad,
} from "../engine.ts";
import { loadSafetensorsInto, saveSafetensorsFrom } from "../io/load_weights.ts";
import { readSafetensors, writeSafetensors } from "../io/safetensors.ts";
import { gradCheck } from "../ops/test_util.ts";
import type { Module } from "./module.ts";
import { planUNet, type UNetPlan } from "./plan.ts";
import { UNetEncoder } from "./unet.ts";
import {
  channelsToTokens,
  LayerNorm,
  loadVitWeights,
  relPosRows,
  resampleRelPos,
  VitBlock,
  VitEncoder,
  type VitSettings,
  windowPartition,
  windowUnpartition,
} from "./vit.ts";
import { seededRng as rng } from "../ops/test_util.ts";
import type { Triple } from "./layers.ts";
import { CmcNet } from "./cmc.ts";
import { supervisedLoss } from "../losses/supervised.ts";
import { cscLoss } from "../losses/csc.ts";
import { cacLoss } from "../losses/cac.ts";
import { AdamW } from "../train/optim.ts";
import { slice as engineSlice, softmax } from "../engine.ts";

function randn(n: number, r: () => number, scale = 1): Float32Array {
  return Float32Array.from(
    { length: n },
    () => scale * Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r()),
  );
}

const TINY: VitSettings = { patch: 4, dim: 8, depth: 2, heads: 2, mlpRatio: 2 };
/** Strides [1,1,1], [2,2,2], [4,4,4], [8,8,8]: the grid (stride 4) is finer than the deepest level. */
const PLAN: UNetPlan = planUNet({
  patchSize: [8, 16, 16],
  spacing: [1, 1, 1],
  maxLevels: 4,
  baseWidth: 4,
  minFeatureSize: 1,
});

function vit(
  settings: Partial<VitSettings> = {},
  seed = 1,
  plan = PLAN,
  inChannels = 1,
): VitEncoder {
  return new VitEncoder({ ...TINY, ...settings, inChannels, plan, rng: rng(seed) });
}

function input(plan: UNetPlan, seed: number, b = 2, c = 1): Tensor {
  return tensor(randn(b * c * plan.patchSize.reduce((p, s) => p * s, 1), rng(seed)), [
    b,
    c,
    ...plan.patchSize,
  ]);
}

/** Randomises every parameter (so zero-initialised adapters and norms are exercised too). */
function randomize(m: Module, seed: number, scale = 0.3): void {
  const r = rng(seed);
  for (const p of m.parameters()) assign(p, randn(p.size, r, scale));
}

Deno.test("ViT: layer norm over token channels (instance norm of rows; groupNorm with 1 group) matches a direct computation", () => {
  const r = rng(3);
  const [T, C] = [7, 12];
  const x = randn(T * C, r, 3);
  const ln = new LayerNorm(C, 1e-6);
  assign(ln.weight, randn(C, r));
  assign(ln.bias, randn(C, r));
  const w = ln.weight.toArray(), b = ln.bias.toArray();
  for (const kind of ["instanceNorm", "groupNorm"]) {
    const y = tidy(() => {
      const xt = tensor(x, [1, T, C]);
      return (kind === "groupNorm" ? ln.forwardGroupNorm(xt) : ln.forward(xt))
        .toArray() as Float32Array;
    });
    for (let t = 0; t < T; t++) {
      let mu = 0, v = 0;
      for (let c = 0; c < C; c++) mu += x[t * C + c] / C;
      for (let c = 0; c < C; c++) v += (x[t * C + c] - mu) ** 2 / C;
      for (let c = 0; c < C; c++) {
        const want = ((x[t * C + c] - mu) / Math.sqrt(v + 1e-6)) * w[c] + b[c];
        assert.ok(
          Math.abs(y[t * C + c] - want) < 1e-5,
          `${kind}: token ${t} channel ${c}: ${y[t * C + c]} vs ${want}`,
        );
      }
    }
  }
  ln.dispose();
});

Deno.test("ViT: channelsToTokens is an exact transpose", () => {
  const x = randn(2 * 5 * 3, rng(4), 100);
  const y = tidy(() => channelsToTokens(tensor(x, [2, 5, 3])).toArray() as Float32Array);
  for (let b = 0; b < 2; b++) {
    for (let c = 0; c < 5; c++) {
      for (let n = 0; n < 3; n++) assert.equal(y[b * 15 + n * 5 + c], x[b * 15 + c * 3 + n]);
    }
  }
});

Deno.test("ViT: relPosRows gathers R[i, j] = table[i - j + g - 1] exactly, with the gradient of the gather", () => {
  for (const g of [1, 2, 3, 5]) {
    const c = 3;
    const table = randn((2 * g - 1) * c, rng(10 + g));
    const y = tidy(() => relPosRows(tensor(table, [2 * g - 1, c]), g).toArray() as Float32Array);
    assert.equal(y.length, g * g * c);
    for (let i = 0; i < g; i++) {
      for (let j = 0; j < g; j++) {
        for (let k = 0; k < c; k++) {
          assert.equal(
            y[(i * g + j) * c + k],
            table[(i - j + g - 1) * c + k],
            `g ${g} [${i},${j},${k}]`,
          );
        }
      }
    }
  }
  gradCheck((xs) => relPosRows(xs[0], 3), [{ data: randn(5 * 2, rng(9)), shape: [5, 2] }]);
});

Deno.test("ViT: outputs have the U-Net encoder's shapes for the same plan (grid finer and coarser than levels)", () => {
  for (
    const [plan, settings] of [
      [PLAN, {}],
      [PLAN, { patch: 8, adapterDim: 4, neckChannels: 6 }],
      // Anisotropic plan (D pooled less than H, W) with a per-axis patch size.
      [
        planUNet({
          patchSize: [4, 16, 16],
          spacing: [3, 1, 1],
          maxLevels: 4,
          baseWidth: 4,
          minFeatureSize: 1,
        }),
        { patch: [2, 4, 4] },
      ],
    ] as [UNetPlan, Partial<VitSettings>][]
  ) {
    const v = vit(settings, 1, plan);
    const u = new UNetEncoder(1, plan, { rng: rng(2) });
    tidy(() => {
      const x = input(plan, 5);
      const a = v.forward(x), b = u.forward(x);
      assert.deepEqual(
        a.skips.map((s) => s.shape),
        b.skips.map((s) => s.shape),
        `plan ${JSON.stringify(plan.levels)}`,
      );
      assert.deepEqual(a.deep.shape, b.deep.shape);
      assert.deepEqual(v.widths, u.widths);
      for (const t of [...a.skips, a.deep]) {
        assert.ok((t.toArray() as Float32Array).every(Number.isFinite));
      }
    });
    v.dispose();
    u.dispose();
  }
});

Deno.test("ViT: SAM-Med3D parameter names and shapes", () => {
  const v = vit({ adapterDim: 4 });
  const shapes = new Map(v.namedParameters().map(([n, p]) => [n, p.shape.join("x")]));
  const want: Record<string, string> = {
    "patch_embed.proj.weight": "8x1x4x4x4",
    "patch_embed.proj.bias": "8",
    pos_embed: "1x2x4x4x8",
    "blocks.0.norm1.weight": "8",
    "blocks.0.attn.qkv.weight": "24x8",
    "blocks.0.attn.qkv.bias": "24",
    "blocks.0.attn.proj.weight": "8x8",
    "blocks.1.norm2.bias": "8",
    "blocks.1.mlp.lin1.weight": "16x8",
    "blocks.1.mlp.lin2.weight": "8x16",
    "blocks.1.adapter.fc1.weight": "4x8",
    "neck.0.weight": "32x8x1x1x1",
    "neck.1.weight": "32",
    "neck.2.weight": "32x32x3x3x3",
    "neck.3.bias": "32",
  };
  for (const [n, s] of Object.entries(want)) assert.equal(shapes.get(n), s, n);
  v.dispose();
});

Deno.test("ViT: rejects inputs of another size and patch sizes that do not divide the patch", () => {
  const v = vit();
  assert.throws(
    () => tidy(() => v.forward(tensor(new Float32Array(8 * 8 * 8), [1, 1, 8, 8, 8]))),
    /ViT encoder: input \[1,1,8,8,8\] f32 must be \[B, 1, 8, 16, 16\]: the learned position embedding covers a 2x4x4 grid/,
  );
  v.dispose();
  assert.throws(
    () => vit({ patch: 3 }),
    /patch size 3 along D does not divide the input patch size \[8, 16, 16\]/,
  );
  assert.throws(() => vit({ heads: 3 }), /dim 8 is not divisible by heads 3/);
  assert.throws(() => vit({ frozenBlocks: 3 }), /frozenBlocks 3 must be in \[0, depth = 2\]/);
});

Deno.test("ViT: gradients reach every trainable parameter and no frozen one", () => {
  const v = vit({ adapterDim: 4, frozenBlocks: 1 });
  randomize(v, 9, 0.2);
  const frozen = v.namedParameters().filter(([, p]) => !p.requiresGrad).map(([n]) => n);
  assert.deepEqual(
    frozen.filter((n) => !n.startsWith("blocks.0.")),
    ["pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"],
  );
  assert.ok(
    frozen.includes("blocks.0.attn.qkv.weight") && !frozen.includes("blocks.0.adapter.fc1.weight"),
  );
  assert.ok(!frozen.some((n) => n.startsWith("blocks.1.")));
  tidy(() => {
    const o = v.forward(input(PLAN, 6));
    const r = rng(10);
    const proj = (t: Tensor) => sum(mul(t, tensor(randn(t.size, r), [...t.shape])), "all");
    backward([...o.skips, o.deep].map(proj).reduce((a, b) => add(a, b)));
  });
  for (const [n, p] of v.namedParameters()) {
    if (!p.requiresGrad) {
      assert.equal(p.grad, null, `frozen ${n} got a gradient`);
      continue;
    }
    assert.ok(p.grad, `${n} got no gradient`);
    const g = p.grad.toArray() as Float32Array;
    assert.ok(
      g.some((x) => x !== 0) && g.every(Number.isFinite),
      `${n}: gradient is zero or not finite`,
    );
  }
  zeroGrad(v.parameters());
  v.freeze(0);
  assert.ok(v.parameters().every((p) => p.requiresGrad));
  v.dispose();
});

Deno.test("ViT: a transformer block's gradients match finite differences (input and parameters)", () => {
  const r = rng(11);
  const block = new VitBlock(6, 2, {
    mlpRatio: 2,
    adapterDim: 3,
    eps: 1e-6,
    qkvBias: true,
    rng: r,
  });
  randomize(block, 12, 0.4);
  const [B, N, C] = [2, 5, 6];
  const x = randn(B * N * C, r);
  gradCheck(([t]) => block.forward(t), [{ data: x, shape: [B, N, C] }], {
    msg: "ViT block dx",
    samples: 24,
  });
  // Parameters: analytic gradients of a fixed projection against central differences.
  const w = randn(B * N * C, r);
  const loss = () => {
    const y = block.forward(tensor(x, [B, N, C]));
    return sum(mul(y, tensor(w, [B, N, C])), "all");
  };
  zeroGrad(block.parameters());
  tidy(() => backward(loss()));
  for (const [name, p] of block.namedParameters()) {
    const at = Array.from({ length: 3 }, () => Math.floor(r() * p.size));
    checkParamGrad(name, p, at, loss, 3e-3, 3e-2);
  }
  zeroGrad(block.parameters());
  block.dispose();
});

/**
 * Compares p.grad (from a backward of `loss` already run) at the indices `at` with central
 * differences of `loss` (step 1e-2), within atol + rtol x |numeric|; p is restored afterwards.
 */
function checkParamGrad(
  name: string,
  p: Tensor,
  at: number[],
  loss: () => Tensor,
  atol: number,
  rtol: number,
): void {
  const h = 1e-2;
  const g = p.grad!.toArray() as Float32Array;
  const base = p.toArray() as Float32Array;
  const lossAt = (i: number, d: number) => {
    const v = base.slice();
    v[i] += d;
    assign(p, v);
    return noGrad(() => tidy(() => loss().item()));
  };
  for (const i of at) {
    const num = (lossAt(i, h) - lossAt(i, -h)) / (2 * h);
    assign(p, base);
    assert.ok(
      Math.abs(g[i] - num) <= atol + rtol * Math.abs(num),
      `${name}[${i}]: analytic ${g[i]}, numeric ${num}`,
    );
  }
}

function tmp(): string {
  return mkdtempSync(path.join(tmpdir(), "vit-test-"));
}

Deno.test("ViT: weights saved to safetensors load into another ViT and give identical outputs", () => {
  const dir = tmp();
  try {
    const file = path.join(dir, "vit.safetensors");
    const a = vit({ adapterDim: 4 }, 1);
    randomize(a, 13, 0.2);
    saveSafetensorsFrom(a, file, { prefix: "image_encoder.", metadata: { format: "pt" } });
    const b = vit({ adapterDim: 4 }, 2);
    const r = loadSafetensorsInto(b, file, { prefix: "image_encoder.", strict: true });
    assert.equal(r.loaded.length, a.namedParameters().length);
    assert.deepEqual([r.missing, r.unexpected, r.mismatched, r.ignored], [[], [], [], 0]);
    tidy(() => {
      const x = input(PLAN, 14);
      const oa = a.forward(x), ob = b.forward(x);
      for (const [s, t] of [...oa.skips.map((s, i) => [s, ob.skips[i]]), [oa.deep, ob.deep]]) {
        assert.deepEqual(t.toArray(), s.toArray());
      }
    });
    // BF16 storage round-trips through the loader within bf16 precision.
    saveSafetensorsFrom(a, file, { dtype: "BF16" });
    const c = vit({ adapterDim: 4 }, 3);
    loadSafetensorsInto(c, file, { strict: true });
    const pa = a.pos_embed.toArray() as Float32Array, pc = c.pos_embed.toArray() as Float32Array;
    assert.ok(pa.every((v, i) => Math.abs(v - pc[i]) <= Math.abs(v) / 128 + 1e-30));
    for (const m of [a, b, c]) m.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("ViT: strict loading lists missing, unexpected and mismatched keys; loadVitWeights allows the new layers", () => {
  const dir = tmp();
  try {
    const a = vit({}, 1);
    const file = path.join(dir, "sam.safetensors");
    // A SAM-Med3D-like file: backbone keys only, one extra key, one missing block key.
    const entries = a.namedParameters()
      .filter(([n]) => !VitEncoder.isExtraParameter(n) && n !== "blocks.1.mlp.lin2.bias")
      .map(([n, p]) =>
        [`image_encoder.${n}`, { shape: [...p.shape], data: p.toArray() as Float32Array }] as [
          string,
          { shape: number[]; data: Float32Array },
        ]
      );
    entries.push(["image_encoder.blocks.0.attn.rel_pos_d", {
      shape: [3, 4],
      data: new Float32Array(12),
    }]);
    entries.push(["prompt_encoder.pe", { shape: [2], data: new Float32Array(2) }]);
    writeSafetensors(file, entries);
    const b = vit({}, 2);
    assert.throws(
      () => loadSafetensorsInto(b, file, { prefix: "image_encoder.", strict: true }),
      (e: Error) => {
        assert.match(
          e.message,
          /^Cannot load .*sam\.safetensors strictly \(prefix 'image_encoder\.'\):/,
        );
        assert.match(
          e.message,
          /missing in the file \(\d+\): .*blocks\.1\.mlp\.lin2\.bias.*skips\.0\.conv1\.conv\.weight/,
        );
        assert.match(e.message, /unexpected in the file \(1\): blocks\.0\.attn\.rel_pos_d/);
        assert.match(e.message, /1 keys outside the prefix ignored/);
        return true;
      },
    );
    // Non-strict: loads what matches and reports the rest.
    const r = loadVitWeights(b, file, { prefix: "image_encoder." });
    assert.deepEqual(r.unexpected, ["blocks.0.attn.rel_pos_d"]);
    assert.ok(r.missing.includes("blocks.1.mlp.lin2.bias"));
    assert.deepEqual(
      b.blocks.items[1].attn.qkv.weight.toArray(),
      a.blocks.items[1].attn.qkv.weight.toArray(),
    );
    assert.throws(
      () => loadVitWeights(b, file, { prefix: "image_encoder.", strict: true }),
      (e: Error) => {
        assert.match(
          e.message,
          /\(strict\):\n {2}missing in the file \(1\): blocks\.1\.mlp\.lin2\.bias\n {2}unexpected in the file \(1\): blocks\.0\.attn\.rel_pos_d/,
        );
        assert.doesNotMatch(e.message, /skips\./);
        return true;
      },
    );
    assert.throws(
      () => loadVitWeights(b, file, { prefix: "wrong." }),
      /no tensor matched a ViT parameter name .*is network\.vit\.prefix right/,
    );
    // A position embedding for another grid is a clear error.
    const big = vit(
      {},
      3,
      planUNet({
        patchSize: [16, 16, 16],
        spacing: [1, 1, 1],
        maxLevels: 4,
        baseWidth: 4,
        minFeatureSize: 1,
      }),
    );
    const f2 = path.join(dir, "big.safetensors");
    saveSafetensorsFrom(big, f2);
    assert.throws(
      () => loadVitWeights(b, f2),
      /pos_embed: the file's token grid \[4, 4, 4\] x 8 differs from this model's \[2, 4, 4\] x 8; positions are not interpolated: choose patchSize = grid x network\.vit\.patchSize \(here \[16, 16, 16\]\)/,
    );
    // A one-channel patch embedding loads into a two-channel one (early fusion), split evenly.
    const two = vit({}, 4, PLAN, 2);
    loadVitWeights(two, file, { prefix: "image_encoder." });
    const w1 = a.patch_embed.proj.weight.toArray() as Float32Array;
    const w2 = two.patch_embed.proj.weight.toArray() as Float32Array;
    assert.ok(Math.abs(w2[64] - w1[0] / 2) < 1e-7 && Math.abs(w2[0] - w1[0] / 2) < 1e-7);
    assert.equal(readSafetensors(file).names.length, entries.length);
    for (const m of [a, b, big, two]) m.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("ViT: mean of outputs is finite for batch 1 (no batch-size assumption)", () => {
  const v = vit();
  const m = tidy(() => mean(v.forward(input(PLAN, 15, 1)).deep, "all").item());
  assert.ok(Number.isFinite(m));
  v.dispose();
});

Deno.test("ViT: a block matches PyTorch's SAM-Med3D Block3D (golden file from the reference safetensors writer)", () => {
  const file = new URL("../../tests/golden/vit_block.safetensors", import.meta.url).pathname;
  const st = readSafetensors(file);
  assert.equal(st.metadata.generator, "tests/gen_vit_golden.py");
  // F16 / BF16 written by the reference library decode to the float32 values.
  const vals = st.readF32("half.values");
  assert.deepEqual(st.readF32("half.f16"), vals);
  assert.deepEqual([...st.readF32("half.bf16")], [0, 1, 5, 6].map((i) => vals[i]));
  const block = new VitBlock(8, 2, {
    mlpRatio: 2,
    adapterDim: 0,
    eps: 1e-6,
    qkvBias: true,
    rng: rng(1),
  });
  const r = loadSafetensorsInto(block, st, { prefix: "block.", strict: false });
  assert.deepEqual(r.missing, []);
  assert.equal(r.loaded.length, block.parameters().length);
  const [B, D, H, W, C] = st.info("x").shape;
  tidy(() => {
    const x = tensor(st.readF32("x"), [B, D * H * W, C], { requiresGrad: true });
    const y = block.forward(x);
    close(y.toArray() as Float32Array, st.readF32("y"), "y");
    backward(sum(mul(y, tensor(st.readF32("dy"), [B, D * H * W, C])), "all"));
    close(x.grad!.toArray() as Float32Array, st.readF32("grad.x"), "grad.x", 1e-4);
  });
  for (const [n, p] of block.namedParameters()) {
    close(p.grad!.toArray() as Float32Array, st.readF32(`grad.block.${n}`), `grad ${n}`, 1e-4);
  }
  zeroGrad(block.parameters());
  block.dispose();
});

/** got vs want within tol x max|want| + 1e-6 per element. */
function close(got: Float32Array, want: Float32Array, what: string, tol = 2e-5): void {
  assert.equal(got.length, want.length, what);
  const scale = Math.max(...want.map(Math.abs));
  for (let i = 0; i < got.length; i++) {
    assert.ok(
      Math.abs(got[i] - want[i]) <= tol * scale + 1e-6,
      `${what}[${i}]: ${got[i]} vs ${want[i]}`,
    );
  }
}

/** SAM-Med3D's settings for windows and relative positions, on the tiny model (grid 2x4x4). */
const SAMLIKE: Partial<VitSettings> = { relPos: true, windowSize: 3, globalAttnIndexes: [1] };

Deno.test("ViT: window partition pads with zeros, orders windows batch-major and d-major, and unpartition inverts it", () => {
  const [B, C] = [2, 3];
  const grid: Triple = [2, 3, 5], win: Triple = [2, 2, 3];
  const N = 30;
  const x = randn(B * N * C, rng(20));
  tidy(() => {
    const xt = tensor(x, [B, N, C]);
    const w = windowPartition(xt, grid, win);
    assert.deepEqual(w.shape, [B * 1 * 2 * 2, 12, C]);
    const wv = w.toArray() as Float32Array;
    for (let b = 0; b < B; b++) {
      for (let wh = 0; wh < 2; wh++) {
        for (let ww = 0; ww < 2; ww++) {
          for (let t = 0; t < 12; t++) {
            const [d, h, ww2] = [
              Math.floor(t / 6),
              wh * 2 + (Math.floor(t / 3) % 2),
              ww * 3 + (t % 3),
            ];
            for (let c = 0; c < C; c++) {
              const got = wv[((b * 4 + wh * 2 + ww) * 12 + t) * C + c];
              const inside = h < 3 && ww2 < 5;
              assert.equal(got, inside ? x[(b * N + (d * 3 + h) * 5 + ww2) * C + c] : 0);
            }
          }
        }
      }
    }
    assert.deepEqual(windowUnpartition(w, grid, win, B).toArray(), x);
    // One window covering the padded grid (SAM-Med3D: 8^3 tokens in a 14^3 window).
    const one = windowPartition(xt, grid, [4, 4, 6]);
    assert.deepEqual(one.shape, [B, 96, C]);
    assert.deepEqual(windowUnpartition(one, grid, [4, 4, 6], B).toArray(), x);
  });
});

Deno.test("ViT: relative-position and windowed blocks match PyTorch (SAM-Med3D Block3D math, golden file)", () => {
  const file = new URL("../../tests/golden/vit_relpos.safetensors", import.meta.url).pathname;
  const st = readSafetensors(file);
  assert.equal(st.metadata.generator, "tests/gen_vit_relpos_golden.py");
  for (const name of ["win", "cube", "glob", "aniso"]) {
    const grid = [...st.readF32(`${name}.grid`)] as Triple;
    const window = [...st.readF32(`${name}.window`)] as Triple;
    const block = new VitBlock(8, 2, {
      mlpRatio: 2,
      adapterDim: 0,
      eps: 1e-6,
      qkvBias: true,
      rng: rng(1),
      grid,
      window: window[0] > 0 ? window : null,
      relPos: true,
    });
    const r = loadSafetensorsInto(block, st, { prefix: `${name}.block.` });
    assert.deepEqual([r.missing, r.mismatched], [[], []], name);
    assert.equal(r.loaded.length, block.parameters().length);
    const [B, N, C] = st.info(`${name}.x`).shape;
    tidy(() => {
      const x = tensor(st.readF32(`${name}.x`), [B, N, C], { requiresGrad: true });
      const y = block.forward(x);
      close(y.toArray() as Float32Array, st.readF32(`${name}.y`), `${name} y`);
      backward(sum(mul(y, tensor(st.readF32(`${name}.dy`), [B, N, C])), "all"));
      close(x.grad!.toArray() as Float32Array, st.readF32(`${name}.grad.x`), `${name} dx`, 1e-4);
    });
    for (const [n, p] of block.namedParameters()) {
      const want = st.readF32(`${name}.grad.block.${n}`);
      close(p.grad!.toArray() as Float32Array, want, `${name} grad ${n}`, 1e-4);
    }
    assert.ok(block.attn.rel_pos_w!.grad!.toArray().some((v) => v !== 0));
    zeroGrad(block.parameters());
    block.dispose();
  }
  // SAM's get_rel_pos resampling (F.interpolate, linear) to more and fewer rows.
  const src = st.readF32("interp.src");
  close(resampleRelPos(src, 5, 9), st.readF32("interp.up"), "interp up", 1e-6);
  close(resampleRelPos(src, 5, 3), st.readF32("interp.down"), "interp down", 1e-6);
});

Deno.test("ViT: gradients of the relative position tables match finite differences (windowed block)", () => {
  const r = rng(21);
  const grid: Triple = [2, 3, 3];
  const block = new VitBlock(4, 2, {
    mlpRatio: 1,
    adapterDim: 0,
    eps: 1e-6,
    qkvBias: true,
    rng: r,
    grid,
    window: [2, 2, 2],
    relPos: true,
  });
  randomize(block, 22, 0.5);
  const [B, N, C] = [2, 18, 4];
  const x = randn(B * N * C, r);
  const w = randn(B * N * C, r);
  const loss = () => sum(mul(block.forward(tensor(x, [B, N, C])), tensor(w, [B, N, C])), "all");
  zeroGrad(block.parameters());
  tidy(() => backward(loss()));
  for (const ax of ["d", "h", "w"] as const) {
    const p = block.attn[`rel_pos_${ax}`]!;
    assert.deepEqual(p.shape, [3, 2]);
    const every = Array.from({ length: p.size }, (_, i) => i);
    checkParamGrad(`rel_pos_${ax}`, p, every, loss, 2e-3, 2e-2);
  }
  zeroGrad(block.parameters());
  block.dispose();
});

Deno.test("ViT: SAM-Med3D attention settings: table shapes per block, strict load by SAM names, resampling, hints", () => {
  const a = vit(SAMLIKE, 1);
  const shapes = new Map(a.namedParameters().map(([n, p]) => [n, p.shape.join("x")]));
  // Block 0 attends in 3^3 windows (the 2x4x4 grid padded to 3x6x6), block 1 globally.
  assert.equal(shapes.get("blocks.0.attn.rel_pos_d"), "5x4");
  assert.equal(shapes.get("blocks.0.attn.rel_pos_w"), "5x4");
  assert.equal(shapes.get("blocks.1.attn.rel_pos_d"), "3x4");
  assert.equal(shapes.get("blocks.1.attn.rel_pos_h"), "7x4");
  assert.deepEqual(a.blocks.items.map((b) => b.window), [[3, 3, 3], null]);
  assert.ok(
    a.namedParameters().every(([n]) => !n.includes("rel_pos") || !VitEncoder.isExtraParameter(n)),
  );
  randomize(a, 23, 0.2);
  const dir = tmp();
  try {
    // A SAM-Med3D-like checkpoint: only image-encoder keys, under image_encoder., plus others.
    const file = path.join(dir, "sam.safetensors");
    const entries = a.namedParameters()
      .filter(([n]) => !VitEncoder.isExtraParameter(n))
      .map(([n, p]) =>
        [`image_encoder.${n}`, { shape: [...p.shape], data: p.toArray() as Float32Array }] as [
          string,
          { shape: number[]; data: Float32Array },
        ]
      );
    entries.push(["prompt_encoder.pe", { shape: [2], data: new Float32Array(2) }]);
    writeSafetensors(file, entries);
    const b = vit(SAMLIKE, 2);
    const rep = loadVitWeights(b, file, { prefix: "image_encoder.", strict: true });
    assert.deepEqual([rep.unexpected, rep.mismatched, rep.resampled], [[], [], []]);
    assert.ok(rep.loaded.includes("blocks.1.attn.rel_pos_h"));
    for (const [n, p] of b.namedParameters()) {
      if (!VitEncoder.isExtraParameter(n)) assert.deepEqual(p.toArray(), paramValues(a, n), n);
    }
    // The backbone computes the same (the skip heads differ: compare the tokens through the blocks).
    tidy(() => {
      const x = input(PLAN, 24);
      const run = (e: VitEncoder) => {
        let t = e.embed(x);
        for (const blk of e.blocks.items) t = blk.forward(t);
        return t.toArray();
      };
      assert.deepEqual(run(b), run(a));
    });
    // Without relPos the tables are unexpected, with a hint.
    const plain = vit({}, 3);
    assert.throws(
      () => loadVitWeights(plain, file, { prefix: "image_encoder.", strict: true }),
      /unexpected in the file \(6\): .*rel_pos.* \(the file has SAM's relative position tables: set network\.vit\.relPos: true/,
    );
    // Another window: tables resampled as SAM's get_rel_pos (5 -> 3 rows for a 2^3 window).
    const c = vit({ ...SAMLIKE, windowSize: 2 }, 4);
    const rc = loadVitWeights(c, file, { prefix: "image_encoder.", strict: true });
    assert.deepEqual(rc.resampled.sort(), [
      "blocks.0.attn.rel_pos_d",
      "blocks.0.attn.rel_pos_h",
      "blocks.0.attn.rel_pos_w",
    ]);
    assert.deepEqual(
      c.blocks.items[0].attn.rel_pos_h!.toArray(),
      resampleRelPos(a.blocks.items[0].attn.rel_pos_h!.toArray() as Float32Array, 5, 3),
    );
    // A relPos model and a file without tables: missing, with a hint.
    const f2 = path.join(dir, "plain.safetensors");
    saveSafetensorsFrom(plain, f2);
    assert.throws(
      () => loadVitWeights(b, f2, { strict: true }),
      /missing in the file \(6\): .*rel_pos.* \(a file without relative position tables needs network\.vit\.relPos: false\)/,
    );
    assert.throws(
      () => vit({ windowSize: -1 }),
      /windowSize must be 0 \(global attention\) or positive/,
    );
    assert.throws(
      () => vit({ globalAttnIndexes: [2] }),
      /globalAttnIndexes entry 2 is not a block index in \[0, 1\]/,
    );
    for (const m of [a, b, c, plain]) m.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function paramValues(m: Module, name: string): Float32Array {
  return m.namedParameters().find(([n]) => n === name)![1].toArray() as Float32Array;
}

Deno.test("ViT: a CMC training step with relative positions and windows (2 modalities, labeled + unlabeled)", () => {
  const plan = planUNet({ patchSize: [4, 16, 16], spacing: [1, 1, 1], maxLevels: 3, baseWidth: 4 });
  const net = new CmcNet({
    modalities: 2,
    numClasses: 3,
    plan,
    vit: { ...TINY, ...SAMLIKE, windowSize: 2, adapterDim: 2 },
    rng: rng(25),
  });
  const named = net.namedParameters();
  const opt = new AdamW(named);
  const before = new Map(named.map(([n, p]) => [n, p.toArray().slice()]));
  const n = 4 * 16 * 16;
  const lab = new Int32Array(n).map((_, i) => (i % 16 < 5 ? 1 : i % 16 > 10 ? 2 : 0));
  const t0 = performance.now();
  const value = tidy(() => {
    const xs = [0, 1].map((m) => input(plan, 26 + m, 2));
    const outs = net.forward(xs);
    const labels = tensor(lab, [1, 1, 4, 16, 16], { dtype: "i32" });
    let loss = supervisedLoss(slice0(outs[0].logits), labels).loss;
    loss = add(loss, supervisedLoss(slice0(outs[1].logits), labels).loss);
    loss = add(loss, cscLoss(outs.map((o) => o.deep)));
    loss = add(
      loss,
      cacLoss(outs.map((o) => ({
        probs: softmax(slice1(o.logits), 1),
        features: slice1(o.features),
      }))),
    );
    backward(loss);
    return loss.item();
  });
  assert.ok(Number.isFinite(value));
  for (const enc of ["encoders.0.", "encoders.1."]) {
    for (const k of ["blocks.0.attn.rel_pos_w", "blocks.1.attn.rel_pos_d"]) {
      const p = named.find(([m]) => m === enc + k)![1];
      assert.ok(p.grad && p.grad.toArray().some((v) => v !== 0), `${enc}${k}: no gradient`);
    }
  }
  opt.step(1e-3);
  const ms = performance.now() - t0;
  const changed = (k: string) => {
    const p = named.find(([m]) => m === k)![1].toArray();
    return p.some((v, i) => v !== before.get(k)![i]);
  };
  assert.ok(
    changed("encoders.0.blocks.0.attn.rel_pos_h") && changed("encoders.1.blocks.1.attn.qkv.weight"),
  );
  console.log(
    `CMC step with ViT rel-pos + windows (grid 1x4x4, window 2): ${ms.toFixed(0)} ms, loss ${
      value.toFixed(4)
    }`,
  );
  zeroGrad(net.parameters());
  opt.dispose();
  net.dispose();
});

function slice0(t: Tensor): Tensor {
  return sliceBatch(t, 0);
}
function slice1(t: Tensor): Tensor {
  return sliceBatch(t, 1);
}
function sliceBatch(t: Tensor, i: number): Tensor {
  return engineSlice(t, 0, i, 1);
}
