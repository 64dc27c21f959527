import assert from "node:assert/strict";
import { selectLabeled } from "../src/data/manifest.ts";
import { parseTrainConfig } from "../src/train/config.ts";
import { labeledArg } from "./train.ts";

Deno.test("--labeled 1.5 is refused with a clear message, not rounded (CLI, config and selectLabeled)", () => {
  const why =
    /1\.5 is neither a whole number of cases nor a ratio in \(0, 1\]: give a count such as 2, or a ratio such as 0\.5/;
  assert.throws(
    () => labeledArg("1.5"),
    (e: Error) => /^--labeled: /.test(e.message) && why.test(e.message),
  );
  assert.throws(() => labeledArg("2.5"), /give a count such as 2 or 3/);
  assert.throws(
    () => labeledArg("x"),
    /--labeled: expected a count >= 1 or a ratio in \(0, 1\], got 'x'/,
  );
  assert.throws(() => labeledArg("0"), /got '0'/);
  assert.equal(labeledArg("3"), 3);
  assert.equal(labeledArg("0.25"), 0.25);
  assert.equal(labeledArg("1"), 1);
  // --set labeled=1.5 and config files go through the schema.
  assert.throws(
    () => parseTrainConfig({ task: "cardiac", labeled: 1.5 }),
    (e: Error) => /labeled: /.test(e.message) && why.test(e.message),
  );
  assert.equal(parseTrainConfig({ task: "cardiac", labeled: 2 }).labeled, 2);
  // The library call refuses it too.
  const cases = ["a", "b", "c"].map((id) => ({
    id,
    images: {},
    labeled: true,
    split: "train" as const,
  }));
  assert.throws(() => selectLabeled(cases, { labeled: 1.5 }), why);
  assert.deepEqual(selectLabeled(cases, { labeled: 2 }).length, 2);
});
