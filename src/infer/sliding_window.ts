/**
 * Sliding-window inference over a 3-D volume with Gaussian importance weighting and optional
 * mirror test-time augmentation.
 *
 * Windows of the training patch size are placed so that they cover the volume exactly: along each
 * axis the number of windows is ceil((size - patch) / (patch * (1 - overlap))) + 1 and the starts
 * are spread evenly from 0 to size - patch (rounded), so the first window touches the start and the
 * last one the end. Axes shorter than the patch are padded (with `padValue`, centred) and the
 * padding is cropped from the result.
 *
 * Every window prediction is multiplied by a Gaussian importance map (sigma = sigmaScale * patch
 * size per axis, centred, normalised to a maximum of 1 and clamped from below to `minWeight`) and
 * accumulated; the result is the weighted sum divided by the summed weights. When the predictor
 * returns logits, softmax over classes is applied to every window prediction before weighting, so
 * the output is a probability distribution at every voxel.
 *
 * Layout: volumes are row-major [D, H, W] (W fastest); patches passed to the predictor are
 * [B, d, h, w] per modality; the predictor returns [B, K, d, h, w]; the result is [K, D, H, W].
 *
 * @module
 */

/** A volume with one array per modality (or channel), all on the same [D, H, W] grid. */
export interface InferenceVolume {
  data: readonly Float32Array[];
  dims: readonly [number, number, number];
}

/** One call's worth of windows. */
export interface PatchBatch {
  /** One array per modality, each [B, d, h, w] (the same window positions for all modalities). */
  patches: Float32Array[];
  /** Number of windows B in this batch (the last batch may be smaller than batchSize). */
  batchSize: number;
  patchSize: readonly [number, number, number];
  /**
   * Start of each window in the coordinates of the original (unpadded) volume; negative where
   * the volume was padded. Mirrored calls get the same origins (the patches are flipped).
   */
  origins: [number, number, number][];
  /** Axes flipped in this call (empty for the plain pass). */
  flippedAxes: readonly number[];
}

/** Returns [B, K, d, h, w] logits or probabilities for a batch. */
export type PatchPredictor = (batch: PatchBatch) => Promise<Float32Array>;

/** Options of slidingWindowInference. */
export interface SlidingWindowOptions {
  patchSize: readonly [number, number, number];
  numClasses: number;
  /** Fraction of the patch shared by neighbouring windows, in [0, 1) (default 0.5). */
  overlap?: number;
  /** Gaussian sigma as a fraction of the patch size (default 0.125); 0 gives uniform weights. */
  sigmaScale?: number;
  /** Floor of the normalised importance map (default 1e-4), so every voxel gets weight. */
  minWeight?: number;
  /** Windows per predictor call (default 1). */
  batchSize?: number;
  /**
   * Mirror test-time augmentation: true for all three axes, or a list of axes (0 = D, 1 = H,
   * 2 = W). Every non-empty subset of the axes is flipped once, and the flipped predictions are
   * averaged with the plain one (2^m passes for m axes). Default false.
   */
  mirror?: boolean | readonly number[];
  /** What the predictor returns (default "logits": softmax over classes is applied). */
  outputs?: "logits" | "probabilities";
  /**
   * Value used to pad axes shorter than the patch (default 0): one for every input, or one per
   * input (the value training padded that modality with, e.g. its normalised zero).
   */
  padValue?: number | readonly number[];
  /** Called after each predictor call with (done, total) predictor calls. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Window starts along one axis of length `size` (>= patch) so that windows of `patch` voxels with
 * the given overlap cover it exactly.
 */
export function windowStarts(size: number, patch: number, overlap: number): number[] {
  if (size < patch) {
    throw new Error(
      `Cannot place windows: axis of ${size} voxels is shorter than the patch (${patch})`,
    );
  }
  if (!(overlap >= 0 && overlap < 1)) {
    throw new Error(`Cannot place windows: overlap ${overlap} must be in [0, 1)`);
  }
  const target = patch * (1 - overlap);
  const n = Math.ceil((size - patch) / target) + 1;
  if (n === 1) return [0];
  const step = (size - patch) / (n - 1);
  return Array.from({ length: n }, (_, i) => Math.round(step * i));
}

/**
 * Gaussian importance map [d, h, w]: separable exp(-x^2 / (2 sigma^2)) around the patch centre with
 * sigma = sigmaScale * size per axis, scaled so the maximum is 1, clamped below at minWeight.
 */
export function gaussianImportanceMap(
  patchSize: readonly [number, number, number],
  opts: { sigmaScale?: number; minWeight?: number } = {},
): Float32Array {
  const sigmaScale = opts.sigmaScale ?? 0.125;
  const minWeight = opts.minWeight ?? 1e-4;
  const axes = patchSize.map((n) => {
    const w = new Float64Array(n);
    const c = (n - 1) / 2;
    const sigma = sigmaScale * n;
    for (let i = 0; i < n; i++) {
      w[i] = sigma > 0 ? Math.exp(-((i - c) ** 2) / (2 * sigma * sigma)) : 1;
    }
    let max = 0;
    for (const v of w) max = Math.max(max, v);
    for (let i = 0; i < n; i++) w[i] /= max;
    return w;
  });
  const [d, h, w] = patchSize;
  const out = new Float32Array(d * h * w);
  let o = 0;
  for (let a = 0; a < d; a++) {
    for (let b = 0; b < h; b++) {
      const ab = axes[0][a] * axes[1][b];
      for (let c = 0; c < w; c++) out[o++] = Math.max(minWeight, ab * axes[2][c]);
    }
  }
  return out;
}

function mirrorSubsets(mirror: boolean | readonly number[] | undefined): number[][] {
  const axes = mirror === true ? [0, 1, 2] : mirror ? [...new Set(mirror)] : [];
  for (const a of axes) {
    if (a !== 0 && a !== 1 && a !== 2) {
      throw new Error(`Cannot mirror axis ${a}: expected 0, 1 or 2 (D, H, W)`);
    }
  }
  const subsets: number[][] = [];
  for (let m = 0; m < 1 << axes.length; m++) subsets.push(axes.filter((_, i) => m & (1 << i)));
  return subsets;
}

/**
 * Flips a [C, d, h, w] block (C blocks of d*h*w) along the given axes, from `src` into `dst`.
 */
function flipBlock(
  src: Float32Array,
  dst: Float32Array,
  dims: readonly [number, number, number],
  axes: readonly number[],
): void {
  const [d, h, w] = dims;
  const f0 = axes.includes(0), f1 = axes.includes(1), f2 = axes.includes(2);
  const vol = d * h * w;
  const blocks = src.length / vol;
  for (let blk = 0; blk < blocks; blk++) {
    const base = blk * vol;
    for (let a = 0; a < d; a++) {
      const sa = f0 ? d - 1 - a : a;
      for (let b = 0; b < h; b++) {
        const sb = f1 ? h - 1 - b : b;
        const srow = base + (sa * h + sb) * w;
        const drow = base + (a * h + b) * w;
        if (f2) { for (let c = 0; c < w; c++) dst[drow + c] = src[srow + w - 1 - c]; }
        else dst.set(src.subarray(srow, srow + w), drow);
      }
    }
  }
}

function softmaxInPlace(x: Float32Array, batch: number, k: number, vox: number): void {
  for (let b = 0; b < batch; b++) {
    const base = b * k * vox;
    for (let v = 0; v < vox; v++) {
      let max = -Infinity;
      for (let c = 0; c < k; c++) max = Math.max(max, x[base + c * vox + v]);
      let s = 0;
      for (let c = 0; c < k; c++) {
        const e = Math.exp(x[base + c * vox + v] - max);
        x[base + c * vox + v] = e;
        s += e;
      }
      for (let c = 0; c < k; c++) x[base + c * vox + v] /= s;
    }
  }
}

/**
 * Runs `predictor` over the volume window by window and returns class probabilities
 * [K, D, H, W] (or, with outputs "probabilities", the weighted average of what the predictor
 * returned).
 */
export async function slidingWindowInference(
  volume: InferenceVolume,
  predictor: PatchPredictor,
  opts: SlidingWindowOptions,
): Promise<Float32Array> {
  const dims = volume.dims;
  const patch = opts.patchSize;
  const K = opts.numClasses;
  const overlap = opts.overlap ?? 0.5;
  const batchSize = opts.batchSize ?? 1;
  const outputs = opts.outputs ?? "logits";
  const padValues = volume.data.map((_, i) => {
    const p = opts.padValue ?? 0;
    return typeof p === "number" ? p : p[i] ?? 0;
  });
  const vol = dims[0] * dims[1] * dims[2];
  if (volume.data.length === 0) {
    throw new Error("Cannot run sliding-window inference: the volume has no modality");
  }
  for (const [i, arr] of volume.data.entries()) {
    if (arr.length !== vol) {
      throw new Error(
        `Cannot run sliding-window inference: modality ${i} has ${arr.length} voxels, dims ${
          dims.join("x")
        } need ${vol}`,
      );
    }
  }
  if (patch.length !== 3 || patch.some((p) => !(Number.isInteger(p) && p > 0))) {
    throw new Error(
      `Cannot run sliding-window inference: patch size ${
        patch.join("x")
      } must be three positive integers`,
    );
  }
  if (!(Number.isInteger(K) && K > 0)) {
    throw new Error(
      `Cannot run sliding-window inference: numClasses ${K} must be a positive integer`,
    );
  }
  if (!(Number.isInteger(batchSize) && batchSize > 0)) {
    throw new Error(
      `Cannot run sliding-window inference: batchSize ${batchSize} must be a positive integer`,
    );
  }

  // Padding (centred) for axes shorter than the patch.
  const padBefore = [0, 1, 2].map((a) => Math.max(0, Math.floor((patch[a] - dims[a]) / 2)));
  const padded = [0, 1, 2].map((a) => Math.max(dims[a], patch[a])) as [number, number, number];
  const starts = [0, 1, 2].map((a) => windowStarts(padded[a], patch[a], overlap));
  const windows: [number, number, number][] = [];
  for (const s0 of starts[0]) {
    for (const s1 of starts[1]) for (const s2 of starts[2]) windows.push([s0, s1, s2]);
  }

  const importance = gaussianImportanceMap(patch, {
    sigmaScale: opts.sigmaScale,
    minWeight: opts.minWeight,
  });
  const subsets = mirrorSubsets(opts.mirror);
  const pvox = patch[0] * patch[1] * patch[2];
  const pvol = padded[0] * padded[1] * padded[2];
  const acc = new Float32Array(K * pvol);
  const wsum = new Float32Array(pvol);
  const nBatches = Math.ceil(windows.length / batchSize);
  const totalCalls = nBatches * subsets.length;
  let calls = 0;

  for (let bi = 0; bi < nBatches; bi++) {
    const group = windows.slice(bi * batchSize, (bi + 1) * batchSize);
    const B = group.length;
    const patches = volume.data.map((arr, i) => {
      const out = new Float32Array(B * pvox);
      const padValue = padValues[i];
      group.forEach((start, b) =>
        extractPatch(arr, dims, { start, padBefore, patch, padValue, out, offset: b * pvox })
      );
      return out;
    });
    const origins = group.map((s) =>
      [s[0] - padBefore[0], s[1] - padBefore[1], s[2] - padBefore[2]] as [number, number, number]
    );
    const avg = new Float32Array(B * K * pvox);
    for (const axes of subsets) {
      const input = axes.length === 0 ? patches : patches.map((p) => {
        const f = new Float32Array(p.length);
        flipBlock(p, f, patch, axes);
        return f;
      });
      const pred = await predictor({
        patches: input,
        batchSize: B,
        patchSize: patch,
        origins,
        flippedAxes: axes,
      });
      if (!(pred instanceof Float32Array) || pred.length !== B * K * pvox) {
        throw new Error(
          `Cannot run sliding-window inference: predictor returned ${pred?.length} values for a batch of ${B} ` +
            `windows, expected ${B}x${K}x${patch.join("x")} = ${B * K * pvox}`,
        );
      }
      const p = outputs === "logits" ? Float32Array.from(pred) : pred;
      if (outputs === "logits") softmaxInPlace(p, B, K, pvox);
      if (axes.length === 0) {
        for (let i = 0; i < p.length; i++) avg[i] += p[i];
      } else {
        const back = new Float32Array(p.length);
        flipBlock(p, back, patch, axes);
        for (let i = 0; i < p.length; i++) avg[i] += back[i];
      }
      calls++;
      opts.onProgress?.(calls, totalCalls);
    }
    const inv = 1 / subsets.length;
    group.forEach((start, b) => {
      accumulate(avg, acc, wsum, {
        start,
        patch,
        padded,
        importance,
        K,
        offset: b * K * pvox,
        scale: inv,
      });
    });
  }

  // Normalise (in place when nothing was padded) and crop the padding away.
  if (pvol === vol) {
    for (let k = 0; k < K; k++) {
      const base = k * vol;
      for (let i = 0; i < vol; i++) acc[base + i] /= wsum[i];
    }
    return acc;
  }
  const out = new Float32Array(K * vol);
  const [D, H, W] = dims;
  for (let k = 0; k < K; k++) {
    for (let a = 0; a < D; a++) {
      for (let b = 0; b < H; b++) {
        const src = ((a + padBefore[0]) * padded[1] + b + padBefore[1]) * padded[2] + padBefore[2];
        const dst = k * vol + (a * H + b) * W;
        for (let c = 0; c < W; c++) out[dst + c] = acc[k * pvol + src + c] / wsum[src + c];
      }
    }
  }
  return out;
}

/** Copies one window of the (virtually padded) volume into out[offset ..]. */
function extractPatch(
  arr: Float32Array,
  dims: readonly [number, number, number],
  o: {
    start: readonly number[];
    padBefore: readonly number[];
    patch: readonly [number, number, number];
    padValue: number;
    out: Float32Array;
    offset: number;
  },
): void {
  const [D, H, W] = dims;
  const [d, h, w] = o.patch;
  let dst = o.offset;
  for (let a = 0; a < d; a++) {
    const sa = o.start[0] + a - o.padBefore[0];
    for (let b = 0; b < h; b++, dst += w) {
      const sb = o.start[1] + b - o.padBefore[1];
      if (sa < 0 || sa >= D || sb < 0 || sb >= H) {
        o.out.fill(o.padValue, dst, dst + w);
        continue;
      }
      const row = (sa * H + sb) * W;
      const c0 = o.start[2] - o.padBefore[2];
      const lo = Math.max(0, -c0), hi = Math.min(w, W - c0);
      if (lo > 0) o.out.fill(o.padValue, dst, dst + lo);
      o.out.set(arr.subarray(row + c0 + lo, row + c0 + hi), dst + lo);
      if (hi < w) o.out.fill(o.padValue, dst + hi, dst + w);
    }
  }
}

/** Adds one window's weighted prediction [K, d, h, w] into the padded accumulators. */
function accumulate(
  pred: Float32Array,
  acc: Float32Array,
  wsum: Float32Array,
  o: {
    start: readonly number[];
    patch: readonly [number, number, number];
    padded: readonly [number, number, number];
    importance: Float32Array;
    K: number;
    offset: number;
    scale: number;
  },
): void {
  const [d, h, w] = o.patch;
  const [, PH, PW] = o.padded;
  const pvox = d * h * w;
  const pvol = o.padded[0] * PH * PW;
  for (let a = 0; a < d; a++) {
    for (let b = 0; b < h; b++) {
      const dstRow = ((o.start[0] + a) * PH + o.start[1] + b) * PW + o.start[2];
      const srcRow = (a * h + b) * w;
      for (let c = 0; c < w; c++) wsum[dstRow + c] += o.importance[srcRow + c];
      for (let k = 0; k < o.K; k++) {
        const src = o.offset + k * pvox + srcRow;
        const dst = k * pvol + dstRow;
        for (let c = 0; c < w; c++) {
          acc[dst + c] += pred[src + c] * o.importance[srcRow + c] * o.scale;
        }
      }
    }
  }
}
