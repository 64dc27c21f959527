/**
 * The ignore label: voxels that carry no annotation (a file value a manifest's `labelMap` sends to
 * "ignore", nnU-Net's ignore label, a modality without a label map in a labeled patch, a
 * pseudo-label below the confidence threshold). They are left out of every loss (cross-entropy and
 * the soft Dice sums, with exactly zero gradient), of the sampler's foreground picks and of every
 * metric.
 * @module
 */

/** Class index of ignored voxels, everywhere labels are class indices (patches, losses, metrics). */
export const IGNORE_INDEX = -100;

/**
 * How preprocessed label files (`cases/<id>_<mod>.lab`) store IGNORE_INDEX: 255 in Uint8 files
 * (at most 255 classes), -1 in Int16 ones.
 */
export function storedIgnore(labels: Uint8Array | Int16Array): number {
  return labels instanceof Uint8Array ? 255 : -1;
}
