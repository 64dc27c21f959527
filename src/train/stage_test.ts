import { assert, assertEquals } from "../data/testing.ts";
import { LOWRES_COVERAGE, planStage } from "./data.ts";
import { autoPatchSize } from "../nn/plan.ts";

Deno.test("planStage: a brain at 1 mm with a 64^3 budget gets a low-resolution stage whose patch covers a quarter", () => {
  const shapes: [number, number, number][] = [[140, 172, 138], [136, 168, 142], [144, 176, 140]];
  const p = planStage(shapes, [1, 1, 1], 64 ** 3);
  assertEquals(p.stage, "lowres");
  assert(p.spacing.every((s) => s > 1.3 && s < 1.8), `spacing ${p.spacing}`);
  assert(
    p.spacing[0] === p.spacing[1] && p.spacing[1] === p.spacing[2],
    "isotropic stays isotropic",
  );
  const med = [140, 172, 140].map((n) => n / p.spacing[0]);
  const dhw: [number, number, number] = [
    Math.round(med[2]),
    Math.round(med[1]),
    Math.round(med[0]),
  ];
  const patch = autoPatchSize(dhw, [p.spacing[2], p.spacing[1], p.spacing[0]], 64 ** 3);
  const share = (patch[0] * patch[1] * patch[2]) / (dhw[0] * dhw[1] * dhw[2]);
  assert(share >= LOWRES_COVERAGE, `coverage ${share}`);
  assert(p.why.includes("low resolution"), p.why);
});

Deno.test("planStage: an image the patch covers stays at full resolution; thick slices are coarsened in-plane first", () => {
  const small = planStage([[80, 80, 40]], [1, 1, 1], 64 ** 3);
  assertEquals(small.stage, "fullres");
  assertEquals(small.spacing, [1, 1, 1]);
  // 0.7 x 0.7 x 5 mm prostate-like stacks: only x and y grow while z is more than 2x coarser.
  const thick = planStage([[512, 512, 30], [480, 480, 28]], [0.7, 0.7, 5], 64 ** 3);
  assertEquals(thick.stage, "lowres");
  assert(thick.spacing[2] === 5 || thick.spacing[0] * 2 >= thick.spacing[2], `${thick.spacing}`);
  assert(thick.spacing[0] > 0.7 && thick.spacing[0] === thick.spacing[1], `${thick.spacing}`);
});
