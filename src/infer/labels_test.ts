import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert";
import { argmaxLabels } from "./labels.ts";

Deno.test("argmaxLabels picks the most probable class per voxel, ties to the lower index", () => {
  // 3 classes x 4 voxels.
  const p = Float32Array.from([
    0.2,
    0.5,
    0.1,
    NaN,
    0.7,
    0.5,
    0.1,
    0.3,
    0.1,
    0.0,
    0.8,
    0.3,
  ]);
  assertEquals(Array.from(argmaxLabels(p, { numClasses: 3 })), [1, 0, 2, 1]);
  assertThrows(
    () => argmaxLabels(new Float32Array(5), { numClasses: 2 }),
    /5 values do not split into 2 classes/,
  );
});
