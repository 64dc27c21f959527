/**
 * The one inference core, used by validation during training (src/train/validate.ts) and by
 * `predict` (src/infer/predict_run.ts).
 *
 * A Predictor is built from a model with its weights, the run's plan (modalities, classes, patch,
 * target spacing, normalisation) and its config (sliding-window overlap, mirroring,
 * post-processing). It takes a case in memory (an image per modality on its original grid) and
 *
 * 1. preprocesses it with the same per-case transform as training (`transformCase` in
 *    src/data/case_transform.ts: RAS reorientation, resampling to the target spacing, body crop,
 *    normalisation with the training statistics for CT);
 * 2. runs Gaussian-weighted sliding-window inference (optionally averaged over axis flips), one
 *    pass per distinct modality grid, a stand-in volume filling in for a modality the case lacks
 *    (unpaired data); for co-registered cases of multi-decoder models the decoders' mean is the
 *    fused prediction (FUSED_OUTPUT);
 * 3. maps the probabilities back exactly: uncrop, resample onto each modality's original grid,
 *    argmax (or the innermost region for region outputs), optional largest component, and the
 *    voxel values to write (class indices or the dataset's label values).
 *
 * Nothing is written to disk.
 *
 * @module
 */
import { concat, noGrad, softmax, type Tensor, tensor, tidy } from "../engine.ts";
import { inv4, type Mat4, mul4, spacingOf, type Vec3 } from "../data/affine.ts";
import { type ModalityKind, modalityKind } from "../data/manifest.ts";
import type { Volume } from "../data/cases.ts";
import type { NiftiImage } from "../data/nifti.ts";
import {
  type CaseModalityInput,
  inMemoryImage,
  type Normalisation,
  type PreprocessedGrid,
  probabilitiesToOriginal,
  rasImage,
  transformCase,
} from "../data/case_transform.ts";
import { extract } from "../data/sampler.ts";
import { argmaxLabels } from "./labels.ts";
import { keepLargestComponent } from "./postprocess.ts";
import { type PatchBatch, slidingWindowInference } from "./sliding_window.ts";
import type { TrainConfig } from "../train/config.ts";
import type { RunPlan } from "../train/run.ts";
import { regionProbabilities } from "./region_probabilities.ts";

/** What the Predictor needs of a model (a method's, src/train/methods.ts, in evaluation mode). */
export interface PredictorModel {
  /** Modalities (indices) the model predicts, one logits tensor each from predict(). */
  readonly outputs: readonly number[];
  /** Nested region outputs (sigmoids), or null for one softmax over the classes. */
  readonly regions: { readonly classes: readonly (readonly number[])[] } | null;
  /** Logits per output from one image batch per modality (model input order). */
  predict(images: Tensor[]): Tensor[];
}

/** What the Predictor needs of a run's plan (plan.json). */
export type PredictorPlan = Pick<
  RunPlan,
  "modalities" | "classes" | "patch" | "targetSpacing" | "dataset" | "normalization"
>;

/**
 * Key of the fused prediction among a case's outputs: the mean of every decoder's probabilities,
 * present when the model has several outputs (CMC, mutual learning) and the case has all of the
 * model's modalities on one grid (co-registered data). That is the case's one prediction; the
 * per-modality outputs are auxiliary.
 */
export const FUSED_OUTPUT = -1;

/** One image of a case on its original grid (as stored in its file). */
export interface CaseImage {
  data: Float32Array;
  dims: readonly number[];
  /** Row-major 4x4 voxel -> world (RAS+, mm). */
  affine: readonly number[];
}

/** A case in memory: an image per modality (a subset of the run's on unpaired data). */
export interface CaseImages {
  id: string;
  images: Readonly<Record<string, CaseImage>>;
  /** The modalities share one grid and anatomy (they then get one common crop). */
  aligned?: boolean;
}

/** A case on the preprocessed grids: its volumes, and how each maps back to its original grid. */
export interface PreparedCase {
  id: string;
  volumes: Record<string, Volume>;
  grids: Record<string, PreprocessedGrid>;
  /** The normalisation applied to each modality. */
  norm: Record<string, Normalisation>;
}

export interface ProbabilityOptions {
  /** Average over axis flips (default: config.validation.mirror). */
  mirror?: boolean;
  /** Sliding-window overlap (default: config.validation.overlap). */
  overlap?: number;
  /** Sliding-window progress (network calls done, total), over every grid of the case. */
  onWindows?: (done: number, total: number) => void;
}

export interface PredictCaseOptions extends ProbabilityOptions {
  /**
   * Co-registered cases of multi-decoder models: also each decoder's own map, beside the fused
   * one (which is otherwise the only output).
   */
  perModality?: boolean;
  /** "index" (default; class indices 0..K-1) or "file" (the dataset's label values). */
  labelValues?: "index" | "file";
}

/** One label map on a modality's original grid. */
export interface OutputMap {
  /** "fused", or the modality whose decoder predicted it. */
  output: string;
  /** The modality whose original grid it is on. */
  modality: string;
  /** Voxel values (class indices or label values, as asked), x fastest. */
  values: Uint8Array | Int16Array;
  datatype: "uint8" | "int16";
  dims: Vec3;
  affine: Mat4;
}

/** Resamples a volume onto another volume's grid (trilinear, world coordinates). */
export function resampleOnto(v: Volume, ref: Volume): Float32Array {
  const out = new Float32Array(ref.dims[0] * ref.dims[1] * ref.dims[2]);
  const map = mul4(inv4(v.affine), ref.affine).slice(0, 12);
  extract(v.data, v.dims, ref.dims, map, "linear", v.padValue, out);
  return out;
}

function gridKey(v: Volume): string {
  return JSON.stringify([v.dims, v.affine.map((x) => Math.round(x * 1e4) / 1e4)]);
}

/**
 * `src` moved so the centre of its grid lies on the centre of `ref`'s grid (world coordinates):
 * same voxels, spacing and orientation, only the affine's translation changes. Used for the
 * stand-in of a missing modality, in validation and in `predict`.
 */
export function recentreOn(src: Volume, ref: Volume): Volume {
  const centre = (v: Volume) =>
    [0, 1, 2].map((r) =>
      v.affine[r * 4 + 3] +
      [0, 1, 2].reduce((a, c) => a + v.affine[r * 4 + c] * (v.dims[c] - 1) / 2, 0)
    );
  const a = centre(src), b = centre(ref);
  const affine = [...src.affine];
  for (let r = 0; r < 3; r++) affine[r * 4 + 3] += b[r] - a[r];
  return { ...src, affine };
}

/**
 * Labels from probabilities [K, ...dims] (dims in NIfTI order x, y, z), with the configured
 * post-processing (largest component per class).
 */
export function finalLabels(
  probs: Float32Array,
  K: number,
  dimsXYZ: readonly number[],
  config: Pick<TrainConfig, "validation">,
): Int32Array {
  const labels = argmaxLabels(probs, { numClasses: K });
  if (config.validation.largestComponent) {
    keepLargestComponent(
      labels,
      [dimsXYZ[2], dimsXYZ[1], dimsXYZ[0]],
      [...Array(K - 1).keys()].map((k) => k + 1),
    );
  }
  return labels;
}

/** An in-memory image as the resampler reads it. */
function asNifti(img: CaseImage): NiftiImage {
  return inMemoryImage(img.data, img.dims, img.affine, spacingOf(img.affine as Mat4));
}

export class Predictor {
  readonly model: PredictorModel;
  readonly plan: PredictorPlan;
  readonly config: TrainConfig;
  /** Stand-ins for modalities a case lacks (unpaired data), re-centred on the case when used. */
  readonly partners: Readonly<Record<string, Volume>>;

  constructor(opts: {
    model: PredictorModel;
    plan: PredictorPlan;
    config: TrainConfig;
    partners?: Readonly<Record<string, Volume>>;
  }) {
    this.model = opts.model;
    this.plan = opts.plan;
    this.config = opts.config;
    this.partners = opts.partners ?? {};
  }

  get numClasses(): number {
    return this.plan.classes.length;
  }

  /**
   * The case on the preprocessed grids, by training's per-case transform with the run's target
   * spacing and statistics. Only the run's modalities are kept.
   */
  preprocess(c: CaseImages): PreparedCase {
    const plan = this.plan;
    const inputs: CaseModalityInput[] = plan.modalities.filter((m) => c.images[m] !== undefined)
      .map((m) => ({ modality: m, image: rasImage(asNifti(c.images[m])), label: null }));
    const ctStats = Object.fromEntries(
      plan.dataset.modalities.filter((m) => this.kindOf(m) === "ct" && plan.normalization[m])
        .map((m) => {
          const s = plan.normalization[m];
          return [m, { mean: s.mean, std: s.std, p005: s.p005, p995: s.p995 }];
        }),
    );
    const t = transformCase({ aligned: c.aligned ?? false }, inputs, {
      target: [...plan.targetSpacing] as Vec3,
      crop: true,
      kinds: Object.fromEntries(plan.dataset.modalities.map((m) => [m, this.kindOf(m)])),
      ctStats,
      k: plan.classes.length,
    });
    const volumes: Record<string, Volume> = {};
    const grids: Record<string, PreprocessedGrid> = {};
    const norm: Record<string, Normalisation> = {};
    for (const [m, x] of Object.entries(t)) {
      volumes[m] = {
        data: x.data,
        dims: x.grid.dims,
        spacing: x.grid.spacing,
        affine: x.grid.affine,
        padValue: x.padValue,
      };
      grids[m] = x.grid;
      norm[m] = x.norm;
    }
    return { id: c.id, volumes, grids, norm };
  }

  /** A modality's kind as preprocessing saw it in training. */
  private kindOf(m: string): ModalityKind {
    return modalityKind(this.plan.dataset, m);
  }

  /** The stand-in for modality `m`, re-centred on `ref`'s grid. */
  private partnerVolume(m: string, ref: Volume): Volume {
    const src = this.partners[m];
    if (!src) throw new Error(`Cannot predict: no training case has modality ${m} to pair with`);
    return recentreOn(src, ref);
  }

  /**
   * Probabilities [K, z, y, x] on the preprocessed grid of each predicted modality the case has
   * (keyed by output index), and under FUSED_OUTPUT their mean for co-registered cases of
   * multi-output models.
   */
  async probabilities(
    cs: { id: string; volumes: Readonly<Record<string, Volume>> },
    opts: ProbabilityOptions = {},
  ): Promise<Map<number, Float32Array>> {
    const model = this.model;
    const mods = this.plan.modalities;
    const K = this.numClasses;
    const groups = new Map<string, number[]>();
    for (const o of model.outputs) {
      if (!cs.volumes[mods[o]]) continue;
      const key = gridKey(cs.volumes[mods[o]]);
      groups.set(key, [...(groups.get(key) ?? []), o]);
    }
    const result = new Map<number, Float32Array>();
    let group = 0;
    for (const outs of groups.values()) {
      const g = group++;
      const ref = cs.volumes[mods[outs[0]]];
      const sources = mods.map((m) => cs.volumes[m] ?? this.partnerVolume(m, ref));
      const inputs = sources.map((v) =>
        gridKey(v) === gridKey(ref) ? v.data : resampleOnto(v, ref)
      );
      const dims: [number, number, number] = [ref.dims[2], ref.dims[1], ref.dims[0]];
      const predictor = (batch: PatchBatch) =>
        Promise.resolve(tidy(() =>
          noGrad(() => {
            const [d, h, w] = batch.patchSize;
            const imgs = batch.patches.map((a) => tensor(a, [batch.batchSize, 1, d, h, w]));
            const logits = model.predict(imgs);
            const probs = outs.map((o) => {
              const l = logits[model.outputs.indexOf(o)];
              return model.regions ? regionProbabilities(l, model.regions, K) : softmax(l, 1);
            });
            return (probs.length === 1 ? probs[0] : concat(probs, 1)).toArray() as Float32Array;
          })
        ));
      const probs = await slidingWindowInference({ data: inputs, dims }, predictor, {
        patchSize: this.plan.patch,
        numClasses: K * outs.length,
        overlap: opts.overlap ?? this.config.validation.overlap,
        mirror: opts.mirror ?? this.config.validation.mirror,
        outputs: "probabilities",
        // Windows that reach past the volume are padded as training patches are.
        padValue: sources.map((v) => v.padValue),
        // Several grids (modalities on different grids) count as equal shares of the case.
        onProgress: opts.onWindows
          ? (done, total) => opts.onWindows!(g * total + done, groups.size * total)
          : undefined,
      });
      const n = dims[0] * dims[1] * dims[2];
      outs.forEach((o, i) => result.set(o, probs.slice(i * K * n, (i + 1) * K * n)));
    }
    const outs = [...result.keys()];
    if (outs.length > 1 && groups.size === 1 && mods.every((m) => cs.volumes[m])) {
      const fused = new Float32Array(result.get(outs[0])!.length);
      for (const o of outs) {
        const p = result.get(o)!;
        for (let i = 0; i < fused.length; i++) fused[i] += p[i];
      }
      for (let i = 0; i < fused.length; i++) fused[i] /= outs.length;
      result.set(FUSED_OUTPUT, fused);
    }
    return result;
  }

  /** Class indices on a modality's original grid from probabilities on its preprocessed grid. */
  labelsOnOriginal(probs: Float32Array, grid: PreprocessedGrid): Int32Array {
    const K = this.numClasses;
    return finalLabels(probabilitiesToOriginal(probs, K, grid), K, grid.source.dims, this.config);
  }

  /** Voxel value written for each class index. */
  labelValues(mode: "index" | "file" = "index"): number[] {
    const plan = this.plan;
    if (mode === "index") return plan.classes.map((_, k) => k);
    if (mode !== "file") {
      throw new Error(`Cannot predict: labelValues must be "index" or "file", got '${mode}'`);
    }
    const classes = plan.dataset.classes;
    return plan.classes.map((name, k) => (k === 0 ? classes.background ?? 0 : classes[name]));
  }

  /**
   * Predicts one case: label maps on the original grids, one per predicted modality the case has,
   * or for co-registered cases of multi-decoder models one fused map (and the decoders' own maps
   * with `perModality`).
   */
  async predict(c: CaseImages, opts: PredictCaseOptions = {}): Promise<OutputMap[]> {
    const prepared = this.preprocess(c);
    const probs = await this.probabilities(prepared, opts);
    const values = this.labelValues(opts.labelValues ?? "index");
    const datatype = Math.max(...values) <= 255 && Math.min(...values) >= 0 ? "uint8" : "int16";
    const fused = probs.has(FUSED_OUTPUT);
    const out: OutputMap[] = [];
    for (const [o, p] of probs) {
      if (fused && o !== FUSED_OUTPUT && !opts.perModality) continue;
      const m = this.plan.modalities[o === FUSED_OUTPUT ? this.model.outputs[0] : o];
      const grid = prepared.grids[m];
      const labels = this.labelsOnOriginal(p, grid);
      const v = datatype === "uint8"
        ? new Uint8Array(labels.length)
        : new Int16Array(labels.length);
      for (let i = 0; i < labels.length; i++) v[i] = values[labels[i]];
      out.push({
        output: o === FUSED_OUTPUT ? "fused" : m,
        modality: m,
        values: v,
        datatype,
        dims: grid.source.dims,
        affine: grid.source.affine,
      });
    }
    return out;
  }
}
