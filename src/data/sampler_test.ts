import { assert, assertAlmostEquals, assertEquals, assertThrows } from "./testing.ts";
import { apply4, type Mat4, type Vec3 } from "./affine.ts";
import type { LabeledCase, UnlabeledCase, Volume } from "./cases.ts";
import { foregroundLocations } from "./cases.ts";
import { PatchSampler } from "./sampler.ts";
import { IGNORE_INDEX } from "../util/ignore.ts";
import { NO_AUGMENT } from "./augment.ts";
import { Rng } from "./rng.ts";

function vol(
  dims: Vec3,
  affine: Mat4,
  f: (x: number, y: number, z: number) => number,
  padValue = -1,
): Volume {
  const data = new Float32Array(dims[0] * dims[1] * dims[2]);
  let i = 0;
  for (let z = 0; z < dims[2]; z++) {
    for (let y = 0; y < dims[1]; y++) {
      for (let x = 0; x < dims[0]; x++) data[i++] = f(x, y, z);
    }
  }
  const spacing = [0, 1, 2].map((j) => Math.hypot(affine[j], affine[4 + j], affine[8 + j])) as Vec3;
  return { data, dims, spacing, affine, padValue };
}

// Blocky label: class by coarse position, lots of background.
const blocks = (
  x: number,
  y: number,
  z: number,
) => (((x >> 3) + (y >> 3) + (z >> 1)) % 3 === 0 ? 0 : 1 + (((x >> 3) + 2 * (z >> 1)) % 2));
const AFF_A: Mat4 = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1];

function labeledCase(
  id: string,
  dims: Vec3,
  affine: Mat4,
  labelFn = blocks,
  mods = ["A", "B"],
): LabeledCase {
  const volumes: Record<string, Volume> = {};
  const labels: Record<string, Uint8Array> = {};
  const foreground: Record<string, Int32Array[]> = {};
  for (const m of mods) {
    volumes[m] = vol(dims, affine, (x, y, z) => labelFn(x, y, z) * 10 + (m === "B" ? 100 : 0));
    labels[m] = Uint8Array.from(vol(dims, affine, labelFn).data);
    foreground[m] = foregroundLocations(labels[m], 3, `${id}/${m}`);
  }
  return { kind: "labeled", id, volumes, labels, foreground };
}

Deno.test("sampler: without augmentation a patch is an exact crop, same position in every modality", () => {
  const c = labeledCase("c1", [40, 36, 12], AFF_A);
  const s = new PatchSampler({ patchSize: [4, 16, 16], modalities: ["A", "B"], augment: false });
  const rng = new Rng(1);
  for (let t = 0; t < 20; t++) {
    const p = s.sampleLabeled(c, rng);
    for (let i = 0; i < p.images.A.length; i++) {
      if (p.images.A[i] === -1) { // outside the volume: pad value, background label
        assertEquals([p.labels.A[i], p.images.B[i]], [0, -1]);
        continue;
      }
      assertEquals(p.images.A[i], p.labels.A[i] * 10);
      assertEquals(p.images.B[i], p.labels.B[i] * 10 + 100);
      assertEquals(p.labels.A[i], p.labels.B[i]);
    }
    assertEquals(p.centres.A, p.centres.B);
  }
});

Deno.test("sampler: labels and images are transformed alike under flips, rotations, scaling and misalignment", () => {
  const c = labeledCase(
    "c2",
    [64, 64, 16],
    [1.2, 0, 0, 3, 0, 1.2, 0, -4, 0, 0, 1.5, 7, 0, 0, 0, 1],
    (x, y, z) => (((x >> 4) + (y >> 4) + (z >> 3)) % 2),
  );
  const strong = {
    ...NO_AUGMENT,
    flipProb: 0.5,
    rot90Prob: 1,
    rotateProb: 1,
    rotateDeg: 15,
    scaleProb: 1,
  };
  const s = new PatchSampler({
    patchSize: [8, 24, 24],
    modalities: ["A", "B"],
    augment: strong,
    misalign: { translationMm: 6, rotationDeg: 10, modality: "B" },
  });
  const rng = new Rng(2);
  let agree = 0, total = 0, crossDiffer = 0;
  for (let t = 0; t < 10; t++) {
    const p = s.sampleLabeled(c, rng);
    for (const m of ["A", "B"]) {
      const off = m === "B" ? 100 : 0;
      for (let i = 0; i < p.images[m].length; i++) {
        total++;
        if ((p.images[m][i] - off > 5) === (p.labels[m][i] === 1) || p.images[m][i] === -1) agree++;
      }
    }
    for (let i = 0; i < p.labels.A.length; i++) if (p.labels.A[i] !== p.labels.B[i]) crossDiffer++;
  }
  // Nearest and trilinear (thresholded) agree except at a few boundary corners.
  assert(agree / total > 0.98, `image/label agreement ${agree / total}`);
  // Misalignment moved B relative to A.
  assert(crossDiffer > 0.02 * total / 2, `labels of A and B differ at ${crossDiffer} voxels`);
});

Deno.test("sampler: one third of labeled patches forced on foreground; forced ones contain it", () => {
  // Sparse foreground: one small block.
  const sparse = (
    x: number,
    y: number,
    z: number,
  ) => (x >= 50 && x < 54 && y >= 5 && y < 9 && z === 3 ? 2 : 0);
  const c = labeledCase("c3", [64, 64, 8], AFF_A, sparse);
  const s = new PatchSampler({ patchSize: [2, 16, 16], modalities: ["A", "B"], augment: false });
  const rng = new Rng(3);
  let forced = 0, forcedWithFg = 0;
  const n = 600;
  for (let t = 0; t < n; t++) {
    const p = s.sampleLabeled(c, rng);
    const hasFg = p.labels.A.some((v) => v > 0);
    if (p.forcedForeground) {
      forced++;
      if (hasFg) forcedWithFg++;
    }
  }
  assert(Math.abs(forced / n - 1 / 3) < 0.06, `forced fraction ${forced / n}`);
  assertEquals(forcedWithFg, forced);
  assert(s.sampleLabeled(c, rng, { forceForeground: true }).labels.A.some((v) => v === 2));
});

Deno.test("sampler: modalities on different grids are cropped at the same physical centre", () => {
  // Image value = world x coordinate (mm); B has another spacing and origin.
  const affA: Mat4 = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1];
  const affB: Mat4 = [0.5, 0, 0, -0.25, 0, 0.5, 0, -0.25, 0, 0, 1.5, -0.75, 0, 0, 0, 1];
  const worldX = (aff: Mat4) => (x: number, y: number, z: number) => apply4(aff, [x, y, z])[0];
  const volumes = {
    A: vol([40, 40, 10], affA, worldX(affA)),
    B: vol([80, 80, 20], affB, worldX(affB)),
  };
  const c: UnlabeledCase = { kind: "unlabeled", id: "u", volumes };
  const s = new PatchSampler({ patchSize: [3, 9, 9], modalities: ["A", "B"], augment: false });
  const rng = new Rng(4);
  for (let t = 0; t < 10; t++) {
    const p = s.sampleUnlabeled(c, rng);
    const mid = 1 * 81 + 4 * 9 + 4;
    assertAlmostEquals(p.images.A[mid], p.images.B[mid], 1e-4);
    assertAlmostEquals(p.centres.A[0], p.images.A[mid], 1e-4);
  }
});

Deno.test("sampler: the unlabeled path never touches labels", () => {
  const c = labeledCase("c5", [32, 32, 8], AFF_A);
  const trap = new Proxy({}, {
    get: () => {
      throw new Error("label read");
    },
    has: () => {
      throw new Error("label read");
    },
  });
  const sneaky = {
    kind: "unlabeled",
    id: "c5",
    volumes: c.volumes,
    labels: trap,
    foreground: trap,
  } as unknown as UnlabeledCase;
  const s = new PatchSampler({ patchSize: [2, 8, 8], modalities: ["A", "B"] });
  const rng = new Rng(5);
  for (let t = 0; t < 50; t++) {
    const p = s.sampleUnlabeled(sneaky, rng);
    assertEquals(Object.keys(p).sort(), ["centres", "ids", "images"]);
  }
  // A labeled draw with the trap does read labels (the trap works).
  assertThrows(
    () => s.sampleLabeled(sneaky as unknown as LabeledCase, new Rng(0), { forceForeground: true }),
    Error,
    "label read",
  );
});

Deno.test("sampler: padding, ignore labels, unpaired sources and determinism", () => {
  const small = labeledCase("s", [6, 6, 2], AFF_A, () => 1);
  const s = new PatchSampler({ patchSize: [4, 10, 10], modalities: ["A", "B"], augment: false });
  const p = s.sampleLabeled(small, new Rng(6));
  const pads = Array.from(p.images.A).filter((v) => v === -1).length;
  assertEquals(pads, 400 - 72);
  assertEquals(Array.from(p.labels.A).filter((v) => v === 1).length, 72);
  // A labeled case without a label map for B gives IGNORE_INDEX there.
  const partial: LabeledCase = {
    ...small,
    labels: { A: small.labels.A },
    foreground: { A: small.foreground.A },
  };
  assert(s.sampleLabeled(partial, new Rng(6)).labels.B.every((v) => v === IGNORE_INDEX));
  // Unpaired: A from one case, B from another.
  const other = labeledCase("o", [30, 30, 6], AFF_A);
  const up = s.sampleLabeled({ A: small, B: other }, new Rng(7));
  assertEquals(up.ids, { A: "s", B: "o" });
  // Determinism with augmentation on.
  const aug = new PatchSampler({
    patchSize: [4, 10, 10],
    modalities: ["A", "B"],
    misalign: { translationMm: 3, rotationDeg: 5 },
  });
  const a1 = aug.sampleLabeled(other, new Rng(9)), a2 = aug.sampleLabeled(other, new Rng(9));
  assertEquals(a1, a2);
  assertThrows(
    () => new PatchSampler({ patchSize: [0, 1, 1], modalities: ["A"] }),
    Error,
    "patchSize must be three positive integers",
  );
});

Deno.test("cases: toCommonGrid puts every modality on the reference grid by world position", async () => {
  const { toCommonGrid } = await import("./cases.ts");
  const affA: Mat4 = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 3, 0, 0, 0, 0, 1];
  const affB: Mat4 = [0.5, 0, 0, -0.25, 0, 0.5, 0, -0.25, 0, 0, 1.5, -0.75, 0, 0, 0, 1];
  const worldY = (aff: Mat4) => (x: number, y: number, z: number) => apply4(aff, [x, y, z])[1];
  const c = {
    id: "g",
    volumes: {
      A: vol([20, 20, 6], affA, worldY(affA)),
      B: vol([40, 40, 12], affB, worldY(affB), -9),
    },
  };
  const g = toCommonGrid(c, "A");
  assertEquals(g.dims, [20, 20, 6]);
  assert(g.images.A === c.volumes.A.data);
  for (const i of [0, 77, 400, 2399]) assertAlmostEquals(g.images.B[i], g.images.A[i], 1e-4);
  assertThrows(() => toCommonGrid(c, "C"), Error, "has no C volume");
});

Deno.test("sampler: ignored voxels stay ignored under rotation/scaling and are never foreground", () => {
  // Class 1 and 2 blocks with a band of ignored voxels (stored 255 in a Uint8 label map) through them.
  const ignoredBand = (
    x: number,
    y: number,
    z: number,
  ) => (x >= 14 && x < 22 ? 255 : blocks(x, y, z));
  const c = labeledCase("ig", [40, 36, 12], AFF_A, ignoredBand);
  for (const m of ["A", "B"]) {
    for (const [k, locs] of c.foreground[m].entries()) {
      for (const v of locs) {
        assert(k > 0 && c.labels[m][v] === k, `class ${k} location ${v} holds ${c.labels[m][v]}`);
      }
    }
  }
  // The same in an Int16 label map (stored -1).
  const i16 = Int16Array.from(c.labels.A, (v) => (v === 255 ? -1 : v));
  const fg16 = foregroundLocations(i16, 3, "ig16");
  assertEquals(fg16.map((a) => a.length), c.foreground.A.map((a) => a.length));
  // Heavy rotation and scaling on every draw (nearest neighbour for labels): patch labels hold
  // only classes and IGNORE_INDEX, never the stored 255 nor a class interpolated from it.
  const s = new PatchSampler({
    patchSize: [4, 16, 16],
    modalities: ["A", "B"],
    augment: {
      rotateProb: 1,
      rotateDeg: 40,
      scaleProb: 1,
      intensityScaleProb: 0,
      intensityShiftProb: 0,
      gammaProb: 0,
      noiseProb: 0,
    },
  });
  const rng = new Rng(9);
  let ignored = 0;
  for (let t = 0; t < 30; t++) {
    const p = s.sampleLabeled(c, rng, { forceForeground: t % 2 === 0 });
    for (const m of ["A", "B"]) {
      for (const v of p.labels[m]) {
        assert(v === IGNORE_INDEX || (v >= 0 && v <= 2), `patch label ${v}`);
        ignored += +(v === IGNORE_INDEX);
      }
    }
  }
  assert(ignored > 0, "no ignored voxel in 30 patches");
});

Deno.test("sampler: a forced-foreground patch lies inside the volume even for foreground at the border (no padding)", () => {
  // Foreground only in the corner voxel region x < 3, y < 3, z < 2: a patch centred there would be
  // mostly padding; clipped into the volume it has none.
  const c = labeledCase(
    "edge",
    [40, 36, 12],
    AFF_A,
    (x, y, z) => (x < 3 && y < 3 && z < 2 ? 1 : 0),
    ["A"],
  );
  const s = new PatchSampler({ patchSize: [4, 16, 16], modalities: ["A"], augment: false });
  const rng = new Rng(3);
  for (let t = 0; t < 30; t++) {
    const p = s.sampleLabeled(c, rng, { forceForeground: true });
    assert(p.labels.A.some((v) => v === 1), "a forced patch holds foreground");
    assert(!p.images.A.some((v) => v === -1), "no padding in a patch that fits in the volume");
  }
});
