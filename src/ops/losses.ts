/**
 * Fused loss ops: softmax cross-entropy (with the softmax probabilities as a second,
 * differentiable output) and the Dice statistics.
 * @module
 */
import { getBackend } from "../backend/backend.ts";
import { formatShape } from "../tensor/shape.ts";
import { noGrad } from "../tensor/scope.ts";
import { recordNode, type Tensor, wrapNative } from "../tensor/tensor.ts";
import { checkDtype, checkF32, checkTensor, needsGrad } from "./check.ts";
import { exec1, execOp } from "./exec.ts";
import { add } from "./binary.ts";
import { reshape } from "./shape_ops.ts";
import { softmaxBackward } from "./softmax.ts";
import { IGNORE_INDEX } from "../util/ignore.ts";

/** Options of softmaxCrossEntropy. */
export interface CrossEntropyOptions {
  /** Label of positions left out of the loss (default IGNORE_INDEX). */
  ignoreIndex?: number;
}

/** Options of diceStats. */
export interface DiceStatsOptions {
  /** With i32 labels: label of positions left out of every sum (default IGNORE_INDEX). */
  ignoreIndex?: number;
}

function ignoreParam(fn: string, v: number | undefined): number {
  const ignore = v ?? IGNORE_INDEX;
  if (!Number.isInteger(ignore)) {
    throw new Error(`${fn}: ignoreIndex must be an integer, got ${ignore}`);
  }
  return ignore;
}

function checkLabels(fn: string, x: Tensor, labels: Tensor): void {
  checkDtype(fn, "labels", labels, "i32");
  const r = x.shape.length;
  const ls = labels.shape;
  const squeezed = ls.length === r - 1 && ls[0] === x.shape[0] &&
    ls.every((d, i) => i === 0 || d === x.shape[i + 1]);
  const withOne = ls.length === r && ls[0] === x.shape[0] && ls[1] === 1 &&
    ls.every((d, i) => i < 2 || d === x.shape[i]);
  if (!squeezed && !withOne) {
    const sp = x.shape.slice(2);
    throw new Error(
      `${fn}: labels ${labels.describe()} must have shape ${formatShape([x.shape[0], ...sp])} or ` +
        `${formatShape([x.shape[0], 1, ...sp])} for ${x.describe()}`,
    );
  }
}

/**
 * Mean softmax cross-entropy over the non-ignored positions of logits [N,K,...] and i32 labels
 * [N,...] or [N,1,...]. Returns the loss (shape []) and the softmax probabilities over axis 1;
 * both are differentiable.
 */
export function softmaxCrossEntropy(
  logits: Tensor,
  labels: Tensor,
  opts: CrossEntropyOptions = {},
): { loss: Tensor; probs: Tensor } {
  const fn = "softmaxCrossEntropy";
  checkF32(fn, "logits", logits);
  if (logits.shape.length < 2) {
    throw new Error(`${fn}: logits ${logits.describe()} must have shape [N,K,...]`);
  }
  checkLabels(fn, logits, labels);
  const params = { ignore_index: ignoreParam(fn, opts.ignoreIndex) };
  const [pl, pp] = execOp("SOFTMAX_CROSS_ENTROPY_FORWARD", fn, [logits, labels], [], params, [
    "logits",
    "labels",
  ]);
  const be = getBackend();
  const loss1 = wrapNative(pl, [1], "f32", be);
  const probs = wrapNative(pp, logits.shape, "f32", be);
  const loss = noGrad(() => reshape(loss1, []));
  loss1.dispose();
  if (needsGrad(logits)) {
    const ls = logits.shape;
    recordNode(fn, [logits, labels], [loss, probs], [probs, labels], (g) => {
      let d: Tensor | null = null;
      if (g[0] !== null) {
        const dl = reshape(g[0], [1]);
        d = exec1("SOFTMAX_CROSS_ENTROPY_BACKWARD", fn, [probs, labels, dl], params, ls, "f32", [
          "probs",
          "labels",
          "dloss",
        ]);
      }
      if (g[1] !== null) {
        const ds = softmaxBackward(probs, g[1], 1);
        d = d === null ? ds : add(d, ds);
      }
      return [d, null];
    });
  }
  return { loss, probs };
}

/**
 * Batch Dice statistics of probs [N,K,...] against i32 labels ([N,...] or [N,1,...], one-hot
 * implied) or f32 soft targets [N,K,...]: a [3,K] tensor with rows sum(p*t), sum(p), sum(t).
 * Positions labelled `ignoreIndex` are in none of the sums (and get zero gradient).
 * Differentiable with respect to probs.
 */
export function diceStats(probs: Tensor, target: Tensor, opts: DiceStatsOptions = {}): Tensor {
  const fn = "diceStats";
  checkF32(fn, "probs", probs);
  checkTensor(fn, "target", target);
  if (probs.shape.length < 2) {
    throw new Error(`${fn}: probs ${probs.describe()} must have shape [N,K,...]`);
  }
  if (target.dtype === "i32") checkLabels(fn, probs, target);
  else if (target.shape.join() !== probs.shape.join()) {
    throw new Error(
      `${fn}: soft target ${target.describe()} must have the shape of probs ${probs.describe()}`,
    );
  }
  const k = probs.shape[1];
  const params = { ignore_index: ignoreParam(fn, opts.ignoreIndex) };
  const y = exec1("DICE_STATS_FORWARD", fn, [probs, target], params, [3, k], "f32", [
    "probs",
    "target",
  ]);
  if (needsGrad(probs)) {
    const ps = probs.shape;
    recordNode(fn, [probs, target], [y], [probs, target], (g) => [
      exec1("DICE_STATS_BACKWARD", fn, [probs, target, g[0]!], params, ps, "f32", [
        "probs",
        "target",
        "dstats",
      ]),
      null,
    ]);
  }
  return y;
}
