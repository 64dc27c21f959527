/**
 * The dataset fingerprint: per modality the spacings and sizes after RAS reorientation and the
 * intensity statistics of foreground voxels (mean, std, 0.5/99.5 percentiles, range), the voxel
 * count of each class over the training labels, and the default target spacing (per-axis median,
 * with nnU-Net's rule for strong anisotropy).
 */
import type { Vec3 } from "./affine.ts";
import {
  classNames,
  labelValueMap,
  type Manifest,
  type ManifestCase,
  type ModalityKind,
  modalityKind,
} from "./manifest.ts";
import { Rng } from "./rng.ts";
import { LabelAccess } from "./label_access.ts";
import type { ProgressFn } from "./progress.ts";
import { type ImageCache, labelRefFor, readRasImage, readRasLabels } from "./case_reader.ts";

export interface ModalityStats {
  kind: ModalityKind;
  /** Per-case spacings [x, y, z] after RAS reorientation. */
  spacings: Vec3[];
  sizes: Vec3[];
  /** Statistics of foreground voxels (labelled > 0; body voxels where no label exists). */
  mean: number;
  std: number;
  p005: number;
  p995: number;
  min: number;
  max: number;
}

export interface Fingerprint {
  task: string;
  modalities: string[];
  classes: string[];
  /** Voxel counts per class (index order) over the training labels. */
  classVoxels: number[];
  perModality: Record<string, ModalityStats>;
  /** Default target spacing: per-axis median over training images of all modalities (nnU-Net rule for anisotropy). */
  medianSpacing: Vec3;
  targetSpacing: Vec3;
  cases: number;
}

export interface FingerprintOptions {
  onProgress?: ProgressFn;
  /** Which splits feed the statistics (default ["train"]). */
  splits?: ManifestCase["split"][];
  nonFinite?: "error" | "zero";
  /** Seed for the voxel subsample used for percentiles. */
  seed?: number;
  cache?: ImageCache;
  /** The label files it may open (default: those of every case marked labeled). */
  labels?: LabelAccess;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) >> 1] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

function percentile(sorted: Float32Array | number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos), hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** 1 where a voxel counts as foreground: labelled > 0 (and not ignored), else body voxels. */
function foregroundFlags(
  d: Float32Array,
  mask: Uint8Array | Int16Array | null,
  k: number,
  airCut: number,
): { flags: Uint8Array; count: number } {
  const flags = new Uint8Array(d.length);
  let count = 0;
  if (mask) {
    for (let i = 0; i < d.length; i++) {
      const v = mask[i];
      if (v > 0 && v < k) {
        flags[i] = 1;
        count++;
      }
    }
  } else {
    for (let i = 0; i < d.length; i++) {
      const v = d[i];
      if (v !== 0 && v > airCut) {
        flags[i] = 1;
        count++;
      }
    }
  }
  return { flags, count };
}

/**
 * Dataset statistics: spacings and sizes per modality, foreground intensity statistics, class
 * voxel counts, and the default target spacing.
 */
export async function fingerprint(
  manifest: Manifest,
  opts: FingerprintOptions = {},
): Promise<Fingerprint> {
  const splits = opts.splits ?? ["train"];
  let cases = manifest.cases.filter((c) => splits.includes(c.split));
  if (cases.length === 0) cases = manifest.cases;
  // A case whose labels are not allowed counts as unlabeled (its files are never opened).
  const labels = opts.labels ?? LabelAccess.forManifest(manifest);
  cases = cases.map((c) => labels.view(c));
  const names = classNames(manifest);
  const map = labelValueMap(manifest);
  const classVoxels = new Array<number>(names.length).fill(0);
  const samples: Record<string, number[]> = {};
  const perModality: Record<string, ModalityStats> = {};
  for (const m of manifest.modalities) {
    samples[m] = [];
    perModality[m] = {
      kind: modalityKind(manifest, m),
      spacings: [],
      sizes: [],
      mean: 0,
      std: 1,
      p005: 0,
      p995: 0,
      min: Infinity,
      max: -Infinity,
    };
  }
  const rng = new Rng(opts.seed ?? 0, "fingerprint");
  const total = cases.reduce((s, c) => s + Object.keys(c.images).length, 0);
  let done = 0;
  for (const c of cases) {
    for (const [m, ref] of Object.entries(c.images)) {
      const prepared = await readRasImage(ref, {
        id: c.id,
        what: `images.${m}`,
        nonFinite: opts.nonFinite,
        cache: opts.cache,
      });
      const img = prepared.ras;
      const st = perModality[m];
      st.spacings.push(img.spacing);
      st.sizes.push(img.dims);
      const lref = c.labeled ? labelRefFor(c, m) : undefined;
      let mask: Uint8Array | Int16Array | null = null;
      if (lref) {
        mask = (await readRasLabels(lref, prepared, {
          id: c.id,
          what: `labels.${m}`,
          map,
          cache: opts.cache,
          labels,
        })).labels;
        // Count each label map once (a shared map would otherwise count per modality).
        if (c.labels?.[m] || m === Object.keys(c.images)[0]) {
          const k = classVoxels.length;
          for (let i = 0; i < mask.length; i++) {
            if (mask[i] >= 0 && mask[i] < k) classVoxels[mask[i]]++;
          }
        }
      }
      // Foreground voxels for intensity statistics: labelled > 0, else the body (non-zero; for CT
      // in Hounsfield units, denser than air).
      const d = img.data;
      let mn = Infinity, mx = -Infinity;
      for (let i = 0; i < d.length; i++) {
        const v = d[i];
        if (v < mn) mn = v;
        if (v > mx) mx = v;
      }
      if (mn < st.min) st.min = mn;
      if (mx > st.max) st.max = mx;
      const airCut = !mask && st.kind === "ct" && mn < -500 ? -500 : -Infinity;
      // Foreground flags once (one byte per voxel), then a systematic sample of up to 10000 values
      // with a random start.
      const { flags: fg, count: nFg } = foregroundFlags(d, mask, names.length, airCut);
      const take = Math.min(nFg, 10000);
      if (take > 0) {
        const step = nFg / take;
        let next = rng.uniform(0, step), k = 0;
        const out = samples[m];
        for (let i = 0; i < d.length; i++) {
          if (fg[i] === 0) continue;
          if (k >= next) {
            out.push(d[i]);
            next += step;
          }
          k++;
        }
      }
      opts.onProgress?.(++done, total, `fingerprint ${c.id} ${m}`);
    }
  }
  const allSp: Vec3[] = [];
  for (const m of manifest.modalities) {
    const st = perModality[m];
    allSp.push(...st.spacings);
    const s = Float32Array.from(samples[m]).sort();
    st.p005 = percentile(s, 0.005);
    st.p995 = percentile(s, 0.995);
    let mean = 0;
    for (const v of s) mean += v;
    mean /= Math.max(1, s.length);
    let v2 = 0;
    for (const v of s) v2 += (v - mean) ** 2;
    st.mean = s.length ? mean : 0;
    st.std = s.length > 1 ? Math.sqrt(v2 / s.length) : 1;
  }
  const med = [0, 1, 2].map((a) => median(allSp.map((s) => s[a]))) as Vec3;
  const target = [...med] as Vec3;
  // nnU-Net: with strong anisotropy, use the 10th percentile along the thick axis (not below the others).
  const worst = med.indexOf(Math.max(...med));
  const others = med.filter((_, i) => i !== worst);
  if (med[worst] > 3 * Math.max(...others)) {
    const p10 = percentile(allSp.map((s) => s[worst]).sort((a, b) => a - b), 0.1);
    target[worst] = Math.max(p10, Math.max(...others));
  }
  return {
    task: manifest.task,
    modalities: manifest.modalities,
    classes: names,
    classVoxels,
    perModality,
    medianSpacing: med,
    targetSpacing: target,
    cases: cases.length,
  };
}
