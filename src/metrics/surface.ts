/**
 * Surfaces of binary masks and the distances between two surfaces, in millimetres.
 *
 * A surface voxel is a foreground voxel with at least one background 6-neighbour; voxels outside
 * the grid count as background, so a mask touching the border has its border voxels on the surface.
 * The distance from a surface voxel of A to surface B is the Euclidean distance (with voxel spacing)
 * between voxel centres to the nearest surface voxel of B, computed with an exact distance
 * transform restricted to the bounding box of both masks (exact, because every feature and every
 * query voxel lies inside that box).
 *
 * @module
 */
import { type Dims3, type Spacing3, squaredDistanceTransform } from "./edt.ts";

/** Axis-aligned box [lo, hi) per axis. */
interface Box {
  lo: [number, number, number];
  hi: [number, number, number];
}

function checkMask(name: string, mask: ArrayLike<number>, dims: Dims3): void {
  const total = dims[0] * dims[1] * dims[2];
  if (mask.length !== total) {
    throw new Error(
      `Cannot compute surface distances: ${name} has ${mask.length} voxels, dims ${
        dims.join("x")
      } need ${total}`,
    );
  }
}

/**
 * Marks the surface voxels (6-connectivity boundary, outside counts as background) of a mask.
 * Returns a 0/1 mask of the same size.
 */
export function surfaceMask(mask: ArrayLike<number>, dims: Dims3): Uint8Array {
  checkMask("mask", mask, dims);
  const [n0, n1, n2] = dims;
  const plane = n1 * n2;
  const out = new Uint8Array(mask.length);
  for (let i0 = 0; i0 < n0; i0++) {
    for (let i1 = 0; i1 < n1; i1++) {
      const row = i0 * plane + i1 * n2;
      for (let i2 = 0; i2 < n2; i2++) {
        const i = row + i2;
        if (!mask[i]) continue;
        if (
          i2 === 0 || i2 === n2 - 1 || i1 === 0 || i1 === n1 - 1 || i0 === 0 || i0 === n0 - 1 ||
          !mask[i - 1] || !mask[i + 1] || !mask[i - n2] || !mask[i + n2] || !mask[i - plane] ||
          !mask[i + plane]
        ) {
          out[i] = 1;
        }
      }
    }
  }
  return out;
}

function boundingBox(masks: ArrayLike<number>[], dims: Dims3): Box | null {
  const [n0, n1, n2] = dims;
  const lo: [number, number, number] = [n0, n1, n2];
  const hi: [number, number, number] = [0, 0, 0];
  let any = false;
  for (const m of masks) {
    let i = 0;
    for (let i0 = 0; i0 < n0; i0++) {
      for (let i1 = 0; i1 < n1; i1++) {
        for (let i2 = 0; i2 < n2; i2++, i++) {
          if (!m[i]) continue;
          any = true;
          if (i0 < lo[0]) lo[0] = i0;
          if (i0 >= hi[0]) hi[0] = i0 + 1;
          if (i1 < lo[1]) lo[1] = i1;
          if (i1 >= hi[1]) hi[1] = i1 + 1;
          if (i2 < lo[2]) lo[2] = i2;
          if (i2 >= hi[2]) hi[2] = i2 + 1;
        }
      }
    }
  }
  return any ? { lo, hi } : null;
}

function crop(mask: ArrayLike<number>, dims: Dims3, box: Box): Uint8Array {
  const [, n1, n2] = dims;
  const c0 = box.hi[0] - box.lo[0], c1 = box.hi[1] - box.lo[1], c2 = box.hi[2] - box.lo[2];
  const out = new Uint8Array(c0 * c1 * c2);
  let o = 0;
  for (let i0 = 0; i0 < c0; i0++) {
    for (let i1 = 0; i1 < c1; i1++) {
      const src = ((i0 + box.lo[0]) * n1 + i1 + box.lo[1]) * n2 + box.lo[2];
      for (let i2 = 0; i2 < c2; i2++) out[o++] = mask[src + i2] ? 1 : 0;
    }
  }
  return out;
}

/** Directed surface distances between two masks (mm), one value per surface voxel. */
export interface SurfaceDistances {
  /** For every surface voxel of the first mask (`pred`), the distance to the surface of `ref`. */
  predToRef: Float64Array;
  /** For every surface voxel of `ref`, the distance to the surface of `pred`. */
  refToPred: Float64Array;
}

/**
 * Distances between the surfaces of two binary masks (non-zero = foreground). When one mask is
 * empty, the other side's distances are all Infinity (and the empty side has none); when both are
 * empty, both lists are empty.
 */
export function surfaceDistances(
  pred: ArrayLike<number>,
  ref: ArrayLike<number>,
  opts: { dims: Dims3; spacing: Spacing3 },
): SurfaceDistances {
  const { dims, spacing } = opts;
  checkMask("pred", pred, dims);
  checkMask("ref", ref, dims);
  const box = boundingBox([pred, ref], dims);
  if (box === null) return { predToRef: new Float64Array(0), refToPred: new Float64Array(0) };
  const cdims: Dims3 = [box.hi[0] - box.lo[0], box.hi[1] - box.lo[1], box.hi[2] - box.lo[2]];
  // Cropping to the union box keeps the surface definition: a voxel on the box border is either
  // on the grid border or has a background neighbour outside the box (no mask voxel lies there).
  const sp = surfaceMask(crop(pred, dims, box), cdims);
  const sr = surfaceMask(crop(ref, dims, box), cdims);
  return {
    predToRef: directed(sp, sr, cdims, spacing),
    refToPred: directed(sr, sp, cdims, spacing),
  };
}

function directed(from: Uint8Array, to: Uint8Array, dims: Dims3, spacing: Spacing3): Float64Array {
  let count = 0;
  for (let i = 0; i < from.length; i++) count += from[i];
  const out = new Float64Array(count);
  if (count === 0) return out;
  const dt = squaredDistanceTransform(to, { dims, spacing });
  let o = 0;
  for (let i = 0; i < from.length; i++) if (from[i]) out[o++] = Math.sqrt(dt[i]);
  return out;
}
