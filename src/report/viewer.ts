/**
 * The 3D viewer pages of a report: one HTML page per predicted case, drawn by NiiVue in the browser
 * (all three planes and a 3D render), with the image in grey, the prediction as a coloured label
 * overlay and the reference label (where there is one) in a lighter tint of the same colours, an
 * opacity slider, a switch between the case's modalities and a legend of the class names.
 *
 * The pages open offline from the report's folder, also from file:// (no server, no network): the
 * viewer's script is NiiVue's UMD build copied to <outDir>/viewer/niivue.umd.js, and the NIfTI
 * files are embedded as base64 in small classic scripts, <outDir>/viewer/data/<key>.js (browsers
 * block fetching local files from file:// pages, but not classic scripts). A file is embedded as it
 * is on disk (gzip included), once per report folder however many pages show it, so writing the
 * pages costs a file copy per image and prediction: nothing is decoded.
 *
 * Colours and names are those of the PNG overlays (src/viz/overlay.ts): class k (k >= 1) has
 * DEFAULT_PALETTE's colour k, its reference the tint refColour(k).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { Buffer } from "node:buffer";
import { existsSync, statSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { classColour, DEFAULT_PALETTE, refColour, type Rgb } from "../viz/overlay.ts";
import { escapeXml } from "./svg_plot.ts";
import { writeFileAtomicSync } from "../util/atomic_write.ts";
import { RunFolder } from "../train/run_folder.ts";

/** A NIfTI file shown by the viewer; `frame` picks one frame of a 4-D file (one per modality). */
export interface ViewerFile {
  path: string;
  frame?: number | null;
}

/** One modality of a case: its image with the prediction and reference drawn on it. */
export interface ViewerView {
  modality: string;
  image: ViewerFile;
  /** Label map with class indices 0..K-1 (as `predict` and the run's predictions/ write them). */
  prediction?: string;
  /** Reference label file, in the dataset's label values (LabelLegend.referenceValues). */
  reference?: string;
}

export interface ViewerCase {
  id: string;
  views: ViewerView[];
  /** A line shown under the title (scores of the case, say). */
  note?: string;
}

/** Class names and the label values of the files. */
export interface LabelLegend {
  /** Class names in index order, background first. */
  classes: readonly string[];
  /**
   * File value -> class index of the reference label files (the dataset's classes and label map);
   * values absent here (ignored voxels, merged-away classes) are not drawn. Default: the file
   * values are the class indices.
   */
  referenceValues?: ReadonlyMap<number, number>;
  /** Label values of the prediction files (default: class indices 0..K-1). */
  predictionValues?: readonly number[];
  palette?: readonly Rgb[];
}

export interface ViewerOptions {
  /** Link target of "back to the report" (relative to the page). */
  backHref?: string;
  /** Page title prefix (the run, say). */
  title?: string;
  /** File name stem of the pages (default: the case id); unique per report folder. */
  pageName?: (c: ViewerCase) => string;
}

/** The viewer page written for a case: its id and its path relative to the report folder. */
export interface ViewerLink {
  id: string;
  href: string;
}

const VIEWER_DIR = RunFolder.fileName("viewer");
const NIIVUE_FILE = "niivue.umd.js";

/**
 * NiiVue's UMD build (a classic script that defines `niivue`), from the project's node_modules
 * (installed by `make setup` from deno.lock).
 */
export function niivueScriptPath(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  const tried: string[] = [];
  for (let i = 0; i < 6; i++) {
    const p = path.join(dir, "node_modules", "@niivue", "niivue", "dist", NIIVUE_FILE);
    if (existsSync(p)) return p;
    tried.push(p);
    dir = path.dirname(dir);
  }
  throw new Error(
    `Cannot write the 3D viewer: NiiVue's script ${NIIVUE_FILE} not found (looked at ${
      tried[0]
    } and above); run \`make setup\` (it installs the npm packages of deno.lock)`,
  );
}

/** The legend of a run from its plan.json (classes and the dataset's label definitions). */
export function legendFromPlan(plan: {
  classes: string[];
  dataset: { classes: Record<string, number>; labelMap: Record<string, string> | null };
}): LabelLegend {
  const index = new Map(plan.classes.map((n, k) => [n, k]));
  const ref = new Map<number, number>();
  ref.set(plan.dataset.classes.background ?? 0, 0);
  for (const [n, v] of Object.entries(plan.dataset.classes)) {
    const k = index.get(n);
    if (k !== undefined) ref.set(v, k);
  }
  for (const [v, n] of Object.entries(plan.dataset.labelMap ?? {})) {
    const k = index.get(n);
    if (k !== undefined) ref.set(Number(v), k);
  }
  return { classes: plan.classes, referenceValues: ref };
}

function hex(c: Rgb): string {
  return "#" + c.map((v) => v.toString(16).padStart(2, "0")).join("");
}

/** The legend as HTML: a swatch per class, solid for the prediction, tinted for the reference. */
export function legendHtml(legend: LabelLegend, withReference: boolean): string {
  const pal = legend.palette ?? DEFAULT_PALETTE;
  const items = legend.classes.slice(1).map((name, i) => {
    const k = i + 1;
    const ref = withReference
      ? `<span class="sw ref" style="background:${hex(refColour(k, pal))}"></span>`
      : "";
    return `<li><span class="sw" style="background:${hex(classColour(k, pal))}"></span>${ref}${
      escapeXml(name)
    }</li>`;
  });
  const key = withReference
    ? `<p class="muted">solid: prediction; light: reference</p>`
    : `<p class="muted">prediction</p>`;
  return `<ul class="legend">${items.join("")}</ul>${key}`;
}

/** NiiVue label colour tables (R, G, B, A, I, labels) of the prediction and the reference. */
function colourTables(legend: LabelLegend) {
  const pal = legend.palette ?? DEFAULT_PALETTE;
  const K = legend.classes.length;
  const table = (pairs: [number, number][], colour: (k: number) => Rgb) => {
    const t = { R: [] as number[], G: [] as number[], B: [] as number[], A: [] as number[] };
    const I: number[] = [], labels: string[] = [];
    for (const [value, k] of pairs.sort((a, b) => a[0] - b[0])) {
      const c = k === 0 ? [0, 0, 0] as const : colour(k);
      t.R.push(c[0]), t.G.push(c[1]), t.B.push(c[2]), t.A.push(k === 0 ? 0 : 255);
      I.push(value), labels.push(legend.classes[k]);
    }
    return { ...t, I, labels };
  };
  const predValues = legend.predictionValues ?? [...Array(K).keys()];
  const refPairs: [number, number][] = legend.referenceValues
    ? [...legend.referenceValues].filter(([, k]) => k >= 0 && k < K)
    : [...Array(K).keys()].map((k) => [k, k]);
  return {
    prediction: table(predValues.map((v, k) => [v, k]), (k) => classColour(k, pal)),
    reference: table(refPairs, (k) => refColour(k, pal)),
  };
}

/** A stable key of a file's contents (path, size and modification time). */
function fileKey(file: string): string {
  const st = statSync(file);
  return createHash("sha256").update(`${path.resolve(file)}\0${st.size}\0${st.mtimeMs}`).digest(
    "hex",
  ).slice(0, 20);
}

function niftiName(file: string): string {
  return /\.nii\.gz$/i.test(file) ? "image.nii.gz" : "image.nii";
}

function slug(s: string): string {
  return s.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^\.+/, "_") || "case";
}

const PAGE_CSS =
  `body{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#fff}h1{font-size:20px;margin:0 0 8px}
#view{width:100%;height:72vh;background:#000}#gl{width:100%;height:100%;display:block}.bar{display:flex;flex-wrap:wrap;gap:16px;align-items:center;margin:8px 0}
.legend{list-style:none;padding:0;margin:4px 0;display:flex;flex-wrap:wrap;gap:14px}.legend li{display:flex;align-items:center;gap:4px}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #888}.muted{color:#777;font-size:13px;margin:2px 0}
#status{color:#a00}`;

/** The page's script: loads the embedded files into NiiVue and wires the controls. */
const PAGE_SCRIPT = `
(async () => {
  const C = JSON.parse(document.getElementById("viewer-data").textContent);
  const status = document.getElementById("status");
  try {
    if (typeof niivue === "undefined") throw new Error("viewer script niivue.umd.js did not load");
    const nv = new niivue.Niivue({
      backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: false, dragAndDropEnabled: false,
      logLevel: "error", crosshairColor: [1, 1, 1, 0.5], crosshairWidth: 0.5,
    });
    window.nv = nv;
    await nv.attachTo("gl");
    nv.setSliceType(nv.sliceTypeMultiplanar);
    nv.setInterpolation(true); // nearest neighbour: voxels and label edges as they are
    const opacity = document.getElementById("opacity");
    const showPred = document.getElementById("show-pred");
    const showRef = document.getElementById("show-ref");
    const data = (key) => {
      const b64 = (window.COMODAL_DATA || {})[key];
      if (b64 === undefined) throw new Error("embedded file " + key + ".js did not load");
      return b64;
    };
    const load = async (f, extra) => {
      const img = await niivue.NVImage.loadFromBase64({ base64: data(f.key), name: f.name, ...extra });
      if (f.frame) img.frame4D = f.frame;
      return img;
    };
    let current = -1, overlays = [];
    const applyOpacity = () => {
      const a = Number(opacity.value);
      for (const o of overlays) {
        const on = o.kind === "prediction" ? showPred.checked : showRef.checked;
        o.img.opacity = on ? a : 0;
      }
      nv.updateGLVolume();
    };
    const show = async (i) => {
      document.body.dataset.ready = "";
      const v = C.views[i];
      const imgs = [await load(v.image, { colormap: "gray" })];
      overlays = [];
      for (const kind of ["reference", "prediction"]) {
        if (!v[kind]) continue;
        const img = await load(v[kind], { colormap: "gray", opacity: Number(opacity.value) });
        img.setColormapLabel(C.colours[kind]);
        imgs.push(img);
        overlays.push({ kind, img });
      }
      while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
      for (const img of imgs) nv.addVolume(img);
      if (v.image.frame) nv.setFrame4D(nv.volumes[0].id, v.image.frame);
      current = i;
      applyOpacity();
      nv.drawScene();
      document.body.dataset.ready = String(i);
    };
    opacity.addEventListener("input", applyOpacity);
    showPred.addEventListener("change", applyOpacity);
    showRef.addEventListener("change", applyOpacity);
    for (const r of document.querySelectorAll("input[name=modality]")) {
      r.addEventListener("change", () => { if (r.checked && Number(r.value) !== current) show(Number(r.value)); });
    }
    await show(0);
  } catch (e) {
    status.textContent = "The viewer could not start: " + (e && e.message ? e.message : e);
    document.body.dataset.ready = "error";
    throw e;
  }
})();
`;

/**
 * Writes a viewer page per case into <outDir>/viewer/ (with NiiVue's script and the embedded
 * files) and returns the pages' links, relative to `outDir`. Cases without views are left out.
 */
export function writeViewerPages(
  outDir: string,
  cases: readonly ViewerCase[],
  legend: LabelLegend,
  opts: ViewerOptions = {},
): ViewerLink[] {
  const shown = cases.filter((c) => c.views.length > 0);
  if (shown.length === 0) return [];
  const dir = path.join(outDir, VIEWER_DIR);
  const dataDir = path.join(dir, "data");
  Deno.mkdirSync(dataDir, { recursive: true });
  const script = niivueScriptPath();
  const dest = path.join(dir, NIIVUE_FILE);
  if (!existsSync(dest) || statSync(dest).size !== statSync(script).size) {
    Deno.copyFileSync(script, `${dest}.tmp-${Deno.pid}`);
    Deno.renameSync(`${dest}.tmp-${Deno.pid}`, dest);
  }
  const embedded = new Map<string, string>();
  const embed = (file: string): string => {
    const abs = path.resolve(file);
    const known = embedded.get(abs);
    if (known) return known;
    const key = fileKey(abs);
    const out = path.join(dataDir, `${key}.js`);
    if (!existsSync(out)) {
      const b64 = Buffer.from(Deno.readFileSync(abs)).toString("base64");
      writeFileAtomicSync(
        out,
        new TextEncoder().encode(
          `(window.COMODAL_DATA = window.COMODAL_DATA || {})[${JSON.stringify(key)}] = "${b64}";\n`,
        ),
      );
    }
    embedded.set(abs, key);
    return key;
  };
  const colours = colourTables(legend);
  const links: ViewerLink[] = [];
  const used = new Set<string>();
  for (const c of shown) {
    let name = slug(opts.pageName ? opts.pageName(c) : c.id);
    for (let n = 2; used.has(name); n++) name = `${slug(c.id)}-${n}`;
    used.add(name);
    const keys = new Set<string>();
    const entry = (file: string, frame?: number | null) => {
      const key = embed(file);
      keys.add(key);
      return { key, name: niftiName(file), frame: frame ?? 0 };
    };
    const views = c.views.map((v) => ({
      modality: v.modality,
      image: entry(v.image.path, v.image.frame),
      ...(v.prediction ? { prediction: entry(v.prediction) } : {}),
      ...(v.reference ? { reference: entry(v.reference) } : {}),
    }));
    const hasRef = c.views.some((v) => v.reference);
    const radios = c.views.map((v, i) =>
      `<label><input type="radio" name="modality" value="${i}"${i === 0 ? " checked" : ""}> ${
        escapeXml(v.modality)
      }</label>`
    ).join(" ");
    const title = `${opts.title ? `${opts.title}: ` : ""}${c.id}`;
    const json = JSON.stringify({ id: c.id, views, colours }).replace(/</g, "\\u003c");
    const html = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${
      escapeXml(title)
    }</title><style>${PAGE_CSS}</style></head><body>
<h1>${escapeXml(title)}</h1>${c.note ? `<p class="muted">${escapeXml(c.note)}</p>` : ""}
${opts.backHref ? `<p><a href="${escapeXml(opts.backHref)}">back to the report</a></p>` : ""}
<div class="bar"><span>modality: ${radios}</span>
<label>opacity <input id="opacity" type="range" min="0" max="1" step="0.05" value="0.6"></label>
<label><input id="show-pred" type="checkbox" checked> prediction</label>
<label${hasRef ? "" : ' style="display:none"'}><input id="show-ref" type="checkbox"${
      hasRef ? " checked" : ""
    }> reference</label></div>
${legendHtml(legend, hasRef)}
<p id="status"></p>
<div id="view"><canvas id="gl"></canvas></div>
<p class="muted">Drag to move the crosshair, scroll to change slices, right-drag to window the image.</p>
<script src="${NIIVUE_FILE}"></script>
${[...keys].map((k) => `<script src="data/${k}.js"></script>`).join("\n")}
<script type="application/json" id="viewer-data">${json}</script>
<script>${PAGE_SCRIPT}</script>
</body></html>
`;
    const file = path.join(dir, `${name}.html`);
    writeFileAtomicSync(file, new TextEncoder().encode(html));
    links.push({ id: c.id, href: `${VIEWER_DIR}/${name}.html` });
  }
  return links;
}
