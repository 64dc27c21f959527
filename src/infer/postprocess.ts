/**
 * Post-processing of label maps: keep only the largest connected component of chosen classes
 * (nnU-Net's most common post-processing), which removes isolated false positives far from the
 * structure. Voxels removed from a class become background.
 * @module
 */

/**
 * Keeps the largest 6-connected component of each class in `classes` (in place) and returns the
 * number of voxels removed. `dims` is [D, H, W] (last axis fastest).
 */
export function keepLargestComponent(
  labels: Int32Array,
  dims: readonly [number, number, number],
  classes: readonly number[],
): number {
  const [D, H, W] = dims;
  const n = D * H * W;
  if (labels.length !== n) {
    throw new Error(
      `keepLargestComponent: ${labels.length} labels do not fit dims ${dims.join("x")}`,
    );
  }
  const comp = new Int32Array(n).fill(-1);
  const stack = new Int32Array(n);
  let removed = 0;
  for (const cls of classes) {
    const sizes: number[] = [];
    for (let start = 0; start < n; start++) {
      if (labels[start] !== cls || comp[start] >= 0) continue;
      const id = sizes.length;
      let size = 0;
      let top = 0;
      stack[top++] = start;
      comp[start] = id;
      while (top > 0) {
        const v = stack[--top];
        size++;
        const x = v % W, y = Math.floor(v / W) % H, z = Math.floor(v / (W * H));
        const visit = (u: number) => {
          if (labels[u] === cls && comp[u] < 0) {
            comp[u] = id;
            stack[top++] = u;
          }
        };
        if (x > 0) visit(v - 1);
        if (x < W - 1) visit(v + 1);
        if (y > 0) visit(v - W);
        if (y < H - 1) visit(v + W);
        if (z > 0) visit(v - W * H);
        if (z < D - 1) visit(v + W * H);
      }
      sizes.push(size);
    }
    if (sizes.length <= 1) continue;
    let best = 0;
    for (let i = 1; i < sizes.length; i++) if (sizes[i] > sizes[best]) best = i;
    for (let v = 0; v < n; v++) {
      if (labels[v] === cls && comp[v] !== best) {
        labels[v] = 0;
        removed++;
      }
    }
    // Reset component ids of this class for the next class.
    for (let v = 0; v < n; v++) if (comp[v] >= 0) comp[v] = -1;
  }
  return removed;
}
