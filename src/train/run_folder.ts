/**
 * The one owner of a run folder's files: training, resume, `predict`, the final evaluation, the
 * reports and the workflows reach them through a RunFolder, and no other module knows their names.
 *
 * A run folder holds
 * - config.json: the training config (`TrainConfig`), written when the run starts;
 * - plan.json: what inference needs (`RunPlan`: model signature, network plan, preprocessing);
 * - inputs.json: the identity of the training data (checked on resume);
 * - last.ckpt, best.ckpt: the latest checkpoint and the one with the best validation Dice;
 * - log.jsonl: one JSON record per event (config, iterations, validations, final metrics);
 * - predictions/, images/, metrics.json: the final evaluation of the validation cases;
 * - summary.txt: the closing summary;
 * - partners/: stand-ins for missing modalities (runs on unpaired data; src/infer/partners.ts);
 * - report.html and viewer/: the HTML report with a 3D viewer page per predicted case
 *   (src/report/html_report.ts; `predict` writes them beside its label maps too).
 *
 * JSON and text files are written atomically (temporary file, then rename; src/util/atomic_write.ts),
 * so an interrupted write never leaves a half-written file under its name.
 *
 * @module
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import * as path from "node:path";
import { writeFileAtomicSync } from "../util/atomic_write.ts";
import { parseTrainConfig, type TrainConfig } from "./config.ts";
import type { RunPlan } from "./run.ts";

/** The files and folders of a run folder, by role. */
const FILES = {
  config: "config.json",
  plan: "plan.json",
  inputs: "inputs.json",
  last: "last.ckpt",
  best: "best.ckpt",
  log: "log.jsonl",
  metrics: "metrics.json",
  summary: "summary.txt",
  predictions: "predictions",
  images: "images",
  partners: "partners",
  report: "report.html",
  viewer: "viewer",
} as const;

export type RunFile = keyof typeof FILES;
type JsonFile = "config" | "plan" | "inputs" | "metrics";

/** The version of plan.json this code reads and writes. */
export const RUN_PLAN_VERSION = 1;

/** A JSON file's content, or why it could not be used (null both when the file is missing). */
export interface JsonRead {
  value: unknown;
  problem: string | null;
}

export class RunFolder {
  /** Absolute path of the folder. */
  readonly dir: string;

  constructor(dir: string) {
    this.dir = path.resolve(dir);
  }

  /** An existing run folder (an error naming `what` otherwise). */
  static open(dir: string, what = `Cannot load run ${path.resolve(dir)}`): RunFolder {
    const f = new RunFolder(dir);
    if (!existsSync(f.dir) || !statSync(f.dir).isDirectory()) {
      throw new Error(`${what}: the folder does not exist`);
    }
    return f;
  }

  /** Path of one of the run's files or folders. */
  path(file: RunFile): string {
    return path.join(this.dir, FILES[file]);
  }

  /** The bare name of a file (for messages). */
  static fileName(file: RunFile): string {
    return FILES[file];
  }

  /** The role of a file name in a run folder, if it is one of the run's files. */
  static roleOf(name: string): RunFile | undefined {
    return (Object.keys(FILES) as RunFile[]).find((k) => FILES[k] === name);
  }

  exists(file: RunFile): boolean {
    return existsSync(this.path(file));
  }

  /** Whether the folder holds a run's results (a log or metrics). */
  hasResults(): boolean {
    const isFile = (f: RunFile) => {
      try {
        return statSync(this.path(f)).isFile();
      } catch {
        return false;
      }
    };
    return isFile("metrics") || isFile("log");
  }

  /** Reads a JSON file without throwing: missing (value null) or not JSON (problem says why). */
  readJson(file: JsonFile): JsonRead {
    const r = this.parseJson(file);
    return { value: r.value, problem: r.error && `${FILES[file]} is not valid JSON (${r.error})` };
  }

  private parseJson(file: JsonFile): { value: unknown; error: string | null } {
    const p = this.path(file);
    if (!existsSync(p)) return { value: null, error: null };
    try {
      return { value: JSON.parse(readFileSync(p, "utf8")), error: null };
    } catch (e) {
      return { value: null, error: (e as Error).message };
    }
  }

  /** A JSON file that must exist and parse (an error naming `what` and the file otherwise). */
  private requireJson(file: JsonFile, what: string): unknown {
    const p = this.path(file);
    const r = this.parseJson(file);
    if (r.error) throw new Error(`${what}: ${p} is not valid JSON (${r.error})`);
    if (!existsSync(p)) throw new Error(`${what}: ${p} does not exist`);
    return r.value;
  }

  /** Writes a JSON file atomically (`indent` spaces, newline at the end). */
  writeJson(file: JsonFile, value: unknown, indent = 1): void {
    writeFileAtomicSync(
      this.path(file),
      new TextEncoder().encode(JSON.stringify(value, null, indent) + "\n"),
    );
  }

  /** Writes a text file atomically. */
  writeText(file: "summary" | "metrics", text: string): void {
    writeFileAtomicSync(this.path(file), new TextEncoder().encode(text));
  }

  /** Writes config.json (the training config). */
  writeConfig(config: TrainConfig): void {
    this.writeJson("config", config, 2);
  }

  /** Writes plan.json. */
  writePlan(plan: RunPlan): void {
    this.writeJson("plan", plan, 1);
  }

  /**
   * The run's config.json as a training config; runs written before region outputs existed have
   * none. Throws naming `what` when it is missing or invalid.
   */
  readConfig(what = `Cannot load run ${this.dir}`): TrainConfig {
    const raw = this.requireJson("config", what);
    try {
      return parseTrainConfig(
        raw && typeof raw === "object" && !("regions" in raw) ? { ...raw, regions: "none" } : raw,
      );
    } catch (e) {
      throw new Error(
        `${what}: ${FILES.config} is not a valid training config (${(e as Error).message})`,
      );
    }
  }

  /**
   * The run's plan.json. Throws naming `what` when it is missing (with how to write one for a run
   * trained before runs recorded their plan), invalid or of another version.
   */
  readPlan(config: TrainConfig, what = `Cannot load run ${this.dir}`): RunPlan {
    const file = this.path("plan");
    if (!existsSync(file)) {
      throw new Error(
        `${what}: ${file} does not exist (the run was trained before runs recorded their plan; ` +
          `resuming it writes one and trains only the iterations left, if any: \`train ${config.task} ` +
          `--config ${this.path("config")} --out ${this.dir} --resume\`)`,
      );
    }
    const plan = this.requireJson("plan", what) as RunPlan;
    if (plan.version !== RUN_PLAN_VERSION) {
      throw new Error(
        `${what}: ${file} has format version ${plan.version}, expected ${RUN_PLAN_VERSION}`,
      );
    }
    return plan;
  }

  /**
   * The checkpoint file `choice` names: "best" (best.ckpt, else last.ckpt), "last", or a file
   * (absolute, relative to the working folder or to the run folder).
   */
  checkpoint(choice = "best"): string {
    const what = `Cannot load run ${this.dir}`;
    if (choice === "best" || choice === "last") {
      const best = this.path("best"), last = this.path("last");
      if (choice === "best" && existsSync(best)) return best;
      if (existsSync(last)) return last;
      throw new Error(
        `${what}: ${
          choice === "best"
            ? `it has neither ${FILES.best} nor ${FILES.last}`
            : `${last} does not exist`
        }`,
      );
    }
    for (const p of [path.resolve(choice), path.resolve(this.dir, choice)]) {
      if (existsSync(p)) return p;
    }
    throw new Error(
      `${what}: checkpoint ${choice} does not exist (expected best, last or a .ckpt file)`,
    );
  }
}
