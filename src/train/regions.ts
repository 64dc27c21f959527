/**
 * Region-based training, as nnU-Net trains BraTS: the network predicts overlapping regions (whole
 * tumour, tumour core, enhancing tumour) as independent sigmoid outputs instead of exclusive
 * classes, each trained with its own binary cross-entropy + soft Dice. Predictions are turned back
 * into the class map: a voxel takes the innermost region it lies in.
 *
 * Regions are a config key (`regions`): "auto" (the default: the data's own regions, from an
 * nnU-Net v2 dataset.json that defines them; BraTS's three when the classes are BraTS's; else none), "none", or a mapping name -> classes (names or indices), e.g.
 * `--set 'regions={WT: [necrotic_core, edema, enhancing_tumour], TC: [necrotic_core, enhancing_tumour], ET: [enhancing_tumour]}'`.
 * A training run stores the resolved regions in config.json, so prediction uses the same outputs.
 *
 * @module
 */
import { add, concat, mulScalar, slice, type Tensor, tensor } from "../engine.ts";
import { IGNORE_INDEX } from "../util/ignore.ts";
import { supervisedLoss } from "../losses/supervised.ts";

/** The config value: "auto", "none", or region name -> class names or indices. */
export type RegionsSetting = "auto" | "none" | Record<string, (string | number)[]>;

/** Resolved regions: each a set of class indices (1..K-1), ordered from the largest to the innermost. */
export interface Regions {
  names: string[];
  classes: number[][];
}

const BRATS = ["necrotic_core", "edema", "enhancing_tumour"];

/** BraTS's regions for its class names (background first), or null. */
function bratsRegions(classes: readonly string[]): Record<string, string[]> | null {
  const fg = classes.slice(1);
  if (fg.length !== 3 || !BRATS.every((n) => fg.includes(n))) return null;
  return {
    whole_tumour: [...BRATS],
    tumour_core: ["necrotic_core", "enhancing_tumour"],
    enhancing_tumour: ["enhancing_tumour"],
  };
}

/**
 * Resolves a regions setting against the run's class names (background first); null = no regions.
 * Errors name the region and the unknown class. Regions must be nested (each inside the previous
 * one once sorted by size), as BraTS's are: then every class has one innermost region.
 */
export function resolveRegions(
  setting: RegionsSetting,
  classes: readonly string[],
  dataRegions?: Record<string, string[]>,
): Regions | null {
  const spec = setting === "none"
    ? null
    : setting === "auto"
    ? dataRegions ?? bratsRegions(classes)
    : setting;
  if (!spec) return null;
  const entries = Object.entries(spec).map(([name, list]) => {
    if (!Array.isArray(list) || list.length === 0) {
      throw new Error(`regions.${name}: expected a non-empty list of classes`);
    }
    const idx = list.map((c) => {
      const k = typeof c === "number" ? c : classes.indexOf(c);
      if (!Number.isInteger(k) || k < 1 || k >= classes.length) {
        throw new Error(
          `regions.${name}: "${c}" is not a foreground class (${
            classes.slice(1).join(", ")
          } or 1..${classes.length - 1})`,
        );
      }
      return k;
    });
    return { name, classes: [...new Set(idx)].sort((a, b) => a - b) };
  });
  if (entries.length === 0) throw new Error("regions: give at least one region, or none");
  entries.sort((a, b) => b.classes.length - a.classes.length);
  for (let i = 1; i < entries.length; i++) {
    const outer = new Set(entries[i - 1].classes);
    if (
      !entries[i].classes.every((c) => outer.has(c)) ||
      entries[i].classes.length === entries[i - 1].classes.length
    ) {
      throw new Error(
        `regions: ${entries[i].name} is not strictly inside ${
          entries[i - 1].name
        }; regions must be nested (as BraTS's whole tumour > core > enhancing)`,
      );
    }
  }
  return { names: entries.map((e) => e.name), classes: entries.map((e) => e.classes) };
}

/** The config value a run stores: the resolved regions by class name, or "none". */
export function regionsToSetting(r: Regions | null, classes: readonly string[]): RegionsSetting {
  if (!r) return "none";
  return Object.fromEntries(r.names.map((n, i) => [n, r.classes[i].map((k) => classes[k])]));
}

/** Labels (class indices, IGNORE_INDEX kept) -> 0/1 membership of one region, as a tensor of `shape`. */
function regionLabels(
  src: Int32Array,
  shape: readonly number[],
  members: readonly number[],
): Tensor {
  const set = new Set(members);
  const out = new Int32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const v = src[i];
    out[i] = v === IGNORE_INDEX ? IGNORE_INDEX : set.has(v) ? 1 : 0;
  }
  return tensor(out, [...shape], { dtype: "i32" });
}

/**
 * Mean over regions of BCE + (1 - soft Dice) of region logits [B,R,...] against class labels: each
 * region is a two-class softmax over logits (0, z_r), which is the sigmoid of z_r, so its
 * cross-entropy is the binary one. Ignored voxels take no part.
 */
export function regionSupervisedLoss(
  logits: Tensor,
  labels: Tensor,
  regions: Regions,
): { loss: Tensor; ce: Tensor; dice: Tensor } {
  let loss: Tensor | null = null, ce: Tensor | null = null, dice: Tensor | null = null;
  const R = regions.classes.length;
  const src = labels.toArray() as Int32Array; // read from the backend once for every region
  regions.classes.forEach((members, r) => {
    const z = sliceChannel(logits, r);
    const two = concat([mulScalar(z, 0), z], 1);
    const s = supervisedLoss(two, regionLabels(src, labels.shape, members));
    loss = loss ? add(loss, s.loss) : s.loss;
    ce = ce ? add(ce, s.ce) : s.ce;
    dice = dice ? add(dice, s.dice) : s.dice;
  });
  return {
    loss: mulScalar(loss!, 1 / R),
    ce: mulScalar(ce!, 1 / R),
    dice: mulScalar(dice!, 1 / R),
  };
}

/** Channel c of [B,C,...] as [B,1,...]. */
function sliceChannel(t: Tensor, c: number): Tensor {
  return slice(t, 1, c, 1);
}

/** Class probabilities from region logits, for inference (src/infer/region_probabilities.ts). */
export { regionProbabilities } from "../infer/region_probabilities.ts";
