/**
 * Channel-wise semantic consistency L_csc (METHOD.md section 3): each channel c of the deep features
 * F^a becomes a descriptor u_c = normalize(pool(F^a_c)) by adaptive average pooling to g^3 cells;
 * v_c likewise from F^b; NT-Xent over the 2C descriptors with temperature tau (default 0.5).
 * Memory is O(C^2 + C g^3): no (2C x 2C x N) tensor is ever formed.
 */
import {
  adaptiveAvgPool3d,
  add,
  l2Normalize,
  mean,
  mulScalar,
  reshape,
  sub,
  type Tensor,
} from "../engine.ts";
import { ntXentJoint } from "./ntxent.ts";

export interface CscOptions {
  /** Pooling grid per axis (capped by the feature size); Infinity = the whole spatial map. */
  grid?: number;
  tau?: number;
  /**
   * Subtract each descriptor's mean over its cells before normalising (ours), so descriptors of
   * non-negative (post-activation) features are signed and their cosine is a correlation of spatial
   * patterns; without it every pair of channels looks alike and the loss stays near log(2C - 1).
   */
  center?: boolean;
}

export function channelDescriptors(f: Tensor, grid: number, center = false): Tensor {
  const [b, c, d, h, w] = f.shape;
  const g = [d, h, w].map((s) => Math.min(s, grid)) as [number, number, number];
  const pooled = g[0] === d && g[1] === h && g[2] === w ? f : adaptiveAvgPool3d(f, g);
  const n = g[0] * g[1] * g[2];
  const flat = reshape(pooled, [b, c, n]);
  // One cell has no pattern to centre: keep the plain descriptor.
  return l2Normalize(center && n > 1 ? sub(flat, mean(flat, [2], { keepDims: true })) : flat, 2);
}

/** L_csc between two feature maps [B, C, d, h, w] of the same shape. */
export function cscPairLoss(fa: Tensor, fb: Tensor, opts: CscOptions = {}): Tensor {
  if (fa.shape.join() !== fb.shape.join()) {
    throw new Error(`L_csc: feature shapes differ: [${fa.shape}] vs [${fb.shape}]`);
  }
  const grid = opts.grid ?? 4;
  const center = opts.center ?? false;
  return ntXentJoint(
    channelDescriptors(fa, grid, center),
    channelDescriptors(fb, grid, center),
    opts.tau ?? 0.5,
  );
}

/** Mean of L_csc over every pair of modalities. */
export function cscLoss(features: Tensor[], opts: CscOptions = {}): Tensor {
  if (features.length < 2) {
    throw new Error(`L_csc needs at least 2 modalities, got ${features.length}`);
  }
  let total: Tensor | null = null;
  let pairs = 0;
  for (let a = 0; a < features.length; a++) {
    for (let b = a + 1; b < features.length; b++) {
      const l = cscPairLoss(features[a], features[b], opts);
      total = total ? add(total, l) : l;
      pairs++;
    }
  }
  return mulScalar(total!, 1 / pairs);
}
