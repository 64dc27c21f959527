import assert from "node:assert/strict";
import { keepLargestComponent } from "./postprocess.ts";

Deno.test("keepLargestComponent removes smaller components of the chosen classes only", () => {
  const dims: [number, number, number] = [3, 6, 6];
  const lab = new Int32Array(3 * 36);
  const at = (z: number, y: number, x: number) => (z * 6 + y) * 6 + x;
  // Class 1: a 2x2x2 block and a single voxel far away; class 2: two single voxels.
  for (const z of [0, 1]) for (const y of [0, 1]) for (const x of [0, 1]) lab[at(z, y, x)] = 1;
  lab[at(2, 5, 5)] = 1;
  lab[at(2, 0, 5)] = 2;
  lab[at(0, 5, 0)] = 2;
  const before = lab.slice();
  const removed = keepLargestComponent(lab, dims, [1]);
  assert.equal(removed, 1);
  assert.equal(lab[at(2, 5, 5)], 0);
  assert.equal(lab.filter((v) => v === 1).length, 8);
  assert.equal(lab.filter((v) => v === 2).length, 2, "class 2 was not asked for");
  // Diagonal neighbours are separate components under 6-connectivity.
  const diag = new Int32Array(8);
  diag[0] = 3;
  diag[7] = 3;
  assert.equal(keepLargestComponent(diag, [2, 2, 2], [3]), 1);
  assert.throws(() => keepLargestComponent(before, [2, 2, 2], [1]), /do not fit/);
});
