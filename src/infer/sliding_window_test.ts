import {
  deepStrictEqual as assertEquals,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert";
import {
  gaussianImportanceMap,
  type PatchBatch,
  slidingWindowInference,
  windowStarts,
} from "./sliding_window.ts";

function close(got: number, want: number, tol: number, msg = ""): void {
  if (!(Math.abs(got - want) <= tol)) {
    throw new Error(`${msg} expected ${want} +- ${tol}, got ${got}`);
  }
}

function ramp(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(i * 0.37 + seed) * 3 + (i % 7);
  return a;
}

Deno.test("windowStarts covers the axis exactly with at most the target step", () => {
  assertEquals(windowStarts(10, 10, 0.5), [0]);
  assertEquals(windowStarts(20, 10, 0.5), [0, 5, 10]);
  assertEquals(windowStarts(21, 10, 0.5), [0, 4, 7, 11]);
  assertEquals(windowStarts(20, 10, 0), [0, 10]);
  for (let size = 8; size < 60; size += 3) {
    for (const patch of [8, 13]) {
      if (patch > size) continue;
      const s = windowStarts(size, patch, 0.5);
      assertEquals(s[0], 0);
      assertEquals(s[s.length - 1], size - patch);
      for (let i = 1; i < s.length; i++) {
        if (s[i] - s[i - 1] > Math.ceil(patch / 2)) throw new Error(`gap at ${size}/${patch}`);
      }
    }
  }
  assertThrows(() => windowStarts(5, 8, 0.5), /shorter than the patch/);
  assertThrows(() => windowStarts(9, 8, 1), /overlap/);
});

Deno.test("gaussian importance map: peak 1 at the centre, symmetric, floored", () => {
  const m = gaussianImportanceMap([5, 8, 9], { minWeight: 1e-3 });
  const at = (a: number, b: number, c: number) => m[(a * 8 + b) * 9 + c];
  close(at(2, 3, 4), 1, 1e-7); // the samples next to the centre (h: 3.5) share the peak
  close(at(0, 3, 4), Math.exp(-4 / (2 * 0.625 ** 2)), 1e-6); // d: centre 2, sigma 5/8
  close(at(2, 0, 4), Math.exp(-(3.5 ** 2) / 2 + 0.5 ** 2 / 2), 1e-6); // h: sigma 1, normalised by the sample at 3
  close(at(2, 3, 4), at(2, 4, 4), 1e-7);
  close(at(0, 0, 0), at(4, 7, 8), 1e-7);
  let min = Infinity, max = 0;
  for (const v of m) {
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  close(min, 1e-3, 1e-9);
  if (max > 1 || max < 0.5) throw new Error(`max ${max}`);
  assertEquals(gaussianImportanceMap([2, 2, 2], { sigmaScale: 0 }).every((v) => v === 1), true);
});

Deno.test("constant logits give constant softmax probabilities", async () => {
  const dims = [7, 19, 23] as const;
  const logits = [0.5, -1, 2];
  const e = logits.map(Math.exp);
  const want = e.map((v) => v / (e[0] + e[1] + e[2]));
  const out = await slidingWindowInference(
    { data: [new Float32Array(7 * 19 * 23)], dims },
    (b: PatchBatch) => {
      const vox = 4 * 8 * 8;
      const p = new Float32Array(b.batchSize * 3 * vox);
      for (let i = 0; i < b.batchSize; i++) {
        for (let k = 0; k < 3; k++) p.fill(logits[k], (i * 3 + k) * vox, (i * 3 + k + 1) * vox);
      }
      return Promise.resolve(p);
    },
    { patchSize: [4, 8, 8], numClasses: 3, batchSize: 3, mirror: true },
  );
  assertEquals(out.length, 3 * 7 * 19 * 23);
  const vol = 7 * 19 * 23;
  for (let k = 0; k < 3; k++) {
    for (let i = 0; i < vol; i++) close(out[k * vol + i], want[k], 1e-6, `class ${k} voxel ${i}`);
  }
});

/** A predictor returning its input (modality 0) as class 0 and input of modality 1 as class 1. */
function identity(b: PatchBatch): Promise<Float32Array> {
  const vox = b.patchSize[0] * b.patchSize[1] * b.patchSize[2];
  const out = new Float32Array(b.batchSize * 2 * vox);
  for (let i = 0; i < b.batchSize; i++) {
    out.set(b.patches[0].subarray(i * vox, (i + 1) * vox), (i * 2) * vox);
    out.set(b.patches[1].subarray(i * vox, (i + 1) * vox), (i * 2 + 1) * vox);
  }
  return Promise.resolve(out);
}

Deno.test("an identity predictor reconstructs both modalities exactly (overlap, mirror, batches, padding)", async () => {
  const cases: {
    dims: [number, number, number];
    patch: [number, number, number];
    mirror: boolean | number[];
    batch: number;
  }[] = [
    { dims: [9, 17, 13], patch: [4, 8, 6], mirror: false, batch: 1 },
    { dims: [9, 17, 13], patch: [4, 8, 6], mirror: true, batch: 4 },
    { dims: [3, 5, 30], patch: [8, 8, 8], mirror: [1, 2], batch: 2 }, // patch larger on two axes
    { dims: [2, 3, 4], patch: [5, 6, 7], mirror: false, batch: 1 }, // patch larger than the volume
  ];
  for (const c of cases) {
    const n = c.dims[0] * c.dims[1] * c.dims[2];
    const m0 = ramp(n, 0), m1 = ramp(n, 1.5);
    const out = await slidingWindowInference({ data: [m0, m1], dims: c.dims }, identity, {
      patchSize: c.patch,
      numClasses: 2,
      outputs: "probabilities",
      mirror: c.mirror,
      batchSize: c.batch,
      padValue: -99,
    });
    for (let i = 0; i < n; i++) {
      close(out[i], m0[i], 1e-4, `${c.dims} m0 ${i}`);
      close(out[n + i], m1[i], 1e-4, `${c.dims} m1 ${i}`);
    }
  }
});

Deno.test("a predictor that returns a function of global position reconstructs it exactly", async () => {
  const dims = [6, 11, 14] as const;
  const f = (z: number, y: number, x: number) => z * 100 + y * 10 + x * 0.5;
  const out = await slidingWindowInference(
    { data: [new Float32Array(6 * 11 * 14)], dims },
    (b) => {
      const [d, h, w] = b.patchSize;
      const out = new Float32Array(b.batchSize * d * h * w);
      let o = 0;
      for (const [z0, y0, x0] of b.origins) {
        for (let a = 0; a < d; a++) {
          for (let bb = 0; bb < h; bb++) {
            for (let c = 0; c < w; c++) out[o++] = f(z0 + a, y0 + bb, x0 + c);
          }
        }
      }
      return Promise.resolve(out);
    },
    { patchSize: [8, 5, 5], numClasses: 1, outputs: "probabilities", batchSize: 2, overlap: 0.6 },
  );
  for (let z = 0; z < 6; z++) {
    for (let y = 0; y < 11; y++) {
      for (let x = 0; x < 14; x++) close(out[(z * 11 + y) * 14 + x], f(z, y, x), 2e-4);
    }
  }
});

Deno.test("mirror TTA averages flipped predictions (local-position predictor becomes symmetric)", async () => {
  // One window equal to the volume: the predictor returns the local w index, ignoring its input.
  const dims = [2, 3, 6] as const;
  const local = (b: PatchBatch) => {
    const [d, h, w] = b.patchSize;
    const out = new Float32Array(b.batchSize * d * h * w);
    for (let i = 0; i < out.length; i++) out[i] = i % w;
    return Promise.resolve(out);
  };
  const plain = await slidingWindowInference({ data: [new Float32Array(36)], dims }, local, {
    patchSize: [2, 3, 6],
    numClasses: 1,
    outputs: "probabilities",
  });
  for (let i = 0; i < 6; i++) close(plain[i], i, 1e-5);
  const mirrored = await slidingWindowInference({ data: [new Float32Array(36)], dims }, local, {
    patchSize: [2, 3, 6],
    numClasses: 1,
    outputs: "probabilities",
    mirror: [2],
  });
  for (const v of mirrored) close(v, 2.5, 1e-6);
  const onlyD = await slidingWindowInference({ data: [new Float32Array(36)], dims }, local, {
    patchSize: [2, 3, 6],
    numClasses: 1,
    outputs: "probabilities",
    mirror: [0],
  });
  for (let i = 0; i < 6; i++) close(onlyD[i], i, 1e-5);
});

Deno.test("predictor call counts, batch sizes, progress and flipped-axes sets", async () => {
  const dims = [10, 20, 20] as const; // 3 windows along D (patch 6), 4 along H and W (patch 8)
  const seen: { b: number; axes: string }[] = [];
  const progress: number[] = [];
  await slidingWindowInference(
    { data: [new Float32Array(4000), new Float32Array(4000)], dims },
    (b) => {
      seen.push({ b: b.batchSize, axes: b.flippedAxes.join("") });
      assertEquals(b.patches.length, 2);
      assertEquals(b.patches[1].length, b.batchSize * 6 * 8 * 8);
      return Promise.resolve(new Float32Array(b.batchSize * 2 * 6 * 8 * 8));
    },
    {
      patchSize: [6, 8, 8],
      numClasses: 2,
      batchSize: 5,
      mirror: [0, 2],
      onProgress: (d, t) => progress.push(d / t),
    },
  );
  const windows = windowStarts(10, 6, 0.5).length * windowStarts(20, 8, 0.5).length ** 2;
  assertEquals(windows, 3 * 4 * 4);
  const batches = Math.ceil(windows / 5);
  assertEquals(seen.length, batches * 4);
  assertEquals(seen.filter((s) => s.axes === "").length, batches);
  assertEquals(new Set(seen.map((s) => s.axes)), new Set(["", "0", "2", "02"]));
  assertEquals(seen.reduce((s, x) => s + x.b, 0), windows * 4);
  assertEquals(progress.length, seen.length);
  assertEquals(progress[progress.length - 1], 1);
});

Deno.test("sliding window rejects bad inputs with messages naming sizes", async () => {
  const vol = { data: [new Float32Array(8)], dims: [2, 2, 3] as const };
  await assertRejects(
    slidingWindowInference(vol, () => Promise.resolve(new Float32Array(1)), {
      patchSize: [2, 2, 2],
      numClasses: 1,
    }),
    /modality 0 has 8 voxels, dims 2x2x3 need 12/,
  );
  const ok = { data: [new Float32Array(8)], dims: [2, 2, 2] as const };
  await assertRejects(
    slidingWindowInference(ok, () => Promise.resolve(new Float32Array(3)), {
      patchSize: [2, 2, 2],
      numClasses: 2,
    }),
    /returned 3 values .* expected 1x2x2x2x2 = 16/,
  );
  await assertRejects(
    slidingWindowInference(ok, () => Promise.resolve(new Float32Array(8)), {
      patchSize: [2, 2, 2],
      numClasses: 1,
      mirror: [3],
    }),
    /Cannot mirror axis 3/,
  );
});
