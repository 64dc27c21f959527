/**
 * The command line each step runs. Project steps call the comodal CLI in a child process
 * (`deno run -A cli/main.ts <kind> ...`); `command` steps run what the file says.
 *
 * Parameters become flags: `iterations: 100` -> `--iterations 100`, `labeledRatio` or
 * `labeled_ratio` -> `--labeled-ratio`, `true` -> a bare flag, `false`/null -> nothing, a list ->
 * the flag repeated, and the mapping `set: {loss.lambdaCsc: 0}` -> `--set loss.lambdaCsc=0`.
 * Positional arguments: synthesise and train take `task` (train: or `manifest`), import takes
 * `dir` (or `source`), preprocess takes `manifest`; `args: [...]` adds more. The output folder is
 * passed as `--out` (evaluate: `--out <folder>/metrics.json`, import: `<folder>/manifest.yaml`).
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { PlannedStep } from "./plan.ts";
import { KEEP, substitute } from "./template.ts";
import { RunFolder } from "../train/run_folder.ts";

/** Root of the project (where cli/ and src/ live). */
export const PROJECT_ROOT: string = fileURLToPath(new URL("../../", import.meta.url)).replace(
  /\/$/,
  "",
);

export interface StepCommand {
  /** Program and arguments (no shell unless the step's run is a single string). */
  argv: string[];
  env: Record<string, string>;
}

const CLI_NAME: Record<string, string> = {
  synthesise: "synth",
  import: "import",
  preprocess: "preprocess",
  train: "train",
  predict: "predict",
  evaluate: "evaluate",
};

/**
 * Kinds whose --out names a file inside the step's folder rather than the folder itself (an
 * evaluate step's metrics where the reports look for a run's).
 */
const OUT_FILE: Record<string, string> = {
  evaluate: RunFolder.fileName("metrics"),
  import: "manifest.yaml",
};

const POSITIONAL: Record<string, string[]> = {
  synthesise: ["task"],
  train: ["task", "manifest"],
  import: ["dir", "source"],
  preprocess: ["manifest"],
};

function kebab(key: string): string {
  return key.replace(/_/g, "-").replace(/([a-z0-9])([A-Z])/g, "$1-$2").toLowerCase();
}

function flatten(obj: Record<string, unknown>, prefix = ""): [string, unknown][] {
  const out: [string, unknown][] = [];
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (typeof v === "object" && v !== null && !Array.isArray(v)) {
      out.push(...flatten(v as Record<string, unknown>, key));
    } else out.push([key, v]);
  }
  return out;
}

function text(v: unknown): string {
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** Turns step params into CLI arguments (positional ones first, `--set` last). */
export function paramsToArgs(kind: string, params: Record<string, unknown>): string[] {
  const args: string[] = [];
  const rest = { ...params };
  for (const key of POSITIONAL[kind] ?? []) {
    if (rest[key] !== undefined && rest[key] !== null) {
      args.push(text(rest[key]));
      delete rest[key];
    }
  }
  if (Array.isArray(rest.args)) args.push(...rest.args.map(text));
  delete rest.args;
  const set = rest.set;
  delete rest.set;
  for (const [k, v] of Object.entries(rest)) {
    if (v === undefined || v === null || v === false) continue;
    const flag = `--${kebab(k)}`;
    if (v === true) args.push(flag);
    else if (Array.isArray(v)) { for (const x of v) args.push(flag, text(x)); }
    else args.push(flag, text(v));
  }
  if (set !== undefined && set !== null) {
    const entries = typeof set === "object" && !Array.isArray(set)
      ? flatten(set as Record<string, unknown>).map(([k, v]) => `${k}=${text(v)}`)
      : (Array.isArray(set) ? set : [set]).map(text);
    for (const e of entries) args.push("--set", e);
  }
  return args;
}

/** The `deno` executable that runs project steps (the running one). */
export function denoPath(): string {
  return Deno.execPath();
}

/**
 * Builds the command of one step. `outDir` is where this attempt writes (a temporary folder moved
 * into place when the step succeeds); `${{ step.out }}` resolves to it.
 */
export function stepCommand(
  step: PlannedStep,
  outDir: string,
  opts: { workdir: string; threads?: number | string },
): StepCommand {
  const workdir = opts.workdir;
  const late = (path: string[]) => (path.join(".") === "step.out" ? outDir : KEEP);
  const params = substitute(step.params, late) as Record<string, unknown>;
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(step.env)) env[k] = String(substitute(v, late));
  env.COMODAL_STEP = step.id;
  env.COMODAL_OUT = outDir;
  env.COMODAL_WORKDIR = workdir;
  if (step.kind === "command") {
    const run = substitute(step.run, late) as string | string[];
    return { argv: typeof run === "string" ? ["/bin/sh", "-c", run] : run, env };
  }
  if ("out" in params) {
    throw new Error(
      `Step ${step.id}: params.out is managed by the workflow (the step writes to its own folder)`,
    );
  }
  const cliArgs: string[] = [];
  if (step.kind === "report") {
    const inputs = params.inputs ?? [];
    delete params.inputs;
    cliArgs.push(
      join(PROJECT_ROOT, "cli", "workflow.ts"),
      "report",
      ...paramsToArgs("report", params),
    );
    cliArgs.push("--out", outDir, ...(Array.isArray(inputs) ? inputs.map(text) : [text(inputs)]));
  } else {
    // Train uses the step's CPU threads unless the file says otherwise (not part of the hash).
    if (step.kind === "train" && params.threads === undefined && opts.threads !== undefined) {
      params.threads = opts.threads;
    }
    cliArgs.push(
      join(PROJECT_ROOT, "cli", "main.ts"),
      CLI_NAME[step.kind],
      ...paramsToArgs(step.kind, params),
    );
    // --set is variadic in the CLI: --out goes before it.
    const setAt = cliArgs.indexOf("--set");
    const outFile = OUT_FILE[step.kind];
    const outArgs = ["--out", outFile ? join(outDir, outFile) : outDir];
    if (setAt >= 0) cliArgs.splice(setAt, 0, ...outArgs);
    else cliArgs.push(...outArgs);
  }
  const config = join(PROJECT_ROOT, "deno.json");
  return { argv: [denoPath(), "run", "-A", "--quiet", "--config", config, ...cliArgs], env };
}
