/**
 * From a validated workflow to a plan: matrix sweeps expanded into step instances
 * (train[ratio=0.1,method=cmc]), defaults applied, references resolved, dependencies checked
 * (missing steps, cycles) and the instances put in a topological order. Nothing runs here.
 */
import { join, resolve } from "node:path";
import {
  describeAt,
  type LoadedWorkflow,
  parseDuration,
  parseMemoryMiB,
  type StepKind,
  type StepSpec,
} from "./schema.ts";
import { isPlainObject, WorkflowError } from "./yaml_source.ts";
import { KEEP, type Lookup, references, substitute, TemplateError } from "./template.ts";

export type Scalar = string | number | boolean;

/** One runnable instance of a step. */
export interface PlannedStep {
  /** Unique id: the step name, plus [k=v,...] for matrix instances. */
  id: string;
  /** The step's name in the file. */
  name: string;
  kind: StepKind;
  /** This instance's matrix values (empty without a matrix). */
  matrix: Record<string, Scalar>;
  /** Ids of the instances this one needs. */
  needs: string[];
  /** Parameters with references resolved (except ${{ step.out }}, resolved at launch). */
  params: Record<string, unknown>;
  run?: string | string[];
  env: Record<string, string>;
  resources: { cpus: number; gpus: number; memoryMiB?: number; timeSec?: number };
  retries: number;
  /** First retry delay in seconds; doubles at each retry. */
  backoffSec: number;
  cache: boolean;
  /** Files (relative to the output folder) that must exist for the step to count as finished. */
  outputs: string[];
  /** The final output folder (absolute). */
  outDir: string;
}

export interface Plan {
  workflow: LoadedWorkflow;
  name: string;
  /** Absolute working folder: step outputs, logs and .comodal/state.json live here. */
  workdir: string;
  /** Instances in a topological order (each after everything it needs). */
  steps: PlannedStep[];
  byId: Map<string, PlannedStep>;
  /** Step name -> ids of its instances. */
  instancesOf: Map<string, string[]>;
}

export interface PlanOptions {
  /** Overrides the workflow's workdir (relative paths resolve against the current directory). */
  workdir?: string;
}

/** Formats a matrix instance id: name[k=v,k2=v2]. */
export function instanceId(name: string, matrix: Record<string, Scalar>): string {
  const keys = Object.keys(matrix);
  if (keys.length === 0) return name;
  return `${name}[${keys.map((k) => `${k}=${matrix[k]}`).join(",")}]`;
}

/** A folder name for a matrix instance (k=v,k2=v2 with unsafe characters replaced). */
export function instanceDirName(matrix: Record<string, Scalar>): string {
  return Object.entries(matrix).map(([k, v]) => `${k}=${v}`).join(",").replace(/[^\w.=,+-]/g, "_");
}

/** Expands a matrix (axes, plus optional include/exclude lists) into value combinations. */
export function expandMatrix(matrix: StepSpec["matrix"]): Record<string, Scalar>[] {
  if (!matrix) return [{}];
  const axes = Object.entries(matrix).filter(([k]) => k !== "include" && k !== "exclude") as [
    string,
    Scalar[],
  ][];
  let combos: Record<string, Scalar>[] = [{}];
  for (const [key, values] of axes) {
    const next: Record<string, Scalar>[] = [];
    for (const c of combos) for (const v of values) next.push({ ...c, [key]: v });
    combos = next;
  }
  if (axes.length === 0) combos = [];
  const exclude = (matrix.exclude ?? []) as Record<string, Scalar>[];
  combos = combos.filter((c) =>
    !exclude.some((ex) => Object.entries(ex).every(([k, v]) => c[k] === v))
  );
  for (const inc of (matrix.include ?? []) as Record<string, Scalar>[]) {
    if (!combos.some((c) => sameValues(c, inc))) combos.push({ ...inc });
  }
  return combos;
}

function sameValues(a: Record<string, Scalar>, b: Record<string, Scalar>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

/** Builds the plan; throws WorkflowError naming file, key path and line for any problem. */
export function buildPlan(wf: LoadedWorkflow, opts: PlanOptions = {}): Plan {
  const spec = wf.spec;
  const prov = wf.provenance;
  const workdir = resolve(opts.workdir ?? spec.workdir ?? join("runs", spec.name));
  const fail = (path: (string | number)[], msg: string): never => {
    throw new WorkflowError(describeAt(prov, wf.file, path, msg));
  };

  // 1. Expand every step into instances (ids and folders first; references need them).
  interface Draft {
    step: StepSpec;
    id: string;
    name: string;
    matrix: Record<string, Scalar>;
    outDir: string;
  }
  const drafts = new Map<string, Draft>();
  const instancesOf = new Map<string, string[]>();
  for (const [name, step] of Object.entries(spec.steps)) {
    const combos = expandMatrix(step.matrix);
    if (combos.length === 0) fail(["steps", name, "matrix"], "the matrix expands to no instances");
    const ids: string[] = [];
    for (const m of combos) {
      const id = instanceId(name, m);
      const outDir = Object.keys(m).length
        ? join(workdir, name, instanceDirName(m))
        : join(workdir, name);
      if (drafts.has(id)) fail(["steps", name, "matrix"], `the matrix gives instance ${id} twice`);
      drafts.set(id, { step, id, name, matrix: m, outDir });
      ids.push(id);
    }
    instancesOf.set(name, ids);
  }

  // Instances of `target` that an instance with matrix `m` refers to: the one with the same
  // values on the target's axes when `m` has all of them, otherwise all instances.
  const matching = (target: string, m: Record<string, Scalar>): string[] => {
    const ids = instancesOf.get(target)!;
    const axes = Object.keys(drafts.get(ids[0])!.matrix);
    if (axes.length === 0 || !axes.every((a) => a in m)) return ids;
    const hit = ids.filter((id) => axes.every((a) => drafts.get(id)!.matrix[a] === m[a]));
    return hit.length > 0 ? hit : ids;
  };

  // 2. Resolve each instance.
  const planned: PlannedStep[] = [];
  for (const d of drafts.values()) {
    const { step, name, matrix } = d;
    const base = ["steps", name];
    const needNames = step.needs === undefined
      ? []
      : typeof step.needs === "string"
      ? [step.needs]
      : step.needs;
    const needs = new Set<string>();
    needNames.forEach((n, i) => {
      if (n === name) {
        fail(
          [...base, "needs", ...(typeof step.needs === "string" ? [] : [i])],
          `step '${name}' cannot need itself`,
        );
      }
      if (instancesOf.has(n)) matching(n, matrix).forEach((id) => needs.add(id));
      else if (drafts.has(n)) needs.add(n);
      else {
        fail(
          [...base, "needs", ...(typeof step.needs === "string" ? [] : [i])],
          `unknown step '${n}' (steps: ${[...instancesOf.keys()].join(", ")})`,
        );
      }
    });
    const lookup: Lookup = (path) => {
      const [head, ...rest] = path;
      switch (head) {
        case "matrix":
          return rest.length === 1 ? matrix[rest[0]] : undefined;
        case "vars":
          return dig(spec.vars ?? {}, rest);
        case "workdir":
          return rest.length === 0 ? workdir : undefined;
        case "profile":
          return rest.length === 0 ? (wf.profile ?? "") : undefined;
        case "workflow":
          return rest.length === 1 && rest[0] === "name" ? spec.name : undefined;
        case "step":
          if (rest.length !== 1) return undefined;
          if (rest[0] === "out") return KEEP;
          if (rest[0] === "name") return name;
          if (rest[0] === "id") return d.id;
          return undefined;
        case "steps": {
          const [target, field] = rest;
          if (!instancesOf.has(target)) {
            throw new TemplateError(
              `unknown step '${target}' in '\${{ ${path.join(".")} }}'`,
              path.join("."),
            );
          }
          if (rest.length !== 2 || field !== "out") {
            throw new TemplateError(
              `'\${{ ${path.join(".")} }}': a step offers only .out`,
              path.join("."),
            );
          }
          if (target === name) {
            throw new TemplateError(
              `step '${name}' refers to its own output; use \${{ step.out }}`,
              path.join("."),
            );
          }
          const ids = matching(target, matrix);
          ids.forEach((id) => needs.add(id));
          return ids.length === 1 ? drafts.get(ids[0])!.outDir : join(workdir, target);
        }
        default:
          return undefined;
      }
    };
    const onError = (err: TemplateError, path: (string | number)[]): never =>
      fail(path, err.message);
    const defaults = spec.defaults ?? {};
    const kindDefaults = defaults.params?.[step.kind] ?? {};
    const rawParams = deepMerge(kindDefaults, step.params ?? {}) as Record<string, unknown>;
    const params = substitute(rawParams, lookup, [...base, "params"], onError) as Record<
      string,
      unknown
    >;
    const run = step.run === undefined
      ? undefined
      : substitute(step.run, lookup, [...base, "run"], onError) as
        | string
        | string[];
    const envRaw = { ...(defaults.env ?? {}), ...(step.env ?? {}) };
    const envResolved = substitute(envRaw, lookup, [...base, "env"], onError) as Record<
      string,
      unknown
    >;
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(envResolved)) {
      env[k] = typeof v === "string" ? v : JSON.stringify(v);
    }
    const outputs =
      (substitute(step.outputs ?? [], lookup, [...base, "outputs"], onError) as unknown[]).map(
        String,
      );
    // References found inside vars are resolved through lookup too; make sure nothing is left over.
    for (const ref of references(params)) {
      if (ref !== "step.out") {
        fail([...base, "params"], `reference '\${{ ${ref} }}' left unresolved`);
      }
    }
    const res = { ...(defaults.resources ?? {}), ...(step.resources ?? {}) };
    planned.push({
      id: d.id,
      name,
      kind: step.kind,
      matrix,
      needs: [...needs].filter((id) => id !== d.id),
      params,
      run,
      env,
      resources: {
        cpus: res.cpus ?? 1,
        gpus: res.gpus ?? 0,
        memoryMiB: res.memory === undefined ? undefined : parseMemoryMiB(res.memory),
        timeSec: res.time === undefined ? undefined : parseDuration(res.time),
      },
      retries: step.retries ?? defaults.retries ?? 0,
      backoffSec: step.backoff ?? defaults.backoff ?? 1,
      cache: step.cache ?? true,
      outputs,
      outDir: d.outDir,
    });
  }

  // A report without inputs reports on the output folders of the steps it needs.
  for (const s of planned) {
    if (s.kind === "report" && s.params.inputs === undefined) {
      const dirs = s.needs.map((n) => drafts.get(n)!.outDir);
      if (dirs.length === 0) {
        fail(["steps", s.name, "params"], "a report step needs params.inputs or needs");
      }
      s.params.inputs = dirs;
    }
  }
  const byId = new Map(planned.map((s) => [s.id, s]));
  const order = topologicalOrder(planned, (id) => {
    const s = byId.get(id)!;
    return describeAt(prov, wf.file, ["steps", s.name, "needs"], "");
  });
  return { workflow: wf, name: spec.name, workdir, steps: order, byId, instancesOf };
}

/** Objects merge key by key (b wins); anything else in b replaces a. */
function deepMerge(a: unknown, b: unknown): unknown {
  if (!isPlainObject(a) || !isPlainObject(b)) return b;
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) out[k] = k in out ? deepMerge(out[k], v) : v;
  return out;
}

function dig(obj: unknown, path: string[]): unknown {
  let cur = obj;
  for (const p of path) {
    if (!isPlainObject(cur)) return undefined;
    cur = cur[p];
  }
  return cur;
}

/** Orders steps so each comes after its needs; a cycle is reported with its path. */
export function topologicalOrder(
  steps: PlannedStep[],
  where?: (id: string) => string,
): PlannedStep[] {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const state = new Map<string, 1 | 2>(); // 1 visiting, 2 done
  const out: PlannedStep[] = [];
  const visit = (s: PlannedStep, stack: string[]) => {
    const st = state.get(s.id);
    if (st === 2) return;
    if (st === 1) {
      const cycle = [...stack.slice(stack.indexOf(s.id)), s.id];
      const loc = where ? where(s.id).replace(/: $/, "") : "";
      throw new WorkflowError(`${loc ? loc + ": " : ""}dependency cycle: ${cycle.join(" -> ")}`);
    }
    state.set(s.id, 1);
    for (const n of s.needs) {
      const dep = byId.get(n);
      if (!dep) throw new WorkflowError(`step ${s.id} needs unknown step ${n}`);
      visit(dep, [...stack, s.id]);
    }
    state.set(s.id, 2);
    out.push(s);
  };
  for (const s of steps) visit(s, []);
  return out;
}

/** All ancestors of the given ids (the ids included). */
export function withAncestors(plan: Plan, ids: Iterable<string>): Set<string> {
  const out = new Set<string>();
  const add = (id: string) => {
    if (out.has(id)) return;
    out.add(id);
    for (const n of plan.byId.get(id)!.needs) add(n);
  };
  for (const id of ids) add(id);
  return out;
}

/** Resolves step selectors (a step name selects all its instances; an id selects one). */
export function selectSteps(plan: Plan, selectors: string[]): Set<string> {
  const out = new Set<string>();
  for (const sel of selectors) {
    if (sel === "*" || sel === "all") plan.steps.forEach((s) => out.add(s.id));
    else if (plan.instancesOf.has(sel)) plan.instancesOf.get(sel)!.forEach((id) => out.add(id));
    else if (plan.byId.has(sel)) out.add(sel);
    else {
      throw new WorkflowError(
        `${plan.workflow.file}: no step '${sel}' (steps: ${
          [...plan.instancesOf.keys()].join(", ")
        })`,
      );
    }
  }
  return out;
}
