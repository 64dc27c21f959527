import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert";
import { assd, dice, evaluateCase, hd95, metricsToJson, percentile, summarise } from "./metrics.ts";
import { surfaceDistances, surfaceMask } from "./surface.ts";
import { seededRng as rng } from "../ops/test_util.ts";

type D3 = [number, number, number];

function close(got: number, want: number, tol = 1e-9, msg = ""): void {
  if (!(Math.abs(got - want) <= tol)) {
    throw new Error(`${msg} expected ${want} +- ${tol}, got ${got}`);
  }
}

/** Labels `value` inside the box [lo, hi) per axis. */
function box(dims: D3, lo: D3, hi: D3, value = 1, into?: Int32Array): Int32Array {
  const out = into ?? new Int32Array(dims[0] * dims[1] * dims[2]);
  for (let a = lo[0]; a < hi[0]; a++) {
    for (let b = lo[1]; b < hi[1]; b++) {
      for (let c = lo[2]; c < hi[2]; c++) out[(a * dims[1] + b) * dims[2] + c] = value;
    }
  }
  return out;
}

function sphere(dims: D3, centre: D3, radiusMm: number, spacing: D3, value = 1): Int32Array {
  const out = new Int32Array(dims[0] * dims[1] * dims[2]);
  for (let a = 0; a < dims[0]; a++) {
    for (let b = 0; b < dims[1]; b++) {
      for (let c = 0; c < dims[2]; c++) {
        const r2 = ((a - centre[0]) * spacing[0]) ** 2 + ((b - centre[1]) * spacing[1]) ** 2 +
          ((c - centre[2]) * spacing[2]) ** 2;
        if (r2 <= radiusMm * radiusMm) out[(a * dims[1] + b) * dims[2] + c] = value;
      }
    }
  }
  return out;
}

Deno.test("percentile interpolates like NumPy", () => {
  close(percentile([1, 2, 3, 4], 50), 2.5);
  close(percentile([10, 0, 5], 95), 9.5); // rank 1.9 between 5 and 10
  close(percentile([7], 95), 7);
  assertEquals(Number.isNaN(percentile([], 95)), true);
});

Deno.test("two 4^3 cubes offset by 2 voxels along axis 0 (3 mm spacing): known HD95 and ASSD", () => {
  // Axis 0 has 3 mm spacing, in-plane 0.8 mm. Each cube surface has 56 voxels; per direction the
  // distances are 16 x 6 mm (outer cap to the other cube's cap), 12 x 3 mm, 24 x 0 and 4 x 0.8 mm
  // (cap interior to the other cube's side ring in-plane).
  const dims: D3 = [10, 8, 8];
  const spacing: D3 = [3, 0.8, 0.8];
  const a = box(dims, [2, 2, 2], [6, 6, 6]);
  const b = box(dims, [4, 2, 2], [8, 6, 6]);
  const d = surfaceDistances(a, b, { dims, spacing });
  assertEquals(d.predToRef.length, 56);
  assertEquals(d.refToPred.length, 56);
  const hist = (v: Float64Array) => {
    const m = new Map<string, number>();
    for (const x of v) m.set(x.toFixed(6), (m.get(x.toFixed(6)) ?? 0) + 1);
    return Object.fromEntries([...m.entries()].sort());
  };
  const want = { "0.000000": 24, "0.800000": 4, "3.000000": 12, "6.000000": 16 };
  assertEquals(hist(d.predToRef), want);
  assertEquals(hist(d.refToPred), want);
  close(hd95(a, b, { dims, spacing }), 6);
  close(hd95(a, b, { dims, spacing, mode: "pooled" }), 6);
  close(hd95(a, b, { dims, spacing, percentile: 50 }), 0.8 + (3 - 0.8) * 0.5); // rank 27.5: 0.8 and 3
  close(hd95(a, b, { dims, spacing, percentile: 100 }), 6);
  close(assd(a, b, { dims, spacing }), (16 * 6 + 12 * 3 + 4 * 0.8) / 56);
  close(dice(a, b, { labels: [1] })[0], (2 * 32) / 128);
});

Deno.test("hd95 modes differ on asymmetric sets: max of directed vs pooled percentile", () => {
  // A single voxel inside a large box: pred->ref distances small, ref->pred large.
  const dims: D3 = [1, 1, 21];
  const spacing: D3 = [1, 1, 1];
  const ref = box(dims, [0, 0, 0], [1, 1, 21]); // a line: every voxel is a surface voxel
  const pred = box(dims, [0, 0, 10], [1, 1, 11]);
  // ref -> pred: |i - 10| for i = 0..20; pred -> ref: [0].
  const refToPred = Array.from({ length: 21 }, (_, i) => Math.abs(i - 10));
  close(hd95(pred, ref, { dims, spacing }), percentile(refToPred, 95));
  close(hd95(pred, ref, { dims, spacing, mode: "pooled" }), percentile([0, ...refToPred], 95));
  close(assd(pred, ref, { dims, spacing }), refToPred.reduce((s, x) => s + x, 0) / 22);
});

Deno.test("identical spheres: Dice 1 and zero distances; shifted sphere: positive distances", () => {
  const dims: D3 = [12, 20, 20];
  const spacing: D3 = [2.5, 0.9, 0.9];
  const s = sphere(dims, [6, 10, 10], 6, spacing);
  const r = evaluateCase(s, s, { dims, spacing, classes: [1] });
  assertEquals(r.classes["1"], {
    dice: 1,
    hd95: 0,
    assd: 0,
    predVoxels: r.classes["1"].refVoxels,
    refVoxels: r.classes["1"].refVoxels,
  });
  const t = sphere(dims, [6, 11, 10], 6, spacing);
  const m = evaluateCase(t, s, { dims, spacing, classes: [1] }).classes["1"];
  if (!(m.dice > 0.8 && m.dice < 1)) throw new Error(`dice ${m.dice}`);
  // A 0.9 mm shift moves the surface by at most 0.9 mm along that axis.
  if (!(m.hd95 > 0 && m.hd95 <= 0.9 + 1e-9)) throw new Error(`hd95 ${m.hd95}`);
  if (!(m.assd > 0 && m.assd < m.hd95)) throw new Error(`assd ${m.assd}`);
});

Deno.test("empty-mask rules: both empty, pred empty, ref empty", () => {
  const dims: D3 = [4, 4, 4];
  const spacing: D3 = [1, 1, 1];
  const empty = new Int32Array(64);
  const full = box(dims, [1, 1, 1], [3, 3, 3], 2);
  const r = evaluateCase(empty, full, { dims, spacing, classes: [1, 2], names: { 2: "tumour" } });
  assertEquals(r.classes["1"], { dice: 1, hd95: 0, assd: 0, predVoxels: 0, refVoxels: 0 });
  assertEquals(r.classes.tumour, {
    dice: 0,
    hd95: Infinity,
    assd: Infinity,
    predVoxels: 0,
    refVoxels: 8,
  });
  const r2 = evaluateCase(full, empty, { dims, spacing, classes: [2] });
  assertEquals(r2.classes["2"].hd95, Infinity);
  assertEquals(r2.classes["2"].assd, Infinity);
  assertEquals(r2.classes["2"].dice, 0);
  assertEquals(hd95(empty, empty, { dims, spacing }), 0);
});

Deno.test("named regions take the union of labels", () => {
  const dims: D3 = [1, 1, 6];
  const pred = Int32Array.from([0, 1, 2, 3, 0, 0]);
  const ref = Int32Array.from([0, 3, 3, 3, 3, 0]);
  const [whole, one] = dice(pred, ref, { labels: [{ name: "whole", labels: [1, 2, 3] }, 1] });
  close(whole, (2 * 3) / 7);
  close(one, 0);
  const r = evaluateCase(pred, ref, {
    dims,
    spacing: [1, 1, 1],
    classes: [{ name: "whole", labels: [1, 2, 3] }],
  });
  close(r.classes.whole.dice, 6 / 7);
  close(r.classes.whole.hd95, Math.max(percentile([0, 0, 0], 95), percentile([0, 0, 0, 1], 95)));
});

/** Surface by definition: foreground with a 6-neighbour that is background or outside. */
function bruteSurface(m: Int32Array, dims: D3): number[][] {
  const pts: number[][] = [];
  const at = (a: number, b: number, c: number) =>
    a < 0 || b < 0 || c < 0 || a >= dims[0] || b >= dims[1] || c >= dims[2]
      ? 0
      : m[(a * dims[1] + b) * dims[2] + c];
  for (let a = 0; a < dims[0]; a++) {
    for (let b = 0; b < dims[1]; b++) {
      for (let c = 0; c < dims[2]; c++) {
        if (!at(a, b, c)) continue;
        if (
          !at(a - 1, b, c) || !at(a + 1, b, c) || !at(a, b - 1, c) || !at(a, b + 1, c) ||
          !at(a, b, c - 1) || !at(a, b, c + 1)
        ) {
          pts.push([a, b, c]);
        }
      }
    }
  }
  return pts;
}

function directedBrute(from: number[][], to: number[][], sp: D3): number[] {
  return from.map((p) => {
    let best = Infinity;
    for (const q of to) {
      best = Math.min(
        best,
        Math.hypot((p[0] - q[0]) * sp[0], (p[1] - q[1]) * sp[1], (p[2] - q[2]) * sp[2]),
      );
    }
    return best;
  });
}

Deno.test("HD95/ASSD match an O(N^2) brute force on tiny random masks", () => {
  const r = rng(42);
  for (let trial = 0; trial < 40; trial++) {
    const dims: D3 = [2 + Math.floor(r() * 6), 2 + Math.floor(r() * 6), 2 + Math.floor(r() * 6)];
    const spacing: D3 = [0.5 + r() * 3, 0.5 + r() * 3, 0.5 + r() * 3];
    const n = dims[0] * dims[1] * dims[2];
    const pred = new Int32Array(n), ref = new Int32Array(n);
    const dp = r() * 0.7, dr = r() * 0.7;
    for (let i = 0; i < n; i++) {
      pred[i] = r() < dp ? 1 : 0;
      ref[i] = r() < dr ? 1 : 0;
    }
    const sp = bruteSurface(pred, dims), sr = bruteSurface(ref, dims);
    if (sp.length === 0 || sr.length === 0) continue;
    const p2r = directedBrute(sp, sr, spacing), r2p = directedBrute(sr, sp, spacing);
    const wantHd = Math.max(percentile(p2r, 95), percentile(r2p, 95));
    const wantPooled = percentile([...p2r, ...r2p], 95);
    const wantAssd = [...p2r, ...r2p].reduce((s, x) => s + x, 0) / (p2r.length + r2p.length);
    close(hd95(pred, ref, { dims, spacing }), wantHd, 1e-9, `trial ${trial} hd95`);
    close(
      hd95(pred, ref, { dims, spacing, mode: "pooled" }),
      wantPooled,
      1e-9,
      `trial ${trial} pooled`,
    );
    close(assd(pred, ref, { dims, spacing }), wantAssd, 1e-9, `trial ${trial} assd`);
    const sm = surfaceMask(pred, dims);
    assertEquals(sm.reduce((s, x) => s + x, 0), sp.length);
  }
});

Deno.test("summarise: per-class means over finite values, non-finite counted apart", () => {
  const cases = [
    {
      id: "a",
      classes: {
        LV: { dice: 0.9, hd95: 2, assd: 1, predVoxels: 1, refVoxels: 1 },
        RV: { dice: 0, hd95: Infinity, assd: Infinity, predVoxels: 0, refVoxels: 3 },
      },
    },
    {
      id: "b",
      classes: {
        LV: { dice: 0.7, hd95: 4, assd: 3, predVoxels: 1, refVoxels: 1 },
        RV: { dice: 0.5, hd95: 6, assd: 2, predVoxels: 2, refVoxels: 3 },
      },
    },
  ];
  const s = summarise(cases);
  assertEquals(s.cases, 2);
  close(s.perClass.LV.dice.mean, 0.8);
  close(s.perClass.LV.dice.std, 0.1);
  close(s.perClass.LV.hd95.mean, 3);
  close(s.perClass.RV.dice.mean, 0.25);
  close(s.perClass.RV.hd95.mean, 6);
  assertEquals(s.perClass.RV.hd95.n, 1);
  assertEquals(s.perClass.RV.hd95.nonFinite, 1);
  assertEquals(s.nonFinite, { hd95: 1, assd: 1 });
  close(s.mean.dice, (0.8 + 0.25) / 2);
  close(s.mean.hd95, (3 + 6) / 2);
  const json = JSON.parse(metricsToJson(cases[0]));
  assertEquals(json.classes.RV.hd95, "Infinity");
});

Deno.test("metrics reject mismatched sizes with a message naming the shapes", () => {
  assertThrows(
    () => dice(new Int32Array(3), new Int32Array(4), { labels: [1] }),
    /3 voxels, reference 4/,
  );
  assertThrows(
    () =>
      evaluateCase(new Int32Array(8), new Int32Array(8), {
        dims: [2, 2, 3],
        spacing: [1, 1, 1],
        classes: [1],
      }),
    /dims 2x2x3 need 12/,
  );
});

Deno.test("HD95/HD100/ASSD/Dice match SciPy (MONAI-style definitions) on random blobs", async () => {
  const url = new URL("./testdata/scipy_golden.json", import.meta.url);
  const cases = JSON.parse(await Deno.readTextFile(url)) as {
    dims: D3;
    spacing: D3;
    pred: string;
    ref: string;
    hd95: number;
    hd95Pooled: number;
    hd100: number;
    assd: number;
    dice: number;
  }[];
  const unpack = (b64: string, n: number) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) out[i] = (bytes[i >> 3] >> (7 - (i & 7))) & 1;
    return out;
  };
  assertEquals(cases.length, 4);
  for (const [t, c] of cases.entries()) {
    const n = c.dims[0] * c.dims[1] * c.dims[2];
    const pred = unpack(c.pred, n), ref = unpack(c.ref, n);
    const o = { dims: c.dims, spacing: c.spacing };
    close(hd95(pred, ref, o), c.hd95, 1e-9, `case ${t} hd95`);
    close(hd95(pred, ref, { ...o, mode: "pooled" }), c.hd95Pooled, 1e-9, `case ${t} pooled`);
    close(hd95(pred, ref, { ...o, percentile: 100 }), c.hd100, 1e-9, `case ${t} hd100`);
    close(assd(pred, ref, o), c.assd, 1e-9, `case ${t} assd`);
    close(dice(pred, ref, { labels: [1] })[0], c.dice, 1e-12, `case ${t} dice`);
  }
});

Deno.test("evaluateCase agrees with the per-metric functions on random multi-label volumes", () => {
  const r = rng(5);
  for (let trial = 0; trial < 10; trial++) {
    const dims: D3 = [3 + Math.floor(r() * 8), 3 + Math.floor(r() * 8), 3 + Math.floor(r() * 8)];
    const spacing: D3 = [0.5 + r() * 3, 0.5 + r() * 3, 0.5 + r() * 3];
    const n = dims[0] * dims[1] * dims[2];
    const pred = new Int32Array(n), ref = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      pred[i] = r() < 0.5 ? 0 : Math.floor(r() * 4);
      ref[i] = r() < 0.5 ? 0 : Math.floor(r() * 4);
    }
    const region = { name: "r12", labels: [1, 2] };
    const got =
      evaluateCase(pred, ref, { dims, spacing, classes: [0, 1, 2, 3, 7, region] }).classes;
    for (const [name, spec] of [["0", 0], ["1", 1], ["2", 2], ["3", 3], ["7", 7]] as const) {
      close(got[name].dice, dice(pred, ref, { labels: [spec] })[0], 1e-12, `${trial} ${name} dice`);
      assertEquals(
        got[name].hd95,
        hd95(pred, ref, { dims, spacing, label: spec }),
        `${trial} ${name} hd95`,
      );
      assertEquals(
        got[name].assd,
        assd(pred, ref, { dims, spacing, label: spec }),
        `${trial} ${name} assd`,
      );
    }
    const pm = pred.map((v) => (v === 1 || v === 2 ? 1 : 0)),
      rm = ref.map((v) => (v === 1 || v === 2 ? 1 : 0));
    close(got.r12.dice, dice(pred, ref, { labels: [region] })[0], 1e-12);
    assertEquals(got.r12.hd95, hd95(pm, rm, { dims, spacing }));
    assertEquals(got.r12.assd, assd(pm, rm, { dims, spacing }));
    assertEquals(got["7"], { dice: 1, hd95: 0, assd: 0, predVoxels: 0, refVoxels: 0 });
  }
});
