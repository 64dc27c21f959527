/**
 * `trainTask`: the whole training job as one call, used by the CLI, workflow steps and notebooks.
 *
 * 1. resolves the data (built-in synthetic phantoms generated once and cached, a dataset folder in
 *    a known layout, or a manifest), preprocesses it (cached), and keeps labels only for the chosen
 *    labeled cases;
 * 2. plans the network from the patch size and target spacing, builds the method's model and
 *    optimiser, and resumes from <out>/last.ckpt when asked;
 * 3. trains with hooks: progress, JSONL log, periodic checkpoints, validation with sliding-window
 *    inference and a best checkpoint;
 * 4. predicts every validation case on each modality's original grid (NIfTI), evaluates Dice, HD95
 *    and ASSD against the original label files, and writes metrics and PNG overlays;
 * 5. writes <out>/report.html with a 3D viewer page per predicted case (src/report/).
 */
import { FLIPS_ONLY } from "../data/augment.ts";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { assign, getBackend, initBackend, type Tensor } from "../engine.ts";
import { Rng } from "../data/rng.ts";
import { type Batch, PatchLoader } from "../data/loader.ts";
import { planDivisor, planUNet, type UNetPlan } from "../nn/plan.ts";
import type { Triple } from "../nn/layers.ts";
import {
  DEFAULT_REAL_DATA_TIME_S,
  parseTrainConfig,
  type TrainConfig,
  type TrainConfigInput,
} from "./config.ts";
import { SYNTH_TASKS } from "../data/synth.ts";
import { regionsToSetting, resolveRegions } from "./regions.ts";
import { buildMethod, type MethodModel } from "./methods.ts";
import { AdamW, type Optimizer, Sgd } from "./optim.ts";
import { type CheckpointMeta, loadCheckpoint, saveCheckpoint } from "./checkpoint.ts";
import { RunFolder } from "./run_folder.ts";
import { resolvePatchSize } from "./patch.ts";
import { progressBar } from "../data/progress.ts";
import { everyHook, JsonlLog, logHook, progressHook, timeBudgetHook } from "./hooks.ts";
import { type HostBatch, NonFiniteLossError, Trainer, type TrainerHook } from "./trainer.ts";
import { prepareData, type PreparedData, resolveMethod } from "./data.ts";
import {
  checkResumedData,
  commitRunFolder,
  datasetIdentity,
  differenceLines,
  readRunForResume,
  valueDifferences,
} from "./resume.ts";
import { SYNTH_TASKS as BUILT_IN_TASKS } from "../data/synth.ts";
import { evaluateValidation, validationPartners, type ValidationResult } from "./validate.ts";
import { Predictor } from "../infer/predictor.ts";
import type { MetricsSummary } from "../metrics/metrics.ts";
import { writePartners } from "./partners.ts";
import { writeRunReport } from "../report/html_report.ts";

export interface TrainTaskOptions {
  /** Continue from <out>/last.ckpt. */
  resume?: boolean;
  /** Extra hooks (notebooks: live curves; workflows: heartbeats). */
  hooks?: TrainerHook[];
  /** No progress output. */
  quiet?: boolean;
  /** Skip the final evaluation and prediction export. */
  skipFinalEvaluation?: boolean;
}

export interface TrainResult {
  outDir: string;
  config: TrainConfig;
  iterations: number;
  seconds: number;
  /** Metrics on the original grids of the validation cases (null if none were evaluated). */
  metrics: MetricsSummary | null;
  /** Mean foreground Dice per validation during training. */
  validations: { iteration: number; dice: number }[];
  summaryText: string;
  model: MethodModel;
}

/** Model-defining config keys: a checkpoint must agree on these to be loaded. */
export function modelSignature(
  c: TrainConfig,
  modalities: string[],
  numClasses: number,
  plan: UNetPlan,
): string {
  return JSON.stringify({
    method: c.method,
    network: c.network,
    modalities,
    numClasses,
    plan: plan.levels,
    meanTeacher: c.meanTeacher,
    // Region outputs change the heads; runs without regions keep their old signature.
    ...(c.regions !== "none" && c.regions !== "auto" ? { regions: c.regions } : {}),
  });
}

/**
 * Network keys added after runs were already written, with the value that reproduces the older
 * behaviour: a stored signature without them means exactly these values.
 */
const ADDED_NETWORK_DEFAULTS: Record<string, unknown> = {
  backbone: "unet",
  init: "kaiming",
  fusionZeroGate: false,
};
const ADDED_VIT_DEFAULTS: Record<string, unknown> = {
  relPos: false,
  windowSize: 0,
  globalAttnIndexes: [],
};
/** ViT keys that do not change the network (loading options). */
const VIT_LOAD_OPTIONS = ["weights", "prefix", "strict"];

function sortedJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(sortedJson).join(",")}]`;
  if (v && typeof v === "object") {
    const o = v as Record<string, unknown>;
    return `{${
      Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${sortedJson(o[k])}`).join(",")
    }}`;
  }
  return JSON.stringify(v);
}

function dropDefaults(o: Record<string, unknown>, defaults: Record<string, unknown>): void {
  for (const [k, d] of Object.entries(defaults)) {
    if (k in o && sortedJson(o[k]) === sortedJson(d)) delete o[k];
  }
}

/** A signature in a form where equal models compare equal across versions of comodal. */
function canonicalSignature(sig: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(sig);
  } catch {
    return sig;
  }
  const net = { ...(o.network as Record<string, unknown> | undefined ?? {}) };
  if ((net.backbone ?? "unet") === "unet") delete net.vit;
  else if (net.vit && typeof net.vit === "object") {
    const v = { ...(net.vit as Record<string, unknown>) };
    for (const k of VIT_LOAD_OPTIONS) delete v[k];
    dropDefaults(v, ADDED_VIT_DEFAULTS);
    net.vit = v;
  }
  dropDefaults(net, ADDED_NETWORK_DEFAULTS);
  return sortedJson({ ...o, network: net });
}

/**
 * Whether two model signatures describe the same model: key order, ViT settings under the U-Net
 * backbone, ViT loading options and keys added later at their old behaviour do not count, so runs
 * written by earlier versions still load.
 */
export function sameModel(a: string, b: string): boolean {
  return a === b || canonicalSignature(a) === canonicalSignature(b);
}

/** Why two model signatures differ, one "key: A in <aName>, B in <bName>" line per key. */
export function signatureDifferences(a: string, b: string, aName: string, bName: string): string[] {
  const parse = (s: string) => {
    try {
      return JSON.parse(canonicalSignature(s));
    } catch {
      return s;
    }
  };
  return differenceLines(valueDifferences(parse(a), parse(b)), aName, bName);
}

function makeOptimizer(c: TrainConfig, model: MethodModel): Optimizer {
  const params = model.student.namedParameters();
  return c.optimizer.kind === "adamw"
    ? new AdamW(params, { weightDecay: c.optimizer.weightDecay })
    : new Sgd(params, {
      momentum: c.optimizer.momentum,
      weightDecay: c.optimizer.weightDecay,
      nesterov: true,
    });
}

function checkpointTensors(model: MethodModel, opt: Optimizer): Record<string, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [n, p] of model.student.namedParameters()) out[`model/${n}`] = p;
  if (model.teacher) { for (const [n, p] of model.teacher.namedParameters()) out[`ema/${n}`] = p; }
  for (const [n, t] of Object.entries(opt.state().slots)) out[`optim/${n}`] = t;
  return out;
}

/**
 * What inference on new data needs from a run (<out>/plan.json): the model signature and network
 * plan, and how the training data was preprocessed (target spacing, modality kinds, the training
 * dataset's fingerprint whose statistics normalise CT).
 */
export interface RunPlan {
  version: 1;
  signature: string;
  method: TrainConfig["method"];
  /** Modalities in model input order. */
  modalities: string[];
  primary: number;
  /** Class names, background first. */
  classes: string[];
  /** Target spacing (x, y, z) in mm. */
  targetSpacing: [number, number, number];
  /** nnU-Net stage the spacing came from (absent in runs written before stages existed). */
  stage?: "fullres" | "lowres";
  /** Patch size (D, H, W) the network was trained with. */
  patch: Triple;
  network: UNetPlan;
  /** The training data's preprocessed folder (cache). */
  preprocessedDir: string;
  /** The training manifest's task, modalities, kinds and label definitions. */
  dataset: {
    task: string;
    modalities: string[];
    modalityKinds: Record<string, "ct" | "mr">;
    classes: Record<string, number>;
    labelMap: Record<string, string> | null;
  };
  /** Per-modality intensity statistics of the training data (CT is normalised with these). */
  normalization: Record<
    string,
    { kind: "ct" | "mr"; mean: number; std: number; p005: number; p995: number }
  >;
  fingerprint: PreparedData["plan"]["fingerprint"];
}

/**
 * Loads a checkpoint into existing tensors (model, EMA, optimiser slots) after checking that it was
 * written for the same model config; every target must be present with the same shape.
 */
function loadInto(
  file: string,
  signature: string,
  targets: Record<string, Tensor>,
  what: string,
): CheckpointMeta {
  const ck = loadCheckpoint(file);
  if (typeof ck.meta.signature !== "string" || !sameModel(ck.meta.signature, signature)) {
    const why = signatureDifferences(
      String(ck.meta.signature),
      signature,
      "in the checkpoint",
      "in this run",
    );
    throw new Error(
      `Cannot ${what} ${file}: it was written for a different model config (${why.join("; ")})`,
    );
  }
  for (const [name, t] of Object.entries(targets)) {
    const src = ck.tensors.get(name);
    if (!src) throw new Error(`Cannot ${what} ${file}: tensor ${name} is missing`);
    if (src.shape.join() !== t.shape.join()) {
      throw new Error(
        `Cannot ${what} ${file}: tensor ${name} has shape [${src.shape}], the model has [${t.shape}]`,
      );
    }
    assign(t, src.data);
  }
  return ck.meta;
}

/** Copies the model weights of a checkpoint into `model` after checking its signature. */
export function loadModelWeights(
  file: string,
  signature: string,
  model: MethodModel,
): CheckpointMeta {
  const targets = Object.fromEntries(
    model.student.namedParameters().map(([n, p]) => [`model/${n}`, p]),
  );
  return loadInto(file, signature, targets, "load");
}

interface RunState {
  bestDice: number;
  validations: { iteration: number; dice: number }[];
}

function restore(
  file: string,
  signature: string,
  model: MethodModel,
  opt: Optimizer,
  st: RunState,
): number {
  const meta = loadInto(file, signature, checkpointTensors(model, opt), "resume from");
  opt.setStepCount(Number(meta.optimizerStep ?? meta.iteration));
  st.bestDice = Number(meta.bestDice ?? -1);
  st.validations = (meta.validations as RunState["validations"]) ?? [];
  return meta.iteration;
}

/** A loader batch as the trainer's host batch (modalities in model input order). */
function toHostBatch(b: Batch, mods: readonly string[]): HostBatch {
  if (!b.labeled) throw new Error("Training batch has no labeled part");
  return {
    patch: b.patchSize,
    labeled: {
      images: mods.map((m) => b.labeled!.images[m]),
      labels: mods.map((m) => b.labeled!.labels[m]),
      count: b.labeled.ids.length,
    },
    unlabeled: b.unlabeled
      ? { images: mods.map((m) => b.unlabeled!.images[m]), count: b.unlabeled.ids.length }
      : null,
  };
}

/** Rounds a patch size up to a multiple of the network's total stride per axis. */
function fitPatch(patch: Triple, plan: UNetPlan): Triple {
  const f = planDivisor(plan);
  return patch.map((p, a) => Math.ceil(p / f[a]) * f[a]) as Triple;
}

/** Kept from the default budget for the final sliding-window evaluation of the validation cases. */
const FINAL_EVALUATION_RESERVE_S = 150;
/** The training loop of the default budget never gets less than this. */
const MIN_LOOP_S = 300;

/** Seconds the iterations 1..upTo of log.jsonl took (what a resumed time budget has used up). */
function trainedSeconds(logFile: string, upTo: number): number {
  if (upTo <= 0 || !existsSync(logFile)) return 0;
  let s = 0;
  for (const line of readFileSync(logFile, "utf8").split("\n")) {
    if (!line.includes('"iteration"')) continue;
    try {
      const r = JSON.parse(line);
      if (r.event === "iteration" && r.iteration <= upTo && typeof r.seconds === "number") {
        s += r.seconds;
      }
    } catch { /* a cut line */ }
  }
  return s;
}

export async function trainTask(
  input: TrainConfigInput | Record<string, unknown>,
  opts: TrainTaskOptions = {},
): Promise<TrainResult> {
  const t0 = performance.now();
  // --resume: the run folder's config, plan and data rule; nothing is written before they check out.
  const resumed = opts.resume ? readRunForResume(input as Record<string, unknown>) : null;
  if (resumed) input = resumed.input;
  const c = parseTrainConfig(input);
  const raw = input as Record<string, unknown>;
  // Real data (a dataset folder or manifest, or --data) without an iteration count trains for a
  // wall-clock budget: the user says how long, the schedule follows the measured speed.
  const realData = c.data !== undefined || !(SYNTH_TASKS as readonly string[]).includes(c.task);
  // The default budget is for the whole command (preprocessing and the final evaluation
  // included); a --time the user gives is for the training loop alone.
  const wholeCommand = c.time === undefined && raw.iterations === undefined && realData &&
    !opts.resume;
  if (wholeCommand) c.time = DEFAULT_REAL_DATA_TIME_S;
  if (!c.out && opts.resume) {
    throw new Error("Cannot resume: give the run folder to continue with --out");
  }
  // method=auto is resolved from the data first: the run folder is named after the method it trains.
  const found = c.method === "auto" && !opts.resume
    ? await resolveMethod(c, { quiet: opts.quiet })
    : undefined;
  if (!c.out) {
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
    c.out = path.join(
      "runs",
      `${path.basename(c.task).replace(/\.(ya?ml|json)$/i, "")}-${c.method}-${stamp}`,
    );
  }
  const outDir = path.resolve(c.out);
  mkdirSync(outDir, { recursive: true });
  const folder = new RunFolder(outDir);
  const last = folder.path("last");
  if (!opts.resume && existsSync(last)) {
    throw new Error(
      `Run folder ${outDir} already holds a checkpoint: pass --resume to continue it, or choose another --out`,
    );
  }
  if (opts.resume && !existsSync(last)) throw new Error(`Cannot resume: ${last} does not exist`);
  if (!resumed) folder.writeConfig(c);

  initBackend({
    device: c.device,
    threads: c.threads || undefined,
    deterministic: c.deterministic,
  });
  const data = await prepareData(c, { quiet: opts.quiet, found });
  const numClasses = data.classes.length;
  // Regions resolved once and stored (config.json then says which outputs the model has).
  if (c.method === "mutual" && c.regions !== "auto" && c.regions !== "none") {
    throw new Error(
      "regions: mutual learning trains on exclusive pseudo-labels and has no region outputs; use another method or regions=none",
    );
  }
  const regions = c.method === "mutual"
    ? null
    : resolveRegions(c.regions, data.classes, data.manifest.regions);
  const resolvedRegions = regionsToSetting(regions, data.classes);
  if (JSON.stringify(resolvedRegions) !== JSON.stringify(c.regions)) {
    c.regions = resolvedRegions;
    if (!resumed) folder.writeConfig(c);
  }
  if (regions && !opts.quiet) {
    console.error(
      `Regions: ${
        regions.names.map((n, i) =>
          `${n} = {${regions.classes[i].map((k) => data.classes[k]).join(", ")}}`
        ).join("; ")
      } ` +
        `(sigmoid outputs, as nnU-Net trains BraTS; set regions=none for one softmax over the classes)`,
    );
  }

  // Network plan from the patch size (D, H, W) and the target spacing (x, y, z) reversed to (D, H, W).
  const spacingDHW = [
    data.targetSpacing[2],
    data.targetSpacing[1],
    data.targetSpacing[0],
  ] as Triple;
  const wanted = resolvePatchSize(c, data);
  if (wanted.median && !opts.quiet) {
    console.error(
      `Patch size [${wanted.patch.join(", ")}] (D, H, W), planned from the median training image ` +
        `[${wanted.median.join(", ")}] at spacing [${
          spacingDHW.map((v) => +v.toFixed(3)).join(", ")
        }] mm; ` +
        `set patchSize or patchVoxels to change it`,
    );
  }
  let plan = planUNet({
    patchSize: wanted.patch,
    spacing: spacingDHW,
    maxLevels: c.network.maxLevels,
    baseWidth: c.network.baseWidth,
    maxWidth: c.network.maxWidth,
  });
  const patch = fitPatch(wanted.patch, plan);
  if (patch.join() !== wanted.patch.join()) plan = { ...plan, patchSize: patch };

  const rootRng = new Rng(c.seed, "model");
  const model = buildMethod({
    config: c,
    plan,
    numClasses,
    regions,
    modalities: data.modalities.length,
    primary: data.primary,
    rng: () => {
      const r = rootRng.derive("init", rootRng.nextU32());
      return () => r.next();
    },
  });
  const optimizer = makeOptimizer(c, model);
  const signature = modelSignature(c, data.modalities, numClasses, plan);
  const st: RunState = { bestDice: -1, validations: [] };
  const runPlan: RunPlan = {
    version: 1,
    signature,
    method: c.method,
    modalities: data.modalities,
    primary: data.primary,
    classes: data.classes,
    targetSpacing: [...data.targetSpacing],
    stage: data.stage.stage,
    patch,
    network: plan,
    preprocessedDir: data.preprocessedDir,
    dataset: {
      task: data.manifest.task,
      modalities: data.manifest.modalities,
      modalityKinds: data.plan.modalityKinds,
      classes: data.manifest.classes,
      labelMap: data.manifest.labelMap ?? null,
    },
    normalization: Object.fromEntries(data.modalities.map((m) => {
      const s = data.plan.fingerprint.perModality[m];
      return [m, { kind: s.kind, mean: s.mean, std: s.std, p005: s.p005, p995: s.p995 }];
    })),
    fingerprint: data.plan.fingerprint,
  };
  const inputs = datasetIdentity(data, {
    builtIn: !c.data && (BUILT_IN_TASKS as readonly string[]).includes(c.task),
  });
  if (resumed) checkResumedData(resumed, runPlan, inputs);
  if (!resumed) folder.writePlan(runPlan);
  let startIt = 0;
  if (opts.resume) startIt = restore(last, signature, model, optimizer, st);
  commitRunFolder(folder, {
    resumed,
    iteration: startIt,
    config: c,
    plan: runPlan,
    inputs,
    quiet: opts.quiet,
  });

  // Batch i of the stream depends only on (seed, i), so a resumed run continues with batch startIt.
  const loader = PatchLoader.fromCases({ labeled: data.labeled, unlabeled: data.unlabeled }, {
    modalities: data.modalities,
    patchSize: patch,
    labeledBatch: c.batchLabeled,
    unlabeledBatch: data.unlabeled.length ? c.batchUnlabeled : 0,
    seed: c.seed,
    startBatch: startIt,
    augment: !c.augment.enabled ? false : c.augment.mode === "flips" ? FLIPS_ONLY : {},
    misalign: data.modalities.length > 1 && (c.augment.misalignMm > 0 || c.augment.misalignDeg > 0)
      ? { translationMm: c.augment.misalignMm, rotationDeg: c.augment.misalignDeg }
      : null,
    workers: c.loaderWorkers,
  });

  const log = new JsonlLog(folder.path("log"));
  log.write({
    event: "config",
    config: c,
    plan: plan.levels,
    patch,
    parameters: model.student.parameterCount(),
    backend: getBackend().version,
    data: data.describe,
  });

  const save = (file: string, iteration: number) =>
    saveCheckpoint(file, {
      iteration,
      signature,
      optimizerStep: optimizer.stepCount,
      bestDice: st.bestDice,
      validations: st.validations,
      config: c,
    }, checkpointTensors(model, optimizer));

  // Validation predicts as `predict` does, with the run's plan and config.
  const predictor = new Predictor({
    model,
    plan: runPlan,
    config: c,
    partners: validationPartners(data),
  });
  const validate = async (iteration: number) => {
    const r: ValidationResult = await evaluateValidation(predictor, data, {
      maxCases: c.validation.maxCases,
      quick: true,
    });
    st.validations.push({ iteration, dice: r.meanDice });
    log.write({ event: "validation", iteration, dice: r.meanDice, perClass: r.perClassDice });
    if (!opts.quiet) {
      console.error(`validation @${iteration}: mean foreground Dice ${r.meanDice.toFixed(4)}`);
    }
    if (r.meanDice > st.bestDice) {
      st.bestDice = r.meanDice;
      save(folder.path("best"), iteration);
    }
  };

  // Seconds for the training loop: the rest of the default budget after what the run has spent
  // so far, less FINAL_EVALUATION_RESERVE_S (at least MIN_LOOP_S); or the user's --time less what
  // a resumed run already trained.
  const loopBudget = (time: number) =>
    wholeCommand
      ? Math.max(MIN_LOOP_S, time - (performance.now() - t0) / 1000 - FINAL_EVALUATION_RESERVE_S)
      : Math.max(1, time - trainedSeconds(folder.path("log"), startIt));
  const hooks: TrainerHook[] = [
    logHook(log),
    ...(opts.quiet ? [] : [progressHook({ label: `${c.method} ${c.task}` })]),
    everyHook(c.checkpointEvery, (ctx) => save(last, ctx.iteration)),
    ...(data.validation.length && c.validation.every > 0
      ? [everyHook(c.validation.every, (ctx) => validate(ctx.iteration))]
      : []),
    ...(opts.hooks ?? []),
    ...(c.time !== undefined
      ? [timeBudgetHook(loopBudget(c.time), {
        onChange: (total, secPerIt) => {
          log.write({ event: "budget", total, secondsPerIteration: secPerIt, budget: c.time });
        },
      })]
      : []),
  ];
  const trainer = new Trainer({
    model,
    optimizer,
    total: c.iterations,
    baseLr: c.optimizer.lr,
    warmup: c.optimizer.warmup,
    schedule: c.optimizer.schedule,
    emaDecay: c.emaDecay,
    nextBatch: async () => toHostBatch(await loader.next(), data.modalities),
    hooks,
  });
  trainer.ctx.iteration = startIt;
  try {
    await trainer.run();
  } catch (e) {
    if (e instanceof NonFiniteLossError) {
      log.write({ event: "error", iteration: e.iteration, message: e.message });
    }
    throw e;
  } finally {
    await loader.close();
  }
  save(last, trainer.ctx.iteration);
  // Unpaired data: stand-ins for missing modalities, so `predict` needs no training data.
  await writePartners(folder, data, patch);

  let metrics: MetricsSummary | null = null;
  let summaryText = `Trained ${c.method} on ${c.task} for ${trainer.ctx.iteration} iterations` +
    (c.time !== undefined ? ` (time budget ${Math.round(c.time)} s)` : "") +
    `; run folder ${outDir}`;
  if (!opts.skipFinalEvaluation && data.validation.length) {
    const windows = progressBar("sliding window", { quiet: opts.quiet });
    const r = await evaluateValidation(predictor, data, {
      quick: false,
      run: folder,
      onProgress: opts.quiet ? undefined : (done, total, label) => {
        windows.stop();
        console.error(`predict ${done}/${total} ${label}`);
      },
      onWindows: windows.onProgress,
    });
    windows.stop();
    st.validations.push({ iteration: trainer.ctx.iteration, dice: r.meanDice });
    if (r.meanDice > st.bestDice) {
      st.bestDice = r.meanDice;
      save(folder.path("best"), trainer.ctx.iteration);
    }
    metrics = r.summary;
    log.write({ event: "final", dice: r.meanDice, metrics: r.summary });
    summaryText += `\n${r.table}`;
  }
  const seconds = (performance.now() - t0) / 1000;
  folder.writeText("summary", summaryText + `\nwall time ${seconds.toFixed(1)} s\n`);
  await writeRunReport(outDir);
  return {
    outDir,
    config: c,
    iterations: trainer.ctx.iteration,
    seconds,
    metrics,
    validations: st.validations,
    summaryText,
    model,
  };
}
