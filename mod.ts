/**
 * comodal: semi-supervised multimodal 3D medical image segmentation by cross-modality
 * collaboration (CMC), on a native oneDNN (CPU) / cuDNN (CUDA) engine.
 *
 * The public API for scripts and notebooks:
 *
 * ```ts
 * import { trainTask } from "./mod.ts";
 * const run = await trainTask({ task: "cardiac", iterations: 200, out: "runs/demo" });
 * console.log(run.summaryText);
 * ```
 *
 * - Engine: tensors, autograd, ops and the backend (`initBackend`, `tensor`, `conv3d`, `backward`, ...).
 * - Networks: `CmcNet`, `UNet`, `planUNet`, and the MIA and fusion blocks.
 * - Losses: `supervisedLoss`, `cscLoss` (L_csc), `cacLoss` (L_cac), `rampUp`.
 * - Training: `trainTask` (the whole job), `Trainer` (a loop over hooks), optimisers, schedules, checkpoints.
 * - Data: NIfTI I/O, manifests and importers, preprocessing, patch sampling, synthetic phantoms.
 * - Inference and evaluation: sliding-window inference, Dice / HD95 / ASSD.
 * - Visualisation: PNG overlays and montages, SVG line charts.
 * - Workflows: YAML experiment graphs run locally or on Slurm.
 * @module
 */

export * from "./src/engine.ts";

export { Module, ModuleList, type RandomSource } from "./src/nn/module.ts";
export { Conv3d, ConvBlock, ConvTranspose3d, Norm3d } from "./src/nn/layers.ts";
export { planDivisor, type PlanOptions, planUNet, type UNetPlan } from "./src/nn/plan.ts";
export { type Encoder, UNet, UNetDecoder, UNetEncoder } from "./src/nn/unet.ts";
export { CmcNet, type CmcOptions, FusionLayer, MiaBlock } from "./src/nn/cmc.ts";
export {
  loadVitWeights,
  VitBlock,
  VitEncoder,
  type VitOptions,
  type VitSettings,
  VitUNet,
} from "./src/nn/vit.ts";
export {
  encodeSafetensors,
  parseSafetensors,
  readSafetensors,
  SafetensorsFile,
  writeSafetensors,
} from "./src/io/safetensors.ts";
export {
  describeLoadReport,
  loadSafetensorsInto,
  type LoadWeightsReport,
  saveSafetensorsFrom,
} from "./src/io/load_weights.ts";

export { diceFromStats, foregroundSoftDice, supervisedLoss } from "./src/losses/supervised.ts";
export { channelDescriptors, cscLoss, cscPairLoss } from "./src/losses/csc.ts";
export { cacLoss, cacPairLoss, classPrototypes, rampUp } from "./src/losses/cac.ts";
export { ntXentCross, ntXentJoint } from "./src/losses/ntxent.ts";

export {
  METHODS,
  parseTrainConfig,
  type TrainConfig,
  type TrainConfigInput,
} from "./src/train/config.ts";
export { type TrainResult, trainTask, type TrainTaskOptions } from "./src/train/run.ts";
export { type RunFile, RunFolder } from "./src/train/run_folder.ts";
export { type IterationInfo, Trainer, type TrainerHook } from "./src/train/trainer.ts";
export { AdamW, learningRate, Sgd } from "./src/train/optim.ts";
export { loadCheckpoint, saveCheckpoint } from "./src/train/checkpoint.ts";
export { buildMethod, type MethodModel } from "./src/train/methods.ts";
export { evaluateValidation } from "./src/train/validate.ts";
export { FUSED_OUTPUT, Predictor } from "./src/infer/predictor.ts";

export { type NiftiImage, readNifti, writeNifti } from "./src/data/nifti.ts";
export { loadManifest, type Manifest } from "./src/data/manifest.ts";
export { importDataset } from "./src/data/importers.ts";
export { preprocessDataset } from "./src/data/prepared_cache.ts";
export { loadPreprocessedCases } from "./src/data/cases.ts";
export { PatchSampler } from "./src/data/sampler.ts";
export { Rng } from "./src/data/rng.ts";
export { SYNTH_TASKS, synthesize } from "./src/data/synth.ts";

export { slidingWindowInference } from "./src/infer/sliding_window.ts";
export { argmaxLabels } from "./src/infer/labels.ts";
export { assd, dice, evaluateCase, hd95, summarise } from "./src/metrics/metrics.ts";
export {
  evaluateNiftiCases,
  type EvaluateNiftiOptions,
  type EvaluationReport,
  formatSummaryTable,
  loadLabelMap,
  pairCases,
} from "./src/metrics/evaluate_files.ts";

export { montagePng, overlayPng } from "./src/viz/overlay.ts";
export { lineChartSvg } from "./src/viz/chart.ts";
export { encodePng } from "./src/viz/png.ts";

export { loadWorkflow } from "./src/workflow/schema.ts";
export { buildPlan } from "./src/workflow/plan.ts";
export { describePlan, formatSummary, runLocal } from "./src/workflow/engine.ts";
export { runSlurm } from "./src/workflow/slurm.ts";
export { writeReport } from "./src/report/html_report.ts";

export {
  casesFromDataset,
  casesFromFolder,
  casesFromManifest,
  type PredictCase,
  predictCases,
  type PredictOptions,
  type PredictRun,
} from "./src/infer/predict_run.ts";
export { type LoadedRun, loadRun, type LoadRunOptions } from "./src/train/load_run.ts";
export { loadPartners, type PartnerInfo } from "./src/infer/partners.ts";
export { writePartners } from "./src/train/partners.ts";
