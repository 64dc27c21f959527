/**
 * Reading workflow YAML files while remembering where every key came from (file and line), so that
 * validation errors found after merging files and profiles can still point at the source line.
 */
import { isMap, isScalar, isSeq, LineCounter, parseDocument } from "yaml";
import type { Node } from "yaml";

/** Where a value was written: file and 1-based line. */
export interface SourceLocation {
  file: string;
  line: number;
}

/** Key path ("steps.train.params.ratio") -> where it was written. */
export type Provenance = Map<string, SourceLocation>;

/** A parsed YAML document with the location of each key path. */
export interface SourcedValue {
  value: unknown;
  provenance: Provenance;
}

/** Raised for any problem in a workflow file; the message names file, key path and line. */
export class WorkflowError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WorkflowError";
  }
}

/** Joins a key path the way error messages show it: a.b[2].c */
export function formatPath(path: readonly (string | number)[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += out === "" ? p : `.${p}`;
  }
  return out;
}

/** Parses YAML text; syntax errors and duplicate keys name the file and line. */
export function parseYamlSource(text: string, file: string): SourcedValue {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter,
    uniqueKeys: true,
    prettyErrors: false,
    merge: true,
  });
  if (doc.errors.length > 0) {
    const e = doc.errors[0];
    const line = lineCounter.linePos(e.pos[0]).line;
    const msg = e.message.split("\n")[0];
    throw new WorkflowError(`${file}:${line}: invalid YAML: ${msg}`);
  }
  const provenance: Provenance = new Map();
  const record = (node: Node | null | undefined, path: (string | number)[]) => {
    if (!node) return;
    const start = node.range?.[0];
    if (start !== undefined) {
      provenance.set(formatPath(path), { file, line: lineCounter.linePos(start).line });
    }
    if (isMap(node)) {
      for (const pair of node.items) {
        const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
        const keyPath = [...path, key];
        const keyNode = pair.key as Node;
        if (keyNode?.range) {
          provenance.set(formatPath(keyPath), {
            file,
            line: lineCounter.linePos(keyNode.range[0]).line,
          });
        }
        if (pair.value) recordChild(pair.value as Node, keyPath);
      }
    } else if (isSeq(node)) {
      node.items.forEach((item, i) => record(item as Node, [...path, i]));
    }
  };
  // A key's own line is a better pointer than the value's line (block values start lines below).
  const recordChild = (node: Node, path: (string | number)[]) => {
    const keep = provenance.get(formatPath(path));
    record(node, path);
    if (keep) provenance.set(formatPath(path), keep);
  };
  record(doc.contents as Node, []);
  const value = doc.toJS({ maxAliasCount: 1000 });
  return { value: value ?? {}, provenance };
}

/** Reads and parses a YAML file, naming the file when it cannot be read. */
export function readYamlFile(path: string): SourcedValue {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound ? "file not found" : String(err);
    throw new WorkflowError(`Cannot read workflow ${path}: ${why}`);
  }
  return parseYamlSource(text, path);
}

/** True for plain objects (not arrays, not null). */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Deep-merges `over` onto `base`: objects merge key by key, everything else (arrays included) is
 * replaced. Provenance entries of `over` (re-rooted under `overRoot` -> `targetRoot`) replace
 * those of the replaced subtrees.
 */
export function mergeSourced(
  base: SourcedValue,
  over: SourcedValue,
  opts: { overRoot?: string; targetRoot?: string } = {},
): SourcedValue {
  const overRoot = opts.overRoot ?? "";
  const targetRoot = opts.targetRoot ?? "";
  const overValue = overRoot === "" ? over.value : getPath(over.value, overRoot);
  const provenance: Provenance = new Map(base.provenance);
  const value = mergeInto(base.value, overValue, targetRoot, provenance);
  for (const [k, loc] of over.provenance) {
    if (overRoot !== "" && k !== overRoot && !k.startsWith(overRoot + ".")) continue;
    const rest = overRoot === "" ? k : k.slice(overRoot.length).replace(/^\./, "");
    const target = [targetRoot, rest].filter((s) => s !== "").join(".");
    provenance.set(target, loc);
  }
  return { value, provenance };
}

function mergeInto(base: unknown, over: unknown, path: string, prov: Provenance): unknown {
  if (isPlainObject(base) && isPlainObject(over)) {
    const out: Record<string, unknown> = { ...base };
    for (const [k, v] of Object.entries(over)) {
      const p = path === "" ? k : `${path}.${k}`;
      out[k] = k in base ? mergeInto(base[k], v, p, prov) : v;
    }
    return out;
  }
  if (path === "") return over;
  // The whole subtree is replaced: forget where its old children came from.
  for (const k of [...prov.keys()]) {
    if (k.startsWith(path + ".") || k.startsWith(path + "[")) prov.delete(k);
  }
  return over;
}

function getPath(value: unknown, dotted: string): unknown {
  let cur = value;
  for (const part of dotted.split(".")) {
    if (!isPlainObject(cur)) return undefined;
    cur = cur[part];
  }
  return cur;
}

/** Finds the closest recorded location for a key path (walking up to its parents). */
export function locate(
  prov: Provenance,
  path: readonly (string | number)[],
): SourceLocation | undefined {
  for (let n = path.length; n >= 0; n--) {
    const loc = prov.get(formatPath(path.slice(0, n)));
    if (loc) return loc;
  }
  return undefined;
}
