/**
 * Validation and final evaluation through the Predictor (src/infer/predictor.ts, the same inference
 * as `predict`): Gaussian-weighted sliding-window inference at training spacing on each validation
 * case, one pass per distinct modality grid (modalities of a misaligned case keep their own grids;
 * the others are resampled onto the grid being predicted).
 *
 * quick: foreground Dice on the preprocessed grid (used during training).
 * full: probabilities mapped back to each modality's original grid, predictions written as NIfTI,
 *       Dice/HD95/ASSD in mm against the original label files, PNG overlays of a few slices.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import type { LabeledCase, Volume } from "../data/cases.ts";
import { writeNifti } from "../data/nifti.ts";
import { LabelAccess } from "../data/label_access.ts";
import { loadCaseRecord } from "../data/prepared_cache.ts";
import { finalLabels, FUSED_OUTPUT, type Predictor } from "../infer/predictor.ts";
import {
  type CaseMetrics,
  evaluateCase,
  type MetricsSummary,
  metricsToJson,
  summarise,
} from "../metrics/metrics.ts";
import { formatSummaryTable } from "../metrics/evaluate_files.ts";
import { montagePng } from "../viz/overlay.ts";
import type { PreparedData } from "./data.ts";
import type { RunFolder } from "./run_folder.ts";
import { IGNORE_INDEX, storedIgnore } from "../util/ignore.ts";

export interface ValidationOptions {
  /** Evaluate at most this many cases (quick mode). */
  maxCases?: number;
  quick: boolean;
  /** Full mode: the run folder that gets the predictions, images and metrics. */
  run?: RunFolder;
  onProgress?: (done: number, total: number, label: string) => void;
  /** Sliding-window progress within the current case (windows done, total, case id). */
  onWindows?: (done: number, total: number, label: string) => void;
  /** Each case's probabilities on its preprocessed grids, as the Predictor gave them. */
  onProbabilities?: (id: string, probs: ReadonlyMap<number, Float32Array>) => void;
}

export interface ValidationResult {
  /** Mean foreground Dice over cases, classes and predicted modalities. */
  meanDice: number;
  perClassDice: Record<string, number>;
  summary: MetricsSummary | null;
  table: string;
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
 * Stand-ins for the modalities of `data` that some case lacks (unpaired data), as validation
 * pairs such cases: `partnerSource` of each modality that has one.
 */
export function validationPartners(data: PreparedData): Record<string, Volume> {
  const out: Record<string, Volume> = {};
  for (const m of data.modalities) {
    const v = partnerSource(data, m);
    if (v) out[m] = v;
  }
  return out;
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

/**
 * Validation of `predictor` (the model being trained, src/infer/predictor.ts) on the validation
 * cases of `data`: quick or full (see module doc).
 */
export async function evaluateValidation(
  predictor: Predictor,
  data: PreparedData,
  opts: ValidationOptions,
): Promise<ValidationResult> {
  const model = predictor.model;
  const config = predictor.config;
  const K = data.classes.length;
  const mods = data.modalities;
  const cases: LabeledCase[] = opts.quick
    ? data.validation.slice(0, opts.maxCases ?? data.validation.length)
    : data.validation;
  const perClass: number[][] = Array.from({ length: K - 1 }, () => []);
  const caseMetrics: CaseMetrics[] = [];
  const dirs = opts.run
    ? { pred: opts.run.path("predictions"), img: opts.run.path("images") }
    : null;
  if (dirs && !opts.quick) {
    mkdirSync(dirs.pred, { recursive: true });
    mkdirSync(dirs.img, { recursive: true });
  }
  let done = 0;
  for (const cs of cases) {
    const probs = await predictor.probabilities(cs, {
      // The quick validations during training go without mirroring (8x the windows); the final
      // evaluation mirrors as configured (nnU-Net's default).
      mirror: opts.quick ? false : config.validation.mirror,
      onWindows: opts.onWindows ? (d, t) => opts.onWindows!(d, t, cs.id) : undefined,
    });
    opts.onProbabilities?.(cs.id, probs);
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
      const pred = finalLabels(p, K, vol.dims, config);
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
        const orig = predictor.labelsOnOriginal(p, pm);
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
    if (dirs && !opts.quick && config.images && rows.length) {
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
  if (!opts.quick && caseMetrics.length && opts.run) {
    summary = summarise(caseMetrics);
    opts.run.writeText("metrics", metricsToJson({ cases: caseMetrics, summary }) + "\n");
    table = formatSummaryTable(summary, {
      rows: `prediction(s) (${cases.length} case(s) x predicted modalities)`,
    });
  }
  return { meanDice, perClassDice, summary, table };
}
