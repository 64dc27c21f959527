/**
 * Validation during training and `predict` run one inference core, the Predictor: on a validation
 * case of a tiny trained run, the probabilities that validation computes from the training
 * pipeline's preprocessed volumes equal, value for value, those that `predict` computes from the
 * original files preprocessed in memory; so do the volumes themselves.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { trainTask } from "../train/run.ts";
import { prepareData, setCacheRoot } from "../train/data.ts";
import { evaluateValidation, validationPartners } from "../train/validate.ts";
import { RunFolder } from "../train/run_folder.ts";
import { casesFromDataset, readPredictCase } from "./predict_run.ts";
import { loadRun } from "../train/load_run.ts";
import { FUSED_OUTPUT, Predictor } from "./predictor.ts";

setCacheRoot(Deno.makeTempDirSync({ prefix: "comodal-predictor-cache-" }));
const opts = { sanitizeResources: false, sanitizeOps: false };

Deno.test({
  name: "validation and predict give identical probabilities on a case (one Predictor)",
  ...opts,
  fn: async () => {
    const out = Deno.makeTempDirSync({ prefix: "comodal-predictor-run-" });
    const r = await trainTask({
      task: "cardiac",
      out,
      iterations: 2,
      syntheticCases: 6,
      labeled: 2,
      patchSize: [4, 32, 32],
      network: { baseWidth: 4, maxLevels: 3 },
      optimizer: { warmup: 1 },
      validation: { every: 0, overlap: 0.25 },
      images: false,
      deterministic: true,
      threads: 1,
    }, { quiet: true, skipFinalEvaluation: true });
    r.model.dispose();
    const source =
      JSON.parse(readFileSync(new RunFolder(out).path("log"), "utf8").split("\n")[0]).data.source;
    const run = await loadRun(out, { checkpoint: "last" });
    try {
      // Validation's side: the training data pipeline (preprocessed cache), as trainTask builds it.
      const data = await prepareData(run.config, { quiet: true });
      assert.deepEqual(data.validation.map((c) => c.id), ["patient5"]);
      const validating = new Predictor({
        model: run.model,
        plan: run.plan,
        config: run.config,
        partners: validationPartners(data),
      });
      const fromValidation = new Map<string, ReadonlyMap<number, Float32Array>>();
      const valOut = Deno.makeTempDirSync({ prefix: "comodal-predictor-val-" });
      await evaluateValidation(validating, data, {
        quick: false,
        run: new RunFolder(valOut),
        onProbabilities: (id, p) => fromValidation.set(id, p),
      });
      // predict's side: the original files, read and preprocessed in memory.
      const [c] = await casesFromDataset(source, run, { split: "val" });
      assert.equal(c.id, "patient5");
      const prepared = run.predictor.preprocess(await readPredictCase(run, c));
      const val = data.validation[0];
      for (const m of run.plan.modalities) {
        assert.deepEqual(prepared.volumes[m], val.volumes[m], `${m}: preprocessed volume`);
      }
      const fromPredict = await run.predictor.probabilities(prepared);
      const v = fromValidation.get("patient5")!;
      assert.deepEqual([...v.keys()].sort(), [...fromPredict.keys()].sort());
      assert.ok(!v.has(FUSED_OUTPUT), "cardiac modalities are on separate grids");
      for (const [o, p] of fromPredict) {
        assert.ok(p.length > 0);
        assert.deepEqual(v.get(o), p, `output ${o}: probabilities differ`);
      }
    } finally {
      run.dispose();
    }
  },
});
