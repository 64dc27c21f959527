/**
 * The workflow report: one self-contained HTML file (inline CSS, inline SVG plots, PNG overlays
 * as data URIs) built from run folders. A run folder is any folder holding metrics.json,
 * log.jsonl or the workflow's .comodal_step.json (step id, matrix values, parameters).
 *
 * Contents: a table of metrics per run (grouped by step, one column per matrix value), Dice
 * against every numeric setting that varies (labeled ratio, misalignment, ...) with one line per
 * combination of the other settings (method, ...), training curves from log.jsonl, overlays, and
 * the predicted cases (a training run's predictions/ folder, or the cases `predict` wrote) with
 * their scores and a link to each case's 3D viewer page (src/report/viewer.ts).
 *
 * Every train and predict run folder gets its own report.html (writeRunReport), viewer pages in
 * <run>/viewer/; a workflow report writes viewer pages for the runs it shows into its own folder.
 */
import { basename, join, relative } from "node:path";
import { Buffer } from "node:buffer";
import { escapeXml, lineChartSvg, type Series } from "./svg_plot.ts";
import { RunFolder } from "../train/run_folder.ts";
import { readImage } from "../data/image_io.ts";
import { encodeNifti } from "../data/nifti.ts";
import {
  type LabelLegend,
  legendFromPlan,
  legendHtml,
  type ViewerCase,
  type ViewerLink,
  type ViewerView,
  writeViewerPages,
} from "./viewer.ts";

export interface ClassScores {
  dice?: number;
  /** Mean over the (case, class) pairs where it is defined. */
  hd95?: number;
  /** Pairs left out of the HD95 mean: exactly one of prediction and reference empty. */
  hd95Undefined?: number;
  assd?: number;
}

export interface RunInfo {
  dir: string;
  /** Step id when the folder was written by a workflow, else the folder's path. */
  id: string;
  step?: string;
  kind?: string;
  /** Settings that tell runs apart: matrix values, then method/labeled from params. */
  settings: Record<string, string | number | boolean>;
  mean?: ClassScores;
  perClass: Record<string, ClassScores>;
  /** Training log records (event "iteration" and validation records). */
  log: Record<string, unknown>[];
  images: string[];
  /** Predicted cases the 3D viewer can show (image, prediction and reference files). */
  cases: ViewerCase[];
  /** Class names and label values (from the run's plan.json). */
  legend?: LabelLegend;
  /** Per-prediction scores from metrics.json: "case/modality" -> class -> Dice. */
  caseScores: Record<string, Record<string, number>>;
  /** Viewer pages written for `cases` (relative to the report's folder). */
  viewerLinks?: ViewerLink[];
}

export interface ReportOptions {
  outDir: string;
  title?: string;
  /** Most overlay images embedded per run. */
  maxImagesPerRun?: number;
  /** Most cases per run given a 3D viewer page (default 6; a run's own report: all). */
  maxViewerCasesPerRun?: number;
  /** Folders searched for runs below each input (default 4). */
  maxDepth?: number;
}

function num(v: unknown): number | undefined {
  if (typeof v === "number") return v;
  if (v === "Infinity") return Infinity;
  if (typeof v === "object" && v !== null && typeof (v as { mean?: unknown }).mean === "number") {
    return (v as { mean: number }).mean;
  }
  return undefined;
}

function scores(o: unknown): ClassScores | undefined {
  if (typeof o !== "object" || o === null) return undefined;
  const r = o as Record<string, unknown>;
  const pick = (...keys: string[]) => keys.map((k) => num(r[k])).find((v) => v !== undefined);
  const s = {
    dice: pick("dice", "Dice", "meanDice"),
    hd95: pick("hd95", "HD95"),
    assd: pick("assd", "ASSD"),
  };
  return s.dice === undefined && s.hd95 === undefined && s.assd === undefined ? undefined : s;
}

/**
 * Reads mean and per-class scores from a metrics.json of any of the project's shapes:
 * { mean: {dice,...}, perClass: {LV: {dice: {mean}}} } (the metrics summary), the same nested
 * under a key (e.g. { summary: ... } or { test: ... }), or { dice: {mean} , classes: {...} }.
 */
export function extractMetrics(
  json: unknown,
  depth = 0,
): { mean?: ClassScores; perClass: Record<string, ClassScores> } {
  if (typeof json !== "object" || json === null || depth > 3) return { perClass: {} };
  const o = json as Record<string, unknown>;
  const mean = scores(o.mean);
  const nf = o.nonFinite as Record<string, unknown> | undefined;
  if (mean && nf && typeof nf.hd95 === "number") mean.hd95Undefined = nf.hd95;
  const classTable = (o.perClass ?? o.per_class ?? o.classes) as
    | Record<string, unknown>
    | undefined;
  const perClass: Record<string, ClassScores> = {};
  if (classTable && typeof classTable === "object") {
    for (const [k, v] of Object.entries(classTable)) {
      const s = scores(v);
      if (s) perClass[k] = s;
    }
  }
  if (mean) return { mean, perClass };
  const direct = scores(o);
  if (direct && direct.dice !== undefined) return { mean: direct, perClass };
  for (const v of Object.values(o)) {
    const inner = extractMetrics(v, depth + 1);
    if (inner.mean) return inner;
  }
  return { perClass };
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(Deno.readTextFileSync(path));
  } catch {
    return undefined;
  }
}

function readJsonl(path: string): Record<string, unknown>[] {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return [];
  }
  const out: Record<string, unknown>[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      const v = JSON.parse(line);
      if (typeof v === "object" && v !== null) out.push(v);
    } catch { /* a line cut by a crash */ }
  }
  return out;
}

function isFile(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

/** Finds run folders under the given folders (at most `maxDepth` levels down). */
export function collectRuns(inputs: string[], maxDepth = 4): RunInfo[] {
  const runs: RunInfo[] = [];
  const seen = new Set<string>();
  const visit = (dir: string, depth: number, root: string) => {
    if (seen.has(dir)) return;
    seen.add(dir);
    const run = new RunFolder(dir);
    const hasMetrics = isFile(run.path("metrics"));
    const hasLog = isFile(run.path("log"));
    const meta = readJson(join(dir, ".comodal_step.json")) as
      | {
        id?: string;
        name?: string;
        kind?: string;
        matrix?: Record<string, unknown>;
        params?: Record<string, unknown>;
      }
      | undefined;
    if (hasMetrics || hasLog) {
      const settings: RunInfo["settings"] = {};
      for (const [k, v] of Object.entries(meta?.matrix ?? {})) {
        if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") {
          settings[k] = v;
        }
      }
      const params = meta?.params ?? {};
      if (typeof params.method === "string" && !Object.values(settings).includes(params.method)) {
        settings.method ??= params.method;
      }
      if (typeof params.labeled === "number" && !Object.values(settings).includes(params.labeled)) {
        settings.labeled ??= params.labeled;
      }
      const m = hasMetrics ? extractMetrics(readJson(run.path("metrics"))) : { perClass: {} };
      let images: string[] = [];
      try {
        images = [...Deno.readDirSync(run.path("images"))].filter((e) =>
          e.isFile && e.name.endsWith(".png")
        )
          .map((e) => join(run.path("images"), e.name)).sort();
      } catch { /* none */ }
      const plan = readJson(run.path("plan")) as RunPlanLike | undefined;
      const legend = planLegend(plan);
      runs.push({
        dir,
        id: meta?.id ?? (relative(root, dir) || basename(dir)),
        step: meta?.name,
        kind: meta?.kind,
        settings,
        mean: m.mean,
        perClass: m.perClass,
        log: hasLog ? readJsonl(run.path("log")) : [],
        images,
        cases: legend && plan ? trainingCases(dir, plan) : [],
        legend,
        caseScores: hasMetrics ? caseScores(readJson(run.path("metrics"))) : {},
      });
    }
    if (depth >= maxDepth) return;
    let entries: Deno.DirEntry[] = [];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch {
      return;
    }
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (
        e.isDirectory && !e.name.startsWith(".") && e.name !== "logs" &&
        !(["images", "predictions", "viewer"] as const).some((f) =>
          RunFolder.fileName(f) === e.name
        )
      ) {
        visit(join(dir, e.name), depth + 1, root);
      }
    }
  };
  for (const input of inputs) visit(input, 0, input);
  return runs;
}

/** The fields of a run's plan.json the report reads. */
interface RunPlanLike {
  classes: string[];
  modalities: string[];
  preprocessedDir?: string;
  dataset: { classes: Record<string, number>; labelMap: Record<string, string> | null };
}

function planLegend(plan: RunPlanLike | undefined): LabelLegend | undefined {
  if (!plan || !Array.isArray(plan.classes) || !plan.dataset?.classes) return undefined;
  return legendFromPlan(plan);
}

/** Per-prediction Dice of metrics.json's cases ({ id: "case/modality", classes: {...} }). */
function caseScores(json: unknown): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  const cases = (json as { cases?: unknown } | undefined)?.cases;
  if (!Array.isArray(cases)) return out;
  for (const c of cases) {
    if (typeof c?.id !== "string" || typeof c.classes !== "object" || c.classes === null) continue;
    const row: Record<string, number> = {};
    for (const [k, v] of Object.entries(c.classes as Record<string, unknown>)) {
      const d = num((v as { dice?: unknown })?.dice);
      if (d !== undefined) row[k] = d;
    }
    out[c.id] = row;
  }
  return out;
}

/** A preprocessed case's sidecar (the fields the viewer needs: where each modality came from). */
interface CaseSidecar {
  modalities: Record<
    string,
    { source: { path: string; frame: number | null; labelPath: string | null } }
  >;
}

/**
 * The predicted cases of a training run: <run>/predictions/<case>.nii.gz (fused, shown on every
 * modality) or <case>_<modality>.nii.gz, with the images and reference labels the preprocessing
 * sidecars of the run's data name (cases whose sidecar is gone are left out).
 */
export function trainingCases(dir: string, plan: RunPlanLike): ViewerCase[] {
  let names: string[];
  try {
    names = [...Deno.readDirSync(new RunFolder(dir).path("predictions"))].filter((e) =>
      e.isFile && /\.nii(\.gz)?$/.test(e.name)
    ).map((e) => e.name).sort();
  } catch {
    return [];
  }
  const pre = plan.preprocessedDir;
  if (!pre) return [];
  const sidecars = new Map<string, CaseSidecar | undefined>();
  const sidecar = (id: string) => {
    if (!sidecars.has(id)) {
      sidecars.set(id, readJson(join(pre, "cases", `${id}.json`)) as CaseSidecar | undefined);
    }
    return sidecars.get(id);
  };
  const cases = new Map<string, ViewerView[]>();
  for (const name of names) {
    const stem = name.replace(/\.nii(\.gz)?$/, "");
    const file = join(new RunFolder(dir).path("predictions"), name);
    const mod = plan.modalities.find((m) =>
      stem.endsWith(`_${m}`) && sidecar(stem.slice(0, -m.length - 1))?.modalities?.[m]
    );
    const id = mod ? stem.slice(0, -mod.length - 1) : stem;
    const rec = sidecar(id);
    if (!rec?.modalities) continue;
    const views = cases.get(id) ?? [];
    for (const m of mod ? [mod] : plan.modalities) {
      const src = rec.modalities[m]?.source;
      if (!src || !isFile(src.path)) continue;
      views.push({
        modality: m,
        image: { path: src.path, frame: src.frame },
        prediction: file,
        ...(src.labelPath && isFile(src.labelPath) ? { reference: src.labelPath } : {}),
      });
    }
    cases.set(id, views);
  }
  return [...cases].map(([id, views]) => ({ id, views }));
}

const CSS =
  `body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:12px}
.imgs{display:flex;flex-wrap:wrap;gap:8px}.imgs figure{margin:0}.imgs img{max-width:320px;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:12px;color:#555}.muted{color:#888}
.legend{list-style:none;padding:0;margin:4px 0;display:flex;flex-wrap:wrap;gap:14px}.legend li{display:flex;align-items:center;gap:4px}
.sw{display:inline-block;width:14px;height:14px;border:1px solid #888}`;

function f(v: number | undefined, digits = 3): string {
  if (v === undefined || Number.isNaN(v)) return "–";
  if (!Number.isFinite(v)) return "∞";
  return v.toFixed(digits);
}

function settingLabel(key: string): string {
  if (/ratio|labeled/i.test(key)) return "labeled ratio";
  if (/misalign|shift|translation/i.test(key)) return "misalignment (mm)";
  return key;
}

/** Dice against each numeric setting that varies, one series per combination of the others. */
export function settingPlots(runs: RunInfo[]): string[] {
  const withDice = runs.filter((r) => r.mean?.dice !== undefined);
  const keys = [...new Set(withDice.flatMap((r) => Object.keys(r.settings)))];
  const plots: string[] = [];
  for (const key of keys) {
    const values = new Set(
      withDice.map((r) => r.settings[key]).filter((v) => typeof v === "number"),
    );
    if (values.size < 2) continue;
    const groups = new Map<string, [number, number][]>();
    for (const r of withDice) {
      const x = r.settings[key];
      if (typeof x !== "number") continue;
      const others = Object.entries(r.settings).filter(([k]) => k !== key).map(([k, v]) =>
        `${k}=${v}`
      );
      const name = [r.step && r.step !== "train" ? r.step : "", ...others].filter((s) =>
        s
      ).join(", ") || "dice";
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name)!.push([x, r.mean!.dice!]);
    }
    const series: Series[] = [...groups].map(([name, points]) => ({ name, points }));
    const label = settingLabel(key);
    plots.push(
      lineChartSvg(series, { title: `Dice against ${label}`, xLabel: label, yLabel: "mean Dice" }),
    );
  }
  return plots;
}

function iterationOf(rec: Record<string, unknown>): number | undefined {
  return num(rec.iteration) ?? num(rec.iter) ?? num(rec.step);
}

/** Training curves: losses of iteration records and Dice of validation records, per run. */
export function trainingPlots(runs: RunInfo[]): string[] {
  const loss: Series[] = [];
  const val: Series[] = [];
  for (const r of runs) {
    if (r.log.length === 0) continue;
    const lossPts: [number, number][] = [];
    const valPts: [number, number][] = [];
    for (const rec of r.log) {
      const it = iterationOf(rec);
      if (it === undefined) continue;
      const ev = String(rec.event ?? "");
      const dice = num(rec.dice) ?? num(rec.meanDice) ?? num(rec.valDice) ?? num(rec.val_dice) ??
        scores(rec.mean)?.dice;
      if (/val/i.test(ev) || (dice !== undefined && ev !== "iteration")) {
        if (dice !== undefined) valPts.push([it, dice]);
        continue;
      }
      // Other events (start/end/config) carry fields such as `total` (the iteration count).
      if (ev !== "" && ev !== "iteration") continue;
      const l = num(rec.loss) ?? num(rec.total) ?? num(rec.lossTotal) ?? num(rec.loss_total);
      if (l !== undefined) lossPts.push([it, l]);
    }
    if (lossPts.length > 0) loss.push({ name: r.id, points: smooth(lossPts) });
    if (valPts.length > 0) val.push({ name: r.id, points: valPts });
  }
  const out: string[] = [];
  if (loss.length > 0) {
    out.push(
      lineChartSvg(loss, {
        title: "Training loss",
        xLabel: "iteration",
        yLabel: "loss",
        markers: false,
      }),
    );
  }
  if (val.length > 0) {
    out.push(
      lineChartSvg(val, { title: "Validation Dice", xLabel: "iteration", yLabel: "mean Dice" }),
    );
  }
  return out;
}

/** Thins long curves to at most 400 points by averaging windows. */
function smooth(points: [number, number][]): [number, number][] {
  if (points.length <= 400) return points;
  const w = Math.ceil(points.length / 400);
  const out: [number, number][] = [];
  for (let i = 0; i < points.length; i += w) {
    const chunk = points.slice(i, i + w);
    out.push([chunk[chunk.length - 1][0], chunk.reduce((a, p) => a + p[1], 0) / chunk.length]);
  }
  return out;
}

function metricsTables(runs: RunInfo[]): string {
  // One table per step kind (train, evaluate, ...); a step column when several steps share it.
  const groups = new Map<string, RunInfo[]>();
  for (const r of runs) {
    const g = r.kind ?? "runs";
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g)!.push(r);
  }
  const parts: string[] = [];
  for (const [name, rs] of groups) {
    const steps = new Set(rs.map((r) => r.step ?? r.id));
    const keys = [...new Set(rs.flatMap((r) => Object.keys(r.settings)))];
    const classes = [...new Set(rs.flatMap((r) => Object.keys(r.perClass)))];
    const showStep = steps.size > 1 || keys.length === 0;
    const head = [
      showStep ? `<th class="l">${keys.length ? "step" : "run"}</th>` : "",
      ...keys.map((k) => `<th class="l">${escapeXml(k)}</th>`),
      "<th>mean Dice</th><th>HD95 (mm; undefined)</th><th>ASSD (mm)</th>",
      ...classes.map((c) => `<th>Dice ${escapeXml(c)}</th>`),
    ].join("");
    const rows = rs.map((r) => {
      const cells = [
        showStep ? `<td class="l">${escapeXml(keys.length ? (r.step ?? r.id) : r.id)}</td>` : "",
        ...keys.map((k) => `<td class="l">${escapeXml(String(r.settings[k] ?? "–"))}</td>`),
        `<td>${f(r.mean?.dice)}</td><td>${f(r.mean?.hd95, 2)}${
          r.mean?.hd95Undefined ? ` (${r.mean.hd95Undefined} undefined, left out)` : ""
        }</td><td>${f(r.mean?.assd, 2)}</td>`,
        ...classes.map((c) => `<td>${f(r.perClass[c]?.dice)}</td>`),
      ];
      return `<tr>${cells.join("")}</tr>`;
    });
    parts.push(`<h3>${escapeXml(name)}</h3><table><tr>${head}</tr>${rows.join("")}</table>`);
  }
  return parts.join("");
}

/** The scores of a case's predictions ("case/modality" keys of metrics.json). */
function scoresOf(r: RunInfo, id: string): [string, Record<string, number>][] {
  return Object.entries(r.caseScores).filter(([k]) => k.startsWith(`${id}/`)).map((
    [k, v],
  ) => [k.slice(id.length + 1), v]);
}

/** One line of a case's Dice per prediction, for its viewer page. */
function scoreNote(r: RunInfo, id: string): string | undefined {
  const rows = scoresOf(r, id);
  if (rows.length === 0) return undefined;
  return "Dice " +
    rows.map(([m, v]) => `${m}: ${Object.entries(v).map(([c, d]) => `${c} ${f(d)}`).join(", ")}`)
      .join("; ");
}

/** The predicted cases of each run: scores per class and a link to the case's 3D viewer. */
function casesSection(runs: RunInfo[]): string {
  const shown = runs.filter((r) => r.cases.length > 0);
  if (shown.length === 0) return "";
  const parts: string[] = ["<h2>Cases</h2>"];
  for (const r of shown) {
    const links = new Map((r.viewerLinks ?? []).map((l) => [l.id, l.href]));
    const classes = (r.legend?.classes ?? []).slice(1);
    const scored = r.cases.some((c) => scoresOf(r, c.id).length > 0);
    const head = `<tr><th class="l">case</th><th class="l">3D viewer</th>${
      scored
        ? `<th class="l">prediction</th>${
          classes.map((c) => `<th>Dice ${escapeXml(c)}</th>`).join("")
        }`
        : ""
    }</tr>`;
    const rows = r.cases.map((c) => {
      const href = links.get(c.id);
      const link = href
        ? `<a href="${escapeXml(href)}">open</a> <span class="muted">(${
          c.views.map((v) => escapeXml(v.modality)).join(", ")
        })</span>`
        : `<span class="muted">not written</span>`;
      const sc = scoresOf(r, c.id);
      if (!scored) {
        return `<tr><td class="l">${escapeXml(c.id)}</td><td class="l">${link}</td></tr>`;
      }
      const lines = sc.length ? sc : [["–", {}] as [string, Record<string, number>]];
      return lines.map(([m, v], i) =>
        `<tr>${
          i === 0
            ? `<td class="l" rowspan="${lines.length}">${
              escapeXml(c.id)
            }</td><td class="l" rowspan="${lines.length}">${link}</td>`
            : ""
        }<td class="l">${escapeXml(m)}</td>${
          classes.map((k) => `<td>${f(v[k])}</td>`).join("")
        }</tr>`
      ).join("");
    });
    const hidden = r.cases.length - links.size;
    parts.push(
      (shown.length > 1 ? `<h3>${escapeXml(r.id)}</h3>` : "") +
        (r.legend
          ? legendHtml(r.legend, r.cases.some((c) => c.views.some((v) => v.reference)))
          : "") +
        `<table>${head}${rows.join("")}</table>` +
        (hidden > 0 && links.size > 0
          ? `<p class="muted">${hidden} more case(s) without a viewer page (see maxViewerCasesPerRun)</p>`
          : ""),
    );
  }
  return parts.join("\n");
}

/** Builds the HTML text of a report over the given runs. */
export function renderReport(
  runs: RunInfo[],
  opts: { title?: string; maxImagesPerRun?: number } = {},
): string {
  const title = opts.title ?? "comodal report";
  const body: string[] = [`<h1>${escapeXml(title)}</h1>`];
  body.push(
    `<p class="muted">${runs.length} run folder(s); written ${new Date().toISOString()}</p>`,
  );
  const withMetrics = runs.filter((r) => r.mean);
  body.push("<h2>Metrics</h2>");
  body.push(
    withMetrics.length
      ? metricsTables(withMetrics)
      : `<p class="muted">no ${RunFolder.fileName("metrics")} found</p>`,
  );
  const sp = settingPlots(runs);
  if (sp.length) body.push(`<h2>Dice against settings</h2><div class="plots">${sp.join("")}</div>`);
  const tp = trainingPlots(runs);
  if (tp.length) body.push(`<h2>Training curves</h2><div class="plots">${tp.join("")}</div>`);
  body.push(casesSection(runs));
  const maxImg = opts.maxImagesPerRun ?? 6;
  const imgRuns = runs.filter((r) => r.images.length > 0);
  if (imgRuns.length) {
    body.push("<h2>Slice overlays</h2>");
    for (const r of imgRuns) {
      const figs = r.images.slice(0, maxImg).map((p) => {
        const data = Buffer.from(Deno.readFileSync(p)).toString("base64");
        return `<figure><img alt="${
          escapeXml(basename(p))
        }" src="data:image/png;base64,${data}"><figcaption>${
          escapeXml(basename(p))
        }</figcaption></figure>`;
      });
      body.push(`<h3>${escapeXml(r.id)}</h3><div class="imgs">${figs.join("")}</div>`);
    }
  }
  return `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${
    escapeXml(title)
  }</title><style>${CSS}</style></head><body>${body.join("\n")}</body></html>\n`;
}

/** Collects runs under `inputs` and writes <outDir>/report.html atomically; returns its path. */
export async function writeReport(inputs: string[], opts: ReportOptions): Promise<string> {
  for (const i of inputs) {
    try {
      if (!Deno.statSync(i).isDirectory) throw new Error("not a folder");
    } catch (err) {
      throw new Error(
        `Cannot report on ${i}: ${
          err instanceof Deno.errors.NotFound ? "folder not found" : (err as Error).message
        }`,
      );
    }
  }
  const runs = collectRuns(inputs, opts.maxDepth);
  return await writeReportOfRuns(runs, opts);
}

/** Writes the viewer pages of the runs' cases, then <outDir>/report.html; returns its path. */
async function writeReportOfRuns(runs: RunInfo[], opts: ReportOptions): Promise<string> {
  await Deno.mkdir(opts.outDir, { recursive: true });
  const max = opts.maxViewerCasesPerRun ?? 6;
  runs.forEach((r, i) => {
    if (!r.legend || r.cases.length === 0) return;
    const prefix = runs.length > 1 ? `${i + 1}-` : "";
    const cases = r.cases.slice(0, max).map((c) => ({ ...c, note: c.note ?? scoreNote(r, c.id) }));
    r.viewerLinks = writeViewerPages(opts.outDir, cases, r.legend, {
      title: runs.length > 1 ? r.id : undefined,
      backHref: "../report.html",
      pageName: (c) => `${prefix}${c.id}`,
    });
  });
  const html = renderReport(runs, opts);
  const path = new RunFolder(opts.outDir).path("report");
  const tmp = `${path}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, html);
  await Deno.rename(tmp, path);
  return path;
}

/** What `predict` wrote: the cases, their input images and their label maps. */
export interface PredictedCases {
  /** The training run the predictions come from (its plan.json names the classes). */
  runDir: string;
  /** Voxel values of the label maps: class indices ("index") or the dataset's values ("file"). */
  labelValues?: "index" | "file";
  cases: {
    id: string;
    /** Image per modality: a file, or one frame of a 4-D file. */
    images: Record<string, string | { path: string; frame?: number }>;
    /** Label map files written: "fused" (shown on every modality) or per modality. */
    files: Record<string, string>;
  }[];
}

/**
 * The report of one run folder, <dir>/report.html with viewer pages in <dir>/viewer/: a training
 * run (metrics, curves, its predictions/ folder) or, with `predicted`, the output folder of
 * `predict`. Never throws: a report that cannot be written is a warning (the run's results are
 * already on disk); returns the report's path, or null.
 */
export async function writeRunReport(
  dir: string,
  predicted?: PredictedCases,
): Promise<string | null> {
  const tmpDirs: string[] = [];
  try {
    let runs: RunInfo[];
    let title: string;
    if (predicted) {
      const planFile = new RunFolder(predicted.runDir).path("plan");
      const plan = readJson(planFile) as RunPlanLike | undefined;
      const legend = planLegend(plan);
      if (!plan || !legend) throw new Error(`${planFile} is missing`);
      if (predicted.labelValues === "file") {
        legend.predictionValues = plan.classes.map((n, k) =>
          k === 0 ? plan.dataset.classes.background ?? 0 : plan.dataset.classes[n]
        );
      }
      // NiiVue is given NIfTI: MetaImage, NRRD and DICOM inputs are converted to a temporary copy.
      const asNifti = async (img: { path: string; frame?: number | null }) => {
        if (/\.nii(\.gz)?$/i.test(img.path)) return img;
        const im = await readImage(img.path);
        tmpDirs.push(Deno.makeTempDirSync({ prefix: "comodal-viewer-" }));
        const file = join(tmpDirs.at(-1)!, `${basename(img.path).replace(/\.[^.]*$/, "")}.nii`);
        Deno.writeFileSync(file, encodeNifti(im));
        return { ...img, path: file };
      };
      const cases: ViewerCase[] = [];
      for (const c of predicted.cases) {
        const views: ViewerCase["views"] = [];
        for (const [key, file] of Object.entries(c.files)) {
          for (const m of key === "fused" ? plan.modalities : [key]) {
            const img = c.images[m];
            if (img === undefined) continue;
            views.push({
              modality: m,
              image: await asNifti(typeof img === "string" ? { path: img } : img),
              prediction: file,
            });
          }
        }
        cases.push({ id: c.id, views });
      }
      title = `predictions of ${basename(predicted.runDir)}`;
      runs = [{
        dir,
        id: basename(dir),
        settings: {},
        perClass: {},
        log: [],
        images: [],
        cases,
        legend,
        caseScores: {},
      }];
    } else {
      runs = collectRuns([dir], 0);
      title = `run ${basename(dir)}`;
    }
    return await writeReportOfRuns(runs, {
      outDir: dir,
      title,
      maxImagesPerRun: 1000,
      maxViewerCasesPerRun: 1000,
    });
  } catch (e) {
    console.error(
      `warning: could not write ${new RunFolder(dir).path("report")}: ${(e as Error).message}`,
    );
    return null;
  } finally {
    for (const d of tmpDirs) Deno.removeSync(d, { recursive: true });
  }
}
