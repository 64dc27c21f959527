/**
 * Stand-in ("partner") volumes for unpaired runs, so `predict` works on a case that lacks one of
 * the run's modalities (AMOS: a CT-only or MRI-only scan for a CT+MRI model) without the training
 * data.
 *
 * At the end of training, a run whose data had cases lacking a modality stores, for each modality,
 * the preprocessed volume validation pairs such cases with (`partnerSource`: the first training
 * case that has it), centre-cropped to at most `PARTNER_MAX_VOXELS` (x, y, z; never smaller than
 * the patch on an axis), as <run>/partners/<modality>.nii.gz (float32, normalised intensities,
 * preprocessed-grid affine) with <run>/partners/<modality>.json (source case, pad value, exact
 * affine). Paired runs store nothing. `predict` re-centres the stand-in on the case's grid exactly
 * as validation does (`recentreOn` in src/infer/predictor.ts). The training side (which volumes,
 * when) is src/train/partners.ts.
 *
 * @module
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import * as path from "node:path";
import { type Mat4, mul4, spacingOf, type Vec3 } from "../data/affine.ts";
import type { Volume } from "../data/cases.ts";
import { readNifti } from "../data/nifti.ts";

/** Largest stored stand-in, in voxels (x, y, z) of the preprocessed grid. */
export const PARTNER_MAX_VOXELS: Vec3 = [160, 160, 96];

/** Sidecar of a stored stand-in (<run>/partners/<modality>.json). */
export interface PartnerInfo {
  version: 1;
  modality: string;
  /** The training case the volume comes from. */
  case: string;
  dims: Vec3;
  /** Preprocessed grid voxel -> world (the stored NIfTI has it in float32). */
  affine: Mat4;
  padValue: number;
  /** Crop box in the training case's preprocessed volume: [lo, hi) per axis. */
  cropLo: Vec3;
  cropHi: Vec3;
}

/** The files of one modality's stand-in in a run's stand-in folder (RunFolder's "partners"). */
export function partnerFiles(dir: string, modality: string): { nifti: string; json: string } {
  return { nifti: path.join(dir, `${modality}.nii.gz`), json: path.join(dir, `${modality}.json`) };
}

/** A centred crop of `v` to at most `max` voxels per axis (x, y, z), with the matching affine. */
export function cropCentre(
  v: Volume,
  max: readonly number[],
): { volume: Volume; lo: Vec3; hi: Vec3 } {
  const lo = [0, 1, 2].map((a) => Math.max(0, Math.floor((v.dims[a] - max[a]) / 2))) as Vec3;
  const hi = [0, 1, 2].map((a) => lo[a] + Math.min(v.dims[a], max[a])) as Vec3;
  const dims = [hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]] as Vec3;
  const data = new Float32Array(dims[0] * dims[1] * dims[2]);
  let o = 0;
  for (let z = lo[2]; z < hi[2]; z++) {
    for (let y = lo[1]; y < hi[1]; y++) {
      const s = (z * v.dims[1] + y) * v.dims[0] + lo[0];
      data.set(v.data.subarray(s, s + dims[0]), o);
      o += dims[0];
    }
  }
  const affine = mul4(v.affine, [1, 0, 0, lo[0], 0, 1, 0, lo[1], 0, 0, 1, lo[2], 0, 0, 0, 1]);
  return {
    volume: { data, dims, spacing: spacingOf(affine), affine, padValue: v.padValue },
    lo,
    hi,
  };
}

/** The stand-ins a run stores, by modality (modalities without one are absent). */
export async function loadPartners(
  dir: string,
  modalities: readonly string[],
  runDir = path.dirname(dir),
): Promise<Record<string, Volume>> {
  const out: Record<string, Volume> = {};
  for (const m of modalities) {
    const files = partnerFiles(dir, m);
    if (!existsSync(files.nifti)) continue;
    const what = `Cannot load the stand-in ${m} volume of run ${runDir}`;
    let info: PartnerInfo;
    try {
      info = JSON.parse(await readFile(files.json, "utf8"));
    } catch (e) {
      throw new Error(`${what}: ${files.json} is missing or not JSON (${(e as Error).message})`);
    }
    const img = await readNifti(files.nifti, { expectDims: 3 });
    if (info.version !== 1 || img.dims.join() !== info.dims.join()) {
      throw new Error(
        `${what}: ${files.nifti} is ${img.dims.join("x")}, ${files.json} says ${
          info.dims?.join("x")
        }`,
      );
    }
    out[m] = {
      data: img.data,
      dims: [...info.dims] as Vec3,
      spacing: spacingOf(info.affine),
      affine: info.affine,
      padValue: info.padValue,
    };
  }
  return out;
}
