/**
 * `deno task bench --only quality --data DIR`: segmentation quality on real data, every method and
 * the plain PyTorch U-Net on the same split, inputs, outputs and wall-clock budget.
 *
 * DIR is any layout the importers read (nnU-Net raw, BraTS, Decathlon, MS-CMRSeg, AMOS) or a
 * manifest. Cases with labels are rotated through `--folds` folds: in fold f the test cases come
 * first, then `--labeled` labeled and `--unlabeled` unlabeled training cases (the unlabeled ones
 * lose their labels in the fold's manifest: nothing in training can read them). Per fold the bench
 * writes <work>/f<f>/manifest.json and runs, for each seed:
 * - `--recipe defaults`: `deno task train` of every `--methods` method with the defaults and
 *   `--time`, then `deno task predict` on the test cases (label file values);
 * - `--recipe reference`: the plain U-Net recipe (bench/quality/RECIPE.md): its preprocessing
 *   once (bench/quality/reference_prep.py), the PyTorch U-Net (bench/quality/torch_reference_unet.py)
 *   and comodal's early fusion set to the same recipe on the same arrays.
 * Predictions are scored by bench/quality/score.py (an independent scorer: Dice and HD95 per class
 * and region at the original grid, MedPy/nnU-Net conventions, undefined HD95 counted). The table
 * gives mean +- standard deviation over folds x seeds, wall time of the training command and its
 * peak resident memory; bench/results/quality.json keeps every run.
 *
 * PyTorch comes from bench/torch_python.ts (.tools/torchvenv of `make bench-env`, with nibabel and
 * scipy; --torch-python or COMODAL_TORCH_PYTHON override it);
 * without it the reference rows are left out and the scorer cannot run (the bench says so).
 *
 * @module
 */
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { BENCH_ENV_HINT, torchPython as findTorchPython } from "./torch_python.ts";
import { importDataset } from "../src/data/importers.ts";
import { loadManifest, type Manifest, refPath } from "../src/data/manifest.ts";
import type { BenchModule, BenchOptions, BenchResult, Cell } from "./report.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const HERE = fileURLToPath(new URL("./quality/", import.meta.url));

/** The plain U-Net recipe as comodal settings (early fusion on the reference's 2x arrays). */
export const REFERENCE_RECIPE_SETS = [
  "batchLabeled=2",
  "batchUnlabeled=0",
  "patchSize=[64,64,64]",
  "network.maxLevels=4",
  "network.maxWidth=128",
  "network.deepSupervision=0",
  "optimizer.warmup=0",
  "augment.mode=flips",
  "validation.every=0",
  "validation.mirror=false",
  "images=false",
];

export interface QualityArgs {
  data: string;
  methods: string[];
  seeds: number[];
  folds: number;
  /** Run only this fold of the rotation (default: all). */
  fold?: number;
  labeled: number;
  unlabeled: number;
  test: number;
  time: string;
  /** Fixed training iterations instead of the --time budget (comparisons that must not depend on machine load). */
  iterations?: number;
  recipe: ("defaults" | "reference")[];
  work: string;
  regions?: string;
  sets: string[];
  zscore: boolean;
}

function torchPython(): string | null {
  const found = findTorchPython();
  return "error" in found ? null : found.python;
}

interface Measured {
  code: number;
  seconds: number;
  peakMiB: number | null;
}

/** Runs a command, its output going to a log file; wall time and peak RSS via /usr/bin/time. */
async function run(cmd: string[], log: string): Promise<Measured> {
  const timeBin = existsSync("/usr/bin/time")
    ? ["/usr/bin/time", "-f", "%M", "-o", log + ".rss"]
    : [];
  const t0 = performance.now();
  const p = new Deno.Command("bash", {
    args: ["-c", 'log="$1"; shift; exec "$@" > "$log" 2>&1', "run", log, ...timeBin, ...cmd],
    cwd: ROOT,
    stdout: "null",
    stderr: "null",
  }).spawn();
  const st = await p.status;
  const seconds = (performance.now() - t0) / 1000;
  let peakMiB: number | null = null;
  try {
    const kb = Number(readFileSync(log + ".rss", "utf8").trim().split("\n").pop());
    if (Number.isFinite(kb)) peakMiB = kb / 1024;
  } catch { /* no measurement */ }
  return { code: st.code, seconds, peakMiB };
}

function deno(): string {
  return Deno.execPath();
}

/** The fold's manifest: test cases (no labels), labeled and unlabeled (labels removed) training cases. */
export function foldManifest(
  m: Manifest,
  fold: number,
  opts: { labeled: number; unlabeled: number; test: number },
): { manifest: Manifest; test: string[]; labeled: string[]; unlabeled: string[] } {
  const pool = m.cases.filter((c) => c.labels && Object.keys(c.labels).length).map((c) => c.id)
    .sort();
  const need = opts.test + opts.labeled;
  if (pool.length < need) {
    throw new Error(
      `quality bench: ${pool.length} labeled cases, need at least ${need} (--test ${opts.test} + --labeled ${opts.labeled})`,
    );
  }
  const rot = [
    ...pool.slice((fold * opts.test) % pool.length),
    ...pool.slice(0, (fold * opts.test) % pool.length),
  ];
  const test = rot.slice(0, opts.test);
  const labeled = rot.slice(opts.test, need);
  const unlabeled = rot.slice(need, need + opts.unlabeled);
  const byId = new Map(m.cases.map((c) => [c.id, c]));
  const abs = (r: string | { path: string; frame: number }) =>
    typeof r === "string" ? path.resolve(r) : { path: path.resolve(r.path), frame: r.frame };
  const absRecord = (rec: Record<string, string | { path: string; frame: number }>) =>
    Object.fromEntries(Object.entries(rec).map(([k, v]) => [k, abs(v)]));
  const base: Manifest["cases"] = [
    ...labeled.map((id) => ({ ...byId.get(id)!, split: "train" as const, labeled: true })),
    ...unlabeled.map((id) => {
      const { labels: _hidden, ...c } = byId.get(id)!;
      return { ...c, split: "train" as const, labeled: false };
    }),
    ...test.map((id) => {
      const { labels: _hidden, ...c } = byId.get(id)!;
      return { ...c, split: "test" as const, labeled: false };
    }),
  ];
  const cases = base.map((c) => ({
    ...c,
    images: absRecord(c.images),
    ...(c.labels ? { labels: absRecord(c.labels) } : {}),
  }));
  const { root: _root, ...rest } = m;
  return { manifest: { ...rest, cases }, test, labeled, unlabeled };
}

interface RunRecord {
  recipe: string;
  method: string;
  output: string;
  fold: number;
  seed: number;
  seconds: number;
  peakMiB: number | null;
  summary: Record<string, { dice: number | null; hd95: number | null; hd95_undefined: number }>;
}

async function score(
  py: string,
  predDir: string,
  refDir: string,
  out: string,
  opts: { crops?: string; regions?: string },
): Promise<RunRecord["summary"]> {
  const args = [path.join(HERE, "score.py"), "--pred", predDir, "--ref", refDir, "--out", out];
  if (opts.crops) args.push("--crops", opts.crops);
  if (opts.regions) args.push("--regions", opts.regions);
  const r = await run([py, ...args], out + ".log");
  if (r.code !== 0) throw new Error(`scoring ${predDir} failed: see ${out}.log`);
  return JSON.parse(readFileSync(out, "utf8")).summary;
}

/** Links <dir>/<case>.nii.gz to each prediction file <src>/<case><suffix>.nii.gz. */
function linkAs(src: string, suffix: string, ids: string[], dir: string): string {
  mkdirSync(dir, { recursive: true });
  for (const id of ids) {
    const f = path.join(src, `${id}${suffix}.nii.gz`);
    const to = path.join(dir, `${id}.nii.gz`);
    if (existsSync(f) && !existsSync(to)) symlinkSync(f, to);
  }
  return dir;
}

function meanSd(xs: number[]): string {
  if (!xs.length) return "-";
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = xs.length > 1
    ? Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / (xs.length - 1))
    : 0;
  return `${m.toFixed(3)} ± ${sd.toFixed(3)}`;
}

/** Runs the whole comparison; returns every run's record. */
export async function runQuality(
  a: QualityArgs,
  log: (s: string) => void = console.error,
): Promise<RunRecord[]> {
  const py = torchPython();
  if (!py) {
    throw new Error(
      `quality bench: no Python with torch, nibabel and scipy (the scorer needs it): ${BENCH_ENV_HINT}`,
    );
  }
  const src = /\.(ya?ml|json)$/i.test(a.data)
    ? await loadManifest(a.data)
    : await importDataset(a.data);
  const records: RunRecord[] = [];
  for (let f = 0; f < a.folds; f++) {
    if (a.fold !== undefined && f !== a.fold) continue;
    const fd = path.resolve(a.work, `f${f}`);
    mkdirSync(fd, { recursive: true });
    const fm = foldManifest(src, f, a);
    const manFile = path.join(fd, "manifest.json");
    writeFileSync(manFile, JSON.stringify(fm.manifest, null, 1));
    // References for the scorer only: the test cases' label files, never given to training.
    const refDir = path.join(fd, "ref");
    mkdirSync(refDir, { recursive: true });
    // A per-modality label (MS-CMRSeg: one per sequence, on its own grid) also gets ref_<modality>/.
    const refFor = (output: string) => {
      const d = path.join(fd, `ref_${output}`);
      return existsSync(d) ? d : refDir;
    };
    for (const id of fm.test) {
      const c = src.cases.find((x) => x.id === id)!;
      const lab = c.labels!.shared ?? Object.values(c.labels!)[0];
      const to = path.join(refDir, `${id}.nii.gz`);
      if (!existsSync(to)) symlinkSync(path.resolve(refPath(lab)), to);
      for (const [m, l] of Object.entries(c.labels!)) {
        if (m === "shared") continue;
        mkdirSync(path.join(fd, `ref_${m}`), { recursive: true });
        const tm = path.join(fd, `ref_${m}`, `${id}.nii.gz`);
        if (!existsSync(tm)) symlinkSync(path.resolve(refPath(l)), tm);
      }
    }
    log(
      `[quality] fold ${f}: test ${fm.test.join(",")}; labeled ${fm.labeled.join(",")}; unlabeled ${
        fm.unlabeled.join(",") || "-"
      }`,
    );
    for (const seed of a.seeds) {
      if (a.recipe.includes("reference")) {
        const prep = path.join(fd, "prep");
        if (!existsSync(path.join(prep, "crops.json"))) {
          const r = await run(
            [
              py,
              path.join(HERE, "reference_prep.py"),
              "--manifest",
              manFile,
              "--out",
              prep,
              ...(a.zscore ? ["--zscore"] : []),
            ],
            path.join(fd, "prep.log"),
          );
          if (r.code !== 0) throw new Error(`reference preprocessing failed: see ${fd}/prep.log`);
        }
        const crops = path.join(prep, "crops.json");
        const tdir = path.join(fd, `torch_s${seed}`);
        const t = await run(
          [
            py,
            path.join(HERE, "torch_reference_unet.py"),
            "--data",
            prep,
            "--out",
            tdir,
            "--seed",
            String(seed),
          ],
          tdir + ".log",
        );
        if (t.code !== 0) throw new Error(`PyTorch reference failed: see ${tdir}.log`);
        records.push({
          recipe: "reference",
          method: "pytorch-unet",
          output: "-",
          fold: f,
          seed,
          seconds: t.seconds,
          peakMiB: t.peakMiB,
          summary: await score(py, tdir, refDir, tdir + ".scores.json", {
            crops,
            regions: a.regions,
          }),
        });
        log(
          `[quality] fold ${f} seed ${seed} pytorch-unet: ${
            JSON.stringify(records.at(-1)!.summary)
          }`,
        );
        const cdir = path.join(fd, `recipe_early-fusion_s${seed}`);
        const c = await run([
          deno(),
          "run",
          "-A",
          "cli/main.ts",
          "train",
          prep,
          "--method",
          "early-fusion",
          "--iterations",
          "400",
          "--seed",
          String(seed),
          "--out",
          cdir,
          "--threads",
          "2",
          "--set",
          "targetSpacing=[2,2,2]",
          ...REFERENCE_RECIPE_SETS,
          ...a.sets,
        ], cdir + ".log");
        if (c.code !== 0) {
          throw new Error(`comodal at the reference recipe failed: see ${cdir}.log`);
        }
        const p = await run([
          deno(),
          "run",
          "-A",
          "cli/main.ts",
          "predict",
          "--run",
          cdir,
          "--data",
          prep,
          "--split",
          "test",
          "--checkpoint",
          "last",
          "--out",
          path.join(cdir, "test"),
        ], cdir + ".predict.log");
        if (p.code !== 0) throw new Error(`comodal predict failed: see ${cdir}.predict.log`);
        const m0 =
          JSON.parse(readFileSync(path.join(prep, "dataset.json"), "utf8")).channel_names["0"];
        records.push({
          recipe: "reference",
          method: "early-fusion",
          output: "-",
          fold: f,
          seed,
          seconds: c.seconds,
          peakMiB: c.peakMiB,
          summary: await score(
            py,
            linkAs(path.join(cdir, "test"), `_${m0}`, fm.test, path.join(cdir, "scored")),
            refDir,
            cdir + ".scores.json",
            { crops, regions: a.regions },
          ),
        });
        log(
          `[quality] fold ${f} seed ${seed} comodal early-fusion (recipe): ${
            JSON.stringify(records.at(-1)!.summary)
          }`,
        );
      }
      if (a.recipe.includes("defaults")) {
        for (const method of a.methods) {
          const dir = path.join(fd, `${method}_s${seed}`);
          const r = await run([
            deno(),
            "run",
            "-A",
            "cli/main.ts",
            "train",
            manFile,
            "--method",
            method,
            "--seed",
            String(seed),
            ...(a.iterations !== undefined
              ? ["--iterations", String(a.iterations)]
              : ["--time", a.time]),
            "--out",
            dir,
            ...(a.sets.length ? ["--set", ...a.sets] : []),
          ], dir + ".log");
          if (r.code !== 0) throw new Error(`train ${method} failed: see ${dir}.log`);
          const p = await run([
            deno(),
            "run",
            "-A",
            "cli/main.ts",
            "predict",
            "--run",
            dir,
            "--manifest",
            manFile,
            "--split",
            "test",
            "--label-values",
            "file",
            "--out",
            path.join(dir, "test"),
          ], dir + ".predict.log");
          if (p.code !== 0) throw new Error(`predict ${method} failed: see ${dir}.predict.log`);
          // One map per case (fused or single-output methods) or one per modality decoder.
          const outputs = new Set<string>();
          for (const e of Deno.readDirSync(path.join(dir, "test"))) {
            // The longest test id the file belongs to (patient1 must not take patient10_C0).
            const id = fm.test.filter((t) => e.name === `${t}.nii.gz` || e.name.startsWith(`${t}_`))
              .sort((x, y) => y.length - x.length)[0];
            if (id && e.name.endsWith(".nii.gz")) {
              outputs.add(e.name.slice(id.length, -".nii.gz".length));
            }
          }
          for (const suffix of [...outputs].sort()) {
            const out = suffix === "" ? "fused" : suffix.replace(/^_/, "");
            records.push({
              recipe: "defaults",
              method,
              output: out,
              fold: f,
              seed,
              seconds: r.seconds,
              peakMiB: r.peakMiB,
              summary: await score(
                py,
                linkAs(path.join(dir, "test"), suffix, fm.test, path.join(dir, `scored_${out}`)),
                refFor(out),
                `${dir}.${out}.scores.json`,
                { regions: a.regions },
              ),
            });
            log(
              `[quality] fold ${f} seed ${seed} ${method} (${out}): ${
                JSON.stringify(records.at(-1)!.summary)
              }`,
            );
          }
        }
      }
    }
  }
  return records;
}

/** One row per (recipe, method, output): mean +- sd over folds x seeds of each group's Dice and HD95. */
export function qualityTable(records: RunRecord[]): { columns: string[]; rows: Cell[][] } {
  const groups = [...new Set(records.flatMap((r) => Object.keys(r.summary)))];
  const keys = [...new Set(records.map((r) => `${r.recipe}\t${r.method}\t${r.output}`))];
  const columns = [
    "recipe",
    "method",
    "output",
    "runs",
    ...groups.flatMap((g) => [`Dice ${g}`, `HD95 ${g} (undef.)`]),
    "train s",
    "peak MiB",
  ];
  const rows = keys.map((k) => {
    const rs = records.filter((r) => `${r.recipe}\t${r.method}\t${r.output}` === k);
    const [recipe, method, output] = k.split("\t");
    const cells: Cell[] = [recipe, method, output, String(rs.length)];
    for (const g of groups) {
      cells.push(
        meanSd(
          rs.map((r) => r.summary[g]?.dice).filter((x): x is number =>
            x !== null && x !== undefined
          ),
        ),
      );
      const h = rs.map((r) => r.summary[g]?.hd95).filter((x): x is number =>
        x !== null && x !== undefined
      );
      const undef = rs.reduce((a, r) => a + (r.summary[g]?.hd95_undefined ?? 0), 0);
      cells.push(`${meanSd(h)} (${undef})`);
    }
    cells.push(Math.round(rs.reduce((a, r) => a + r.seconds, 0) / rs.length));
    const mem = rs.map((r) => r.peakMiB).filter((x): x is number => x !== null);
    cells.push(mem.length ? Math.round(Math.max(...mem)) : null);
    return cells;
  });
  return { columns, rows };
}

export function parseQualityArgs(v: Record<string, string | boolean | undefined>): QualityArgs {
  const str = (k: string) => (typeof v[k] === "string" ? (v[k] as string) : undefined);
  const int = (k: string, d: number) => {
    const s = str(k);
    if (s === undefined) return d;
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0) {
      throw new Error(`--${k} must be a non-negative integer, got "${s}"`);
    }
    return n;
  };
  const data = str("data");
  if (!data) throw new Error("bench quality: give --data DIR (a dataset folder or manifest)");
  const recipe = (str("recipe") ?? "defaults,reference").split(",").map((s) => s.trim());
  for (const r of recipe) {
    if (r !== "defaults" && r !== "reference") {
      throw new Error(`--recipe: "${r}" is not defaults or reference`);
    }
  }
  return {
    data,
    methods: (str("methods") ?? "supervised,early-fusion,mean-teacher,mutual,cmc").split(",").map((
      s,
    ) => s.trim()),
    seeds: (str("seeds") ?? "0,1,2").split(",").map(Number),
    folds: int("folds", 1),
    fold: str("fold") === undefined ? undefined : int("fold", 0),
    labeled: int("labeled", 2),
    unlabeled: int("unlabeled", 2),
    test: int("test", 2),
    time: str("time") ?? "15m",
    iterations: str("iterations") === undefined ? undefined : int("iterations", 0),
    recipe: recipe as QualityArgs["recipe"],
    work: str("work") ?? "runs/bench-quality",
    regions: str("regions"),
    sets: (str("set") ?? "").split(/\s+/).filter(Boolean),
    zscore: v.zscore === true,
  };
}

export const qualityBench: BenchModule = {
  name: "quality",
  description:
    "segmentation quality on real data: every method and the PyTorch U-Net, same split and budget (--data DIR)",
  async run(opts: BenchOptions): Promise<BenchResult> {
    const a = parseQualityArgs(opts.extra ?? {});
    const records = await runQuality(a);
    const t = qualityTable(records);
    return {
      name: "quality",
      title:
        `Segmentation quality on ${a.data}: ${a.labeled} labeled + ${a.unlabeled} unlabeled, ${a.test} test cases, ` +
        `${a.folds} fold(s) x seeds ${a.seeds.join(",")}, budget ${
          a.iterations !== undefined ? `${a.iterations} iterations` : a.time
        } (defaults)`,
      columns: t.columns,
      rows: t.rows,
      notes: [
        "mean ± standard deviation over folds x seeds; Dice 1 where prediction and reference are both empty;",
        "HD95 mean over the cases where it is defined, (n) = cases where exactly one mask is empty;",
        "reference = the plain PyTorch U-Net recipe (bench/quality/RECIPE.md) on its own preprocessing, comodal early fusion on the same arrays;",
        "scored by bench/quality/score.py at the original grid; train s = wall time of the training command.",
      ],
      details: { args: a, records },
    };
  },
};
