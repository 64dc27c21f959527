/**
 * Supervised loss on a labeled modality: L = CE(P, y) + (1 - softDice(p, y)), soft Dice averaged
 * over foreground classes, smooth 1e-5 in numerator and denominator (METHOD.md section 3).
 */
import {
  add,
  affine,
  diceStats,
  div,
  IGNORE_INDEX,
  mean,
  slice,
  softmaxCrossEntropy,
  type Tensor,
} from "../engine.ts";

export const DICE_SMOOTH = 1e-5;

/** Soft Dice per class from DICE_STATS rows [sum p*t, sum p, sum t] ([3, K]) -> [1, K]. */
export function diceFromStats(stats: Tensor, smooth = DICE_SMOOTH): Tensor {
  const inter = slice(stats, 0, 0, 1);
  const sumP = slice(stats, 0, 1, 1);
  const sumT = slice(stats, 0, 2, 1);
  return div(affine(inter, 2, smooth), affine(add(sumP, sumT), 1, smooth));
}

/**
 * Mean soft Dice over the foreground classes 1..K-1 of probabilities vs a target (labels or soft).
 * With labels, voxels labelled `ignoreIndex` (default IGNORE_INDEX) are in none of the sums.
 */
export function foregroundSoftDice(
  probs: Tensor,
  target: Tensor,
  smooth = DICE_SMOOTH,
  ignoreIndex = IGNORE_INDEX,
): Tensor {
  const k = probs.shape[1];
  if (k < 2) {
    throw new Error(`Soft Dice: needs at least 2 classes (background + foreground), got ${k}`);
  }
  const perClass = diceFromStats(diceStats(probs, target, { ignoreIndex }), smooth);
  return mean(slice(perClass, 1, 1, k - 1), "all");
}

export interface SupervisedTerms {
  loss: Tensor;
  ce: Tensor;
  dice: Tensor;
  probs: Tensor;
}

/**
 * CE + (1 - soft Dice) for logits [B,K,D,H,W] and integer labels [B,1,D,H,W] or [B,D,H,W]. Voxels
 * labelled `ignoreIndex` (default IGNORE_INDEX) are left out of both terms: they contribute nothing
 * to the loss and get exactly zero gradient. A patch with every voxel ignored has loss 0.
 */
export function supervisedLoss(
  logits: Tensor,
  labels: Tensor,
  opts: { ignoreIndex?: number } = {},
): SupervisedTerms {
  const ignoreIndex = opts.ignoreIndex ?? IGNORE_INDEX;
  const { loss: ce, probs } = softmaxCrossEntropy(logits, labels, { ignoreIndex });
  const dice = foregroundSoftDice(probs, labels, DICE_SMOOTH, ignoreIndex);
  return { loss: add(ce, affine(dice, -1, 1)), ce, dice, probs };
}
