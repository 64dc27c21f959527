/**
 * Turning class probabilities into label maps.
 *
 * @module
 */

/**
 * Label of the most probable class at every voxel of probabilities laid out [K, ...spatial]
 * (class-major, as slidingWindowInference returns them). Ties go to the lower class index; NaN
 * never wins.
 */
export function argmaxLabels(probs: Float32Array, opts: { numClasses: number }): Int32Array {
  const K = opts.numClasses;
  if (!(Number.isInteger(K) && K > 0) || probs.length % K !== 0) {
    throw new Error(`Cannot take argmax: ${probs.length} values do not split into ${K} classes`);
  }
  const vox = probs.length / K;
  const out = new Int32Array(vox);
  const best = new Float32Array(vox).fill(-Infinity);
  for (let k = 0; k < K; k++) {
    const base = k * vox;
    for (let i = 0; i < vox; i++) {
      const v = probs[base + i];
      if (v > best[i]) {
        best[i] = v;
        out[i] = k;
      }
    }
  }
  return out;
}
