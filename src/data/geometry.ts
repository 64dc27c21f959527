/**
 * Geometry on voxel grids: reorientation to RAS, resampling to a spacing or onto another image's
 * grid, and the interpolation kernels (trilinear for intensities, nearest for labels) that the
 * sampler and augmentation reuse. All arrays are in NIfTI order (x fastest).
 */
import { apply4, inv4, linear3, type Mat4, mul4, spacingOf, type Vec3 } from "./affine.ts";
import type { NiftiImage } from "./nifti.ts";

export type Interpolation = "linear" | "nearest";

/** A typed array that nearest-neighbour sampling can read from or write into. */
export type VoxelArray =
  | Float32Array
  | Float64Array
  | Int32Array
  | Int16Array
  | Uint8Array
  | Uint16Array
  | Int8Array;

/**
 * Row-major 3x4 matrix mapping an output voxel index (x, y, z) to a continuous source index:
 * [m0 m1 m2 m3; m4 m5 m6 m7; m8 m9 m10 m11].
 */
export type IndexMap = number[];

export interface SampleOptions {
  order: Interpolation;
  /** Value for points more than half a voxel outside the source (default 0). */
  fill?: number;
  /** Output array to write into (length = product of outDims); allocated when absent. */
  out?: VoxelArray;
  /** Frames: sample each of `frames` consecutive volumes with the same map (default 1). */
  frames?: number;
}

/** Index map from a 4x4 affine: output index -> source index. */
export function indexMapOf(m: Mat4): IndexMap {
  return m.slice(0, 12);
}

/**
 * Samples `src` (dims `srcDims`) at the points `map` assigns to each voxel of an `outDims` grid.
 * Points within half a voxel of the source edge use the edge value; farther out gives `fill`.
 */
export function sampleGrid(
  src: ArrayLike<number>,
  srcDims: readonly number[],
  outDims: readonly number[],
  map: IndexMap,
  opts: SampleOptions,
): VoxelArray {
  const [nx, ny, nz] = srcDims;
  const [ox, oy, oz] = outDims;
  const frames = opts.frames ?? 1;
  const outN = ox * oy * oz;
  const out = opts.out ?? new Float32Array(outN * frames);
  if (out.length < outN * frames) {
    throw new Error(`sampleGrid: output has ${out.length} voxels, needs ${outN * frames}`);
  }
  const fill = opts.fill ?? 0;
  const [m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11] = map;
  // Maps that only permute, flip, scale and shift axes (no oblique rotation) take the table path.
  const perm = axisPermutation(map);
  if (perm) {
    sampleSeparable(src, srcDims, outDims, map, perm, opts.order, fill, frames, out);
    return out;
  }
  const sxy = nx * ny;
  const srcN = sxy * nz;
  const lx = -0.5, hx = nx - 0.5, ly = -0.5, hy = ny - 0.5, lz = -0.5, hz = nz - 0.5;
  const mx = nx - 1, my = ny - 1, mz = nz - 1;
  for (let f = 0; f < frames; f++) {
    const so = f * srcN;
    let o = f * outN;
    for (let z = 0; z < oz; z++) {
      for (let y = 0; y < oy; y++) {
        let px = m1 * y + m2 * z + m3;
        let py = m5 * y + m6 * z + m7;
        let pz = m9 * y + m10 * z + m11;
        if (opts.order === "nearest") {
          for (let x = 0; x < ox; x++, o++, px += m0, py += m4, pz += m8) {
            if (px < lx || px >= hx || py < ly || py >= hy || pz < lz || pz >= hz) {
              out[o] = fill;
              continue;
            }
            let ix = Math.round(px), iy = Math.round(py), iz = Math.round(pz);
            if (ix > mx) ix = mx;
            if (iy > my) iy = my;
            if (iz > mz) iz = mz;
            if (ix < 0) ix = 0;
            if (iy < 0) iy = 0;
            if (iz < 0) iz = 0;
            out[o] = src[so + iz * sxy + iy * nx + ix];
          }
        } else {
          for (let x = 0; x < ox; x++, o++, px += m0, py += m4, pz += m8) {
            if (px < lx || px >= hx || py < ly || py >= hy || pz < lz || pz >= hz) {
              out[o] = fill;
              continue;
            }
            let cx = px < 0 ? 0 : px > mx ? mx : px;
            let cy = py < 0 ? 0 : py > my ? my : py;
            let cz = pz < 0 ? 0 : pz > mz ? mz : pz;
            let x0 = Math.floor(cx), y0 = Math.floor(cy), z0 = Math.floor(cz);
            if (x0 >= mx) x0 = mx > 0 ? mx - 1 : 0;
            if (y0 >= my) y0 = my > 0 ? my - 1 : 0;
            if (z0 >= mz) z0 = mz > 0 ? mz - 1 : 0;
            cx -= x0;
            cy -= y0;
            cz -= z0;
            const dx = nx > 1 ? 1 : 0, dy = ny > 1 ? nx : 0, dz = nz > 1 ? sxy : 0;
            const i = so + z0 * sxy + y0 * nx + x0;
            const c00 = src[i] + (src[i + dx] - src[i]) * cx;
            const c10 = src[i + dy] + (src[i + dy + dx] - src[i + dy]) * cx;
            const c01 = src[i + dz] + (src[i + dz + dx] - src[i + dz]) * cx;
            const c11 = src[i + dz + dy] + (src[i + dz + dy + dx] - src[i + dz + dy]) * cx;
            const c0 = c00 + (c10 - c00) * cy;
            const c1 = c01 + (c11 - c01) * cy;
            out[o] = c0 + (c1 - c0) * cz;
          }
        }
      }
    }
  }
  return out;
}

/** Per-axis sample table: lower index, fraction, and whether the point is inside (else fill). */
function axisTable(n: number, count: number, scale: number, offset: number, nearest: boolean) {
  const i0 = new Int32Array(count), f = new Float32Array(count), ok = new Uint8Array(count);
  const mx = n - 1;
  for (let o = 0; o < count; o++) {
    const p = scale * o + offset;
    if (p < -0.5 || p >= n - 0.5) continue;
    ok[o] = 1;
    let c = p < 0 ? 0 : p > mx ? mx : p;
    if (nearest) {
      i0[o] = Math.min(mx, Math.max(0, Math.round(p)));
      continue;
    }
    let lo = Math.floor(c);
    if (lo >= mx) lo = mx > 0 ? mx - 1 : 0;
    c -= lo;
    i0[o] = lo;
    f[o] = c;
  }
  return { i0, f, ok };
}

/** For a map whose output axes each feed exactly one source axis: that source axis per output axis. */
function axisPermutation(map: IndexMap): [number, number, number] | null {
  const tiny = 1e-12;
  const perm: number[] = [];
  for (let a = 0; a < 3; a++) {
    let found = -1;
    for (let r = 0; r < 3; r++) {
      if (Math.abs(map[r * 4 + a]) > tiny) {
        if (found >= 0) return null;
        found = r;
      }
    }
    if (found < 0 || perm.includes(found)) return null;
    perm.push(found);
  }
  return perm as [number, number, number];
}

/** sampleGrid for axis-permuting maps (flips, 90-degree turns, scaling, shifts): per-axis tables. */
function sampleSeparable(
  src: ArrayLike<number>,
  srcDims: readonly number[],
  outDims: readonly number[],
  map: IndexMap,
  perm: [number, number, number],
  order: Interpolation,
  fill: number,
  frames: number,
  out: VoxelArray,
): void {
  const [ox, oy, oz] = outDims;
  const nearest = order === "nearest";
  const stride = [1, srcDims[0], srcDims[0] * srcDims[1]];
  const table = (a: number, count: number) => {
    const r = perm[a];
    const t = axisTable(srcDims[r], count, map[r * 4 + a], map[r * 4 + 3], nearest);
    for (let i = 0; i < count; i++) t.i0[i] *= stride[r];
    return { ...t, step: srcDims[r] > 1 ? stride[r] : 0 };
  };
  const tx = table(0, ox), ty = table(1, oy), tz = table(2, oz);
  const srcN = srcDims[0] * srcDims[1] * srcDims[2], outN = ox * oy * oz;
  const dx = tx.step, dy = ty.step, dz = tz.step;
  const xi = tx.i0, xf = tx.f, xok = tx.ok;
  for (let f = 0; f < frames; f++) {
    const so = f * srcN;
    let o = f * outN;
    for (let z = 0; z < oz; z++) {
      const zok = tz.ok[z], zb = tz.i0[z], fz = tz.f[z];
      for (let y = 0; y < oy; y++, o += ox) {
        if (!zok || !ty.ok[y]) {
          for (let x = 0; x < ox; x++) out[o + x] = fill;
          continue;
        }
        const base = so + zb + ty.i0[y];
        if (nearest) {
          for (let x = 0; x < ox; x++) out[o + x] = xok[x] ? src[base + xi[x]] : fill;
          continue;
        }
        const fy = ty.f[y];
        for (let x = 0; x < ox; x++) {
          if (!xok[x]) {
            out[o + x] = fill;
            continue;
          }
          const i = base + xi[x], cx = xf[x];
          const c00 = src[i] + (src[i + dx] - src[i]) * cx;
          const c10 = src[i + dy] + (src[i + dy + dx] - src[i + dy]) * cx;
          const c01 = src[i + dz] + (src[i + dz + dx] - src[i + dz]) * cx;
          const c11 = src[i + dz + dy] + (src[i + dz + dy + dx] - src[i + dz + dy]) * cx;
          const c0 = c00 + (c10 - c00) * fy;
          const c1 = c01 + (c11 - c01) * fy;
          out[o + x] = c0 + (c1 - c0) * fz;
        }
      }
    }
  }
}

/** How a reoriented grid relates to the original: new index -> old index (a 4x4 of permutations/flips). */
export interface Reorientation {
  /** For each new axis i, the old axis it came from. */
  perm: [number, number, number];
  /** For each new axis i, whether it runs opposite to the old axis. */
  flip: [boolean, boolean, boolean];
  /** 4x4 row-major: new voxel index -> old voxel index. */
  newToOld: Mat4;
}

/** Picks the axis permutation and flips that bring voxel axes closest to R, A, S. */
export function rasReorientation(affine: Mat4, dims: readonly number[]): Reorientation {
  const l = linear3(affine);
  // score[world][vox] = |component of voxel axis vox along world axis|
  const perms: [number, number, number][] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
  ];
  let best = perms[0], bestScore = -Infinity;
  for (const p of perms) {
    let s = 0;
    for (let w = 0; w < 3; w++) {
      const j = p[w];
      const col = Math.hypot(l[j], l[3 + j], l[6 + j]) || 1;
      s += Math.abs(l[w * 3 + j]) / col;
    }
    if (s > bestScore + 1e-9) {
      bestScore = s;
      best = p;
    }
  }
  const flip = [0, 1, 2].map((w) => l[w * 3 + best[w]] < 0) as [boolean, boolean, boolean];
  const m = new Array<number>(16).fill(0);
  m[15] = 1;
  for (let i = 0; i < 3; i++) {
    const j = best[i];
    m[j * 4 + i] = flip[i] ? -1 : 1;
    m[j * 4 + 3] = flip[i] ? dims[j] - 1 : 0;
  }
  return { perm: best, flip, newToOld: m };
}

/**
 * Permutes and flips voxel axes so that they run (as nearly as the grid allows) along R, A, S.
 * Exact: voxels are moved, never interpolated; the world position of every voxel is unchanged.
 */
export function reorientToRAS(image: NiftiImage): NiftiImage {
  const r = rasReorientation(image.affine, image.dims);
  const identity = r.perm[0] === 0 && r.perm[1] === 1 && r.perm[2] === 2 && !r.flip.some((f) => f);
  if (identity) return image;
  const oldDims = image.dims;
  const newDims = r.perm.map((j) => oldDims[j]) as Vec3;
  const n = newDims[0] * newDims[1] * newDims[2];
  const data = new Float32Array(n * image.frames);
  const oldStride = [1, oldDims[0], oldDims[0] * oldDims[1]];
  // For each new axis, the stride and start offset in old data.
  const st = [0, 1, 2].map((i) => (r.flip[i] ? -oldStride[r.perm[i]] : oldStride[r.perm[i]]));
  const start0 = [0, 1, 2].reduce(
    (s, i) => s + (r.flip[i] ? (oldDims[r.perm[i]] - 1) * oldStride[r.perm[i]] : 0),
    0,
  );
  const src = image.data;
  const [n0, n1, n2] = newDims;
  const [s0, s1, s2] = st;
  for (let f = 0; f < image.frames; f++) {
    const base = f * n;
    let o = base;
    for (let z = 0; z < n2; z++) {
      for (let y = 0; y < n1; y++) {
        let p = base + start0 + z * s2 + y * s1;
        if (s0 === 1) {
          data.set(src.subarray(p, p + n0), o);
          o += n0;
        } else if (s0 === -1) {
          data.set(src.subarray(p - n0 + 1, p + 1), o);
          data.subarray(o, o + n0).reverse();
          o += n0;
        } else {
          for (let x = 0; x < n0; x++, p += s0) data[o++] = src[p];
        }
      }
    }
  }
  const affine = mul4(image.affine, r.newToOld);
  const out: NiftiImage = { ...image, data, dims: newDims, affine, spacing: spacingOf(affine) };
  if (image.frames > 1) out.dims4 = [newDims[0], newDims[1], newDims[2], image.frames];
  return out;
}

/** Grid size and affine after resampling `dims`/`affine` to `spacing` over the same field of view. */
export function resampledGrid(dims: readonly number[], affine: Mat4, spacing: readonly number[]): {
  dims: Vec3;
  affine: Mat4;
  /** new index -> old index */
  newToOld: Mat4;
} {
  const old = spacingOf(affine);
  const nd = [0, 1, 2].map((i) => Math.max(1, Math.round((dims[i] * old[i]) / spacing[i]))) as Vec3;
  const s = [0, 1, 2].map((i) => dims[i] / nd[i]);
  const newToOld = [
    s[0],
    0,
    0,
    (s[0] - 1) / 2,
    0,
    s[1],
    0,
    (s[1] - 1) / 2,
    0,
    0,
    s[2],
    (s[2] - 1) / 2,
    0,
    0,
    0,
    1,
  ];
  return { dims: nd, affine: mul4(affine, newToOld), newToOld };
}

/**
 * Resamples to a voxel spacing (mm) over the same field of view: trilinear ("linear") for
 * intensities, nearest for labels. The grid size is round(size * old / new) per axis, so the
 * resulting spacing equals the target up to that rounding.
 */
export function resample(
  image: NiftiImage,
  opts: { spacing: readonly number[]; order: Interpolation },
): NiftiImage {
  const g = resampledGrid(image.dims, image.affine, opts.spacing);
  if (g.dims.every((d, i) => d === image.dims[i])) return image;
  const data = sampleGrid(image.data, image.dims, g.dims, indexMapOf(g.newToOld), {
    order: opts.order,
    frames: image.frames,
  }) as Float32Array;
  const out: NiftiImage = {
    ...image,
    data,
    dims: g.dims,
    affine: g.affine,
    spacing: spacingOf(g.affine),
  };
  if (image.frames > 1) out.dims4 = [g.dims[0], g.dims[1], g.dims[2], image.frames];
  return out;
}

/** A grid: size and voxel -> world affine. */
export interface GridGeometry {
  dims: readonly number[];
  affine: readonly number[];
}

/**
 * Resamples `image` onto the grid of `reference` through world coordinates (for mapping predictions
 * back to an original image grid): "linear" for probabilities/intensities, "nearest" for labels.
 * Every frame of a multi-frame image (e.g. K class probabilities) is resampled.
 */
export function resampleToReference(
  image: NiftiImage,
  reference: GridGeometry,
  opts: { order?: Interpolation; fill?: number } = {},
): NiftiImage {
  const refAffine = Array.from(reference.affine);
  const map = mul4(inv4(image.affine), refAffine);
  const dims = [reference.dims[0], reference.dims[1], reference.dims[2]] as Vec3;
  const data = sampleGrid(image.data, image.dims, dims, indexMapOf(map), {
    order: opts.order ?? "linear",
    fill: opts.fill ?? 0,
    frames: image.frames,
  }) as Float32Array;
  const out: NiftiImage = {
    ...image,
    data,
    dims,
    affine: refAffine,
    spacing: spacingOf(refAffine),
  };
  if (image.frames > 1) out.dims4 = [dims[0], dims[1], dims[2], image.frames];
  return out;
}

/** World coordinates (mm) of a voxel index. */
export function voxelToWorld(affine: Mat4, index: readonly number[]): Vec3 {
  return apply4(affine, index);
}

/** Continuous voxel index of a world point. */
export function worldToVoxel(affine: Mat4, world: readonly number[]): Vec3 {
  return apply4(inv4(affine), world);
}
