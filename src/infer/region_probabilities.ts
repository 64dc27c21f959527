/**
 * Region outputs (nested sigmoid regions, as nnU-Net trains BraTS; src/train/regions.ts) turned
 * into class probabilities for the inference pipeline.
 *
 * @module
 */
import { affine, concat, mul, mulScalar, sigmoid, slice, type Tensor } from "../engine.ts";

/**
 * Class "probabilities" [B,K,...] from region logits [B,R,...] for the inference pipeline (window
 * averaging, mirroring, resampling, argmax): with s_r = sigmoid(z_r) and nested regions,
 * p(background) = 1 - s_1, and the class that is in region r but not r+1 gets s_1...s_r (1 - s_{r+1});
 * the innermost s_1...s_R. These sum to 1, and the argmax is the innermost region above one half
 * in the clear cases. A class of several in one ring takes the ring's lowest index.
 */
export function regionProbabilities(
  logits: Tensor,
  regions: { readonly classes: readonly (readonly number[])[] },
  numClasses: number,
): Tensor {
  const R = regions.classes.length;
  const s = Array.from({ length: R }, (_, r) => sigmoid(slice(logits, 1, r, 1)));
  const zero = mulScalar(s[0], 0);
  const channels: Tensor[] = Array.from({ length: numClasses }, () => zero);
  channels[0] = affine(s[0], -1, 1);
  let prefix: Tensor | null = null;
  for (let r = 0; r < R; r++) {
    prefix = prefix ? mul(prefix, s[r]) : s[r];
    const ring = regions.classes[r].filter((c) => !(regions.classes[r + 1] ?? []).includes(c));
    const p = r + 1 < R ? mul(prefix, affine(s[r + 1], -1, 1)) : prefix;
    channels[Math.min(...ring)] = p;
  }
  return concat(channels, 1);
}
