/**
 * The methods `train --method` compares (METHOD.md section 7), each as a model plus a loss function
 * over one batch and a predictor for inference. All share the trainer, data and evaluation.
 *
 * - cmc: the cross-modality collaboration network with L_sup + w(t) (lambda_csc L_csc + lambda_cac L_cac)
 * - supervised: a U-Net on one modality, labeled cases only
 * - early-fusion: a U-Net with the modalities as input channels (labels of the first modality)
 * - mean-teacher: a U-Net on one modality with an EMA teacher and a softmax-MSE consistency term
 * - mutual: one U-Net branch per modality; on unlabeled cases each branch learns from the other's
 *   confident pseudo-labels (assumes the modalities are roughly aligned, as that baseline does)
 */
import { withInitScheme } from "../nn/layers.ts";
import { type Regions, regionSupervisedLoss } from "./regions.ts";
import { Rng } from "../data/rng.ts";
import {
  add,
  argmax,
  concat,
  IGNORE_INDEX,
  max,
  mean,
  mul,
  mulScalar,
  noGrad,
  sigmoid,
  slice,
  softmax,
  softmaxCrossEntropy,
  sub,
  type Tensor,
  tensor,
} from "../engine.ts";
import { cacLoss, cacPairLoss, rampUp } from "../losses/cac.ts";
import { cscLoss } from "../losses/csc.ts";
import { supervisedLoss } from "../losses/supervised.ts";
import { CmcNet } from "../nn/cmc.ts";
import type { Module, RandomSource } from "../nn/module.ts";
import type { UNetPlan } from "../nn/plan.ts";
import { UNet } from "../nn/unet.ts";
import { loadVitWeights, VitEncoder, type VitSettings, VitUNet } from "../nn/vit.ts";
import { describeLoadReport, type LoadWeightsReport } from "../io/load_weights.ts";
import { readSafetensors } from "../io/safetensors.ts";
import type { TrainConfig } from "./config.ts";

/** One training batch on the engine: per modality [B,1,D,H,W] images and [B,1,D,H,W] i32 labels. */
export interface TrainBatch {
  /** hasLabels[m][s]: whether labeled sample s has a label map for modality m (else all ignored). */
  labeled: {
    images: Tensor[];
    labels: Tensor[];
    hasLabels: boolean[][];
    /**
     * sharedLabels()[s]: labeled sample s has one label map for every modality, voxel for voxel
     * (an aligned case on one grid); computed on call, so a step that does not ask pays nothing.
     * Absent: none known to be shared.
     */
    sharedLabels?: () => boolean[];
  };
  /** Unlabeled cases: images only (there is no label field to read). */
  unlabeled: { images: Tensor[] } | null;
}

export interface LossResult {
  loss: Tensor;
  /** Scalar terms for logging (host numbers). */
  terms: Record<string, number>;
}

export interface MethodModel {
  readonly method: TrainConfig["method"];
  /** Region outputs (sigmoid per nested region, src/train/regions.ts), or null for class softmax. */
  readonly regions: Regions | null;
  /** Trained parameters. */
  readonly student: Module;
  /** EMA copy, when the method keeps one. */
  readonly teacher: Module | null;
  /** Modalities (indices into the task's modality list) the model reads, in input order. */
  readonly inputs: number[];
  /** Modalities (indices) the model predicts, one logits tensor each from predict(). */
  readonly outputs: number[];
  loss(batch: TrainBatch, iteration: number, totalIterations: number): LossResult;
  /** Logits per output modality for images of every input modality, [B,1,D,H,W] each. */
  predict(images: Tensor[]): Tensor[];
  dispose(): void;
}

export interface BuildOptions {
  config: TrainConfig;
  plan: UNetPlan;
  numClasses: number;
  modalities: number;
  /** Index of the modality the single-modality methods use. */
  primary: number;
  /** Region-based outputs (resolveRegions), or null/absent for one softmax over the classes. */
  regions?: Regions | null;
  rng: () => RandomSource;
  /**
   * Load the pretrained backbone weights named by network.vit.weights into the student (default
   * true). Pass false when a checkpoint's weights replace them anyway (prediction).
   */
  pretrained?: boolean;
}

/** The ViT settings of a config whose backbone is "vit", else null. */
export function vitSettings(c: TrainConfig): VitSettings | null {
  if (c.network.backbone !== "vit") return null;
  const v = c.network.vit;
  return {
    patch: v.patchSize,
    dim: v.dim,
    depth: v.depth,
    heads: v.heads,
    mlpRatio: v.mlpRatio,
    neckChannels: v.neckChannels,
    adapterDim: v.adapterDim,
    frozenBlocks: v.frozenBlocks,
    relPos: v.relPos,
    windowSize: v.windowSize,
    globalAttnIndexes: v.globalAttnIndexes,
  };
}

/**
 * Loads network.vit.weights into every ViT encoder of a freshly built student (the EMA teacher is
 * copied from the student when training starts); returns one report per encoder.
 */
function loadPretrained(o: BuildOptions, encoders: VitEncoder[]): LoadWeightsReport[] {
  const v = o.config.network.vit;
  if (o.pretrained === false || !v.weights || encoders.length === 0) return [];
  const st = readSafetensors(v.weights);
  const reports = encoders.map((e) =>
    loadVitWeights(e, st, { prefix: v.prefix, strict: v.strict })
  );
  const r = reports[0];
  if (r.missing.some((n) => !VitEncoder.isExtraParameter(n)) || r.unexpected.length) {
    console.error(
      `ViT weights (each of ${encoders.length} encoders): ${
        describeLoadReport(r).replaceAll("\n", "; ")
      }`,
    );
  }
  return reports;
}

/** The ViT encoders of a CMC network (none with the U-Net backbone). */
function vitEncoders(net: CmcNet): VitEncoder[] {
  return net.encoders.items.filter((e): e is VitEncoder => e instanceof VitEncoder);
}

function num(t: Tensor): number {
  return noGrad(() => t.item());
}

/**
 * Supervised loss of one modality over the labeled samples that have a label map for it (samples
 * of a modality without labels are left out); null when no sample has one.
 */
function supervisedOver(
  logits: Tensor,
  labels: Tensor,
  has: boolean[],
  regions: Regions | null = null,
): { loss: Tensor; ce: Tensor; dice: Tensor } | null {
  const sup = (l: Tensor, y: Tensor) =>
    regions ? regionSupervisedLoss(l, y, regions) : supervisedLoss(l, y);
  if (has.every((h) => h)) return sup(logits, labels);
  const idx = has.flatMap((h, i) => (h ? [i] : []));
  if (idx.length === 0) return null;
  const parts = idx.map((i) => sup(slice(logits, 0, i, 1), slice(labels, 0, i, 1)));
  const avg = (f: (p: typeof parts[number]) => Tensor) =>
    mulScalar(parts.slice(1).reduce((a, p) => add(a, f(p)), f(parts[0])), 1 / parts.length);
  return { loss: avg((p) => p.loss), ce: avg((p) => p.ce), dice: avg((p) => p.dice) };
}

/**
 * nnU-Net's deep-supervision weights for the full-resolution output and `heads` coarser outputs:
 * 1/2^i for output i (i = 0 full resolution), normalised to sum 1.
 */
export function deepSupervisionWeights(heads: number): number[] {
  const w = Array.from({ length: heads + 1 }, (_, i) => 1 / 2 ** i);
  const sum = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / sum);
}

/**
 * Labels [B,1,D,H,W] at the grid of a coarser output [B,K,d,h,w]: coarse voxel i takes fine voxel
 * i*stride, the centre of the stride-2 convolutions' windows that produced it.
 */
export function downsampleLabels(labels: Tensor, shape: readonly number[]): Tensor {
  const [B, , D, H, W] = labels.shape;
  const [d, h, w] = shape.slice(2);
  const [sz, sy, sx] = [D / d, H / h, W / w];
  if (![sz, sy, sx].every((q) => Number.isInteger(q) && q >= 1)) {
    throw new Error(
      `Cannot downsample labels [${labels.shape}] to [${shape}]: not an integer stride`,
    );
  }
  const src = labels.toArray() as Int32Array;
  const out = new Int32Array(B * d * h * w);
  let o = 0;
  for (let b = 0; b < B; b++) {
    for (let z = 0; z < d; z++) {
      for (let y = 0; y < h; y++) {
        const row = ((b * D + z * sz) * H + y * sy) * W;
        for (let x = 0; x < w; x++) out[o++] = src[row + x * sx];
      }
    }
  }
  return tensor(out, [B, 1, d, h, w], { dtype: "i32" });
}

/**
 * Supervised loss of a decoder output with deep supervision: the full-resolution loss and each
 * coarser head's loss against downsampled labels, weighted by `deepSupervisionWeights` (nnU-Net).
 * ce and dice report the full-resolution output only.
 */
function supervisedDeep(
  out: { logits: Tensor; deepLogits?: Tensor[] },
  labels: Tensor,
  has: boolean[],
  regions: Regions | null = null,
): { loss: Tensor; ce: Tensor; dice: Tensor } | null {
  const main = supervisedOver(out.logits, labels, has, regions);
  const heads = out.deepLogits ?? [];
  if (!main || heads.length === 0) return main;
  const w = deepSupervisionWeights(heads.length);
  let loss = mulScalar(main.loss, w[0]);
  heads.forEach((l, j) => {
    const s = supervisedOver(l, downsampleLabels(labels, l.shape), has, regions);
    if (s) loss = add(loss, mulScalar(s.loss, w[j + 1]));
  });
  return { loss, ce: main.ce, dice: main.dice };
}

/**
 * Mean supervised loss over the modalities that have labels in this batch (decoder outputs of the
 * labeled samples, one per modality, with their deep-supervision heads); records ce_m and dice_m.
 * When no labeled sample has an annotated voxel (patches that lie wholly in an ignored region) the
 * term is the masked loss over every voxel ignored: 0, with zero gradient.
 */
function meanSupervised(
  outs: { logits: Tensor; deepLogits?: Tensor[] }[],
  batch: TrainBatch,
  terms: Record<string, number>,
  regions: Regions | null = null,
): Tensor {
  let sum: Tensor | null = null;
  let n = 0;
  outs.forEach((l, m) => {
    const s = supervisedDeep(l, batch.labeled.labels[m], batch.labeled.hasLabels[m], regions);
    if (!s) return;
    terms[`ce_${m}`] = num(s.ce);
    terms[`dice_${m}`] = num(s.dice);
    sum = sum ? add(sum, s.loss) : s.loss;
    n++;
  });
  if (!sum) return supervisedLoss(outs[0].logits, batch.labeled.labels[0]).loss;
  return mulScalar(sum, 1 / n);
}

function pick(ts: Tensor[], idx: number[]): Tensor[] {
  return idx.map((i) => ts[i]);
}

/** Per-voxel output probabilities: softmax over classes, or a sigmoid per region. */
function probsOf(logits: Tensor, regions: Regions | null): Tensor {
  return regions ? sigmoid(logits) : softmax(logits, 1);
}

/** Number of output channels: the classes, or one per region. */
function outChannels(o: BuildOptions): number {
  return o.regions ? o.regions.classes.length : o.numClasses;
}

/** Softmax-MSE consistency between student and teacher logits (sigmoid-MSE with regions). */
function softmaxMse(student: Tensor, teacher: Tensor, regions: Regions | null = null): Tensor {
  const d = sub(probsOf(student, regions), probsOf(teacher, regions));
  return mean(mul(d, d), "all");
}

class CmcMethod implements MethodModel {
  readonly method = "cmc" as const;
  get regions(): Regions | null {
    return this.o.regions ?? null;
  }
  readonly student: CmcNet;
  readonly teacher: CmcNet | null;
  /** What loading network.vit.weights matched, per encoder (empty without weights). */
  readonly pretrained: LoadWeightsReport[];
  readonly inputs: number[];
  readonly outputs: number[];

  constructor(readonly o: BuildOptions) {
    const c = o.config;
    const make = (rng: RandomSource) =>
      new CmcNet({
        modalities: o.modalities,
        numClasses: outChannels(o),
        plan: o.plan,
        mia: c.network.mia,
        fusion: c.network.fusion,
        fusionZeroGate: c.network.fusionZeroGate,
        sharedDecoder: c.network.sharedDecoder,
        deepSupervision: c.network.deepSupervision,
        norm: c.network.norm,
        vit: vitSettings(c) ?? undefined,
        rng,
      });
    this.student = make(o.rng());
    this.teacher = c.meanTeacher ? make(o.rng()) : null;
    this.pretrained = loadPretrained(o, vitEncoders(this.student));
    this.inputs = [...Array(o.modalities).keys()];
    this.outputs = this.inputs;
  }

  loss(batch: TrainBatch, it: number, total: number): LossResult {
    const c = this.o.config;
    const bl = batch.labeled.images[0].shape[0];
    const unl = batch.unlabeled && batch.unlabeled.images[0].shape[0] > 0 ? batch.unlabeled : null;
    const xs = unl
      ? batch.labeled.images.map((x, m) => concat([x, unl.images[m]], 0))
      : batch.labeled.images;
    const outs = this.student.forward(xs);
    const terms: Record<string, number> = {};
    const labeledPart = (t: Tensor) => (unl ? slice(t, 0, 0, bl) : t);
    let loss = meanSupervised(
      outs.map((o) => ({
        logits: labeledPart(o.logits),
        deepLogits: o.deepLogits.map(labeledPart),
      })),
      batch,
      terms,
      this.regions,
    );
    terms.sup = num(loss);
    const shared = c.loss.lambdaFused > 0 ? batch.labeled.sharedLabels?.() ?? [] : [];
    if (shared.length > 0 && shared.every((x) => x)) {
      // The fused output (mean of the decoders' logits) supervised too, on aligned labeled pairs.
      const M = outs.length;
      const mean = (ts: Tensor[]) =>
        mulScalar(ts.slice(1).reduce((a, t) => add(a, t), ts[0]), 1 / M);
      const fused = {
        logits: mean(outs.map((o) => labeledPart(o.logits))),
        deepLogits: outs[0].deepLogits.map((_, j) =>
          mean(outs.map((o) => labeledPart(o.deepLogits[j])))
        ),
      };
      const f = supervisedDeep(
        fused,
        batch.labeled.labels[0],
        batch.labeled.hasLabels[0],
        this.regions,
      );
      if (f) {
        terms.fused = num(f.loss);
        loss = add(loss, mulScalar(f.loss, c.loss.lambdaFused));
      }
    }
    const w = rampUp(it, c.loss.rampFraction * total);
    terms.w = w;
    if (c.loss.lambdaCsc > 0) {
      const lcsc = cscLoss(outs.map((o) => o.deep), {
        grid: c.loss.cscGrid,
        tau: c.loss.cscTau,
        center: c.loss.cscCenter,
      });
      terms.csc = num(lcsc);
      loss = add(loss, mulScalar(lcsc, w * c.loss.lambdaCsc));
    }
    if (unl && c.loss.lambdaCac > 0) {
      const bu = unl.images[0].shape[0];
      const branches = outs.map((o) => ({
        probs: probsOf(slice(o.logits, 0, bl, bu), this.regions),
        features: slice(o.features, 0, bl, bu),
      }));
      const voxels = branches[0].probs.shape.slice(2).reduce((x, y) => x * y, 1);
      const opts = {
        tau: c.loss.cacTau,
        minMass: Math.max(c.loss.cacMinMass, c.loss.cacMinFraction * voxels),
        voxelwise: c.loss.voxelwise,
      };
      let lcac: Tensor;
      if (this.teacher) {
        const t = noGrad(() =>
          this.teacher!.forward(unl.images).map((o) => ({
            probs: probsOf(o.logits, this.regions),
            features: o.features,
          }))
        );
        let acc: Tensor | null = null;
        let pairs = 0;
        for (let a = 0; a < branches.length; a++) {
          for (let b = 0; b < branches.length; b++) {
            if (a === b) continue;
            const l = cacPairLoss(branches[a], t[b], opts);
            acc = acc ? add(acc, l) : l;
            pairs++;
          }
        }
        lcac = mulScalar(acc!, 1 / pairs);
      } else {
        lcac = cacLoss(branches, opts);
      }
      terms.cac = num(lcac);
      loss = add(loss, mulScalar(lcac, w * c.loss.lambdaCac));
    }
    terms.loss = num(loss);
    return { loss, terms };
  }

  predict(images: Tensor[]): Tensor[] {
    return this.student.forward(images).map((o) => o.logits);
  }

  dispose(): void {
    this.student.dispose();
    this.teacher?.dispose();
  }
}

class UNetMethod implements MethodModel {
  readonly student: UNet | VitUNet;
  readonly teacher: UNet | VitUNet | null;
  readonly pretrained: LoadWeightsReport[];
  readonly inputs: number[];
  readonly outputs: number[];

  get regions(): Regions | null {
    return this.o.regions ?? null;
  }

  constructor(
    readonly method: "supervised" | "early-fusion" | "mean-teacher",
    readonly o: BuildOptions,
  ) {
    const c = o.config;
    this.inputs = method === "early-fusion" ? [...Array(o.modalities).keys()] : [o.primary];
    this.outputs = [method === "early-fusion" ? 0 : o.primary];
    const vit = vitSettings(c);
    const opts = { norm: c.network.norm, deepSupervision: c.network.deepSupervision };
    const make = (rng: RandomSource) =>
      vit
        ? new VitUNet(this.inputs.length, outChannels(o), o.plan, vit, { ...opts, rng })
        : new UNet(this.inputs.length, outChannels(o), o.plan, { ...opts, rng });
    this.student = make(o.rng());
    this.teacher = method === "mean-teacher" ? make(o.rng()) : null;
    this.pretrained = loadPretrained(
      o,
      this.student instanceof VitUNet ? [this.student.encoder] : [],
    );
  }

  #input(images: Tensor[]): Tensor {
    const xs = pick(images, this.inputs);
    return xs.length === 1 ? xs[0] : concat(xs, 1);
  }

  loss(batch: TrainBatch, it: number, total: number): LossResult {
    const out = this.student.forward(this.#input(batch.labeled.images));
    const o = this.outputs[0];
    // No annotated voxel in the batch (every one ignored): the masked loss, 0 with zero gradient.
    const s =
      supervisedDeep(out, batch.labeled.labels[o], batch.labeled.hasLabels[o], this.regions) ??
        supervisedLoss(out.logits, batch.labeled.labels[o]);
    const terms: Record<string, number> = {
      ce_0: num(s.ce),
      dice_0: num(s.dice),
      sup: num(s.loss),
    };
    let loss = s.loss;
    const unl = batch.unlabeled && batch.unlabeled.images[0].shape[0] > 0 ? batch.unlabeled : null;
    if (this.teacher && unl) {
      const x = this.#input(unl.images);
      const w = rampUp(it, this.o.config.loss.rampFraction * total);
      // Student and teacher see the patch under independent Gaussian noise (Tarvainen & Valpola's
      // input perturbation; without it the consistency target is the student's own input).
      const sd = this.o.config.loss.mtNoise;
      const rng = new Rng(this.o.config.seed, `mt-noise-${it}`);
      const noisy = (t: Tensor) =>
        sd > 0
          ? add(t, tensor(Float32Array.from({ length: t.size }, () => sd * rng.normal()), t.shape))
          : t;
      const studentLogits = this.student.forward(noisy(x)).logits;
      const teacherLogits = noGrad(() => this.teacher!.forward(noisy(x)).logits);
      const cons = softmaxMse(studentLogits, teacherLogits, this.regions);
      terms.consistency = num(cons);
      terms.w = w;
      loss = add(loss, mulScalar(cons, w * this.o.config.loss.lambdaMt));
    }
    terms.loss = num(loss);
    return { loss, terms };
  }

  predict(images: Tensor[]): Tensor[] {
    return [this.student.forward(this.#input(images)).logits];
  }

  dispose(): void {
    this.student.dispose();
    this.teacher?.dispose();
  }
}

class MutualMethod implements MethodModel {
  readonly method = "mutual" as const;
  readonly regions = null;
  readonly student: CmcNet;
  readonly teacher = null;
  readonly pretrained: LoadWeightsReport[];
  readonly inputs: number[];
  readonly outputs: number[];

  constructor(readonly o: BuildOptions) {
    this.student = new CmcNet({
      modalities: o.modalities,
      numClasses: o.numClasses,
      plan: o.plan,
      mia: false,
      fusion: "none",
      deepSupervision: o.config.network.deepSupervision,
      norm: o.config.network.norm,
      vit: vitSettings(o.config) ?? undefined,
      rng: o.rng(),
    });
    this.pretrained = loadPretrained(o, vitEncoders(this.student));
    this.inputs = [...Array(o.modalities).keys()];
    this.outputs = this.inputs;
  }

  loss(batch: TrainBatch, it: number, total: number): LossResult {
    const c = this.o.config;
    const terms: Record<string, number> = {};
    const outs = this.student.forward(batch.labeled.images);
    let loss = meanSupervised(outs, batch, terms);
    terms.sup = num(loss);
    const unl = batch.unlabeled && batch.unlabeled.images[0].shape[0] > 0 ? batch.unlabeled : null;
    if (unl) {
      const w = rampUp(it, c.loss.rampFraction * total);
      const uo = this.student.forward(unl.images);
      const pseudo = noGrad(() => uo.map((o) => pseudoLabels(o.logits, c.loss.pseudoThreshold)));
      let mut: Tensor | null = null;
      const M = uo.length;
      for (let m = 0; m < M; m++) {
        const other = pseudo[(m + 1) % M];
        const { loss: ce } = supervisedLossCeOnly(uo[m].logits, other);
        mut = mut ? add(mut, ce) : ce;
      }
      const lm = mulScalar(mut!, 1 / M);
      terms.mutual = num(lm);
      terms.w = w;
      loss = add(loss, mulScalar(lm, w * c.loss.lambdaMutual));
    }
    terms.loss = num(loss);
    return { loss, terms };
  }

  predict(images: Tensor[]): Tensor[] {
    return this.student.forward(images).map((o) => o.logits);
  }

  dispose(): void {
    this.student.dispose();
  }
}

/** argmax labels with positions below the confidence threshold set to IGNORE_INDEX. */
function pseudoLabels(logits: Tensor, threshold: number): Tensor {
  const probs = softmax(logits, 1);
  const conf = max(probs, [1], { keepDims: true }).toArray() as Float32Array;
  const lab = argmax(probs, 1).toArray() as Int32Array;
  const out = new Int32Array(lab.length);
  for (let i = 0; i < lab.length; i++) out[i] = conf[i] >= threshold ? lab[i] : IGNORE_INDEX;
  return tensor(out, [logits.shape[0], 1, ...logits.shape.slice(2)], { dtype: "i32" });
}

function supervisedLossCeOnly(logits: Tensor, labels: Tensor): { loss: Tensor } {
  // Cross-entropy only (the baseline's pseudo-label loss); unconfident voxels are ignored.
  return { loss: softmaxCrossEntropy(logits, labels, { ignoreIndex: IGNORE_INDEX }).loss };
}

export function buildMethod(o: BuildOptions): MethodModel {
  return withInitScheme(o.config.network.init, () => buildMethodModel(o));
}

function buildMethodModel(o: BuildOptions): MethodModel {
  switch (o.config.method) {
    case "cmc":
      return new CmcMethod(o);
    case "supervised":
    case "early-fusion":
    case "mean-teacher":
      return new UNetMethod(o.config.method, o);
    case "mutual":
      return new MutualMethod(o);
    case "auto":
      throw new Error(
        "method auto is resolved from the data before the model is built (prepareData); give a method",
      );
  }
}
