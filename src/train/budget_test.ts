import { assert, assertEquals, assertThrows } from "../data/testing.ts";
import { parseDuration } from "./config.ts";
import { timeBudgetHook } from "./hooks.ts";
import type { TrainerContext } from "./trainer.ts";

Deno.test("parseDuration: 15m, 90s, 1h30m, plain seconds; bad text is refused", () => {
  assertEquals(parseDuration("15m"), 900);
  assertEquals(parseDuration("90s"), 90);
  assertEquals(parseDuration("1h30m"), 5400);
  assertEquals(parseDuration("2.5m"), 150);
  assertEquals(parseDuration("120"), 120);
  for (const bad of ["", "m", "15x", "-3m", "0s"]) assertThrows(() => parseDuration(bad));
});

/** Runs the hook over a loop whose iterations take secPerIt(it) seconds on a fake clock. */
function simulate(budget: number, secPerIt: (it: number) => number, guess: number) {
  let clock = 0;
  const hook = timeBudgetHook(budget, { now: () => clock });
  const ctx = { total: guess, iteration: 0, stopRequested: false } as unknown as TrainerContext;
  hook.onStart!(ctx);
  while (ctx.iteration < ctx.total) {
    clock += secPerIt(ctx.iteration);
    ctx.iteration++;
    hook.onIteration!(ctx, {
      iteration: ctx.iteration,
      total: ctx.total,
      lr: 0,
      terms: {},
      seconds: 0,
    });
    if (ctx.iteration > 1e6) throw new Error("runaway");
  }
  return { iterations: ctx.iteration, seconds: clock };
}

Deno.test("timeBudgetHook: the run ends at the budget, whatever the first guess, also when the speed changes", () => {
  // 0.5 s per iteration, 60 s: about 120 iterations, from a guess of 600 or of 10.
  for (const guess of [600, 10]) {
    const r = simulate(60, () => 0.5, guess);
    assert(
      r.iterations >= 115 && r.iterations <= 121,
      `iterations ${r.iterations} (guess ${guess})`,
    );
    assert(r.seconds <= 60.5, `seconds ${r.seconds}`);
  }
  // Twice as slow after iteration 50 (a busy machine): still within the budget, and not far short of it.
  const r = simulate(100, (it) => (it < 50 ? 0.5 : 1), 600);
  assert(r.seconds <= 101 && r.seconds >= 90, `seconds ${r.seconds}`);
});
