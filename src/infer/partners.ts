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
 * as validation does (`recentreOn` in src/train/validate.ts).
 *
 * @module
 */
import { existsSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import * as path from "node:path";
import { type Mat4, mul4, spacingOf, type Vec3 } from "../data/affine.ts";
import type { Volume } from "../data/cases.ts";
import { readNifti, writeNifti } from "../data/nifti.ts";
import type { PreparedData } from "../train/data.ts";
import { partnerSource } from "../train/validate.ts";
import { RunFolder } from "../train/run_folder.ts";
import { writeFileAtomic } from "../util/atomic_write.ts";

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

/** The folder of a run's stand-ins and the files of one modality's. */
export function partnerFiles(runDir: string, modality: string): { nifti: string; json: string } {
  const dir = new RunFolder(runDir).path("partners");
  return { nifti: path.join(dir, `${modality}.nii.gz`), json: path.join(dir, `${modality}.json`) };
}

/** Whether some case of the run's data (training or validation) lacks one of its modalities. */
export function isUnpaired(data: PreparedData): boolean {
  return [...data.labeled, ...data.unlabeled, ...data.validation].some((c) =>
    data.modalities.some((m) => c.volumes[m] === undefined)
  );
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

/**
 * Stores one stand-in per modality in <outDir>/partners/ when the run's data is unpaired (see
 * module doc); returns the NIfTI files written (none for paired data). `patch` is (D, H, W).
 */
export async function writePartners(
  outDir: string,
  data: PreparedData,
  patch: readonly number[],
): Promise<string[]> {
  if (!isUnpaired(data)) return [];
  const max = [0, 1, 2].map((a) => Math.max(PARTNER_MAX_VOXELS[a], patch[2 - a]));
  await mkdir(new RunFolder(outDir).path("partners"), { recursive: true });
  const written: string[] = [];
  for (const m of data.modalities) {
    const src = partnerSource(data, m);
    if (!src) continue;
    const id = [...data.labeled, ...data.unlabeled].find((c) => c.volumes[m] === src)!.id;
    const { volume, lo, hi } = cropCentre(src, max);
    const files = partnerFiles(outDir, m);
    await writeNifti(files.nifti, volume, {
      datatype: "float32",
      descrip: `comodal stand-in ${m}`,
    });
    const info: PartnerInfo = {
      version: 1,
      modality: m,
      case: id,
      dims: volume.dims,
      affine: volume.affine,
      padValue: volume.padValue,
      cropLo: lo,
      cropHi: hi,
    };
    await writeFileAtomic(
      files.json,
      new TextEncoder().encode(JSON.stringify(info, null, 1) + "\n"),
    );
    written.push(files.nifti);
  }
  return written;
}

/** The stand-ins a run stores, by modality (modalities without one are absent). */
export async function loadPartners(
  runDir: string,
  modalities: readonly string[],
): Promise<Record<string, Volume>> {
  const out: Record<string, Volume> = {};
  for (const m of modalities) {
    const files = partnerFiles(runDir, m);
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
