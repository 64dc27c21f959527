/**
 * Contrastive consistent learning L_cac (METHOD.md section 3), built to need no voxel
 * correspondence: class prototypes r^m_k = sum_v p^m_k(v) h^m(v) / (sum_v p^m_k(v) + eps) from the
 * softmax probabilities and the L2-normalised last decoder features, then NT-Xent over the K
 * prototypes of two modalities (tau = 0.1). Classes whose probability mass is below a threshold in
 * either modality are left out of that step. Option `voxelwise` (aligned pairs only) adds
 * 1 - softDice(p^a, p^b).
 *
 * A branch may carry `valid` ([B, 1, ...] f32, 1 = use the voxel, 0 = leave it out; see
 * `annotatedMask`): voxels with 0 take no part in the prototypes, their mass or the voxel-wise Dice,
 * and get zero gradient. Training computes L_cac on unlabeled patches, which have no ignored voxels.
 */
import {
  add,
  affine,
  div,
  IGNORE_INDEX,
  l2Normalize,
  matmul,
  mul,
  mulScalar,
  noGrad,
  reshape,
  sum,
  type Tensor,
  tensor,
} from "../engine.ts";
import { ntXentCross } from "./ntxent.ts";
import { foregroundSoftDice } from "./supervised.ts";

export interface CacOptions {
  tau?: number;
  /** Minimum probability mass (in voxels) for a class prototype to take part. Default 1. */
  minMass?: number;
  eps?: number;
  /** Add 1 - softDice(p^a, p^b) (only for pairs whose voxels correspond). */
  voxelwise?: boolean;
}

export interface Prototypes {
  /** [B, K, C] L2-normalised prototypes. */
  protos: Tensor;
  /** [B][K] probability mass per class (host copy, no gradient). */
  mass: number[][];
}

/** One modality's input to L_cac: probabilities, features and optionally the voxels to use. */
export interface CacBranch {
  probs: Tensor;
  features: Tensor;
  /** [B, 1, ...] f32: 1 where the voxel counts, 0 where it is left out (e.g. ignored). */
  valid?: Tensor;
}

/** [B, 1, ...] f32 of i32 labels [B, 1, ...]: 0 where the label is IGNORE_INDEX, else 1. */
export function annotatedMask(labels: Tensor): Tensor {
  const l = noGrad(() => labels.toArray()) as Int32Array;
  return tensor(Float32Array.from(l, (v) => (v === IGNORE_INDEX ? 0 : 1)), labels.shape);
}

function checkValid(valid: Tensor, probs: Tensor): void {
  const [b, , ...sp] = probs.shape;
  if (valid.shape.join() !== [b, 1, ...sp].join()) {
    throw new Error(
      `L_cac: valid mask [${valid.shape}] must be [${[
        b,
        1,
        ...sp,
      ]}] for probabilities [${probs.shape}]`,
    );
  }
}

/**
 * Prototypes from probabilities [B, K, ...] and decoder features [B, C, ...] of the same grid; with
 * `valid` ([B, 1, ...]), only the voxels where it is 1 contribute.
 */
export function classPrototypes(
  probs: Tensor,
  features: Tensor,
  eps = 1e-6,
  valid?: Tensor,
): Prototypes {
  const [b, k, ...sp] = probs.shape;
  const c = features.shape[1];
  const n = sp.reduce((p, s) => p * s, 1);
  if (features.shape[0] !== b || features.shape.slice(2).join() !== sp.join()) {
    throw new Error(
      `L_cac: probabilities [${probs.shape}] and features [${features.shape}] must share batch and grid`,
    );
  }
  if (valid) checkValid(valid, probs);
  const p = valid
    ? mul(reshape(probs, [b, k, n]), reshape(valid, [b, 1, n]))
    : reshape(probs, [b, k, n]);
  const h = reshape(l2Normalize(features, 1), [b, c, n]);
  const massT = sum(p, [2], { keepDims: true }); // [B, K, 1]
  const raw = matmul(p, h, { transB: true }); // [B, K, C]
  const protos = l2Normalize(div(raw, affine(massT, 1, eps)), 2);
  const flat = noGrad(() => massT.toArray());
  const mass: number[][] = [];
  for (let s = 0; s < b; s++) mass.push(Array.from(flat.subarray(s * k, (s + 1) * k)));
  return { protos, mass };
}

/** L_cac between two modalities' (probabilities, features). */
export function cacPairLoss(a: CacBranch, b: CacBranch, opts: CacOptions = {}): Tensor {
  const minMass = opts.minMass ?? 1;
  const pa = classPrototypes(a.probs, a.features, opts.eps, a.valid);
  const pb = classPrototypes(b.probs, b.features, opts.eps, b.valid);
  const valid = pa.mass.map((row, s) =>
    row.map((m, k) => m >= minMass && pb.mass[s][k] >= minMass)
  );
  let loss = ntXentCross(pa.protos, pb.protos, opts.tau ?? 0.1, valid);
  if (opts.voxelwise) {
    if (a.probs.shape.join() !== b.probs.shape.join()) {
      throw new Error(
        `L_cac voxelwise term: probability shapes differ: [${a.probs.shape}] vs [${b.probs.shape}]`,
      );
    }
    // Voxels left out in either branch are in none of the Dice sums (both soft inputs zeroed).
    const v = a.valid && b.valid ? mul(a.valid, b.valid) : a.valid ?? b.valid;
    const qa = v ? mul(a.probs, v) : a.probs, qb = v ? mul(b.probs, v) : b.probs;
    const dice = mulScalar(add(foregroundSoftDice(qa, qb), foregroundSoftDice(qb, qa)), 0.5);
    loss = add(loss, affine(dice, -1, 1));
  }
  return loss;
}

/** Mean of L_cac over every pair of modalities. */
export function cacLoss(branches: CacBranch[], opts: CacOptions = {}): Tensor {
  if (branches.length < 2) {
    throw new Error(`L_cac needs at least 2 modalities, got ${branches.length}`);
  }
  let total: Tensor | null = null;
  let pairs = 0;
  for (let i = 0; i < branches.length; i++) {
    for (let j = i + 1; j < branches.length; j++) {
      const l = cacPairLoss(branches[i], branches[j], opts);
      total = total ? add(total, l) : l;
      pairs++;
    }
  }
  return mulScalar(total!, 1 / pairs);
}

/** Ramp-up weight w(t) = exp(-5 (1 - min(t / T_r, 1))^2). */
export function rampUp(iteration: number, rampLength: number): number {
  if (rampLength <= 0) return 1;
  const x = 1 - Math.min(iteration / rampLength, 1);
  return Math.exp(-5 * x * x);
}
