/**
 * Exact Euclidean distance transform on a 3-D grid with anisotropic spacing.
 *
 * The separable algorithm of Felzenszwalb and Huttenlocher ("Distance Transforms of Sampled
 * Functions", 2012): the squared distance is the lower envelope of parabolas, computed one axis at
 * a time in time linear in the number of voxels. Sample positions are taken in millimetres
 * (index * spacing), so the result is the exact squared distance in mm to the nearest feature voxel.
 *
 * Layout: `dims = [n0, n1, n2]` row-major, the last axis fastest (index = (i0 * n1 + i1) * n2 + i2),
 * and `spacing = [s0, s1, s2]` in the same axis order.
 *
 * @module
 */

/** Three grid sizes, row-major with the last axis fastest. */
export type Dims3 = readonly [number, number, number];
/** Voxel spacing (mm) per axis, in the same order as the dims. */
export type Spacing3 = readonly [number, number, number];

/** Scratch buffers for one line of the transform, sized for the longest axis. */
interface LineScratch {
  f: Float64Array;
  d: Float64Array;
  v: Int32Array;
  z: Float64Array;
}

function makeScratch(n: number): LineScratch {
  return {
    f: new Float64Array(n),
    d: new Float64Array(n),
    v: new Int32Array(n),
    z: new Float64Array(n + 1),
  };
}

/**
 * One-dimensional squared distance transform of `f[0..n)` sampled at positions `i * s`:
 * `d[q] = min_p (s*(q-p))^2 + f[p]`. Infinite samples carry no parabola; when every sample is
 * infinite, the result is infinite everywhere.
 */
function transformLine(n: number, s: number, sc: LineScratch): void {
  const { f, d, v, z } = sc;
  let k = -1;
  for (let q = 0; q < n; q++) {
    const fq = f[q];
    if (fq === Infinity) continue;
    const xq = q * s;
    const hq = fq + xq * xq;
    if (k < 0) {
      k = 0;
      v[0] = q;
      z[0] = -Infinity;
      z[1] = Infinity;
      continue;
    }
    // z[0] is -Infinity and every intersection is finite, so the loop stops at k = 0 at the latest.
    let inter = 0;
    for (;;) {
      const p = v[k];
      const xp = p * s;
      inter = (hq - (f[p] + xp * xp)) / (2 * (xq - xp));
      if (inter > z[k]) break;
      k--;
    }
    k++;
    v[k] = q;
    z[k] = inter;
    z[k + 1] = Infinity;
  }
  if (k < 0) {
    for (let q = 0; q < n; q++) d[q] = Infinity;
    return;
  }
  let j = 0;
  for (let q = 0; q < n; q++) {
    const xq = q * s;
    while (z[j + 1] < xq) j++;
    const p = v[j];
    const dx = xq - p * s;
    d[q] = dx * dx + f[p];
  }
}

/**
 * Squared Euclidean distance (mm^2) from every voxel to the nearest voxel where `feature` is
 * non-zero. Feature voxels get 0; with no feature voxel at all every value is Infinity.
 */
export function squaredDistanceTransform(
  feature: ArrayLike<number>,
  opts: { dims: Dims3; spacing: Spacing3 },
): Float64Array {
  const [n0, n1, n2] = opts.dims;
  const [s0, s1, s2] = opts.spacing;
  const total = n0 * n1 * n2;
  if (feature.length !== total) {
    throw new Error(
      `Cannot compute a distance transform: mask has ${feature.length} voxels, dims ${n0}x${n1}x${n2} need ${total}`,
    );
  }
  if (!(s0 > 0 && s1 > 0 && s2 > 0)) {
    throw new Error(
      `Cannot compute a distance transform: spacing ${opts.spacing.join("x")} must be positive`,
    );
  }
  const out = new Float64Array(total);
  const sc = makeScratch(Math.max(n0, n1, n2));
  // Axis 2 (contiguous lines): on a binary image the 1-D transform is the distance to the nearest
  // feature on the line, found with one sweep each way.
  for (let base = 0; base < total; base += n2) {
    let last = -Infinity;
    for (let q = 0; q < n2; q++) {
      if (feature[base + q]) last = q;
      out[base + q] = q - last;
    }
    last = Infinity;
    for (let q = n2 - 1; q >= 0; q--) {
      if (feature[base + q]) last = q;
      const d = Math.min(out[base + q], last - q) * s2;
      out[base + q] = d * d;
    }
  }
  // Axis 1 (stride n2).
  for (let i0 = 0; i0 < n0; i0++) {
    for (let i2 = 0; i2 < n2; i2++) {
      const base = i0 * n1 * n2 + i2;
      for (let q = 0; q < n1; q++) sc.f[q] = out[base + q * n2];
      transformLine(n1, s1, sc);
      for (let q = 0; q < n1; q++) out[base + q * n2] = sc.d[q];
    }
  }
  // Axis 0 (stride n1*n2).
  const plane = n1 * n2;
  for (let r = 0; r < plane; r++) {
    for (let q = 0; q < n0; q++) sc.f[q] = out[r + q * plane];
    transformLine(n0, s0, sc);
    for (let q = 0; q < n0; q++) out[r + q * plane] = sc.d[q];
  }
  return out;
}
