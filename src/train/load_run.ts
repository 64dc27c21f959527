/**
 * `loadRun(runDir)` rebuilds a run's model from its config.json and plan.json (both written by
 * `trainTask`, read through RunFolder) and restores the weights of best.ckpt, last.ckpt or a given
 * checkpoint, after checking that the checkpoint was written for the same model; the result holds
 * the run's Predictor (src/infer/predictor.ts) for `predictCases` (src/infer/predict_run.ts).
 *
 * @module
 */
import { initBackend } from "../engine.ts";
import { Rng } from "../data/rng.ts";
import type { Volume } from "../data/cases.ts";
import { loadPartners } from "../infer/partners.ts";
import type { PredictRun } from "../infer/predict_run.ts";
import { Predictor } from "../infer/predictor.ts";
import type { TrainConfig } from "./config.ts";
import { buildMethod, type MethodModel } from "./methods.ts";
import { resolveRegions } from "./regions.ts";
import {
  loadModelWeights,
  modelSignature,
  type RunPlan,
  sameModel,
  signatureDifferences,
} from "./run.ts";
import { RunFolder } from "./run_folder.ts";

export interface LoadRunOptions {
  /** "best" (default; last.ckpt when the run has no best.ckpt), "last", or a checkpoint file. */
  checkpoint?: string;
  /** Compute backend (default: the run's). */
  device?: "cpu" | "cuda";
  /** CPU threads (default: the run's; 0 = all cores). */
  threads?: number;
}

/** A trained run ready for inference. */
export interface LoadedRun extends PredictRun {
  dir: string;
  config: TrainConfig;
  plan: RunPlan;
  model: MethodModel;
  /** The checkpoint file the weights came from, and its iteration. */
  checkpoint: string;
  iteration: number;
  /** Stored stand-ins for modalities a case lacks (unpaired runs; empty otherwise). */
  partners: Record<string, Volume>;
  /** The inference core with the run's model, plan, config and stand-ins. */
  predictor: Predictor;
  dispose(): void;
}

function fail(what: string, why: string): never {
  throw new Error(`${what}: ${why}`);
}

/** Rebuilds a run's model and restores its weights (see module doc). */
export async function loadRun(runDir: string, opts: LoadRunOptions = {}): Promise<LoadedRun> {
  const folder = RunFolder.open(runDir);
  const dir = folder.dir;
  const what = `Cannot load run ${dir}`;
  const config = folder.readConfig(what);
  const plan = folder.readPlan(config, what);
  const signature = modelSignature(config, plan.modalities, plan.classes.length, plan.network);
  if (!sameModel(signature, plan.signature)) {
    const cfgName = RunFolder.fileName("config"), planName = RunFolder.fileName("plan");
    fail(
      what,
      `${cfgName} and ${planName} describe different models (${
        signatureDifferences(signature, plan.signature, `in ${cfgName}`, `in ${planName}`).join(
          "; ",
        )
      })`,
    );
  }
  const file = folder.checkpoint(opts.checkpoint);
  const partnersDir = folder.path("partners");
  const partners = await loadPartners(partnersDir, plan.modalities, dir);
  initBackend({
    device: opts.device ?? config.device,
    threads: (opts.threads ?? config.threads) || undefined,
    deterministic: config.deterministic,
  });
  const init = new Rng(config.seed, "predict");
  const model = buildMethod({
    config,
    plan: plan.network,
    numClasses: plan.classes.length,
    regions: config.method === "mutual" ? null : resolveRegions(config.regions, plan.classes),
    modalities: plan.modalities.length,
    primary: plan.primary,
    rng: () => {
      const r = init.derive("init", init.nextU32());
      return () => r.next();
    },
    // The checkpoint holds every weight: the backbone's pretrained file is not needed (or read).
    pretrained: false,
  });
  let iteration: number;
  try {
    iteration = loadModelWeights(file, signature, model).iteration;
  } catch (e) {
    model.dispose();
    throw e;
  }
  model.student.setTraining(false);
  return {
    dir,
    config,
    plan,
    model,
    checkpoint: file,
    iteration,
    partners,
    partnersDir,
    predictor: new Predictor({ model, plan, config, partners }),
    dispose: () => model.dispose(),
  };
}
