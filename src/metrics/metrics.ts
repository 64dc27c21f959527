/**
 * Segmentation metrics per class: Dice, HD95 and ASSD in millimetres, with defined values for empty
 * masks, and summaries over cases.
 *
 * Definitions (all distances between voxel centres, with the voxel spacing, in mm):
 * - Surfaces: foreground voxels with a background 6-neighbour (see surface.ts). d(a, B) is the
 *   distance from surface voxel a to the nearest surface voxel of B.
 * - Dice = 2|P ∩ R| / (|P| + |R|).
 * - HD95, mode "max" (default, as MONAI's `compute_hausdorff_distance(percentile=95)`): the larger of
 *   the two directed 95th percentiles, max(P95{d(p, R)}, P95{d(r, P)}). Mode "pooled" (as medpy's
 *   `hd95`): the 95th percentile of the union of both directed sets. Percentiles interpolate
 *   linearly between order statistics (NumPy's default): rank = q/100 * (n - 1).
 * - ASSD = mean of the union of both directed sets: (Σ d(p, R) + Σ d(r, P)) / (|∂P| + |∂R|).
 * - Empty masks: both empty -> Dice 1, HD95 0, ASSD 0. Exactly one empty -> Dice 0, HD95 and ASSD
 *   Infinity (not finite; summaries count them apart instead of averaging them).
 * - Ignored voxels (`ignore`: reference values such as 255 that carry no annotation) are left out
 *   of both the reference and the prediction: they count as background in both masks, so they add
 *   neither true nor false positives.
 *
 * Layout: label volumes are row-major with `dims = [n0, n1, n2]`, last axis fastest, and `spacing`
 * in the same axis order (for a NIfTI image with x fastest, pass dims [z, y, x] and spacing
 * [sz, sy, sx]).
 *
 * @module
 */
import type { Dims3, Spacing3 } from "./edt.ts";
import { surfaceDistances } from "./surface.ts";

export type { Dims3, Spacing3 } from "./edt.ts";

/** How HD95 combines the two directed distance sets. */
export type HdMode = "max" | "pooled";

/**
 * A class to evaluate: a single label value, or a named region made of several label values
 * (e.g. a tumour region that is the union of labels 1, 2 and 3).
 */
export type ClassSpec = number | { name: string; labels: readonly number[] };

/** The values of one class in one case. */
export interface ClassMetrics {
  dice: number;
  /**
   * Hausdorff distance at the requested percentile (95 unless evaluateCase was given another), mm;
   * Infinity when exactly one of the masks is empty.
   */
  hd95: number;
  /** mm; Infinity when exactly one of the masks is empty. */
  assd: number;
  predVoxels: number;
  refVoxels: number;
}

/** All classes of one case, keyed by class name (the label value as a string for plain labels). */
export interface CaseMetrics {
  id?: string;
  classes: Record<string, ClassMetrics>;
}

/** Options shared by the distance metrics. */
export interface DistanceOptions {
  dims: Dims3;
  spacing: Spacing3;
  /** Label value that makes the mask (default 1, so 0/1 masks work as they are). */
  label?: number;
  /** Percentile for the Hausdorff distance (default 95). */
  percentile?: number;
  /** How the two directed sets combine for HD (default "max"). */
  mode?: HdMode;
}

/**
 * The q-th percentile (0..100) of values, interpolating linearly between order statistics
 * (NumPy's default). Sorts a copy. Returns NaN for an empty list.
 */
export function percentile(values: ArrayLike<number>, q: number): number {
  const n = values.length;
  if (n === 0) return NaN;
  if (!(q >= 0 && q <= 100)) throw new Error(`Cannot compute percentile ${q}: expected 0..100`);
  const sorted = Float64Array.from(values).sort();
  const rank = (q / 100) * (n - 1);
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, n - 1);
  const t = rank - lo;
  return sorted[lo] + (sorted[hi] - sorted[lo]) * t;
}

function mean(values: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i];
  return s / values.length;
}

function labelMask(labels: ArrayLike<number>, spec: ClassSpec): Uint8Array {
  const out = new Uint8Array(labels.length);
  if (typeof spec === "number") {
    for (let i = 0; i < labels.length; i++) out[i] = labels[i] === spec ? 1 : 0;
  } else {
    const set = new Set(spec.labels);
    for (let i = 0; i < labels.length; i++) out[i] = set.has(labels[i]) ? 1 : 0;
  }
  return out;
}

function toMask(a: ArrayLike<number>, label: number): Uint8Array {
  return labelMask(a, label);
}

/**
 * Dice per label. Label volumes (any integer array) are compared label by label; both empty gives
 * 1. Returns one value per entry of `labels`, in order.
 */
export function dice(
  pred: ArrayLike<number>,
  ref: ArrayLike<number>,
  opts: { labels: readonly ClassSpec[] },
): number[] {
  if (pred.length !== ref.length) {
    throw new Error(
      `Cannot compute Dice: prediction has ${pred.length} voxels, reference ${ref.length}`,
    );
  }
  return opts.labels.map((spec) => diceOfMasks(labelMask(pred, spec), labelMask(ref, spec)));
}

function diceOfMasks(p: Uint8Array, r: Uint8Array): number {
  let inter = 0, sp = 0, sr = 0;
  for (let i = 0; i < p.length; i++) {
    sp += p[i];
    sr += r[i];
    inter += p[i] & r[i];
  }
  return sp + sr === 0 ? 1 : (2 * inter) / (sp + sr);
}

function hdFrom(
  predToRef: Float64Array,
  refToPred: Float64Array,
  q: number,
  mode: HdMode,
): number {
  if (predToRef.length === 0 && refToPred.length === 0) return 0;
  if (predToRef.length === 0 || refToPred.length === 0) return Infinity;
  if (mode === "pooled") {
    const all = new Float64Array(predToRef.length + refToPred.length);
    all.set(predToRef);
    all.set(refToPred, predToRef.length);
    return percentile(all, q);
  }
  return Math.max(percentile(predToRef, q), percentile(refToPred, q));
}

function assdFrom(predToRef: Float64Array, refToPred: Float64Array): number {
  if (predToRef.length === 0 && refToPred.length === 0) return 0;
  if (predToRef.length === 0 || refToPred.length === 0) return Infinity;
  let s = 0;
  for (const v of predToRef) s += v;
  for (const v of refToPred) s += v;
  return s / (predToRef.length + refToPred.length);
}

/**
 * Hausdorff distance at a percentile (HD95 by default) in mm between the masks of one label.
 * Inputs are label volumes (or 0/1 masks) masked at `label`.
 */
export function hd95(
  pred: ArrayLike<number>,
  ref: ArrayLike<number>,
  opts: DistanceOptions,
): number {
  const label = opts.label ?? 1;
  const d = surfaceDistances(toMask(pred, label), toMask(ref, label), opts);
  return hdFrom(d.predToRef, d.refToPred, opts.percentile ?? 95, opts.mode ?? "max");
}

/** Average symmetric surface distance in mm between the masks of one label (see hd95 for inputs). */
export function assd(
  pred: ArrayLike<number>,
  ref: ArrayLike<number>,
  opts: DistanceOptions,
): number {
  const label = opts.label ?? 1;
  const d = surfaceDistances(toMask(pred, label), toMask(ref, label), opts);
  return assdFrom(d.predToRef, d.refToPred);
}

/** Name under which a class appears in results. */
export function className(spec: ClassSpec): string {
  return typeof spec === "number" ? String(spec) : spec.name;
}

/** Voxel counts, overlap and the bounding box (of both masks) of one class. */
interface ClassStat {
  pred: number;
  ref: number;
  inter: number;
  lo: [number, number, number];
  hi: [number, number, number];
}

/**
 * One pass over both label volumes for all classes: counts, intersections and bounding boxes.
 * Background voxels (label 0 in both) cost one comparison, unless a class includes label 0.
 */
function classStats(
  pred: ArrayLike<number>,
  ref: ArrayLike<number>,
  specs: readonly ClassSpec[],
  dims: Dims3,
): ClassStat[] {
  const [n0, n1, n2] = dims;
  const stats: ClassStat[] = specs.map(() => ({
    pred: 0,
    ref: 0,
    inter: 0,
    lo: [n0, n1, n2],
    hi: [0, 0, 0],
  }));
  const byLabel = new Map<number, number[]>();
  specs.forEach((spec, c) => {
    for (const l of typeof spec === "number" ? [spec] : new Set(spec.labels)) {
      byLabel.set(l, [...(byLabel.get(l) ?? []), c]);
    }
  });
  const NONE: number[] = [];
  const zeroClasses = byLabel.get(0) ?? NONE;
  const skipZero = zeroClasses.length === 0;
  const grow = (st: ClassStat, i0: number, i1: number, i2: number) => {
    if (i0 < st.lo[0]) st.lo[0] = i0;
    if (i0 >= st.hi[0]) st.hi[0] = i0 + 1;
    if (i1 < st.lo[1]) st.lo[1] = i1;
    if (i1 >= st.hi[1]) st.hi[1] = i1 + 1;
    if (i2 < st.lo[2]) st.lo[2] = i2;
    if (i2 >= st.hi[2]) st.hi[2] = i2 + 1;
  };
  let i = 0;
  for (let i0 = 0; i0 < n0; i0++) {
    for (let i1 = 0; i1 < n1; i1++) {
      for (let i2 = 0; i2 < n2; i2++, i++) {
        const pv = pred[i], rv = ref[i];
        if (skipZero && pv === 0 && rv === 0) continue;
        const cp = byLabel.get(pv) ?? NONE;
        const cr = pv === rv ? cp : (byLabel.get(rv) ?? NONE);
        for (const c of cp) {
          const st = stats[c];
          st.pred++;
          grow(st, i0, i1, i2);
          if (cr === cp || cr.includes(c)) st.inter++;
        }
        for (const c of cr) {
          const st = stats[c];
          st.ref++;
          grow(st, i0, i1, i2);
        }
      }
    }
  }
  return stats;
}

/** The 0/1 mask of a class inside the box of `st`. */
function cropMask(
  labels: ArrayLike<number>,
  spec: ClassSpec,
  dims: Dims3,
  st: ClassStat,
): Uint8Array {
  const [, n1, n2] = dims;
  const c0 = st.hi[0] - st.lo[0], c1 = st.hi[1] - st.lo[1], c2 = st.hi[2] - st.lo[2];
  const out = new Uint8Array(c0 * c1 * c2);
  const single = typeof spec === "number"
    ? spec
    : spec.labels.length === 1
    ? spec.labels[0]
    : undefined;
  const set = typeof spec === "number" ? undefined : new Set(spec.labels);
  let o = 0;
  for (let i0 = 0; i0 < c0; i0++) {
    for (let i1 = 0; i1 < c1; i1++) {
      const src = ((i0 + st.lo[0]) * n1 + i1 + st.lo[1]) * n2 + st.lo[2];
      if (single !== undefined) {
        for (let i2 = 0; i2 < c2; i2++) out[o++] = labels[src + i2] === single ? 1 : 0;
      } else {
        for (let i2 = 0; i2 < c2; i2++) out[o++] = set!.has(labels[src + i2]) ? 1 : 0;
      }
    }
  }
  return out;
}

/** Options of evaluateCase. */
export interface EvaluateCaseOptions {
  dims: Dims3;
  spacing: Spacing3;
  /** Classes to evaluate (background is normally left out). */
  classes: readonly ClassSpec[];
  /** Names for plain label classes, e.g. { 1: "LV" }; named regions keep their own name. */
  names?: Readonly<Record<number, string>>;
  id?: string;
  percentile?: number;
  mode?: HdMode;
  /**
   * Reference values whose voxels carry no annotation (e.g. 255 in a file, or IGNORE_INDEX for a
   * task's "ignore" label): those voxels are excluded from both the reference and the prediction.
   */
  ignore?: readonly number[];
}

/**
 * Copies of pred and ref in which every voxel whose reference value is in `ignore` holds a value
 * that belongs to no class (so it is background in every mask). Returns the inputs unchanged when
 * nothing is ignored.
 */
export function excludeIgnored(
  pred: ArrayLike<number>,
  ref: ArrayLike<number>,
  ignore: readonly number[] | undefined,
  classes: readonly ClassSpec[],
): { pred: ArrayLike<number>; ref: ArrayLike<number>; ignored: number } {
  if (!ignore || ignore.length === 0) return { pred, ref, ignored: 0 };
  const used = new Set<number>();
  for (const spec of classes) {
    for (const l of typeof spec === "number" ? [spec] : spec.labels) used.add(l);
  }
  for (const v of ignore) {
    if (used.has(v)) {
      throw new Error(`Cannot evaluate: label value ${v} is both ignored and part of a class`);
    }
  }
  let fill = 0;
  while (used.has(fill)) fill--;
  // One pass; the copies are made at the first ignored voxel (typed-array copies, not iteration).
  // One ignored value (the usual case) is a plain comparison per voxel, not a Set lookup.
  const skip = new Set(ignore);
  const only = ignore.length === 1 ? ignore[0] : undefined;
  let p: Int32Array | null = null, r: Int32Array | null = null;
  let ignored = 0;
  for (let i = 0; i < ref.length; i++) {
    const v = ref[i];
    if (only !== undefined ? v !== only : !skip.has(v)) continue;
    if (p === null || r === null) {
      p = new Int32Array(pred);
      r = new Int32Array(ref);
    }
    p[i] = fill;
    r[i] = fill;
    ignored++;
  }
  return p && r ? { pred: p, ref: r, ignored } : { pred, ref, ignored: 0 };
}

/** Dice, HD95 and ASSD for every class of one case (one surface pass per class). */
export function evaluateCase(
  pred: ArrayLike<number>,
  ref: ArrayLike<number>,
  opts: EvaluateCaseOptions,
): CaseMetrics {
  const { dims, spacing } = opts;
  const total = dims[0] * dims[1] * dims[2];
  if (pred.length !== total || ref.length !== total) {
    throw new Error(
      `Cannot evaluate case${
        opts.id ? ` ${opts.id}` : ""
      }: prediction has ${pred.length} voxels and reference ` +
        `${ref.length}, dims ${dims.join("x")} need ${total}`,
    );
  }
  const q = opts.percentile ?? 95;
  const mode = opts.mode ?? "max";
  const names = opts.classes.map((spec) =>
    typeof spec === "number" ? (opts.names?.[spec] ?? String(spec)) : spec.name
  );
  names.forEach((n, i) => {
    if (names.indexOf(n) !== i) {
      throw new Error(`Cannot evaluate case: class name "${n}" appears twice`);
    }
  });
  ({ pred, ref } = excludeIgnored(pred, ref, opts.ignore, opts.classes));
  const stats = classStats(pred, ref, opts.classes, dims);
  const classes: Record<string, ClassMetrics> = {};
  opts.classes.forEach((spec, c) => {
    const st = stats[c];
    const base = { predVoxels: st.pred, refVoxels: st.ref };
    if (st.pred === 0 || st.ref === 0) {
      const both = st.pred === 0 && st.ref === 0;
      classes[names[c]] = {
        dice: both ? 1 : 0,
        hd95: both ? 0 : Infinity,
        assd: both ? 0 : Infinity,
        ...base,
      };
      return;
    }
    // Distances on the class's bounding box only (exact: see surface.ts).
    const cdims: Dims3 = [st.hi[0] - st.lo[0], st.hi[1] - st.lo[1], st.hi[2] - st.lo[2]];
    const p = cropMask(pred, spec, dims, st);
    const r = cropMask(ref, spec, dims, st);
    const d = surfaceDistances(p, r, { dims: cdims, spacing });
    classes[names[c]] = {
      dice: (2 * st.inter) / (st.pred + st.ref),
      hd95: hdFrom(d.predToRef, d.refToPred, q, mode),
      assd: assdFrom(d.predToRef, d.refToPred),
      ...base,
    };
  });
  return opts.id === undefined ? { classes } : { id: opts.id, classes };
}

/** Statistics of one metric of one class over cases. */
export interface MetricStat {
  /** Mean of the finite values (NaN when there are none). */
  mean: number;
  /** Population standard deviation of the finite values (NaN when there are none). */
  std: number;
  median: number;
  /** Number of finite values. */
  n: number;
  /** Number of values that were not finite (one mask empty), left out of mean/std/median. */
  nonFinite: number;
}

/** Per-class and overall summary over cases. */
export interface MetricsSummary {
  cases: number;
  perClass: Record<string, { dice: MetricStat; hd95: MetricStat; assd: MetricStat }>;
  /** Mean over classes of the per-class means (classes whose mean is NaN are left out). */
  mean: { dice: number; hd95: number; assd: number };
  /** Non-finite values over all classes and cases. */
  nonFinite: { hd95: number; assd: number };
}

function stat(values: number[]): MetricStat {
  const finite = values.filter((v) => Number.isFinite(v));
  const n = finite.length;
  if (n === 0) return { mean: NaN, std: NaN, median: NaN, n: 0, nonFinite: values.length };
  const m = mean(finite);
  let v = 0;
  for (const x of finite) v += (x - m) * (x - m);
  return {
    mean: m,
    std: Math.sqrt(v / n),
    median: percentile(finite, 50),
    n,
    nonFinite: values.length - n,
  };
}

/**
 * Summarises cases: for each class, mean/std/median of the finite values and the count of
 * non-finite ones; then the mean over classes. Classes are taken in order of first appearance.
 */
export function summarise(cases: readonly CaseMetrics[]): MetricsSummary {
  const names: string[] = [];
  for (const c of cases) {
    for (const k of Object.keys(c.classes)) if (!names.includes(k)) names.push(k);
  }
  const perClass: MetricsSummary["perClass"] = {};
  const nonFinite = { hd95: 0, assd: 0 };
  for (const name of names) {
    const rows = cases.map((c) => c.classes[name]).filter((r): r is ClassMetrics =>
      r !== undefined
    );
    const s = {
      dice: stat(rows.map((r) => r.dice)),
      hd95: stat(rows.map((r) => r.hd95)),
      assd: stat(rows.map((r) => r.assd)),
    };
    nonFinite.hd95 += s.hd95.nonFinite;
    nonFinite.assd += s.assd.nonFinite;
    perClass[name] = s;
  }
  const over = (key: "dice" | "hd95" | "assd") => {
    const ms = names.map((n) => perClass[n][key].mean).filter((v) => !Number.isNaN(v));
    return ms.length === 0 ? NaN : mean(ms);
  };
  return {
    cases: cases.length,
    perClass,
    mean: { dice: over("dice"), hd95: over("hd95"), assd: over("assd") },
    nonFinite,
  };
}

/**
 * JSON text for metrics with non-finite numbers kept readable: Infinity becomes the string
 * "Infinity" and NaN becomes null (plain JSON.stringify would turn both into null).
 */
export function metricsToJson(value: unknown): string {
  return JSON.stringify(
    value,
    (
      _k,
      v,
    ) => (typeof v === "number" && !Number.isFinite(v)
      ? (Number.isNaN(v) ? null : (v > 0 ? "Infinity" : "-Infinity"))
      : v),
    2,
  );
}
