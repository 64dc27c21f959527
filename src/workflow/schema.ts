/**
 * The workflow file format: zod schema, `extends` inheritance between files, profiles, and
 * command-line overrides. Every error names the file, the key path and the line.
 *
 * ```yaml
 * name: cardiac
 * extends: base.yaml              # optional; a list is merged left to right, this file last
 * workdir: runs/cardiac           # relative to the current directory; default runs/<name>
 * vars: { task: cardiac }         # referenced as ${{ vars.task }}
 * defaults:
 *   resources: { cpus: 1, gpus: 0, memory: 4G, time: 1h }
 *   retries: 1
 *   params: { train: { iterations: 2000 } }   # default params per step kind
 * profiles:
 *   smoke: { vars: { cases: 4 }, steps: { train: { params: { iterations: 10 } } } }
 * steps:
 *   data: { kind: synthesise, params: { task: "${{ vars.task }}", cases: 8 } }
 *   train:
 *     kind: train
 *     needs: data
 *     matrix: { ratio: [0.1, 0.4], method: [cmc, supervised] }
 *     params: { task: "${{ vars.task }}", data: "${{ steps.data.out }}", labeled: "${{ matrix.ratio }}" }
 * ```
 */
import { z } from "zod";
import { dirname, resolve } from "node:path";
import {
  formatPath,
  isPlainObject,
  locate,
  mergeSourced,
  parseYamlSource,
  type Provenance,
  readYamlFile,
  type SourcedValue,
  WorkflowError,
} from "./yaml_source.ts";

export const STEP_KINDS = [
  "synthesise",
  "import",
  "preprocess",
  "train",
  "predict",
  "evaluate",
  "report",
  "command",
] as const;
export type StepKind = typeof STEP_KINDS[number];

export const EXECUTORS = ["local", "slurm"] as const;
export type ExecutorName = typeof EXECUTORS[number];

const scalar = z.union([z.string(), z.number(), z.boolean()]);
const duration = z.union([
  z.number().positive(),
  z.string().regex(
    /^(\d+(\.\d+)?\s*(s|m|h|d)|(\d+-)?\d{1,2}:\d{2}(:\d{2})?)$/,
    "expected a duration such as 90s, 30m, 2h, 1d or 01:30:00",
  ),
]);
const memory = z.union([
  z.number().positive(),
  z.string().regex(/^\d+(\.\d+)?\s*[KMGT]i?B?$/i, "expected a size such as 512M or 4G"),
]);

export const ResourcesSchema = z.strictObject({
  cpus: z.int().min(1).optional(),
  gpus: z.int().min(0).optional(),
  memory: memory.optional(),
  time: duration.optional(),
});
export type Resources = z.infer<typeof ResourcesSchema>;

const MatrixSchema = z.record(
  z.string().regex(/^[A-Za-z_][\w]*$/, "matrix keys are identifiers"),
  z.union([
    z.array(scalar).min(1, "a matrix axis needs at least one value"),
    z.array(z.record(z.string(), scalar)),
  ]),
);

export const StepSchema = z.strictObject({
  kind: z.enum(STEP_KINDS),
  description: z.string().optional(),
  needs: z.union([z.string(), z.array(z.string())]).optional(),
  params: z.record(z.string(), z.unknown()).optional(),
  matrix: MatrixSchema.optional(),
  run: z.union([z.string().min(1), z.array(z.string()).min(1)]).optional(),
  env: z.record(z.string(), scalar).optional(),
  resources: ResourcesSchema.optional(),
  retries: z.int().min(0).max(20).optional(),
  backoff: z.number().min(0).optional(),
  cache: z.boolean().optional(),
  outputs: z.array(z.string()).optional(),
});
export type StepSpec = z.infer<typeof StepSchema>;

export const WorkflowSchema = z.strictObject({
  name: z.string().regex(/^[\w.-]+$/, "names use letters, digits, '_', '-', '.'"),
  description: z.string().optional(),
  extends: z.union([z.string(), z.array(z.string())]).optional(),
  workdir: z.string().optional(),
  executor: z.enum(EXECUTORS).optional(),
  vars: z.record(z.string(), z.unknown()).optional(),
  defaults: z.strictObject({
    resources: ResourcesSchema.optional(),
    retries: z.int().min(0).max(20).optional(),
    backoff: z.number().min(0).optional(),
    env: z.record(z.string(), scalar).optional(),
    params: z.partialRecord(z.enum(STEP_KINDS), z.record(z.string(), z.unknown())).optional(),
  }).optional(),
  local: z.strictObject({
    cpus: z.int().min(1).optional(),
    gpus: z.int().min(0).optional(),
    memory: memory.optional(),
  }).optional(),
  slurm: z.strictObject({
    partition: z.string().optional(),
    account: z.string().optional(),
    extra_args: z.array(z.string()).optional(),
    poll_interval: z.number().positive().optional(),
    array: z.boolean().optional(),
  }).optional(),
  profiles: z.record(z.string(), z.record(z.string(), z.unknown())).optional(),
  steps: z.record(
    z.string().regex(
      /^[A-Za-z][\w-]*$/,
      "step names start with a letter and use letters, digits, '_' or '-'",
    ),
    StepSchema,
  ).refine((s) => Object.keys(s).length > 0, "a workflow needs at least one step"),
});
export type WorkflowSpec = z.infer<typeof WorkflowSchema>;

/** A validated workflow with where it came from. */
export interface LoadedWorkflow {
  spec: WorkflowSpec;
  /** The file given to loadWorkflow (absolute). */
  file: string;
  /** All files read (the file and everything it extends). */
  files: string[];
  profile?: string;
  provenance: Provenance;
}

export interface LoadOptions {
  /** Profile to apply (a key of `profiles`). */
  profile?: string;
  /** Overrides "a.b.c=value" applied last; the value is parsed as YAML (so 3 is a number). */
  set?: string[];
}

/** Formats "file:line: path: message" using the provenance of the closest key. */
export function describeAt(
  prov: Provenance,
  fallbackFile: string,
  path: readonly (string | number)[],
  message: string,
): string {
  const loc = locate(prov, path);
  const where = loc ? (loc.line > 0 ? `${loc.file}:${loc.line}` : loc.file) : fallbackFile;
  const p = formatPath(path);
  return p ? `${where}: ${p}: ${message}` : `${where}: ${message}`;
}

/** Loads a workflow file with its `extends` chain, applies a profile and overrides, validates. */
export function loadWorkflow(path: string, opts: LoadOptions = {}): LoadedWorkflow {
  const file = resolve(path);
  const files: string[] = [];
  let merged = loadWithExtends(file, [], files);
  // Profiles: the chosen one is merged onto the document; the profiles table itself stays.
  const profiles = isPlainObject(merged.value) ? merged.value.profiles : undefined;
  if (opts.profile !== undefined) {
    if (!isPlainObject(profiles) || !(opts.profile in profiles)) {
      const known = isPlainObject(profiles) ? Object.keys(profiles).join(", ") : "";
      throw new WorkflowError(
        `${file}: unknown profile '${opts.profile}'` +
          (known ? ` (profiles: ${known})` : " (the workflow defines no profiles)"),
      );
    }
    const overlay = profiles[opts.profile];
    if (!isPlainObject(overlay)) {
      throw new WorkflowError(
        describeAt(
          merged.provenance,
          file,
          ["profiles", opts.profile],
          "a profile must be a mapping",
        ),
      );
    }
    if ("profiles" in overlay || "extends" in overlay) {
      throw new WorkflowError(
        describeAt(
          merged.provenance,
          file,
          ["profiles", opts.profile],
          "a profile cannot contain 'profiles' or 'extends'",
        ),
      );
    }
    merged = mergeSourced(merged, merged, { overRoot: `profiles.${opts.profile}` });
  }
  for (const assignment of opts.set ?? []) {
    const eq = assignment.indexOf("=");
    if (eq <= 0) {
      throw new WorkflowError(`Cannot apply --set ${assignment}: expected key.path=value`);
    }
    const key = assignment.slice(0, eq).trim();
    const raw = assignment.slice(eq + 1);
    const parsed = parseYamlSource(raw === "" ? '""' : raw, "--set").value;
    const over: Record<string, unknown> = {};
    let cur = over;
    const parts = key.split(".");
    parts.forEach((p, i) => {
      if (i === parts.length - 1) cur[p] = parsed;
      else cur = (cur[p] = {}) as Record<string, unknown>;
    });
    const prov: Provenance = new Map([[key, { file: `--set ${assignment}`, line: 0 }]]);
    merged = mergeSourced(merged, { value: over, provenance: prov }); // line 0: the command line
  }
  const result = WorkflowSchema.safeParse(merged.value);
  if (!result.success) {
    const messages = result.error.issues.slice(0, 8).map((issue) => {
      const path = issue.path.filter((p): p is string | number => typeof p !== "symbol");
      let message = issue.message;
      if (issue.code === "unrecognized_keys") {
        const keys = issue.keys.map((k) => `'${k}'`).join(", ");
        return describeAt(merged.provenance, file, [...path, issue.keys[0]], `unknown key ${keys}`);
      }
      if (issue.code === "invalid_value" && "values" in issue) {
        message = `expected one of ${(issue.values as unknown[]).join(", ")}`;
      }
      return describeAt(merged.provenance, file, path, message);
    });
    const more = result.error.issues.length > 8
      ? `\n  (${result.error.issues.length - 8} more)`
      : "";
    throw new WorkflowError(`Invalid workflow ${file}:\n  ${messages.join("\n  ")}${more}`);
  }
  const spec = result.data;
  validateKinds(spec, merged.provenance, file);
  return { spec, file, files, profile: opts.profile, provenance: merged.provenance };
}

function loadWithExtends(file: string, chain: string[], files: string[]): SourcedValue {
  if (chain.includes(file)) {
    throw new WorkflowError(
      `Cannot load ${chain[0]}: 'extends' forms a cycle: ${[...chain, file].join(" -> ")}`,
    );
  }
  const own = readYamlFile(file);
  files.push(file);
  if (!isPlainObject(own.value)) {
    throw new WorkflowError(
      `${file}:1: a workflow file must be a mapping of keys (name, steps, ...)`,
    );
  }
  const ext = own.value.extends;
  if (ext === undefined) return own;
  const list = typeof ext === "string" ? [ext] : Array.isArray(ext) ? ext : null;
  if (!list || list.some((e) => typeof e !== "string")) {
    throw new WorkflowError(
      describeAt(own.provenance, file, ["extends"], "expected a file name or a list of file names"),
    );
  }
  let acc: SourcedValue | null = null;
  for (const rel of list as string[]) {
    const parentFile = resolve(dirname(file), rel);
    const parent = loadWithExtends(parentFile, [...chain, file], files);
    acc = acc ? mergeSourced(acc, parent) : parent;
  }
  const withoutExtends = { ...own.value };
  delete withoutExtends.extends;
  const base = acc!;
  // A child's name wins; a base file need not have one.
  return mergeSourced(base, { value: withoutExtends, provenance: own.provenance });
}

function validateKinds(spec: WorkflowSpec, prov: Provenance, file: string): void {
  const problems: string[] = [];
  for (const [name, step] of Object.entries(spec.steps)) {
    const at = (key: string[], msg: string) =>
      problems.push(describeAt(prov, file, ["steps", name, ...key], msg));
    if (name === "logs") {
      at([], "the step name 'logs' is reserved (step logs live in <workdir>/logs)");
    }
    if (step.kind === "command" && step.run === undefined) {
      at(["run"], "a command step needs 'run'");
    }
    if (step.kind !== "command" && step.run !== undefined) {
      at(["run"], `'run' is only for command steps (this step is ${step.kind})`);
    }
    const params = step.params ?? {};
    if (
      (step.kind === "synthesise" || step.kind === "train") && params.task === undefined &&
      params.manifest === undefined && spec.defaults?.params?.[step.kind]?.task === undefined
    ) {
      at(
        ["params"],
        `a ${step.kind} step needs params.task${
          step.kind === "train" ? " or params.manifest" : ""
        }`,
      );
    }
    if (step.matrix) {
      for (const [axis, values] of Object.entries(step.matrix)) {
        if ((axis === "include" || axis === "exclude")) {
          if (values.some((v) => !isPlainObject(v))) {
            at(["matrix", axis], "expected a list of mappings");
          }
        } else if (values.some((v) => isPlainObject(v))) {
          at(["matrix", axis], "expected a list of values (strings, numbers or booleans)");
        }
      }
    }
  }
  if (problems.length > 0) {
    throw new WorkflowError(`Invalid workflow ${file}:\n  ${problems.join("\n  ")}`);
  }
}

/** Parses a duration (90, "90s", "30m", "2h", "1d", "01:30:00", "1-00:00:00") into seconds. */
export function parseDuration(v: string | number): number {
  if (typeof v === "number") return v;
  const unit = /^(\d+(?:\.\d+)?)\s*(s|m|h|d)$/.exec(v.trim());
  if (unit) return Number(unit[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[unit[2] as "s"];
  const clock = /^(?:(\d+)-)?(\d{1,2}):(\d{2})(?::(\d{2}))?$/.exec(v.trim());
  if (clock) {
    const [, d, a, b, c] = clock;
    const days = Number(d ?? 0) * 86400;
    return c === undefined
      ? days + Number(a) * 60 + Number(b)
      : days + Number(a) * 3600 + Number(b) * 60 + Number(c);
  }
  throw new WorkflowError(`Cannot parse duration '${v}': expected 90s, 30m, 2h, 1d or 01:30:00`);
}

/** Parses a memory size ("512M", "4G", "4GiB", or a number of MiB) into MiB. */
export function parseMemoryMiB(v: string | number): number {
  if (typeof v === "number") return v;
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT])i?B?$/i.exec(v.trim());
  if (!m) throw new WorkflowError(`Cannot parse memory size '${v}': expected 512M or 4G`);
  const f = { K: 1 / 1024, M: 1, G: 1024, T: 1024 * 1024 }[m[2].toUpperCase() as "K"];
  return Math.ceil(Number(m[1]) * f);
}
