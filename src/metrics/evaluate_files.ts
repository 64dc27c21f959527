/**
 * Evaluation of predicted against reference label images stored as NIfTI files: pairing of files
 * (single files or folders), label maps, geometry checks, per-case metrics and a summary table.
 *
 * NIfTI voxels are stored x fastest; metrics take row-major volumes with the last axis fastest, so
 * an image of size [x, y, z] and spacing [sx, sy, sz] is passed as dims [z, y, x] and spacing
 * [sz, sy, sx] (the same voxels, no copy).
 *
 * @module
 */
import { basename, join } from "node:path";
import { parse as parseYaml } from "yaml";
import type { NiftiImage } from "../data/nifti.ts";
import { IMAGE_FILE_RE, readImage } from "../data/image_io.ts";
import { LabelAccess } from "../data/label_access.ts";
import {
  type CaseMetrics,
  type ClassSpec,
  evaluateCase,
  type HdMode,
  type MetricsSummary,
  summarise,
} from "./metrics.ts";

/** A named class: one or several label values. */
export interface NamedClass {
  name: string;
  labels: number[];
}

/** One prediction/reference pair. */
export interface CasePair {
  id: string;
  pred: string;
  ref: string;
}

/** Metrics of one case with the files they came from. */
export interface FileCaseMetrics extends CaseMetrics {
  id: string;
  pred: string;
  ref: string;
}

/** What evaluateNiftiCases returns (and the CLI writes as metrics.json). */
export interface EvaluationReport {
  settings: {
    percentile: number;
    hdMode: HdMode;
    classes: NamedClass[];
    /** Reference values whose voxels were left out of both images. */
    ignore: number[];
    units: "mm";
  };
  cases: FileCaseMetrics[];
  summary: MetricsSummary;
  /** Geometry differences that were tolerated, one line each. */
  warnings: string[];
}

/** Image files a folder pairs: NIfTI, MetaImage or NRRD (src/data/image_io.ts). */
const NIFTI_EXT = IMAGE_FILE_RE;
const LABEL_SUFFIXES = /_(manual|gt|label|labels|seg|segmentation|pred|prediction)$/i;

/**
 * Parses a label map: inline "LV=1,MYO=2,RV=3,heart=1+2+3" or JSON/YAML text of the form
 * { LV: 1, heart: [1, 2, 3] }. Values must be integers; names must be unique.
 */
export function parseLabelMap(text: string, source = "--labels"): NamedClass[] {
  const trimmed = text.trim();
  let entries: [string, unknown][];
  if (trimmed.startsWith("{") || trimmed.includes("\n") || /^[^=,]+:\s/.test(trimmed)) {
    let obj: unknown;
    try {
      obj = parseYaml(trimmed);
    } catch (e) {
      throw new Error(`Cannot read label map ${source}: ${(e as Error).message}`);
    }
    if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
      throw new Error(
        `Cannot read label map ${source}: expected a mapping of class name to label value(s)`,
      );
    }
    entries = Object.entries(obj as Record<string, unknown>);
  } else {
    entries = trimmed.split(",").filter((s) => s.trim() !== "").map((part) => {
      const eq = part.indexOf("=");
      if (eq <= 0) {
        throw new Error(`Cannot read label map ${source}: entry "${part}" is not name=value`);
      }
      const values = part.slice(eq + 1).split("+").map((v) => Number(v.trim()));
      return [part.slice(0, eq).trim(), values];
    });
  }
  if (entries.length === 0) throw new Error(`Cannot read label map ${source}: no classes`);
  const seen = new Set<string>();
  return entries.map(([name, v]) => {
    const labels = (Array.isArray(v) ? v : [v]).map(Number);
    if (labels.length === 0 || labels.some((l) => !Number.isInteger(l))) {
      throw new Error(
        `Cannot read label map ${source}: class "${name}" has value ${
          JSON.stringify(v)
        }, expected integer label(s)`,
      );
    }
    if (seen.has(name)) {
      throw new Error(`Cannot read label map ${source}: class "${name}" appears twice`);
    }
    seen.add(name);
    return { name, labels };
  });
}

/**
 * Splits the entries named "ignore" (any case) off a parsed label map: their values mark reference
 * voxels without annotation, as in nnU-Net's dataset.json or a manifest's labelMap.
 */
export function splitIgnore(map: NamedClass[]): { classes: NamedClass[]; ignore: number[] } {
  const isIgnore = (c: NamedClass) => c.name.toLowerCase() === "ignore";
  return {
    classes: map.filter((c) => !isIgnore(c)),
    ignore: map.filter(isIgnore).flatMap((c) => c.labels),
  };
}

/** Reads a label map from a file (.json/.yaml/.yml) or parses it inline. */
export async function loadLabelMap(arg: string): Promise<NamedClass[]> {
  if (/\.(json|ya?ml)$/i.test(arg)) {
    let text: string;
    try {
      text = await Deno.readTextFile(arg);
    } catch (e) {
      throw new Error(
        `Cannot read label map ${arg}: ${
          e instanceof Deno.errors.NotFound ? "file not found" : (e as Error).message
        }`,
      );
    }
    return parseLabelMap(text.trim().startsWith("{") ? text : text + "\n", arg);
  }
  return parseLabelMap(arg);
}

function caseId(file: string): string {
  return basename(file).replace(NIFTI_EXT, "");
}

async function isDir(path: string, what: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch (e) {
    throw new Error(
      `Cannot evaluate: ${what} ${path} ${
        e instanceof Deno.errors.NotFound ? "does not exist" : (e as Error).message
      }`,
    );
  }
}

async function niftiFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    // Hidden files include the macOS "._" copies that dataset archives often carry.
    if (e.isFile && NIFTI_EXT.test(e.name) && !e.name.startsWith(".")) out.push(e.name);
  }
  return out.sort();
}

/**
 * Pairs predictions with references. Two files give one case. Two folders pair files by case id:
 * the file name without .nii/.nii.gz, matched exactly first, then with suffixes such as _manual,
 * _gt, _seg or _pred removed. With `modality`, only predictions named <case>_<modality> are used
 * and matched by <case> (the per-modality files `predict` writes, against one shared label per
 * case as in the Decathlon, nnU-Net and BraTS layouts). Without `modality`, a reference <case> left
 * unmatched pairs with <case>_<modality> when that is its only prediction (unpaired data: one
 * modality per case). Every reference needs a prediction; extra predictions are returned in
 * `unmatched`.
 */
export async function pairCases(
  pred: string,
  ref: string,
  opts: { modality?: string } = {},
): Promise<{ pairs: CasePair[]; unmatched: string[] }> {
  const pd = await isDir(pred, "prediction"), rd = await isDir(ref, "reference");
  if (!pd && !rd) return { pairs: [{ id: caseId(ref), pred, ref }], unmatched: [] };
  if (pd !== rd) {
    throw new Error(
      `Cannot evaluate: --pred and --ref must both be files or both folders (${pred}, ${ref})`,
    );
  }
  const refs = await niftiFiles(ref), allPreds = await niftiFiles(pred);
  if (refs.length === 0) {
    throw new Error(
      `Cannot evaluate: reference folder ${ref} holds no image file (.nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr)`,
    );
  }
  const tag = opts.modality ? `_${opts.modality}`.toLowerCase() : "";
  const preds = tag ? allPreds.filter((p) => caseId(p).toLowerCase().endsWith(tag)) : allPreds;
  if (tag && preds.length === 0) {
    throw new Error(
      `Cannot evaluate: no prediction in ${pred} is named <case>_${opts.modality}.nii.gz`,
    );
  }
  const keyOf = (p: string) => (tag ? caseId(p).slice(0, -tag.length) : caseId(p));
  const byExact = new Map(preds.map((p) => [keyOf(p), p]));
  const byStripped = new Map<string, string[]>();
  for (const p of preds) {
    const k = keyOf(p).replace(LABEL_SUFFIXES, "");
    byStripped.set(k, [...(byStripped.get(k) ?? []), p]);
  }
  const used = new Set<string>();
  const pairs: CasePair[] = [];
  const missing: string[] = [];
  for (const r of refs) {
    const id = caseId(r);
    let p = byExact.get(id);
    if (p === undefined) {
      const cands = byStripped.get(id.replace(LABEL_SUFFIXES, "")) ?? [];
      if (cands.length > 1) {
        throw new Error(
          `Cannot evaluate: reference ${r} matches several predictions (${cands.join(", ")})`,
        );
      }
      p = cands[0];
    }
    if (p === undefined) {
      missing.push(r);
      continue;
    }
    if (used.has(p)) {
      throw new Error(`Cannot evaluate: prediction ${p} matches more than one reference`);
    }
    used.add(p);
    pairs.push({ id: id.replace(LABEL_SUFFIXES, ""), pred: join(pred, p), ref: join(ref, r) });
  }
  // A reference <case> with exactly one per-modality prediction <case>_<modality> (an unpaired
  // dataset such as AMOS: each case has one modality) pairs with it; several need --modality.
  for (const r of tag ? [] : [...missing]) {
    const stem = caseId(r).replace(LABEL_SUFFIXES, "");
    const cands = preds.filter((p) => !used.has(p) && caseId(p).startsWith(stem + "_"));
    if (cands.length !== 1) continue;
    used.add(cands[0]);
    missing.splice(missing.indexOf(r), 1);
    pairs.push({ id: stem, pred: join(pred, cands[0]), ref: join(ref, r) });
  }
  if (missing.length > 0) {
    // Per-modality predictions (<case>_<modality>) of references without a modality in the name.
    const stem = caseId(missing[0]).replace(LABEL_SUFFIXES, "");
    const perModality = tag ? [] : preds.filter((p) => caseId(p).startsWith(stem + "_"));
    const hint = perModality.length
      ? ` (predictions such as ${
        perModality.join(", ")
      } are per modality: choose one with --modality ${
        caseId(perModality[0]).slice(stem.length + 1)
      })`
      : "";
    throw new Error(
      `Cannot evaluate: no prediction in ${pred} for ${missing.length} reference file(s): ` +
        missing.slice(0, 5).join(", ") + (missing.length > 5 ? ", ..." : "") + hint,
    );
  }
  return { pairs, unmatched: preds.filter((p) => !used.has(p)) };
}

/** Label values of an image as integers; values further than 1e-3 from an integer are an error. */
export function toLabels(image: NiftiImage, path: string): Int32Array {
  const out = new Int32Array(image.data.length);
  for (let i = 0; i < out.length; i++) {
    const v = image.data[i];
    const r = Math.round(v);
    if (!(Math.abs(v - r) <= 1e-3)) {
      throw new Error(
        `Cannot use ${path} as a label image: voxel ${i} holds ${v}, not an integer label`,
      );
    }
    out[i] = r;
  }
  return out;
}

function geometryCheck(p: NiftiImage, r: NiftiImage, pair: CasePair, warnings: string[]): void {
  if (p.dims.some((d, i) => d !== r.dims[i])) {
    throw new Error(
      `Cannot evaluate case ${pair.id}: prediction ${pair.pred} is ${
        p.dims.join("x")
      }, reference ${pair.ref} is ` +
        `${r.dims.join("x")} (resample the prediction onto the reference grid first)`,
    );
  }
  const spacingOff = p.spacing.some((s, i) =>
    Math.abs(s - r.spacing[i]) > 1e-3 * Math.max(1, r.spacing[i])
  );
  if (spacingOff) {
    throw new Error(
      `Cannot evaluate case ${pair.id}: prediction spacing ${
        p.spacing.join("x")
      } differs from reference ` +
        `${r.spacing.join("x")} mm`,
    );
  }
  let maxDiff = 0;
  for (let i = 0; i < 12; i++) maxDiff = Math.max(maxDiff, Math.abs(p.affine[i] - r.affine[i]));
  if (maxDiff > 1e-2) {
    warnings.push(
      `${pair.id}: prediction and reference affines differ by up to ${
        maxDiff.toPrecision(3)
      } (same size and spacing; evaluated voxel by voxel)`,
    );
  }
}

/** Options of evaluateNiftiCases. */
export interface EvaluateNiftiOptions {
  /** Classes to evaluate; default every non-zero label found in the references. */
  classes?: NamedClass[];
  /**
   * Reference values that mark voxels without annotation (e.g. 255): those voxels are left out of
   * both the reference and the prediction.
   */
  ignore?: number[];
  percentile?: number;
  mode?: HdMode;
  onProgress?: (done: number, total: number, id: string) => void;
}

/** Reads each pair, checks geometry and label values, and computes per-class metrics and a summary. */
export async function evaluateNiftiCases(
  pairs: readonly CasePair[],
  opts: EvaluateNiftiOptions = {},
): Promise<EvaluationReport> {
  const percentile = opts.percentile ?? 95;
  const mode = opts.mode ?? "max";
  const warnings: string[] = [];
  const ignore = [...new Set(opts.ignore ?? [])];
  for (const v of ignore) {
    if (!Number.isInteger(v)) {
      throw new Error(`Cannot evaluate: ignore value ${v} is not an integer`);
    }
  }
  // Evaluation after prediction is where reference labels are read: exactly the pairs' references.
  const refs = new LabelAccess(pairs.map((p) => p.ref), "evaluation");
  let classes = opts.classes;
  if (classes === undefined) {
    // Classes default to the non-zero labels of the references (a first pass over them).
    const found = new Set<number>();
    for (const pair of pairs) {
      const ref = toLabels(await refs.read(pair.ref, { expectDims: 3 }), pair.ref);
      for (let i = 0; i < ref.length; i++) if (ref[i] !== 0) found.add(ref[i]);
    }
    for (const v of ignore) found.delete(v);
    classes = [...found].sort((a, b) => a - b).map((l) => ({ name: String(l), labels: [l] }));
  }
  const both = classes.find((c) => c.labels.some((l) => ignore.includes(l)));
  if (both) {
    throw new Error(
      `Cannot evaluate: class "${both.name}" uses label value ${
        both.labels.find((l) => ignore.includes(l))
      }, which is also ignored`,
    );
  }
  const known = new Set([...classes.flatMap((c) => c.labels), ...ignore]);
  const specs: ClassSpec[] = classes.map((c) => ({ name: c.name, labels: c.labels }));
  const cases: FileCaseMetrics[] = [];
  let done = 0;
  for (const pair of pairs) {
    const [pi, ri] = await Promise.all([
      readImage(pair.pred, { expectDims: 3 }),
      refs.read(pair.ref, { expectDims: 3 }),
    ]);
    geometryCheck(pi, ri, pair, warnings);
    const pred = toLabels(pi, pair.pred), ref = toLabels(ri, pair.ref);
    const extra = new Set<number>();
    for (const arr of [pred, ref]) {
      for (let i = 0; i < arr.length; i++) {
        if (arr[i] !== 0 && !known.has(arr[i])) extra.add(arr[i]);
      }
    }
    if (extra.size > 0) {
      warnings.push(
        `${pair.id}: label value(s) ${
          [...extra].sort((a, b) => a - b).join(", ")
        } belong to no evaluated class`,
      );
    }
    const [x, y, z] = ri.dims;
    const [sx, sy, sz] = ri.spacing;
    const m = evaluateCase(pred, ref, {
      dims: [z, y, x],
      spacing: [sz, sy, sx],
      classes: specs,
      id: pair.id,
      percentile,
      mode,
      ignore,
    });
    cases.push({ id: pair.id, pred: pair.pred, ref: pair.ref, classes: m.classes });
    opts.onProgress?.(++done, pairs.length, pair.id);
  }
  return {
    settings: { percentile, hdMode: mode, classes, ignore, units: "mm" },
    cases,
    summary: summarise(cases),
    warnings,
  };
}

function num(v: number, digits: number): string {
  return Number.isNaN(v) ? "-" : v === Infinity ? "inf" : v.toFixed(digits);
}

/** A plain-text table: one row per class and a mean row, Dice mean±std, HD95 and ASSD (mm). */
export function formatSummaryTable(
  summary: MetricsSummary,
  /** `rows`: what the summary counts (default "case(s)"). */
  opts: { percentile?: number; rows?: string } = {},
): string {
  const hdName = `HD${opts.percentile ?? 95} mm`;
  const header = ["class", "Dice", hdName, "ASSD mm", "non-finite"];
  const rows: string[][] = Object.entries(summary.perClass).map(([name, s]) => [
    name,
    `${num(s.dice.mean, 4)} ± ${num(s.dice.std, 4)}`,
    `${num(s.hd95.mean, 2)} ± ${num(s.hd95.std, 2)}`,
    `${num(s.assd.mean, 2)} ± ${num(s.assd.std, 2)}`,
    String(s.hd95.nonFinite),
  ]);
  rows.push([
    "mean",
    num(summary.mean.dice, 4),
    num(summary.mean.hd95, 2),
    num(summary.mean.assd, 2),
    String(summary.nonFinite.hd95),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [
    line(header),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...rows.slice(0, -1).map(line),
    widths.map((w) => "-".repeat(w)).join("  "),
    line(rows[rows.length - 1]),
    `${summary.cases} ${
      opts.rows ?? "case(s)"
    }; non-finite = cases where exactly one of prediction and reference is empty (left out of means)`,
  ].join("\n");
}
