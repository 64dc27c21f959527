/**
 * Patch sampling (METHOD.md sections 4-5). A patch is a grid of `patchSize` = [d, h, w] voxels
 * (z, y, x; x fastest) centred on one physical point; every modality is resampled at the same
 * world positions (crop, augmentation and the grid change in one interpolation), so misaligned
 * modalities stay misaligned and aligned ones stay aligned. Points outside a volume take its pad
 * value (labels: background).
 *
 * Labeled patches are centred on a foreground voxel with probability `foregroundFraction`
 * (default 1/3, nnU-Net style), otherwise uniformly. Unlabeled patches are always uniform and the
 * unlabeled path only ever receives `UnlabeledCase` values, which carry no labels.
 */
import { apply4, fromLinear, inv4, type Mat3, type Mat4, mul3, mul4, type Vec3 } from "./affine.ts";
import {
  augmentIntensity,
  type AugmentOptions,
  drawMisalignment,
  drawSpatial,
  type MisalignOptions,
  NO_AUGMENT,
} from "./augment.ts";
import type { LabeledCase, UnlabeledCase, Volume } from "./cases.ts";
import { type IndexMap, sampleGrid } from "./geometry.ts";
import type { Rng } from "./rng.ts";
import { IGNORE_INDEX, storedIgnore } from "../util/ignore.ts";

export interface PatchSamplerOptions {
  /** [d, h, w] = voxels along z, y, x. */
  patchSize: readonly [number, number, number];
  /** Modalities in output order. */
  modalities: readonly string[];
  /** Probability that a labeled patch is centred on foreground (default 1/3). */
  foregroundFraction?: number;
  /** Augmentation settings, or false for none. */
  augment?: AugmentOptions | false;
  /** Misalignment simulation (off when absent). */
  misalign?: MisalignOptions | null;
}

export interface UnlabeledPatch {
  /** Case id per modality (modalities of unpaired data may come from different cases). */
  ids: Record<string, string>;
  images: Record<string, Float32Array>;
  /** World position (mm) of the patch centre per modality. */
  centres: Record<string, Vec3>;
}

export interface LabeledPatch extends UnlabeledPatch {
  /**
   * Class indices per modality; IGNORE_INDEX where the task's label map says "ignore" and
   * everywhere for a modality without a label map.
   */
  labels: Record<string, Int32Array>;
  /** Whether the centre was drawn on foreground. */
  forcedForeground: boolean;
}

interface Group {
  id: string;
  mods: string[];
  volumes: Readonly<Record<string, Volume>>;
  labels: Readonly<Record<string, Uint8Array | Int16Array>> | null;
  foreground: Readonly<Record<string, Int32Array[]>> | null;
}

function isCase(x: unknown): x is { id: string; volumes: unknown } {
  return typeof x === "object" && x !== null && "volumes" in x && "id" in x;
}

export class PatchSampler {
  readonly patchSize: readonly [number, number, number];
  readonly modalities: readonly string[];
  readonly foregroundFraction: number;
  readonly augment: AugmentOptions;
  readonly misalign: MisalignOptions | null;

  constructor(opts: PatchSamplerOptions) {
    if (
      opts.patchSize.length !== 3 || opts.patchSize.some((v) => !(Number.isInteger(v) && v >= 1))
    ) {
      throw new Error(
        `PatchSampler: patchSize must be three positive integers [d, h, w], got ${
          JSON.stringify(opts.patchSize)
        }`,
      );
    }
    if (opts.modalities.length === 0) throw new Error("PatchSampler: no modalities");
    this.patchSize = opts.patchSize;
    this.modalities = opts.modalities;
    this.foregroundFraction = opts.foregroundFraction ?? 1 / 3;
    this.augment = opts.augment === false ? NO_AUGMENT : (opts.augment ?? {});
    this.misalign = opts.misalign ?? null;
  }

  /** Voxels per modality patch. */
  get patchVoxels(): number {
    return this.patchSize[0] * this.patchSize[1] * this.patchSize[2];
  }

  /**
   * A labeled patch from one case (all modalities), or from one case per modality (unpaired data).
   * `forceForeground` overrides the random 1/3 draw.
   */
  sampleLabeled(
    source: LabeledCase | Readonly<Record<string, LabeledCase>>,
    rng: Rng,
    opts: { forceForeground?: boolean } = {},
  ): LabeledPatch {
    const groups = this.groups(
      source,
      (c: LabeledCase) => ({ labels: c.labels, foreground: c.foreground }),
    );
    const forced = opts.forceForeground ?? rng.chance(this.foregroundFraction);
    return this.sample(groups, rng, forced, true) as LabeledPatch;
  }

  /** An unlabeled patch (uniform centre). Only images are read; the type has no labels to read. */
  sampleUnlabeled(
    source: UnlabeledCase | Readonly<Record<string, UnlabeledCase>>,
    rng: Rng,
  ): UnlabeledPatch {
    const groups = this.groups(source, () => ({ labels: null, foreground: null }));
    const p = this.sample(groups, rng, false, false);
    return { ids: p.ids, images: p.images, centres: p.centres };
  }

  private groups<C extends { id: string; volumes: Readonly<Record<string, Volume>> }>(
    source: C | Readonly<Record<string, C>>,
    extra: (c: C) => { labels: Group["labels"]; foreground: Group["foreground"] },
  ): Group[] {
    const perMod: Record<string, C> = {};
    if (isCase(source)) { for (const m of this.modalities) perMod[m] = source as C; }
    else Object.assign(perMod, source);
    const byId = new Map<string, Group>();
    for (const m of this.modalities) {
      const c = perMod[m];
      if (!c) throw new Error(`PatchSampler: no case given for modality ${m}`);
      if (!c.volumes[m]) throw new Error(`PatchSampler: case ${c.id} has no ${m} volume`);
      let g = byId.get(c.id);
      if (!g) {
        // Only what extra() returns is kept; for unlabeled sampling that is nothing.
        g = { id: c.id, mods: [], volumes: c.volumes, ...extra(c) };
        byId.set(c.id, g);
      }
      g.mods.push(m);
    }
    return [...byId.values()];
  }

  private sample(groups: Group[], rng: Rng, forced: boolean, withLabels: boolean): LabeledPatch {
    const [d, h, w] = this.patchSize;
    const size: Vec3 = [w, h, d];
    const half = size.map((s) => (s - 1) / 2) as Vec3;
    const out: LabeledPatch = {
      ids: {},
      images: {},
      centres: {},
      labels: {},
      forcedForeground: false,
    };
    // One spatial transform for the whole patch (all modalities), drawn in the first group's frame.
    const first = groups[0].volumes[groups[0].mods[0]];
    const spatial = drawSpatial(rng, first.spacing, this.augment);
    let misMod: string | null = null;
    let mis: { rotation: Mat3; translation: Vec3 } | null = null;
    if (this.misalign && rng.chance(this.misalign.prob ?? 1)) {
      misMod = this.misalign.modality ?? this.modalities[rng.int(this.modalities.length)];
      if (!this.modalities.includes(misMod)) {
        throw new Error(
          `PatchSampler: misalignment modality ${misMod} is not one of ${
            this.modalities.join(", ")
          }`,
        );
      }
      mis = drawMisalignment(rng, this.misalign);
    }
    let anyForced = false;
    for (const g of groups) {
      // Primary modality: for a forced-foreground draw, one that has labels with foreground.
      let primary = g.mods[0];
      let centreIdx: Vec3 | null = null;
      if (forced && g.foreground) {
        const withFg = g.mods.filter((m) =>
          g.foreground![m]?.some((a, c) => c > 0 && a.length > 0)
        );
        if (withFg.length) {
          primary = withFg[rng.int(withFg.length)];
          const fg = g.foreground[primary];
          const classes = fg.map((a, c) => (c > 0 && a.length > 0 ? c : -1)).filter((c) => c > 0);
          const cls = classes[rng.int(classes.length)];
          const vox = fg[cls][rng.int(fg[cls].length)];
          const v = g.volumes[primary];
          const x = vox % v.dims[0],
            y = Math.floor(vox / v.dims[0]) % v.dims[1],
            z = Math.floor(vox / (v.dims[0] * v.dims[1]));
          // Keep the voxel inside the patch, anywhere in its central half, then move the patch
          // into the volume (as nnU-Net clips its foreground boxes): a patch centred on a voxel
          // near the border would otherwise be up to half padding.
          centreIdx = [x, y, z].map((p, a) => {
            const jitter = Math.floor(size[a] / 4);
            let lo = Math.round(p - half[a] + (jitter > 0 ? rng.int(2 * jitter + 1) - jitter : 0));
            const n = v.dims[a], s = size[a];
            lo = n >= s ? Math.min(Math.max(lo, 0), n - s) : Math.min(Math.max(lo, n - s), 0);
            return lo + half[a];
          }) as Vec3;
          anyForced = true;
        }
      }
      const pv = g.volumes[primary];
      if (!centreIdx) {
        centreIdx = [0, 1, 2].map((a) => {
          const n = pv.dims[a], s = size[a];
          // Inside the volume when it is larger than the patch; otherwise the volume lies inside the patch.
          const lo = n >= s ? rng.int(n - s + 1) : -rng.int(s - n + 1);
          return lo + half[a];
        }) as Vec3;
      }
      const centre = apply4(pv.affine, centreIdx);
      // Patch index -> world: T(centre) * D * S * diag(spacing) * T(-half), D = primary direction cosines.
      const sp = pv.spacing;
      const dir: Mat3 = [0, 1, 2].flatMap((r) =>
        [0, 1, 2].map((c) => pv.affine[r * 4 + c] / sp[c])
      );
      const lin = mul3(mul3(dir, spatial), [sp[0], 0, 0, 0, sp[1], 0, 0, 0, sp[2]]);
      const toWorld: Mat4 = mul4(fromLinear(lin, centre), [
        1,
        0,
        0,
        -half[0],
        0,
        1,
        0,
        -half[1],
        0,
        0,
        1,
        -half[2],
        0,
        0,
        0,
        1,
      ]);
      for (const m of g.mods) {
        const v = g.volumes[m];
        let world = toWorld;
        if (mis && m === misMod) {
          const rigid = fromLinear(
            mis.rotation,
            [0, 1, 2].map((i) =>
              centre[i] + mis!.translation[i] -
              (mis!.rotation[i * 3] * centre[0] + mis!.rotation[i * 3 + 1] * centre[1] +
                mis!.rotation[i * 3 + 2] * centre[2])
            ),
          );
          world = mul4(rigid, toWorld);
        }
        const map = mul4(inv4(v.affine), world).slice(0, 12);
        const img = new Float32Array(this.patchVoxels);
        extract(v.data, v.dims, size, map, "linear", v.padValue, img);
        augmentIntensity(img, rng, this.augment);
        out.images[m] = img;
        out.ids[m] = g.id;
        out.centres[m] = apply4(world, half);
        if (withLabels) {
          const lab = new Int32Array(this.patchVoxels);
          const src = g.labels?.[m];
          if (src) {
            // Nearest neighbour (the rotation/scaling included): an ignored voxel stays ignored,
            // never interpolated into a class.
            extract(src, v.dims, size, map, "nearest", 0, lab);
            const stored = storedIgnore(src);
            for (let i = 0; i < lab.length; i++) if (lab[i] === stored) lab[i] = IGNORE_INDEX;
          } else lab.fill(IGNORE_INDEX);
          out.labels[m] = lab;
        }
      }
    }
    out.forcedForeground = anyForced;
    return out;
  }
}

/**
 * Samples a patch: a plain copy (with padding) when the map is an integer translation, otherwise
 * interpolation through sampleGrid.
 */
export function extract(
  src: Float32Array | Uint8Array | Int16Array,
  dims: readonly number[],
  size: readonly number[],
  map: IndexMap,
  order: "linear" | "nearest",
  fill: number,
  out: Float32Array | Int32Array,
): void {
  const eps = 1e-6;
  const isId = Math.abs(map[0] - 1) < eps && Math.abs(map[5] - 1) < eps &&
    Math.abs(map[10] - 1) < eps &&
    Math.abs(map[1]) < eps && Math.abs(map[2]) < eps && Math.abs(map[4]) < eps &&
    Math.abs(map[6]) < eps &&
    Math.abs(map[8]) < eps && Math.abs(map[9]) < eps;
  const tx = Math.round(map[3]), ty = Math.round(map[7]), tz = Math.round(map[11]);
  if (
    isId && Math.abs(map[3] - tx) < eps && Math.abs(map[7] - ty) < eps &&
    Math.abs(map[11] - tz) < eps
  ) {
    const [nx, ny, nz] = dims;
    const [ox, oy, oz] = size;
    out.fill(fill);
    const x0 = Math.max(0, -tx), x1 = Math.min(ox, nx - tx);
    if (x1 <= x0) return;
    for (let z = 0; z < oz; z++) {
      const sz = z + tz;
      if (sz < 0 || sz >= nz) continue;
      for (let y = 0; y < oy; y++) {
        const sy = y + ty;
        if (sy < 0 || sy >= ny) continue;
        const s = (sz * ny + sy) * nx + tx;
        const o = (z * oy + y) * ox;
        out.set(src.subarray(s + x0, s + x1), o + x0);
      }
    }
    return;
  }
  sampleGrid(src, dims, size, map, { order, fill, out });
}
