/**
 * Dataset manifests: which cases exist, their modality images and label maps, labeled or not, and
 * their split. YAML or JSON, validated with zod; every error names the file and the key path
 * ("cases[3].images.LGE: file not found").
 */
import * as path from "node:path";
import { z } from "zod";
import * as YAML from "yaml";
import { writeFileAtomic } from "./nifti.ts";
import { isDicomSeriesDir } from "./image_io.ts";
import { Rng } from "./rng.ts";
import { IGNORE_INDEX } from "../util/ignore.ts";

/** An image file, or one frame (channel) of a 4-D file. */
export const ImageRefSchema = z.union([
  z.string().min(1),
  z.strictObject({ path: z.string().min(1), frame: z.number().int().min(0) }),
]);
export type ImageRef = z.infer<typeof ImageRefSchema>;

export const CaseSchema = z.strictObject({
  id: z.string().min(1).regex(
    /^[A-Za-z0-9._-]+$/,
    "case ids may use letters, digits, '.', '_' and '-' only",
  ),
  /** modality -> image. A case may hold a subset of the task's modalities (unpaired data). */
  images: z.record(z.string(), ImageRefSchema),
  /** modality (or "shared" for one map that fits every modality of an aligned case) -> label file. */
  labels: z.record(z.string(), ImageRefSchema).optional(),
  labeled: z.boolean(),
  split: z.enum(["train", "val", "test"]),
  /** True when all modalities share one voxel grid and anatomy (paired, registered). */
  aligned: z.boolean().optional(),
});
export type ManifestCase = z.infer<typeof CaseSchema>;

export const ModalityKindSchema = z.enum(["ct", "mr"]);
export type ModalityKind = z.infer<typeof ModalityKindSchema>;

export const ManifestSchema = z.strictObject({
  task: z.string().min(1),
  description: z.string().optional(),
  modalities: z.array(z.string().min(1)).min(1),
  /** Intensity model per modality (CT: clip + dataset z-score; MR: per-volume z-score). Default from the name. */
  modalityKinds: z.record(z.string(), ModalityKindSchema).optional(),
  /** Foreground class name -> label value in the files. Background is value 0 unless listed as "background". */
  classes: z.record(z.string(), z.number().int()),
  /**
   * Further file values -> class name, "background", or "ignore" (voxels that carry no supervision,
   * like nnU-Net's ignore label), e.g. classes a task merges or leaves out.
   */
  labelMap: z.record(z.string(), z.string()).optional(),
  /**
   * Nested regions by class name (nnU-Net v2 region labels, BraTS): the default of the `regions`
   * config key for this data (src/train/regions.ts).
   */
  regions: z.record(z.string(), z.array(z.string())).optional(),
  /** Base folder for relative paths (default: the manifest's own folder). */
  root: z.string().optional(),
  cases: z.array(CaseSchema),
});
export type Manifest = z.infer<typeof ManifestSchema>;

/** Formats a zod path as cases[3].images.LGE. */
export function formatKeyPath(p: readonly PropertyKey[]): string {
  let s = "";
  for (const k of p) {
    if (typeof k === "number") s += `[${k}]`;
    else s += s ? `.${String(k)}` : String(k);
  }
  return s || "(top level)";
}

export interface LoadManifestOptions {
  /** Check that every referenced file exists (default true). */
  checkFiles?: boolean;
}

/** Paths of an image reference. */
export function refPath(ref: ImageRef): string {
  return typeof ref === "string" ? ref : ref.path;
}

export function refFrame(ref: ImageRef): number | undefined {
  return typeof ref === "string" ? undefined : ref.frame;
}

function mapRef(ref: ImageRef, f: (p: string) => string): ImageRef {
  return typeof ref === "string" ? f(ref) : { path: f(ref.path), frame: ref.frame };
}

/** Class names in index order: "background" first, then the manifest's classes (by label value). */
export function classNames(m: Manifest): string[] {
  const fg = Object.entries(m.classes).filter(([n]) => n !== "background").sort((a, b) =>
    a[1] - b[1]
  );
  return ["background", ...fg.map(([n]) => n)];
}

/** File label value -> class index 0..K-1 (IGNORE_INDEX for values mapped to "ignore"). */
export function labelValueMap(m: Manifest): Map<number, number> {
  const names = classNames(m);
  const map = new Map<number, number>();
  map.set(m.classes["background"] ?? 0, 0);
  for (const [n, v] of Object.entries(m.classes)) {
    if (n !== "background") map.set(v, names.indexOf(n));
  }
  for (const [v, n] of Object.entries(m.labelMap ?? {})) {
    map.set(Number(v), n === "ignore" ? IGNORE_INDEX : names.indexOf(n));
  }
  return map;
}

/** Intensity model of a modality (explicit, else "ct" when the name says CT, else "mr"). */
export function modalityKind(m: Pick<Manifest, "modalityKinds">, modality: string): ModalityKind {
  const k = m.modalityKinds?.[modality];
  if (k) return k;
  return /(^|[^a-z])ct([^a-z]|$)/i.test(modality) ? "ct" : "mr";
}

/**
 * Checks a parsed object against the schema and the cross-field rules. Relative paths are resolved
 * against `baseDir`. `source` names the file in messages.
 */
export async function validateManifest(
  raw: unknown,
  opts: { source: string; baseDir: string; checkFiles?: boolean },
): Promise<Manifest> {
  const src = opts.source;
  const r = ManifestSchema.safeParse(raw);
  if (!r.success) {
    const lines = r.error.issues.slice(0, 8).map((i) => `  ${formatKeyPath(i.path)}: ${i.message}`);
    throw new Error(`Invalid manifest ${src}:\n${lines.join("\n")}`);
  }
  const m = r.data;
  const errs: string[] = [];
  if (m.cases.length === 0) errs.push("cases: the manifest has no cases");
  const mods = new Set(m.modalities);
  if (mods.size !== m.modalities.length) {
    errs.push(`modalities: duplicate names in [${m.modalities.join(", ")}]`);
  }
  if (mods.has("shared")) {
    errs.push(`modalities: "shared" is reserved for labels shared by all modalities`);
  }
  for (const k of Object.keys(m.modalityKinds ?? {})) {
    if (!mods.has(k)) {
      errs.push(`modalityKinds.${k}: not one of the modalities (${m.modalities.join(", ")})`);
    }
  }
  const names = new Set(classNames(m));
  const values = new Map<number, string>();
  for (const [n, v] of Object.entries(m.classes)) {
    if (values.has(v)) errs.push(`classes.${n}: value ${v} is also used by ${values.get(v)}`);
    values.set(v, n);
  }
  if (!("background" in m.classes) && values.has(0)) {
    errs.push(`classes.${values.get(0)}: value 0 is the background`);
  }
  for (const [v, n] of Object.entries(m.labelMap ?? {})) {
    if (!Number.isFinite(Number(v))) errs.push(`labelMap.${v}: file value must be a number`);
    if (!names.has(n) && n !== "ignore") {
      errs.push(`labelMap.${v}: "${n}" is not a class (${[...names].join(", ")}) or "ignore"`);
    }
  }
  const root = m.root ? path.resolve(opts.baseDir, m.root) : opts.baseDir;
  const ids = new Set<string>();
  m.cases.forEach((c, i) => {
    const at = `cases[${i}]`;
    if (ids.has(c.id)) errs.push(`${at}.id: duplicate case id "${c.id}"`);
    ids.add(c.id);
    if (Object.keys(c.images).length === 0) {
      errs.push(`${at}.images: a case needs at least one image`);
    }
    for (const k of Object.keys(c.images)) {
      if (!mods.has(k)) {
        errs.push(`${at}.images.${k}: not one of the modalities (${m.modalities.join(", ")})`);
      }
    }
    for (const k of Object.keys(c.labels ?? {})) {
      if (k !== "shared" && !mods.has(k)) {
        errs.push(
          `${at}.labels.${k}: not one of the modalities (${m.modalities.join(", ")}) or "shared"`,
        );
      } else if (k !== "shared" && !(k in c.images)) {
        errs.push(`${at}.labels.${k}: the case has no ${k} image`);
      }
    }
    if (c.labeled && Object.keys(c.labels ?? {}).length === 0) {
      errs.push(`${at}.labels: labeled is true but no label file is given`);
    }
    c.images = Object.fromEntries(
      Object.entries(c.images).map(([k, v]) => [k, mapRef(v, (p) => path.resolve(root, p))]),
    );
    if (c.labels) {
      c.labels = Object.fromEntries(
        Object.entries(c.labels).map(([k, v]) => [k, mapRef(v, (p) => path.resolve(root, p))]),
      );
    }
  });
  if (errs.length === 0 && opts.checkFiles !== false) {
    const checks: Promise<void>[] = [];
    m.cases.forEach((c, i) => {
      for (const [kind, rec] of [["images", c.images], ["labels", c.labels ?? {}]] as const) {
        for (const [k, ref] of Object.entries(rec)) {
          const p = refPath(ref);
          checks.push(
            Deno.stat(p).then((st) => {
              if (!st.isFile && !(st.isDirectory && isDicomSeriesDir(p))) {
                errs.push(
                  `cases[${i}].${kind}.${k}: not a file${
                    st.isDirectory ? " (a folder without DICOM files)" : ""
                  } (${p})`,
                );
              }
            }, () => {
              errs.push(`cases[${i}].${kind}.${k}: file not found (${p})`);
            }),
          );
        }
      }
    });
    await Promise.all(checks);
  }
  if (errs.length) {
    errs.sort();
    const more = errs.length > 10 ? `\n  ... and ${errs.length - 10} more` : "";
    throw new Error(`Invalid manifest ${src}:\n  ${errs.slice(0, 10).join("\n  ")}${more}`);
  }
  m.root = root;
  return m;
}

/** Reads and validates a YAML or JSON manifest; relative paths become absolute. */
export async function loadManifest(
  file: string,
  opts: LoadManifestOptions = {},
): Promise<Manifest> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new Error(
      `Cannot read manifest ${file}: ${
        e instanceof Deno.errors.NotFound ? "file not found" : (e as Error).message
      }`,
    );
  }
  let raw: unknown;
  try {
    raw = file.endsWith(".json") ? JSON.parse(text) : YAML.parse(text);
  } catch (e) {
    throw new Error(`Cannot parse manifest ${file}: ${(e as Error).message}`);
  }
  if (raw === null || raw === undefined) {
    throw new Error(`Invalid manifest ${file}: the file is empty`);
  }
  return await validateManifest(raw, {
    source: file,
    baseDir: path.dirname(path.resolve(file)),
    checkFiles: opts.checkFiles,
  });
}

/** Writes a manifest as YAML (.yaml/.yml) or JSON (.json), with paths relative to the file's folder. */
export async function saveManifest(file: string, manifest: Manifest): Promise<void> {
  const dir = path.dirname(path.resolve(file));
  const base = manifest.root ? path.resolve(manifest.root) : dir;
  const rel = (p: string) => {
    const r = path.relative(dir, path.resolve(base, p));
    // Relative when close by (portable folders), absolute when the file is far away.
    return r.split(path.sep).filter((x) => x === "..").length > 2 ? path.resolve(base, p) : r;
  };
  const out: Manifest = {
    ...manifest,
    root: undefined,
    cases: manifest.cases.map((c) => ({
      ...c,
      images: Object.fromEntries(Object.entries(c.images).map(([k, v]) => [k, mapRef(v, rel)])),
      ...(c.labels
        ? {
          labels: Object.fromEntries(Object.entries(c.labels).map(([k, v]) => [k, mapRef(v, rel)])),
        }
        : {}),
    })),
  };
  delete out.root;
  const text = file.endsWith(".json") ? JSON.stringify(out, null, 2) + "\n" : YAML.stringify(out);
  await writeFileAtomic(file, new TextEncoder().encode(text));
}

export interface SplitOptions {
  /** Fraction of cases for validation (default 0.2). */
  valFraction?: number;
  /** Fraction for testing (default 0). */
  testFraction?: number;
  seed?: number;
}

/** Deterministic split of case ids: a seeded shuffle, then test, val and train in that order. */
export function assignSplits(
  ids: readonly string[],
  opts: SplitOptions = {},
): Map<string, ManifestCase["split"]> {
  const sorted = [...ids].sort();
  new Rng(opts.seed ?? 0, "split").shuffle(sorted);
  const n = sorted.length;
  const nTest = Math.round(n * (opts.testFraction ?? 0));
  let nVal = Math.round(n * (opts.valFraction ?? 0.2));
  if (n - nTest - nVal < 1) nVal = Math.max(0, n - nTest - 1);
  const out = new Map<string, ManifestCase["split"]>();
  sorted.forEach((id, i) => out.set(id, i < nTest ? "test" : i < nTest + nVal ? "val" : "train"));
  return out;
}

/**
 * Why a `labeled` value is refused (null when it is fine): a count of cases must be a whole number
 * (> 1), a ratio must be in (0, 1]. 1.5 is neither and is not rounded.
 */
export function labeledProblem(v: number): string | null {
  if (!Number.isFinite(v) || v <= 0) {
    return `expected a count >= 1 or a ratio in (0, 1], got ${v}`;
  }
  if (v > 1 && !Number.isInteger(v)) {
    // (1 itself is the ratio "all of them", so the nearest counts start at 2.)
    const counts = [...new Set([Math.max(2, Math.floor(v)), Math.ceil(v)])].join(" or ");
    return `${v} is neither a whole number of cases nor a ratio in (0, 1]: give a count such as ${counts}, or a ratio such as 0.5`;
  }
  return null;
}

/**
 * Chooses which labeled training cases keep their labels for a semi-supervised run: `labeled` is a
 * count (a whole number >= 1) or a ratio in (0, 1]. Seeded; returns the chosen ids in sorted order.
 */
export function selectLabeled(
  cases: readonly ManifestCase[],
  opts: { labeled: number; seed?: number },
): string[] {
  const problem = labeledProblem(opts.labeled);
  if (problem) throw new Error(`Cannot choose the labeled cases: labeled: ${problem}`);
  const pool = cases.filter((c) => c.labeled && c.split === "train").map((c) => c.id).sort();
  const want = opts.labeled <= 1
    ? Math.max(1, Math.round(opts.labeled * pool.length))
    : Math.round(opts.labeled);
  if (want > pool.length) {
    throw new Error(
      `Cannot keep ${want} labeled cases: the manifest has only ${pool.length} labeled training cases`,
    );
  }
  return new Rng(opts.seed ?? 0, "labeled").shuffle(pool).slice(0, want).sort();
}
