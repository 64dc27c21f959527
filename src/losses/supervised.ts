/**
 * Supervised loss on a labeled modality: L = CE(P, y) + (1 - softDice(p, y)), soft Dice averaged
 * over foreground classes, smooth 1e-5 in numerator and denominator (METHOD.md section 3).
 */
import { add, affine, diceStats, div, mean, slice, softmaxCrossEntropy, type Tensor } from "../engine.ts";

export const DICE_SMOOTH = 1e-5;

/** Soft Dice per class from DICE_STATS rows [sum p*t, sum p, sum t] ([3, K]) -> [1, K]. */
export function diceFromStats(stats: Tensor, smooth = DICE_SMOOTH): Tensor {
  const inter = slice(stats, 0, 0, 1);
  const sumP = slice(stats, 0, 1, 1);
  const sumT = slice(stats, 0, 2, 1);
  return div(affine(inter, 2, smooth), affine(add(sumP, sumT), 1, smooth));
}

/** Mean soft Dice over the foreground classes 1..K-1 of probabilities vs a target (labels or soft). */
export function foregroundSoftDice(probs: Tensor, target: Tensor, smooth = DICE_SMOOTH): Tensor {
  const k = probs.shape[1];
  if (k < 2) throw new Error(`Soft Dice: needs at least 2 classes (background + foreground), got ${k}`);
  const perClass = diceFromStats(diceStats(probs, target), smooth);
  return mean(slice(perClass, 1, 1, k - 1), "all");
}

export interface SupervisedTerms {
  loss: Tensor;
  ce: Tensor;
  dice: Tensor;
  probs: Tensor;
}

/** CE + (1 - soft Dice) for logits [B,K,D,H,W] and integer labels [B,1,D,H,W] or [B,D,H,W]. */
export function supervisedLoss(logits: Tensor, labels: Tensor, opts: { ignoreIndex?: number } = {}): SupervisedTerms {
  const { loss: ce, probs } = softmaxCrossEntropy(logits, labels, { ignoreIndex: opts.ignoreIndex ?? -100 });
  const dice = foregroundSoftDice(probs, labels);
  return { loss: add(ce, affine(dice, -1, 1)), ce, dice, probs };
}
