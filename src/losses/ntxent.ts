/**
 * NT-Xent (normalised temperature-scaled cross-entropy) over two sets of L2-normalised descriptors,
 * built from matmul + softmax cross-entropy so the memory is O(n^2) in the number of descriptors.
 */
import {
  add,
  concat,
  IGNORE_INDEX,
  matmul,
  mulScalar,
  reshape,
  softmaxCrossEntropy,
  type Tensor,
  tensor,
} from "../engine.ts";

const NEG_LARGE = -1e9;

/**
 * Symmetric NT-Xent with in-set negatives: u, v are [B, n, d] (rows L2-normalised); for anchor u_i
 * the positive is v_i and the negatives are every other of the 2n descriptors (u_j, j != i, and
 * v_j, j != i), and symmetrically for v_i. Returns the mean over the 2n anchors and the batch.
 */
export function ntXentJoint(u: Tensor, v: Tensor, tau: number): Tensor {
  const [b, n] = u.shape;
  const z = concat([u, v], 1); // [B, 2n, d]
  const sim = mulScalar(matmul(z, z, { transB: true }), 1 / tau); // [B, 2n, 2n]
  const masked = add(sim, diagonalMask(2 * n));
  const labels = new Int32Array(b * 2 * n);
  for (let s = 0; s < b; s++) {
    for (let i = 0; i < 2 * n; i++) labels[s * 2 * n + i] = i < n ? i + n : i - n;
  }
  const { loss } = softmaxCrossEntropy(
    reshape(masked, [b * 2 * n, 2 * n]),
    tensor(labels, [b * 2 * n], { dtype: "i32" }),
  );
  return loss;
}

/**
 * Cross-set NT-Xent: anchor u_k, positive v_k, negatives v_j (j != k), averaged with the symmetric
 * direction. `valid[k] = false` leaves descriptor k out (as anchor and as negative).
 */
export function ntXentCross(u: Tensor, v: Tensor, tau: number, valid?: boolean[][]): Tensor {
  const [b, n] = u.shape;
  const logits = mulScalar(matmul(u, v, { transB: true }), 1 / tau); // [B, n, n]
  const logitsT = mulScalar(matmul(v, u, { transB: true }), 1 / tau);
  const labels = new Int32Array(b * n);
  const mask = new Float32Array(b * n * n);
  for (let s = 0; s < b; s++) {
    for (let i = 0; i < n; i++) {
      const ok = valid ? valid[s][i] : true;
      labels[s * n + i] = ok ? i : IGNORE_INDEX;
      if (!ok) { for (let r = 0; r < n; r++) mask[s * n * n + r * n + i] = NEG_LARGE; }
    }
  }
  const lab = tensor(labels, [b * n], { dtype: "i32" });
  const m = tensor(mask, [b, n, n]);
  const l1 = softmaxCrossEntropy(reshape(add(logits, m), [b * n, n]), lab).loss;
  const l2 = softmaxCrossEntropy(reshape(add(logitsT, m), [b * n, n]), lab).loss;
  return mulScalar(add(l1, l2), 0.5);
}

function diagonalMask(n: number): Tensor {
  const m = new Float32Array(n * n);
  for (let i = 0; i < n; i++) m[i * n + i] = NEG_LARGE;
  return tensor(m, [1, n, n]);
}
