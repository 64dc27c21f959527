import { assert, assertAlmostEquals, assertEquals } from "./testing.ts";
import { apply4, fromLinear, inv4, maxAbsDiff, mul3, rotation3 } from "./affine.ts";
import { reorientToRAS, resample, resampleToReference, sampleGrid } from "./geometry.ts";
import type { NiftiImage } from "./nifti.ts";

function makeImage(
  dims: [number, number, number],
  affine: number[],
  f: (x: number, y: number, z: number) => number,
): NiftiImage {
  const data = new Float32Array(dims[0] * dims[1] * dims[2]);
  let i = 0;
  for (let z = 0; z < dims[2]; z++) {
    for (let y = 0; y < dims[1]; y++) {
      for (let x = 0; x < dims[0]; x++) data[i++] = f(x, y, z);
    }
  }
  return {
    data,
    dims,
    frames: 1,
    affine,
    spacing: [0, 1, 2].map((j) => Math.hypot(affine[j], affine[4 + j], affine[8 + j])) as [
      number,
      number,
      number,
    ],
    header: {
      niftiVersion: 1,
      datatype: "float32",
      datatypeCode: 16,
      sclSlope: 1,
      sclInter: 0,
      qformCode: 1,
      sformCode: 1,
      affineSource: "sform",
      intentCode: 0,
      intentName: "",
      descrip: "",
      unitScale: 1,
      dim: [3, ...dims, 1, 1, 1, 1],
    },
  };
}

function valueAt(img: NiftiImage, idx: number[]): number {
  return img.data[idx[2] * img.dims[0] * img.dims[1] + idx[1] * img.dims[0] + idx[0]];
}

Deno.test("geometry: reorientToRAS moves voxels without changing their world positions", () => {
  // Voxel axes: x runs posterior (-A), y runs left (-R), z runs superior, with a small rotation.
  const l = mul3(rotation3(0.05, 0, 0.1), [0, -0.8, 0, -1.5, 0, 0, 0, 0, 3]);
  const src = makeImage([4, 5, 6], fromLinear(l, [5, 6, -7]), (x, y, z) => x + 10 * y + 100 * z);
  const ras = reorientToRAS(src);
  assertEquals(ras.dims, [5, 4, 6]);
  // Each axis now points mostly along +R, +A, +S.
  for (let w = 0; w < 3; w++) {
    assert(ras.affine[w * 4 + w] > 0, `axis ${w} direction ${ras.affine}`);
  }
  const inv = inv4(src.affine);
  for (let z = 0; z < 6; z++) {
    for (let y = 0; y < 4; y++) {
      for (let x = 0; x < 5; x++) {
        const world = apply4(ras.affine, [x, y, z]);
        const old = apply4(inv, world).map((v) => Math.round(v));
        assertEquals(valueAt(ras, [x, y, z]), valueAt(src, old));
      }
    }
  }
  // Already RAS: returned unchanged.
  assert(reorientToRAS(ras) === ras);
});

Deno.test("geometry: trilinear resampling reproduces a linear field; nearest keeps label values", () => {
  const aff = [1.25, 0, 0, -10, 0, 1.25, 0, 4, 0, 0, 8, 2, 0, 0, 0, 1];
  const field = (w: number[]) => 0.5 * w[0] - 0.25 * w[1] + 0.125 * w[2];
  const src = makeImage([40, 36, 10], aff, (x, y, z) => field(apply4(aff, [x, y, z])));
  const out = resample(src, { spacing: [2, 2, 2], order: "linear" });
  assertEquals(out.dims, [25, 23, 40]);
  assertAlmostEquals(out.spacing[0], 2, 1e-9);
  assertAlmostEquals(out.spacing[2], 2, 1e-9);
  // The field of view is preserved: outer corners coincide.
  const c0 = apply4(src.affine, [-0.5, -0.5, -0.5]), c1 = apply4(out.affine, [-0.5, -0.5, -0.5]);
  assert(maxAbsDiff(c0, c1) < 1e-9, `corner ${c0} vs ${c1}`);
  let worst = 0;
  for (let z = 2; z < out.dims[2] - 2; z++) {
    for (let y = 1; y < out.dims[1] - 1; y++) {
      for (let x = 1; x < out.dims[0] - 1; x++) {
        worst = Math.max(
          worst,
          Math.abs(valueAt(out, [x, y, z]) - field(apply4(out.affine, [x, y, z]))),
        );
      }
    }
  }
  assert(worst < 1e-4, `interior error ${worst}`);
  const lab = makeImage(
    [40, 36, 10],
    aff,
    (x, y, z) => ((x >> 3) + (y >> 3) + z) % 4 === 0 ? 0 : [2, 5, 7][(x + y + z) % 3],
  );
  const nl = resample(lab, { spacing: [2, 2, 2], order: "nearest" });
  assertEquals(new Set(nl.data), new Set([0, 2, 5, 7]));
});

Deno.test("geometry: resampleToReference onto the same grid is the identity; through a rotation and back is close", () => {
  const aff = fromLinear(mul3(rotation3(0, 0, 0.3), [1, 0, 0, 0, 1, 0, 0, 0, 2]), [0, 0, 0]);
  const smooth = (x: number, y: number, z: number) => Math.sin(x / 5) + Math.cos(y / 7) + z / 10;
  const img = makeImage([30, 30, 12], aff, smooth);
  const same = resampleToReference(img, img, { order: "linear" });
  assertEquals(Array.from(same.data), Array.from(img.data));
  // Reference: a finer grid in world space covering the middle.
  const ref = {
    dims: [20, 20, 10],
    affine: fromLinear(
      mul3(rotation3(0, 0, 0.3), [0.5, 0, 0, 0, 0.5, 0, 0, 0, 1]),
      apply4(aff, [10, 10, 5]),
    ),
  };
  const fine = resampleToReference(img, ref, { order: "linear" });
  assertEquals(fine.dims, [20, 20, 10]);
  for (const idx of [[0, 0, 0], [7, 13, 4], [19, 19, 9]]) {
    const src = apply4(inv4(aff), apply4(ref.affine, idx));
    assertAlmostEquals(valueAt(fine, idx), smooth(src[0], src[1], src[2]), 0.02, `at ${idx}`);
  }
  // Out of the field of view: fill.
  const far = resampleToReference(img, {
    dims: [2, 2, 2],
    affine: fromLinear([1, 0, 0, 0, 1, 0, 0, 0, 1], [500, 0, 0]),
  }, { fill: -7 });
  assertEquals(Array.from(far.data), new Array(8).fill(-7));
  // Multi-frame images (class probabilities) resample every frame.
  const two = {
    ...img,
    data: new Float32Array([...img.data, ...img.data.map((v) => -v)]),
    frames: 2,
  };
  const both = resampleToReference(two, ref, { order: "linear" });
  assertEquals(both.data.length, 2 * 4000);
  assertAlmostEquals(both.data[4000 + 123], -both.data[123], 1e-6);
});

Deno.test("geometry: sampleGrid edge handling (half a voxel clamps, farther fills)", () => {
  const src = new Float32Array([1, 2, 3, 4]);
  const out = sampleGrid(src, [4, 1, 1], [6, 1, 1], [1, 0, 0, -1.2, 0, 1, 0, 0, 0, 0, 1, 0], {
    order: "linear",
    fill: 9,
  });
  // points -1.2, -0.2, 0.8, 1.8, 2.8, 3.8
  assertEquals(Array.from(out).map((v) => Math.round(v * 100) / 100), [9, 1, 1.8, 2.8, 3.8, 9]);
  const nn = sampleGrid(src, [4, 1, 1], [6, 1, 1], [1, 0, 0, -1.2, 0, 1, 0, 0, 0, 0, 1, 0], {
    order: "nearest",
    fill: 0,
    out: new Uint8Array(6),
  });
  assertEquals(Array.from(nn), [0, 1, 2, 3, 4, 0]);
});

Deno.test("geometry: the separable path (no rotation) matches the general path", () => {
  const dims = [13, 11, 7];
  const src = new Float32Array(13 * 11 * 7).map((_, i) => Math.sin(i * 0.37) * 10 + (i % 5));
  const out = [17, 9, 8];
  for (const order of ["linear", "nearest"] as const) {
    const maps = [
      [-0.8, 0, 0, 12.3, 0, 1.3, 0, -1.2, 0, 0, 0.9, 0.4],
      [1, 0, 0, -2, 0, -1, 0, 10, 0, 0, 1, 0],
      [0, -1, 0, 10.3, 1.2, 0, 0, -0.65, 0, 0, -0.8, 6.1], // in-plane quarter turn with scaling
      [0, 0, 0.5, 1, 1, 0, 0, 0, 0, 1, 0, 0], // axes permuted
    ];
    for (const m of maps) {
      const fast = sampleGrid(src, dims, out, m, { order, fill: -3 });
      const nudged = m.slice();
      nudged[nudged[1] === 0 ? 1 : 2] = 1e-10; // forces the general path, moves points by < 1e-8 voxel
      const slow = sampleGrid(src, dims, out, nudged, { order, fill: -3 });
      let worst = 0;
      for (let i = 0; i < fast.length; i++) worst = Math.max(worst, Math.abs(fast[i] - slow[i]));
      assert(worst < 1e-4, `${order} map ${m}: max difference ${worst}`);
      assert(Array.from(fast).some((v) => v === -3) && Array.from(fast).some((v) => v !== -3));
    }
  }
});
