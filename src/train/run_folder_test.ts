/**
 * RunFolder: the run's file names in one place, atomic writes, and clear errors for a missing,
 * invalid or other-version config.json / plan.json and a missing checkpoint.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { RunFolder } from "./run_folder.ts";
import { parseTrainConfig } from "./config.ts";
import type { RunPlan } from "./run.ts";

Deno.test("RunFolder: paths, atomic JSON and text writes, reads that say what is wrong", () => {
  const dir = Deno.makeTempDirSync({ prefix: "comodal-runfolder-" });
  assert.throws(() => RunFolder.open(path.join(dir, "nope")), /the folder does not exist/);
  const f = RunFolder.open(dir);
  assert.equal(f.path("last"), path.join(dir, "last.ckpt"));
  assert.equal(RunFolder.roleOf("plan.json"), "plan");
  assert.equal(RunFolder.roleOf("other.txt"), undefined);
  assert.equal(f.hasResults(), false);

  assert.throws(() => f.readConfig(), /config\.json does not exist/);
  writeFileSync(f.path("config"), "{not json");
  assert.match(f.readJson("config").problem!, /^config\.json is not valid JSON/);
  assert.throws(() => f.readConfig(), /config\.json is not valid JSON/);
  writeFileSync(f.path("config"), JSON.stringify({ task: "cardiac", iterations: -3 }));
  assert.throws(() => f.readConfig(), /config\.json is not a valid training config/);
  const config = parseTrainConfig({ task: "cardiac" });
  f.writeConfig(config);
  assert.deepEqual(f.readConfig(), config);
  // Nothing but the files themselves: the temporary files of the atomic writes are gone.
  assert.deepEqual(readdirSync(dir), ["config.json"]);

  assert.throws(() => f.readPlan(config), /plan\.json does not exist \(the run was trained before/);
  f.writePlan({ version: 2 } as unknown as RunPlan);
  assert.throws(() => f.readPlan(config), /format version 2, expected 1/);
  f.writePlan({ version: 1, modalities: ["C0"] } as unknown as RunPlan);
  assert.deepEqual(f.readPlan(config).modalities, ["C0"]);

  assert.throws(() => f.checkpoint("best"), /neither best\.ckpt nor last\.ckpt/);
  assert.throws(() => f.checkpoint("last"), /last\.ckpt does not exist/);
  writeFileSync(f.path("last"), "x");
  assert.equal(f.checkpoint("best"), f.path("last"));
  writeFileSync(f.path("best"), "x");
  assert.equal(f.checkpoint("best"), f.path("best"));
  assert.equal(f.checkpoint("last.ckpt"), f.path("last"));
  assert.throws(() => f.checkpoint("other.ckpt"), /checkpoint other\.ckpt does not exist/);

  f.writeText("summary", "done\n");
  assert.equal(readFileSync(f.path("summary"), "utf8"), "done\n");
  f.writeText("metrics", "{}\n");
  assert.equal(f.hasResults(), true);
});
