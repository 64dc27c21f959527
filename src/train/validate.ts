/**
 * Validation and final evaluation: Gaussian-weighted sliding-window inference at training spacing on
 * each validation case, one pass per distinct modality grid (modalities of a misaligned case keep
 * their own grids; the others are resampled onto the grid being predicted).
 *
 * quick: foreground Dice on the preprocessed grid (used during training).
 * full: probabilities mapped back to each modality's original grid, predictions written as NIfTI,
 *       Dice/HD95/ASSD in mm against the original label files, PNG overlays of a few slices.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { concat, noGrad, softmax, tensor, tidy } from "../engine.ts";
import { inv4, mul4 } from "../data/affine.ts";
import type { LabeledCase, Volume } from "../data/cases.ts";
import { writeNifti } from "../data/nifti.ts";
import { LabelAccess } from "../data/label_access.ts";
import { loadCaseRecord, probabilitiesToOriginal } from "../data/preprocess.ts";
import { extract } from "../data/sampler.ts";
import { argmaxLabels } from "../infer/labels.ts";
import { keepLargestComponent } from "../infer/postprocess.ts";
import { type PatchBatch, slidingWindowInference } from "../infer/sliding_window.ts";
import {
  type CaseMetrics,
  evaluateCase,
  type MetricsSummary,
  metricsToJson,
  summarise,
} from "../metrics/metrics.ts";
import { formatSummaryTable } from "../metrics/evaluate_files.ts";
import { montagePng } from "../viz/overlay.ts";
import type { TrainConfig } from "./config.ts";
import type { PreparedData } from "./data.ts";
import type { MethodModel } from "./methods.ts";
import { regionProbabilities } from "./regions.ts";
import { writeFileAtomicSync } from "../util/atomic_write.ts";
import { IGNORE_INDEX, storedIgnore } from "../util/ignore.ts";

export interface ValidationOptions {
  patch: [number, number, number];
  config: TrainConfig;
  /** Evaluate at most this many cases (quick mode). */
  maxCases?: number;
  quick: boolean;
  /** Full mode: folder for predictions/, images/ and metrics.json. */
  outDir?: string;
  onProgress?: (done: number, total: number, label: string) => void;
  /** Sliding-window progress within the current case (windows done, total, case id). */
  onWindows?: (done: number, total: number, label: string) => void;
}

export interface ValidationResult {
  /** Mean foreground Dice over cases, classes and predicted modalities. */
  meanDice: number;
  perClassDice: Record<string, number>;
  summary: MetricsSummary | null;
  table: string;
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
 * The training volume that stands in for modality `m` when a case lacks it (unpaired data): the
 * first training case (labeled, then unlabeled) that has it. Runs trained on such data store a
 * crop of this volume as <run>/partners/<m>.nii.gz for `predict` (src/infer/partners.ts).
 */
export function partnerSource(data: PreparedData, m: string): Volume | undefined {
  return [...data.labeled, ...data.unlabeled].find((c) => c.volumes[m] !== undefined)?.volumes[m];
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
 * A stand-in volume for a modality the case lacks (unpaired data): the given partner (`predict`:
 * the run's stored one) or `partnerSource`, re-centred on the reference grid — the same kind of
 * partner the model saw in training, where unpaired modalities come from other patients.
 */
function partnerVolume(
  data: PreparedData,
  m: string,
  ref: Volume,
  partners?: Readonly<Record<string, Volume>>,
): Volume {
  const src = partners?.[m] ?? partnerSource(data, m);
  if (!src) throw new Error(`Cannot predict: no training case has modality ${m} to pair with`);
  return recentreOn(src, ref);
}

/**
 * Key of the fused prediction in predictCase's result: the mean of every decoder's probabilities,
 * present when the model has several outputs (CMC, mutual learning) and the case has all of the
 * model's modalities on one grid (co-registered data). That is the case's one prediction; the
 * per-modality outputs are auxiliary.
 */
export const FUSED_OUTPUT = -1;

/**
 * Probabilities [K, z, y, x] on the preprocessed grid of each predicted modality the case has, and
 * under FUSED_OUTPUT their mean for co-registered cases of multi-output models.
 */
export async function predictCase(
  model: MethodModel,
  data: PreparedData,
  cs: { id: string; volumes: Readonly<Record<string, Volume>> },
  opts: {
    patch: [number, number, number];
    config: TrainConfig;
    /** Mirror test-time augmentation (default: config.validation.mirror). */
    mirror?: boolean;
    /** Stand-ins for modalities the case lacks (default: `partnerSource`'s training volumes). */
    partners?: Readonly<Record<string, Volume>>;
    /** Sliding-window progress (network calls done, total), over every grid of the case. */
    onWindows?: (done: number, total: number) => void;
  },
): Promise<Map<number, Float32Array>> {
  const mods = data.modalities;
  const K = data.classes.length;
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
    const sources = mods.map((m) => cs.volumes[m] ?? partnerVolume(data, m, ref, opts.partners));
    const inputs = sources.map((v) => gridKey(v) === gridKey(ref) ? v.data : resampleOnto(v, ref));
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
      patchSize: opts.patch,
      numClasses: K * outs.length,
      overlap: opts.config.validation.overlap,
      mirror: opts.mirror ?? opts.config.validation.mirror,
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

/**
 * Labels from probabilities [K, ...dims] (dims in NIfTI order x, y, z), with the configured
 * post-processing. Used for validation, the final predictions and `predict`.
 */
export function finalLabels(
  probs: Float32Array,
  K: number,
  dimsXYZ: readonly number[],
  config: TrainConfig,
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

/**
 * Foreground Dice per class on the preprocessed grid. Reference voxels outside 0..K-1 (the "ignore"
 * label, stored as 255 or -1) count in neither the reference nor the prediction.
 */
export function quickDice(pred: Int32Array, ref: ArrayLike<number>, K: number): number[] {
  const inter = new Float64Array(K), sp = new Float64Array(K), sr = new Float64Array(K);
  for (let i = 0; i < pred.length; i++) {
    const p = pred[i], r = ref[i];
    if (!(r >= 0 && r < K)) continue;
    sp[p]++;
    sr[r]++;
    if (p === r) inter[p]++;
  }
  const out: number[] = [];
  for (let k = 1; k < K; k++) out.push(sp[k] + sr[k] === 0 ? 1 : (2 * inter[k]) / (sp[k] + sr[k]));
  return out;
}

/**
 * A label file on its own grid as class indices (IGNORE_INDEX where the task's label map says
 * "ignore"), with the file's voxel spacing. The file is opened through `access` (the run's labels).
 */
export async function originalLabels(
  file: string,
  map: Map<number, number>,
  access: LabelAccess,
): Promise<{ labels: Int32Array; spacing: [number, number, number] }> {
  const img = await access.read(file, { expectDims: 3 });
  const out = new Int32Array(img.data.length);
  for (let i = 0; i < img.data.length; i++) {
    const v = Math.round(img.data[i]);
    const k = map.get(v);
    if (k === undefined) {
      throw new Error(
        `Cannot evaluate against ${file}: label value ${
          img.data[i]
        } is not in the task's label map (${[...map.keys()].join(", ")})`,
      );
    }
    out[i] = k;
  }
  return { labels: out, spacing: img.spacing };
}

/**
 * Metrics of a prediction (class indices on a label file's grid) against that file: Dice, HD95 and
 * ASSD in mm per foreground class, named by `classes`; voxels the task ignores count in neither.
 */
export function evaluateOriginal(
  pred: ArrayLike<number>,
  ref: { labels: Int32Array; spacing: readonly number[] },
  dimsXYZ: readonly number[],
  classes: readonly string[],
  id: string,
): CaseMetrics {
  const K = classes.length;
  return evaluateCase(pred, ref.labels, {
    dims: [dimsXYZ[2], dimsXYZ[1], dimsXYZ[0]],
    spacing: [ref.spacing[2], ref.spacing[1], ref.spacing[0]],
    classes: [...Array(K - 1).keys()].map((k) => k + 1),
    names: Object.fromEntries(classes.map((n, k) => [k, n])),
    id,
    ignore: [IGNORE_INDEX],
  });
}

export async function evaluateValidation(
  model: MethodModel,
  data: PreparedData,
  opts: ValidationOptions,
): Promise<ValidationResult> {
  const K = data.classes.length;
  const mods = data.modalities;
  const cases: LabeledCase[] = opts.quick
    ? data.validation.slice(0, opts.maxCases ?? data.validation.length)
    : data.validation;
  const perClass: number[][] = Array.from({ length: K - 1 }, () => []);
  const caseMetrics: CaseMetrics[] = [];
  const dirs = opts.outDir
    ? { pred: path.join(opts.outDir, "predictions"), img: path.join(opts.outDir, "images") }
    : null;
  if (dirs && !opts.quick) {
    mkdirSync(dirs.pred, { recursive: true });
    mkdirSync(dirs.img, { recursive: true });
  }
  let done = 0;
  for (const cs of cases) {
    const probs = await predictCase(model, data, cs, {
      ...opts,
      // The quick validations during training go without mirroring (8x the windows); the final
      // evaluation mirrors as configured (nnU-Net's default).
      mirror: opts.quick ? false : opts.config.validation.mirror,
      onWindows: opts.onWindows ? (d, t) => opts.onWindows!(d, t, cs.id) : undefined,
    });
    const rows = [];
    const rec = opts.quick ? null : await loadCaseRecord(data.preprocessedDir, cs.id);
    // A co-registered case of a multi-decoder model is scored (and written) once, on its fused
    // prediction, as <case>.nii.gz; otherwise each predicted modality as <case>_<modality>.nii.gz.
    const fusedOnly = probs.has(FUSED_OUTPUT);
    for (const [o, p] of probs) {
      if (fusedOnly && o !== FUSED_OUTPUT) continue;
      // The fused map is scored against the label of the first output modality that has one.
      const m = o === FUSED_OUTPUT
        ? mods[model.outputs.find((q) => cs.labels[mods[q]]) ?? model.outputs[0]]
        : mods[o];
      const vol = cs.volumes[m];
      const pred = finalLabels(p, K, vol.dims, opts.config);
      const ref = cs.labels[m];
      if (ref) quickDice(pred, ref, K).forEach((d, k) => perClass[k].push(d));
      // Ignored voxels are drawn as background (no reference contour around them).
      const shown = ref && Int32Array.from(ref, (v) => (v === storedIgnore(ref) ? 0 : v));
      rows.push({
        image: vol.data,
        dims: [vol.dims[2], vol.dims[1], vol.dims[0]] as const,
        pred,
        ref: shown,
      });
      if (rec && dirs) {
        const pm = rec.modalities[m];
        const orig = finalLabels(probabilitiesToOriginal(p, K, pm), K, pm.source.dims, opts.config);
        const name = o === FUSED_OUTPUT ? cs.id : `${cs.id}_${m}`;
        await writeNifti(path.join(dirs.pred, `${name}.nii.gz`), {
          data: Uint8Array.from(orig),
          dims: pm.source.dims,
          affine: pm.source.affine,
        }, { datatype: "uint8" });
        if (pm.source.labelPath) {
          const refOrig = await originalLabels(
            pm.source.labelPath,
            data.labelMap,
            data.labels ?? LabelAccess.none("validation"),
          );
          caseMetrics.push(
            evaluateOriginal(
              orig,
              refOrig,
              pm.source.dims,
              data.classes,
              o === FUSED_OUTPUT ? `${cs.id}/fused` : `${cs.id}/${m}`,
            ),
          );
        }
      }
    }
    if (dirs && !opts.quick && opts.config.images && rows.length) {
      writeFileSync(
        path.join(dirs.img, `${cs.id}.png`),
        montagePng(rows, { count: 4, scale: 2, classes: data.classes }),
      );
    }
    done++;
    opts.onProgress?.(done, cases.length, cs.id);
  }
  const perClassDice: Record<string, number> = {};
  perClass.forEach((
    v,
    k,
  ) => (perClassDice[data.classes[k + 1]] = v.length
    ? v.reduce((a, b) => a + b, 0) / v.length
    : NaN)
  );
  const finite = Object.values(perClassDice).filter((x) => Number.isFinite(x));
  const meanDice = finite.length ? finite.reduce((a, b) => a + b, 0) / finite.length : NaN;
  let summary: MetricsSummary | null = null;
  let table = `mean foreground Dice (preprocessed grid) ${meanDice.toFixed(4)}`;
  if (!opts.quick && caseMetrics.length && opts.outDir) {
    summary = summarise(caseMetrics);
    writeFileAtomicSync(
      path.join(opts.outDir, "metrics.json"),
      new TextEncoder().encode(metricsToJson({ cases: caseMetrics, summary }) + "\n"),
    );
    table = formatSummaryTable(summary, {
      rows: `prediction(s) (${cases.length} case(s) x predicted modalities)`,
    });
  }
  return { meanDice, perClassDice, summary, table };
}
