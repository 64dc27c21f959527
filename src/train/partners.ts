/**
 * The training side of stand-in ("partner") volumes for unpaired runs (src/infer/partners.ts): at
 * the end of training on data where some case lacks a modality, the run folder stores, for each
 * modality, a centred crop of the preprocessed volume validation pairs such cases with
 * (`partnerSource`), so `predict` needs no training data.
 *
 * @module
 */
import { mkdir } from "node:fs/promises";
import { writeNifti } from "../data/nifti.ts";
import {
  cropCentre,
  PARTNER_MAX_VOXELS,
  partnerFiles,
  type PartnerInfo,
} from "../infer/partners.ts";
import { writeFileAtomic } from "../util/atomic_write.ts";
import type { PreparedData } from "./data.ts";
import type { RunFolder } from "./run_folder.ts";
import { partnerSource } from "./validate.ts";

/** Whether some case of the run's data (training or validation) lacks one of its modalities. */
export function isUnpaired(data: PreparedData): boolean {
  return [...data.labeled, ...data.unlabeled, ...data.validation].some((c) =>
    data.modalities.some((m) => c.volumes[m] === undefined)
  );
}

/**
 * Stores one stand-in per modality in the run folder's stand-ins when the run's data is unpaired
 * (see src/infer/partners.ts); returns the NIfTI files written (none for paired data). `patch` is (D, H, W).
 */
export async function writePartners(
  folder: RunFolder,
  data: PreparedData,
  patch: readonly number[],
): Promise<string[]> {
  if (!isUnpaired(data)) return [];
  const max = [0, 1, 2].map((a) => Math.max(PARTNER_MAX_VOXELS[a], patch[2 - a]));
  await mkdir(folder.path("partners"), { recursive: true });
  const written: string[] = [];
  for (const m of data.modalities) {
    const src = partnerSource(data, m);
    if (!src) continue;
    const id = [...data.labeled, ...data.unlabeled].find((c) => c.volumes[m] === src)!.id;
    const { volume, lo, hi } = cropCentre(src, max);
    const files = partnerFiles(folder.path("partners"), m);
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
