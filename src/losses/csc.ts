/**
 * Channel-wise semantic consistency L_csc (METHOD.md section 3): each channel c of the deep features
 * F^a becomes a descriptor u_c = normalize(pool(F^a_c)) by adaptive average pooling to g^3 cells;
 * v_c likewise from F^b; NT-Xent over the 2C descriptors with temperature tau (default 0.5).
 * Memory is O(C^2 + C g^3): no (2C x 2C x N) tensor is ever formed.
 */
import { adaptiveAvgPool3d, add, l2Normalize, mulScalar, reshape, type Tensor } from "../engine.ts";
import { ntXentJoint } from "./ntxent.ts";

export interface CscOptions {
  /** Pooling grid per axis (capped by the feature size); Infinity = the whole spatial map. */
  grid?: number;
  tau?: number;
}

export function channelDescriptors(f: Tensor, grid: number): Tensor {
  const [b, c, d, h, w] = f.shape;
  const g = [d, h, w].map((s) => Math.min(s, grid)) as [number, number, number];
  const pooled = g[0] === d && g[1] === h && g[2] === w ? f : adaptiveAvgPool3d(f, g);
  return l2Normalize(reshape(pooled, [b, c, g[0] * g[1] * g[2]]), 2);
}

/** L_csc between two feature maps [B, C, d, h, w] of the same shape. */
export function cscPairLoss(fa: Tensor, fb: Tensor, opts: CscOptions = {}): Tensor {
  if (fa.shape.join() !== fb.shape.join()) {
    throw new Error(`L_csc: feature shapes differ: [${fa.shape}] vs [${fb.shape}]`);
  }
  const grid = opts.grid ?? 4;
  return ntXentJoint(channelDescriptors(fa, grid), channelDescriptors(fb, grid), opts.tau ?? 0.5);
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
