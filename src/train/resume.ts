/**
 * Resuming a run (`train --resume --out R`), as nnU-Net's `--c` does: the run folder, not the
 * command line, says what the run is.
 *
 * - The config comes from the run (last.ckpt's copy, else config.json). Keys the caller gives take
 *   part only when they equal the run's value, or when they are in RESUME_FREE_KEYS (how the run is
 *   executed, not what it trains); any other difference is refused with one line per key, such as
 *   `optimizer.lr: 0.0003 in the run, 0.001 given`. Keys not given keep the run's value, so
 *   `--resume --out R` alone continues exactly.
 * - The data must be the run's: the same case ids in each role and the same input files (size and
 *   modification time, as the preprocessing cache stamps them), recorded in <out>/inputs.json; and
 *   the plan made now must match <out>/plan.json.
 * - Nothing in the folder is written before every check has passed (commitRunFolder). Then log.jsonl
 *   is cut back (atomically) to the checkpoint's iteration, so each iteration appears once, and
 *   temporary files of interrupted writes (<name>.tmp-<pid>-<random>) are removed, with a note.
 * @module
 */
import {
  appendFileSync,
  existsSync,
  readdirSync,
  readFileSync,
  statSync,
  unlinkSync,
} from "node:fs";
import * as path from "node:path";
import { type CheckpointMeta, readCheckpointMeta } from "./checkpoint.ts";
import { parseTrainConfig } from "./config.ts";
import type { PreparedData } from "./data.ts";
import { refFrame, refPath } from "../data/manifest.ts";
import { writeFileAtomicSync } from "../util/atomic_write.ts";
import { RunFolder } from "./run_folder.ts";

/**
 * Config keys a resumed run may change: where and how fast it runs, not what it trains or on what.
 * (The CLI's quiet/progress output is not a config key.)
 */
export const RESUME_FREE_KEYS: readonly string[] = [
  "out",
  "threads",
  "loaderWorkers",
  "device",
  "deterministic",
  "checkpointEvery",
  "images",
];

/** Most difference lines an error lists (then "... and N more"). */
const MAX_LINES = 12;

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** A value as an error line shows it: JSON, shortened; `unset` for undefined. */
export function formatValue(v: unknown): string {
  if (v === undefined) return "unset";
  const s = typeof v === "string" ? v : JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function sameNumber(a: number, b: number): boolean {
  return a === b || Math.abs(a - b) <= 1e-9 * Math.max(Math.abs(a), Math.abs(b));
}

export interface Difference {
  key: string;
  a: unknown;
  b: unknown;
}

/**
 * Leaf-by-leaf differences between a and b (objects and equal-length arrays are walked; numbers
 * agree to 1e-9 relative). With `ignoreAdded`, keys that b has and a lacks do not count (fields a
 * later version added).
 */
export function valueDifferences(
  a: unknown,
  b: unknown,
  opts: { prefix?: string; ignoreAdded?: boolean } = {},
): Difference[] {
  const key = opts.prefix ?? "";
  if (typeof a === "number" && typeof b === "number") {
    return sameNumber(a, b) ? [] : [{ key, a, b }];
  }
  if (isObj(a) && isObj(b)) {
    const out: Difference[] = [];
    const keys = new Set([...Object.keys(a), ...(opts.ignoreAdded ? [] : Object.keys(b))]);
    for (const k of [...keys].sort()) {
      if (a[k] === undefined && b[k] === undefined) continue;
      out.push(...valueDifferences(a[k], b[k], { ...opts, prefix: key ? `${key}.${k}` : k }));
    }
    return out;
  }
  if (Array.isArray(a) && Array.isArray(b) && a.length === b.length) {
    return a.flatMap((v, i) => valueDifferences(v, b[i], { ...opts, prefix: `${key}[${i}]` }));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [{ key, a, b }];
}

/** Difference lines "key: A <aName>, B <bName>", at most MAX_LINES of them. */
export function differenceLines(diffs: Difference[], aName: string, bName: string): string[] {
  const lines = diffs.slice(0, MAX_LINES).map((d) =>
    `${d.key || "(value)"}: ${formatValue(d.a)} ${aName}, ${formatValue(d.b)} ${bName}`
  );
  if (diffs.length > MAX_LINES) lines.push(`... and ${diffs.length - MAX_LINES} more`);
  return lines;
}

/** Leaves of a plain object as dotted keys (arrays are leaves; undefined values are skipped). */
function leaves(o: Obj, prefix = ""): [string, unknown][] {
  return Object.entries(o).flatMap(([k, v]): [string, unknown][] => {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v === undefined) return [];
    return isObj(v) ? leaves(v, key) : [[key, v]];
  });
}

function getKey(o: Obj, key: string): unknown {
  let v: unknown = o;
  for (const k of key.split(".")) v = isObj(v) ? v[k] : undefined;
  return v;
}

/** b merged over a, object by object (arrays and other values replace). */
function mergeOver(a: Obj, b: Obj): Obj {
  const out: Obj = { ...a };
  for (const [k, v] of Object.entries(b)) {
    if (v === undefined) continue;
    out[k] = isObj(out[k]) && isObj(v) ? mergeOver(out[k] as Obj, v) : v;
  }
  return out;
}

/**
 * The dataset a run trains on: case ids per role and each input file's size and modification time
 * (<out>/inputs.json).
 */
export interface DatasetIdentity {
  version: 1;
  task: string;
  cases: { labeled: string[]; unlabeled: string[]; validation: string[] };
  /**
   * "<case> <modality> image|label" -> the file; mtime in ms, null for the built-in synthetic data
   * (regenerated identically from its generator version, so only its size counts).
   */
  files: Record<string, { path: string; frame?: number; size: number; mtime: number | null }>;
}

/** The identity of the data a run was prepared with (statSync of every input file in use). */
export function datasetIdentity(data: PreparedData, opts: { builtIn: boolean }): DatasetIdentity {
  const byId = new Map(data.manifest.cases.map((c) => [c.id, c]));
  const files: DatasetIdentity["files"] = {};
  const add = (key: string, ref: Parameters<typeof refPath>[0] | undefined) => {
    if (!ref) return;
    const p = refPath(ref);
    let size = -1, mtime: number | null = null;
    try {
      const st = statSync(p);
      size = st.size;
      mtime = st.mtime?.getTime() ?? 0;
    } catch { /* missing: size -1 */ }
    const frame = refFrame(ref);
    files[key] = {
      path: p,
      ...(frame === undefined ? {} : { frame }),
      size,
      mtime: opts.builtIn ? null : mtime,
    };
  };
  const withLabels = new Set([...data.labeled, ...data.validation].map((x) => x.id));
  const ids = [...data.labeled, ...data.unlabeled, ...data.validation].map((x) => x.id);
  for (const id of ids) {
    const c = byId.get(id);
    if (!c) continue;
    for (const m of data.modalities) {
      if (!c.images[m]) continue;
      add(`${id} ${m} image`, c.images[m]);
      if (withLabels.has(id)) add(`${id} ${m} label`, c.labels?.[m] ?? c.labels?.shared);
    }
  }
  return {
    version: 1,
    task: data.manifest.task,
    cases: {
      labeled: data.labeled.map((x) => x.id),
      unlabeled: data.unlabeled.map((x) => x.id),
      validation: data.validation.map((x) => x.id),
    },
    files,
  };
}

function listIds(ids: string[]): string {
  return ids.length > 5
    ? `${ids.slice(0, 5).join(", ")} and ${ids.length - 5} more`
    : ids.join(", ");
}

function stamp(f: DatasetIdentity["files"][string]): string {
  if (f.size < 0) return "missing";
  return `${f.size} bytes` +
    (f.mtime === null ? "" : `, modified ${new Date(f.mtime).toISOString()}`);
}

/** Why `now` is not the run's data, one line per difference (empty when it is). */
export function datasetDifferences(run: DatasetIdentity, now: DatasetIdentity): string[] {
  const lines: string[] = [];
  if (run.task !== now.task) lines.push(`task: ${run.task} in the run, ${now.task} now`);
  const roles = {
    labeled: "labeled training",
    unlabeled: "unlabeled training",
    validation: "validation",
  } as const;
  for (const [role, name] of Object.entries(roles) as [keyof typeof roles, string][]) {
    const a = new Set(run.cases[role]), b = new Set(now.cases[role]);
    const gone = [...a].filter((x) => !b.has(x)), added = [...b].filter((x) => !a.has(x));
    if (!gone.length && !added.length) continue;
    lines.push(
      `${name} cases: ${a.size} in the run, ${b.size} now` +
        (gone.length ? `; not there now: ${listIds(gone)}` : "") +
        (added.length ? `; new: ${listIds(added)}` : ""),
    );
  }
  const changed: string[] = [];
  for (const [key, f] of Object.entries(run.files)) {
    const g = now.files[key];
    if (!g) continue; // a case that is gone: reported above
    const differs = f.size !== g.size ||
      (f.mtime !== null && g.mtime !== null && f.mtime !== g.mtime);
    if (differs) changed.push(`${key} (${g.path}): ${stamp(f)} in the run, ${stamp(g)} now`);
  }
  for (const key of Object.keys(now.files)) {
    const id = key.split(" ")[0];
    const inRun = Object.values(run.cases).some((ids) => ids.includes(id));
    if (!run.files[key] && inRun) changed.push(`${key} (${now.files[key].path}): not in the run`);
  }
  lines.push(...changed.slice(0, MAX_LINES));
  if (changed.length > MAX_LINES) lines.push(`... and ${changed.length - MAX_LINES} more files`);
  return lines;
}

/** What resuming found in the run folder (read only; see commitRunFolder for the writes). */
export interface ResumeRun {
  dir: string;
  last: string;
  meta: CheckpointMeta;
  /** The config to train with: the run's, with the caller's RESUME_FREE_KEYS over it. */
  input: Obj;
  /** <out>/plan.json, null when missing (runs of earlier versions) or unreadable. */
  plan: Obj | null;
  /** <out>/inputs.json, null when missing (runs of earlier versions) or unreadable. */
  inputs: DatasetIdentity | null;
  configMissing: boolean;
  notes: string[];
}

function samePath(a: unknown, b: unknown): boolean {
  return typeof a === "string" && typeof b === "string" && path.resolve(a) === path.resolve(b);
}

/**
 * Reads the run folder named by `input.out` and checks the caller's config keys against the run's
 * (module doc). Throws, writing nothing, when a key that changes the run differs.
 */
export function readRunForResume(input: Obj): ResumeRun {
  if (typeof input.out !== "string" || !input.out) {
    throw new Error("Cannot resume: give the run folder to continue with --out");
  }
  const folder = new RunFolder(input.out);
  const dir = folder.dir;
  const last = folder.path("last");
  if (!existsSync(last)) {
    const temp = staleTemps(dir).find((t) => t.target === RunFolder.fileName("last"));
    throw new Error(
      `Cannot resume: ${last} does not exist` +
        (temp ? ` (${temp.name} beside it is an interrupted write, incomplete and not used)` : ""),
    );
  }
  const meta = readCheckpointMeta(last);
  const notes: string[] = [];
  const cfgFile = folder.readJson("config");
  if (cfgFile.problem) notes.push(cfgFile.problem);
  const stored = isObj(meta.config) ? meta.config : isObj(cfgFile.value) ? cfgFile.value : null;
  if (!stored) {
    throw new Error(
      `Cannot resume ${dir}: neither ${RunFolder.fileName("last")} nor ${
        RunFolder.fileName("config")
      } holds the run's config`,
    );
  }
  let run: Obj;
  try {
    run = parseTrainConfig(stored, `config of the run ${dir}`) as unknown as Obj;
  } catch (e) {
    throw new Error(`Cannot resume: ${(e as Error).message}`);
  }
  const given: Obj = { ...input };
  if (given.task === undefined) delete given.task;
  // Unknown keys and bad values are reported with their path by the schema.
  const merged = mergeOver(run, given);
  parseTrainConfig(merged);
  const diffs: Difference[] = [];
  for (const [key, value] of leaves(given)) {
    if (RESUME_FREE_KEYS.includes(key.split(".")[0])) continue;
    const was = getKey(run, key);
    if ((key === "task" || key === "data") && samePath(was, value)) continue;
    diffs.push(...valueDifferences(was, value, { prefix: key }));
  }
  if (diffs.length) {
    throw new Error(
      `Cannot resume ${dir}: a resumed run keeps its config, and ${diffs.length} given setting(s) ` +
        `differ from it (leave them out to continue the run as it was, or train a new run with ` +
        `another --out):\n  ${differenceLines(diffs, "in the run", "given").join("\n  ")}`,
    );
  }
  const plan = folder.readJson("plan");
  if (plan.problem) notes.push(`${plan.problem}; it is written anew`);
  const inputs = folder.readJson("inputs");
  if (inputs.problem) notes.push(`${inputs.problem}; it is written anew`);
  return {
    dir,
    last,
    meta,
    input: merged,
    plan: isObj(plan.value) ? plan.value : null,
    inputs: isObj(inputs.value) ? inputs.value as unknown as DatasetIdentity : null,
    configMissing: !folder.exists("config") || cfgFile.problem !== null,
    notes,
  };
}

const PLAN = RunFolder.fileName("plan"), INPUTS = RunFolder.fileName("inputs");

/** plan.json keys that must agree (the cache folder may move; fields added later do not count). */
const PLAN_KEYS = [
  "method",
  "modalities",
  "primary",
  "classes",
  "targetSpacing",
  "patch",
  "network",
  "dataset",
  "normalization",
  "fingerprint",
];

/**
 * Checks the data and the plan made now against the run's (inputs.json, plan.json); throws with one
 * line per difference, writing nothing.
 */
export function checkResumedData(r: ResumeRun, planNow: object, inputsNow: DatasetIdentity): void {
  if (r.inputs) {
    const lines = datasetDifferences(r.inputs, inputsNow);
    if (lines.length) {
      throw new Error(
        `Cannot resume ${r.dir}: the data is not the data the run was trained on ` +
          `(a resumed run must see the same cases and input files; train a new run with another ` +
          `--out to use this data):\n  ${lines.join("\n  ")}`,
      );
    }
  } else {
    r.notes.push(
      `the run folder has no ${INPUTS} (written since this version): the data is checked through ` +
        `${PLAN} only, and ${INPUTS} is recorded now`,
    );
  }
  if (!r.plan) return;
  const now = planNow as Obj;
  const diffs = PLAN_KEYS.flatMap((k) =>
    r.plan![k] === undefined
      ? []
      : valueDifferences(r.plan![k], now[k], { prefix: k, ignoreAdded: true })
  );
  if (diffs.length) {
    throw new Error(
      `Cannot resume ${r.dir}: the plan made now from the run's config and data differs from its ` +
        `${PLAN} (changed data, or a version of comodal that plans differently):\n  ${
          differenceLines(diffs, "in the run", "now").join("\n  ")
        }`,
    );
  }
}

/** Temporary files of interrupted atomic writes in a run folder (not those of a live process). */
export function staleTemps(dir: string): { name: string; target: string }[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: { name: string; target: string }[] = [];
  for (const name of names) {
    const m = /^(.+)\.tmp(?:-(\d+)-[a-z0-9]*)?$/.exec(name);
    if (!m) continue;
    const pid = m[2] ? Number(m[2]) : 0;
    if (pid && pid !== Deno.pid && existsSync(`/proc/${pid}`)) continue; // still being written
    out.push({ name, target: m[1] });
  }
  return out;
}

/** Removes staleTemps(dir); returns the names removed. */
export function removeStaleTemps(dir: string): string[] {
  const removed: string[] = [];
  for (const t of staleTemps(dir)) {
    try {
      unlinkSync(path.join(dir, t.name));
      removed.push(t.name);
    } catch { /* gone meanwhile */ }
  }
  return removed;
}

/**
 * Cuts log.jsonl back to `iteration`: records with a larger `iteration` (written after the
 * checkpoint the run continues from) and a last line cut off by a crash are dropped. The file is
 * replaced atomically, and only when something changes.
 */
export function truncateLog(
  file: string,
  iteration: number,
): { dropped: number; partial: boolean } {
  if (!existsSync(file)) return { dropped: 0, partial: false };
  const lines = readFileSync(file, "utf8").split("\n");
  const partial = lines.pop() !== "";
  let dropped = 0;
  const keep = lines.filter((l) => {
    let rec: unknown;
    try {
      rec = JSON.parse(l);
    } catch {
      return true;
    }
    if (isObj(rec) && typeof rec.iteration === "number" && rec.iteration > iteration) {
      dropped++;
      return false;
    }
    return true;
  });
  if (dropped || partial) {
    writeFileAtomicSync(file, new TextEncoder().encode(keep.map((l) => l + "\n").join("")));
  }
  return { dropped, partial };
}

/**
 * The run folder's writes once every check has passed: files a resumed run lacks (config.json,
 * plan.json, inputs.json; a fresh run writes inputs.json), log.jsonl cut back to `iteration`, stale
 * temporary files removed. Notes go to stderr (unless quiet) and, on resume, into the log.
 */
export function commitRunFolder(
  folder: RunFolder,
  opts: {
    resumed: ResumeRun | null;
    iteration: number;
    config: unknown;
    plan: unknown;
    inputs: DatasetIdentity;
    quiet?: boolean;
  },
): void {
  const r = opts.resumed;
  const notes = [...(r?.notes ?? [])];
  if (r?.configMissing) folder.writeJson("config", opts.config, 2);
  if (r && !r.plan) folder.writeJson("plan", opts.plan, 1);
  if (!r || !r.inputs) folder.writeJson("inputs", opts.inputs, 1);
  const log = folder.path("log");
  const logName = RunFolder.fileName("log");
  const cut = truncateLog(log, opts.iteration);
  if (cut.dropped) {
    notes.push(
      `${logName}: removed ${cut.dropped} record(s) after iteration ${opts.iteration}, ` +
        (r ? "written after the checkpoint this run continues from" : "left by an earlier start"),
    );
  }
  if (cut.partial) notes.push(`${logName}: removed a last line cut off by a crash`);
  const removed = removeStaleTemps(folder.dir);
  if (removed.length) {
    notes.push(
      `removed ${removed.join(", ")}, left by an interrupted write (incomplete, never used)`,
    );
  }
  if (!opts.quiet) { for (const n of notes) console.error(`Note: ${n}`); }
  if (r) {
    appendFileSync(
      log,
      JSON.stringify({
        time: new Date().toISOString(),
        event: "resume",
        iteration: opts.iteration,
        notes,
      }) + "\n",
    );
  }
}
