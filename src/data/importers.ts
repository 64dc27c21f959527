/**
 * Importers: build a Manifest from the common public dataset layouts. Each returns a manifest with
 * absolute paths (saveManifest writes them relative to the manifest file).
 *
 * - MS-CMRSeg 2019: patientN_{C0,LGE,T2}.nii.gz with patientN_{C0,LGE,T2}_manual.nii.gz labels,
 *   anywhere under the folder (values 200 myocardium, 500 LV blood pool, 600 RV).
 * - AMOS 2022: dataset.json (training/validation/test lists, labels "0".."15"), CT ids below 500
 *   and MRI ids from 500; CT and MRI come from different patients, so each case has one modality.
 * - Medical Segmentation Decathlon: dataset.json with "modality" and 4-D multi-channel images.
 * - nnU-Net raw (v2 "channel_names" and v1 "modality"): imagesTr/<case>_0000.nii.gz ... one file
 *   per channel, labelsTr/<case>.nii.gz; "file_ending" may also be .mha, .mhd, .nrrd or .nhdr.
 *
 * Wherever a layout names .nii.gz files, MetaImage and NRRD files of the same names are taken too.
 * - BraTS (brain tumour, 2018-2021 and 2023 naming): one folder per case,
 *   BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz (labels 1, 2, 4) or
 *   BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz (labels 1, 2, 3).
 */
import * as path from "node:path";
import { IMAGE_FILE_RE, stripImageExt } from "./image_io.ts";
import {
  assignSplits,
  type ImageRef,
  type Manifest,
  type ManifestCase,
  type SplitOptions,
} from "./manifest.ts";

export type ImportOptions = SplitOptions;

async function walk(dir: string, out: string[] = []): Promise<string[]> {
  let entries: Deno.DirEntry[];
  try {
    entries = [];
    for await (const e of Deno.readDir(dir)) entries.push(e);
  } catch (e) {
    throw new Error(
      `Cannot import ${dir}: ${
        e instanceof Deno.errors.NotFound ? "folder not found" : (e as Error).message
      }`,
    );
  }
  entries.sort((a, b) => a.name.localeCompare(b.name));
  for (const e of entries) {
    if (e.name.startsWith(".")) continue; // includes macOS "._" resource files
    const p = path.join(dir, e.name);
    if (e.isDirectory) await walk(p, out);
    else if (e.isFile || e.isSymlink) out.push(p);
  }
  return out;
}

/** Image files: NIfTI, MetaImage, NRRD (src/data/image_io.ts). */
const NII = IMAGE_FILE_RE;

async function readJson(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new Error(
      `Cannot import: ${file} ${
        e instanceof Deno.errors.NotFound ? "not found" : (e as Error).message
      }`,
    );
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      throw new Error("top level is not an object");
    }
    return v as Record<string, unknown>;
  } catch (e) {
    throw new Error(`Cannot import: ${file} is not valid JSON (${(e as Error).message})`);
  }
}

function className(name: string): string {
  return name.trim().replace(/[^A-Za-z0-9]+/g, "_").replace(/^_+|_+$/g, "").toLowerCase() ||
    "class";
}

function splitCases(
  cases: Omit<ManifestCase, "split">[],
  fixed: Map<string, ManifestCase["split"]>,
  opts: ImportOptions,
): ManifestCase[] {
  const free = cases.filter((c) => !fixed.has(c.id)).map((c) => c.id);
  const auto = assignSplits(free, opts);
  return cases.map((c) => ({ ...c, split: fixed.get(c.id) ?? auto.get(c.id) ?? "train" }));
}

function stripNii(name: string): string {
  return stripImageExt(name);
}

/** MS-CMRSeg 2019 (multi-sequence cardiac MR): bSSFP "C0", LGE and T2 per patient. */
export async function importMsCmrSeg(dir: string, opts: ImportOptions = {}): Promise<Manifest> {
  const files = (await walk(dir)).filter((f) => NII.test(f));
  const re = /^patient(\d+)_(c0|lge|t2)(_manual|_gd|_label)?$/i;
  const byPatient = new Map<
    number,
    { images: Record<string, string>; labels: Record<string, string> }
  >();
  for (const f of files) {
    const m = re.exec(stripNii(path.basename(f)));
    if (!m) continue;
    const n = Number(m[1]);
    const mod = m[2].toUpperCase() === "C0" ? "C0" : m[2].toUpperCase();
    const entry = byPatient.get(n) ?? { images: {}, labels: {} };
    const slot = m[3] ? entry.labels : entry.images;
    if (slot[mod]) {
      throw new Error(
        `Cannot import ${dir}: two files for patient${n} ${mod}${m[3] ?? ""}: ${
          slot[mod]
        } and ${f}`,
      );
    }
    slot[mod] = f;
    byPatient.set(n, entry);
  }
  if (byPatient.size === 0) {
    throw new Error(
      `Cannot import ${dir}: no MS-CMRSeg files (patientN_C0.nii.gz, patientN_LGE.nii.gz, patientN_T2.nii.gz) found`,
    );
  }
  const present = new Set<string>();
  const cases: Omit<ManifestCase, "split">[] = [];
  for (const [n, e] of [...byPatient].sort((a, b) => a[0] - b[0])) {
    for (const k of Object.keys(e.labels)) {
      if (!e.images[k]) {
        throw new Error(
          `Cannot import ${dir}: label ${
            e.labels[k]
          } has no matching image patient${n}_${k}.nii.gz`,
        );
      }
    }
    if (Object.keys(e.images).length === 0) continue;
    Object.keys(e.images).forEach((k) => present.add(k));
    const labeled = Object.keys(e.labels).length > 0;
    cases.push({
      id: `patient${n}`,
      images: e.images,
      ...(labeled ? { labels: e.labels } : {}),
      labeled,
      aligned: false,
    });
  }
  const modalities = ["C0", "LGE", "T2"].filter((m) => present.has(m));
  return {
    task: "cardiac",
    description: `MS-CMRSeg 2019 layout imported from ${dir}`,
    modalities,
    modalityKinds: Object.fromEntries(modalities.map((m) => [m, "mr" as const])),
    classes: { lv_myocardium: 200, lv_blood_pool: 500, rv: 600 },
    cases: splitCases(cases, new Map(), opts),
  };
}

function entryPath(v: unknown, key: string, file: string): string {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { image?: unknown }).image === "string") {
    return (v as { image: string }).image;
  }
  throw new Error(`Cannot import: ${file}: ${key} must be a path or an object with "image"`);
}

function labelsFromJson(
  labels: unknown,
  file: string,
  ignore: number[] = [],
): Record<string, number> {
  if (!labels || typeof labels !== "object") {
    throw new Error(`Cannot import: ${file}: "labels" is missing or not an object`);
  }
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(labels as Record<string, unknown>)) {
    // Decathlon/AMOS/nnU-Net v1: "1": "liver"; nnU-Net v2: "liver": 1.
    let value: number, name: string;
    if (typeof v === "string" && /^-?\d+$/.test(k)) [value, name] = [Number(k), v];
    else if (typeof v === "number") [value, name] = [v, k];
    else if (Array.isArray(v)) {
      throw new Error(
        `Cannot import: ${file}: labels.${k} is a region (list of values); regions are read from nnU-Net v2 dataset.json files only`,
      );
    } else {throw new Error(
        `Cannot import: ${file}: labels.${k} has unexpected value ${JSON.stringify(v)}`,
      );}
    if (value === 0) continue;
    if (name.toLowerCase() === "ignore") {
      ignore.push(value);
      continue;
    }
    let n = className(name);
    while (n in out) n += "_";
    out[n] = value;
  }
  return out;
}

function resolveIn(dir: string, p: string): string {
  return path.resolve(dir, p.replace(/^\.\//, ""));
}

/** AMOS 2022 (abdominal CT and MRI, different patients). */
export async function importAmos(dir: string, opts: ImportOptions = {}): Promise<Manifest> {
  const jsonPath = path.join(dir, "dataset.json");
  const ds = await readJson(jsonPath);
  const ignore: number[] = [];
  const classes = labelsFromJson(ds.labels, jsonPath, ignore);
  const cases: Omit<ManifestCase, "split">[] = [];
  const fixed = new Map<string, ManifestCase["split"]>();
  const modOf = (id: string) => {
    const n = Number(/(\d+)/.exec(id)?.[1] ?? NaN);
    if (!Number.isFinite(n)) {
      throw new Error(
        `Cannot import ${dir}: case "${id}" has no number to tell CT (below 500) from MRI`,
      );
    }
    return n >= 500 ? "MRI" : "CT";
  };
  const add = (
    list: unknown,
    split: ManifestCase["split"] | null,
    key: string,
    withLabels: boolean,
  ) => {
    if (list === undefined) return;
    if (!Array.isArray(list)) {
      throw new Error(`Cannot import: ${jsonPath}: "${key}" must be a list`);
    }
    list.forEach((item, i) => {
      const img = resolveIn(dir, entryPath(item, `${key}[${i}]`, jsonPath));
      const id = stripNii(path.basename(img));
      const mod = modOf(id);
      const lab = withLabels && item && typeof item === "object"
        ? (item as { label?: unknown }).label
        : undefined;
      if (withLabels && typeof lab !== "string") {
        throw new Error(`Cannot import: ${jsonPath}: ${key}[${i}].label is missing`);
      }
      cases.push({
        id,
        images: { [mod]: img },
        ...(typeof lab === "string" ? { labels: { [mod]: resolveIn(dir, lab) } } : {}),
        labeled: typeof lab === "string",
      });
      if (split) fixed.set(id, split);
    });
  };
  add(ds.training, null, "training", true);
  add(ds.validation, "val", "validation", true);
  add(ds.test, "test", "test", false);
  if (cases.length === 0) throw new Error(`Cannot import ${dir}: ${jsonPath} lists no cases`);
  const mods = ["CT", "MRI"].filter((m) => cases.some((c) => m in c.images));
  return {
    task: "abdomen",
    description: `AMOS 2022 layout imported from ${dir}`,
    modalities: mods,
    modalityKinds: Object.fromEntries(
      mods.map((m) => [m, m === "CT" ? "ct" as const : "mr" as const]),
    ),
    classes,
    ...ignoreMap(ignore),
    cases: splitCases(cases, fixed, opts),
  };
}

/** A labelMap entry for each label value the dataset names "ignore" (none: no labelMap). */
function ignoreMap(ignore: number[]): { labelMap?: Record<string, string> } {
  return ignore.length
    ? { labelMap: Object.fromEntries(ignore.map((v) => [String(v), "ignore"])) }
    : {};
}

function modalityNames(
  ds: Record<string, unknown>,
  key: "modality" | "channel_names",
  file: string,
): string[] {
  const m = ds[key];
  if (!m || typeof m !== "object") throw new Error(`Cannot import: ${file}: "${key}" is missing`);
  const entries = Object.entries(m as Record<string, unknown>).sort((a, b) =>
    Number(a[0]) - Number(b[0])
  );
  const names = entries.map(([k, v], i) => {
    if (Number(k) !== i || typeof v !== "string") {
      throw new Error(`Cannot import: ${file}: ${key} must map "0", "1", ... to names`);
    }
    return v;
  });
  // Keep names unique (e.g. two "MRI" channels).
  return names.map((n, i) => (names.indexOf(n) !== i ? `${n}_${i}` : n));
}

function kinds(mods: string[]): Record<string, "ct" | "mr"> {
  return Object.fromEntries(mods.map((m) => [m, /^ct$/i.test(m) ? "ct" as const : "mr" as const]));
}

/** Medical Segmentation Decathlon: one (possibly 4-D multi-channel) image per case and a shared label. */
export async function importDecathlon(dir: string, opts: ImportOptions = {}): Promise<Manifest> {
  const jsonPath = path.join(dir, "dataset.json");
  const ds = await readJson(jsonPath);
  const mods = modalityNames(ds, "modality", jsonPath);
  const ignore: number[] = [];
  const classes = labelsFromJson(ds.labels, jsonPath, ignore);
  const cases: Omit<ManifestCase, "split">[] = [];
  const fixed = new Map<string, ManifestCase["split"]>();
  const images = (p: string): Record<string, ImageRef> =>
    Object.fromEntries(mods.map((m, i) => [m, mods.length > 1 ? { path: p, frame: i } : p]));
  const training = Array.isArray(ds.training) ? ds.training : [];
  training.forEach((item, i) => {
    const img = resolveIn(dir, entryPath(item, `training[${i}]`, jsonPath));
    const lab = (item as { label?: unknown }).label;
    if (typeof lab !== "string") {
      throw new Error(`Cannot import: ${jsonPath}: training[${i}].label is missing`);
    }
    cases.push({
      id: stripNii(path.basename(img)),
      images: images(img),
      labels: { shared: resolveIn(dir, lab) },
      labeled: true,
      aligned: true,
    });
  });
  const test = Array.isArray(ds.test) ? ds.test : [];
  test.forEach((item, i) => {
    const img = resolveIn(dir, entryPath(item, `test[${i}]`, jsonPath));
    const id = stripNii(path.basename(img));
    cases.push({ id, images: images(img), labeled: false, aligned: true });
    fixed.set(id, "test");
  });
  if (cases.length === 0) throw new Error(`Cannot import ${dir}: ${jsonPath} lists no cases`);
  return {
    task: typeof ds.name === "string" ? className(ds.name) : path.basename(dir),
    description: `Medical Segmentation Decathlon layout imported from ${dir}`,
    modalities: mods,
    modalityKinds: kinds(mods),
    classes,
    ...ignoreMap(ignore),
    cases: splitCases(cases, fixed, opts),
  };
}

/**
 * nnU-Net v2 region labels ("whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3):
 * every non-background entry is a region. Each file value becomes a class named after the innermost
 * region that holds it; the regions are returned by class name (for the `regions` config key).
 * Null when no label is a list (plain classes).
 */
export function regionLabelsFromJson(
  labels: unknown,
  file: string,
): { classes: Record<string, number>; regions: Record<string, string[]> } | null {
  if (!labels || typeof labels !== "object") return null;
  const entries = Object.entries(labels as Record<string, unknown>);
  if (!entries.some(([, v]) => Array.isArray(v))) return null;
  const regions: { name: string; values: number[] }[] = [];
  for (const [k, v] of entries) {
    const values = Array.isArray(v) ? v : [v];
    if (!values.every((x) => typeof x === "number" && Number.isInteger(x))) {
      throw new Error(
        `Cannot import: ${file}: labels.${k}: a region must list integer label values`,
      );
    }
    if (values.length === 1 && values[0] === 0) continue; // background
    regions.push({
      name: className(k),
      values: [...new Set(values as number[])].sort((a, b) => a - b),
    });
  }
  const classes: Record<string, number> = {};
  const all = [...new Set(regions.flatMap((r) => r.values))].sort((a, b) => a - b);
  const inner = new Map<number, string>();
  for (const v of all) {
    const holders = regions.filter((r) => r.values.includes(v)).sort((a, b) =>
      a.values.length - b.values.length
    );
    if (holders.length > 1 && holders[0].values.length === holders[1].values.length) {
      throw new Error(
        `Cannot import: ${file}: labels ${holders[0].name} and ${
          holders[1].name
        } hold value ${v} and have the same size; regions must be nested`,
      );
    }
    inner.set(v, holders[0].name);
  }
  for (const v of all) {
    // A region whose own ring holds several values names them <region>_<value>.
    const name = inner.get(v)!;
    const shared = all.filter((w) => inner.get(w) === name).length > 1;
    classes[shared ? `${name}_${v}` : name] = v;
  }
  const nameOf = new Map(Object.entries(classes).map(([n, v]) => [v, n]));
  return {
    classes,
    regions: Object.fromEntries(regions.map((r) => [r.name, r.values.map((v) => nameOf.get(v)!)])),
  };
}

/** nnU-Net raw dataset (v2 dataset.json with channel_names, or v1 with modality): one file per channel. */
export async function importNnUnetRaw(dir: string, opts: ImportOptions = {}): Promise<Manifest> {
  const jsonPath = path.join(dir, "dataset.json");
  const ds = await readJson(jsonPath);
  const mods = "channel_names" in ds
    ? modalityNames(ds, "channel_names", jsonPath)
    : modalityNames(ds, "modality", jsonPath);
  const ignore: number[] = [];
  const regionLabels = regionLabelsFromJson(ds.labels, jsonPath);
  const classes = regionLabels ? regionLabels.classes : labelsFromJson(ds.labels, jsonPath, ignore);
  const ending = typeof ds.file_ending === "string" ? ds.file_ending : ".nii.gz";
  if (!/^\.(nii|nii\.gz|mha|mhd|nrrd|nhdr)$/i.test(ending)) {
    throw new Error(
      `Cannot import ${dir}: file_ending "${ending}" is not a supported image format ` +
        `(.nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr)`,
    );
  }
  const scan = async (sub: string) => {
    const d = path.join(dir, sub);
    try {
      await Deno.stat(d);
    } catch {
      return new Map<string, Map<number, string>>();
    }
    const byCase = new Map<string, Map<number, string>>();
    for (const f of await walk(d)) {
      const base = path.basename(f);
      if (!base.endsWith(ending)) continue;
      const m = /^(.*)_(\d{4})$/.exec(base.slice(0, -ending.length));
      if (!m) {
        throw new Error(
          `Cannot import ${dir}: ${f} does not end in _XXXX${ending} (channel number)`,
        );
      }
      const ch = Number(m[2]);
      const chans = byCase.get(m[1]) ?? new Map<number, string>();
      chans.set(ch, f);
      byCase.set(m[1], chans);
    }
    return byCase;
  };
  const cases: Omit<ManifestCase, "split">[] = [];
  const fixed = new Map<string, ManifestCase["split"]>();
  for (const [sub, split] of [["imagesTr", null], ["imagesTs", "test"]] as const) {
    const found = await scan(sub);
    for (const [id, chans] of [...found].sort((a, b) => a[0].localeCompare(b[0]))) {
      const missing = mods.map((_, i) => i).filter((i) => !chans.has(i));
      if (missing.length) {
        throw new Error(
          `Cannot import ${dir}: ${sub}/${id} lacks channel ${
            missing.map((i) => String(i).padStart(4, "0")).join(", ")
          } (${missing.map((i) => mods[i]).join(", ")})`,
        );
      }
      const images = Object.fromEntries(mods.map((m, i) => [m, chans.get(i)!]));
      const labelFile = path.join(dir, sub === "imagesTr" ? "labelsTr" : "labelsTs", id + ending);
      let hasLabel = false;
      try {
        hasLabel = (await Deno.stat(labelFile)).isFile;
      } catch { /* no label */ }
      if (sub === "imagesTr" && !hasLabel) {
        throw new Error(`Cannot import ${dir}: training case ${id} has no label ${labelFile}`);
      }
      cases.push({
        id,
        images,
        ...(hasLabel ? { labels: { shared: labelFile } } : {}),
        labeled: hasLabel && sub === "imagesTr",
        aligned: true,
      });
      if (split) fixed.set(id, split);
    }
  }
  if (cases.length === 0) {
    throw new Error(
      `Cannot import ${dir}: no images in imagesTr/ or imagesTs/ (expected <case>_0000${ending})`,
    );
  }
  return {
    task: typeof ds.name === "string" ? className(ds.name) : path.basename(dir),
    description: `nnU-Net raw layout imported from ${dir}`,
    modalities: mods,
    modalityKinds: kinds(mods),
    classes,
    ...(regionLabels ? { regions: regionLabels.regions } : {}),
    ...ignoreMap(ignore),
    cases: splitCases(cases, fixed, opts),
  };
}

/** BraTS file tags per naming era: modality tags in the usual order and the label values. */
const BRATS_ERAS = [
  {
    // BraTS 2018-2021 (and the 2021 RSNA-ASNR-MICCAI release): BraTS2021_00000_t1ce.nii.gz.
    sep: "_",
    tags: ["t1", "t1ce", "t2", "flair"],
    classes: { necrotic_core: 1, edema: 2, enhancing_tumour: 4 },
  },
  {
    // BraTS 2023+: BraTS-GLI-00000-000-t1c.nii.gz.
    sep: "-",
    tags: ["t1n", "t1c", "t2w", "t2f"],
    classes: { necrotic_core: 1, edema: 2, enhancing_tumour: 3 },
  },
] as const;

function bratsMatch(file: string): { era: number; id: string; tag: string } | null {
  const stem = stripNii(path.basename(file));
  for (let era = 0; era < BRATS_ERAS.length; era++) {
    const e = BRATS_ERAS[era];
    const at = stem.lastIndexOf(e.sep);
    if (at <= 0) continue;
    const tag = stem.slice(at + 1).toLowerCase();
    if (tag === "seg" || (e.tags as readonly string[]).includes(tag)) {
      return { era, id: stem.slice(0, at), tag };
    }
  }
  return null;
}

/**
 * BraTS (multi-parametric brain MRI, one folder per case, four co-registered modalities on one
 * grid). Cases with a `seg` file are labeled; cases without one (the validation release) become
 * unlabeled training cases. Label values map to necrotic_core, edema and enhancing_tumour (value 4
 * before 2023, 3 from 2023), so class indices are 1, 2, 3 either way.
 */
export async function importBrats(dir: string, opts: ImportOptions = {}): Promise<Manifest> {
  const files = (await walk(dir)).filter((f) => NII.test(f));
  const byCase = new Map<string, { era: number; files: Record<string, string> }>();
  for (const f of files) {
    const m = bratsMatch(f);
    if (!m || !/brats/i.test(m.id)) continue;
    const entry = byCase.get(m.id) ?? { era: m.era, files: {} };
    if (entry.era !== m.era) {
      throw new Error(
        `Cannot import ${dir}: case ${m.id} mixes BraTS naming schemes (${f})`,
      );
    }
    if (entry.files[m.tag]) {
      throw new Error(
        `Cannot import ${dir}: two ${m.tag} files for case ${m.id}: ${entry.files[m.tag]} and ${f}`,
      );
    }
    entry.files[m.tag] = f;
    byCase.set(m.id, entry);
  }
  if (byCase.size === 0) {
    throw new Error(
      `Cannot import ${dir}: no BraTS files (BraTS2021_00000_t1.nii.gz ... _seg.nii.gz, or BraTS-GLI-00000-000-t1n.nii.gz ...) found`,
    );
  }
  const eras = new Set([...byCase.values()].map((e) => e.era));
  if (eras.size > 1) {
    throw new Error(
      `Cannot import ${dir}: it mixes BraTS 2021 (_t1ce, labels 1/2/4) and BraTS 2023 (-t1c, labels 1/2/3) names; import them separately`,
    );
  }
  const era = BRATS_ERAS[[...eras][0]];
  const cases: Omit<ManifestCase, "split">[] = [];
  const fixed = new Map<string, ManifestCase["split"]>();
  for (const [id, e] of [...byCase].sort((a, b) => a[0].localeCompare(b[0]))) {
    const missing = era.tags.filter((t) => !e.files[t]);
    if (missing.length) {
      throw new Error(
        `Cannot import ${dir}: case ${id} lacks its ${missing.join(", ")} image(s) (has ${
          Object.keys(e.files).join(", ")
        })`,
      );
    }
    const labeled = "seg" in e.files;
    cases.push({
      id,
      images: Object.fromEntries(era.tags.map((t) => [t, e.files[t]])),
      ...(labeled ? { labels: { shared: e.files.seg } } : {}),
      labeled,
      aligned: true,
    });
    // Unlabeled cases (a validation release) serve as unlabeled training data.
    if (!labeled) fixed.set(id, "train");
  }
  return {
    task: "brats",
    description: `BraTS layout imported from ${dir}`,
    modalities: [...era.tags],
    modalityKinds: Object.fromEntries(era.tags.map((t) => [t, "mr" as const])),
    classes: { ...era.classes },
    cases: splitCases(cases, fixed, opts),
  };
}

export type DatasetLayout = "mscmrseg" | "amos" | "decathlon" | "nnunet" | "brats";

/** Guesses the layout of a folder. */
export async function detectLayout(dir: string): Promise<DatasetLayout> {
  let ds: Record<string, unknown> | null = null;
  try {
    ds = await readJson(path.join(dir, "dataset.json"));
  } catch { /* no dataset.json */ }
  if (!ds) {
    const files = await walk(dir);
    if (files.some((f) => /patient\d+_(c0|lge|t2)\.nii(\.gz)?$/i.test(f))) return "mscmrseg";
    if (
      files.some((f) => NII.test(f) && bratsMatch(f) !== null && /^brats/i.test(path.basename(f)))
    ) {
      return "brats";
    }
    throw new Error(
      `Cannot import ${dir}: no dataset.json, no MS-CMRSeg files (patientN_C0.nii.gz ...) and no BraTS files (BraTS2021_00000_t1.nii.gz ...); name the layout with --layout, or use the folder's manifest.yaml directly if it has one`,
    );
  }
  if ("channel_names" in ds) return "nnunet";
  const name = String(ds.name ?? "").toLowerCase();
  if (name.includes("amos")) return "amos";
  const tr = Array.isArray(ds.training) ? ds.training : [];
  const first = tr[0] as { image?: string } | undefined;
  if (first?.image) {
    try {
      await Deno.stat(resolveIn(dir, first.image));
      return "decathlon";
    } catch {
      return "nnunet"; // v1 nnU-Net lists the case name, files carry _0000
    }
  }
  return "decathlon";
}

/** Runs the importer for `layout` (or the detected one). */
export async function importDataset(
  dir: string,
  opts: ImportOptions & { layout?: DatasetLayout } = {},
): Promise<Manifest> {
  const layout = opts.layout ?? (await detectLayout(dir));
  switch (layout) {
    case "mscmrseg":
      return await importMsCmrSeg(dir, opts);
    case "amos":
      return await importAmos(dir, opts);
    case "decathlon":
      return await importDecathlon(dir, opts);
    case "nnunet":
      return await importNnUnetRaw(dir, opts);
    case "brats":
      return await importBrats(dir, opts);
  }
}
