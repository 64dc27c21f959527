/**
 * Content hashes: of a step (kind, parameters, command, environment, code version and the hashes
 * of the steps it needs) and of a finished step's output folder (names, sizes and bytes).
 */
import { createHash } from "node:crypto";
import { join, relative } from "node:path";
import type { Plan, PlannedStep } from "./plan.ts";

/** The metadata file each finished output folder carries. */
export const STEP_META_FILE = ".comodal_step.json";

/** JSON with object keys sorted, so equal values hash equally. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const keys = Object.keys(value).sort();
    return `{${
      keys.filter((k) => (value as Record<string, unknown>)[k] !== undefined)
        .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`)
        .join(",")
    }}`;
  }
  return JSON.stringify(value) ?? "null";
}

export function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

const CODE_DIRS = ["src", "cli", "native"];
const CODE_EXT = /\.(ts|cpp|hpp|h|cu|cuh|c)$/;
const codeCache = new Map<string, string>();

/**
 * Version of the project's code: a hash of the sources under src/, cli/ and native/ (test files
 * excluded), so uncommitted edits count too. Cached per process.
 */
export function codeVersion(root: string): string {
  const hit = codeCache.get(root);
  if (hit) return hit;
  const h = createHash("sha256");
  const files: string[] = [];
  const walk = (dir: string) => {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(dir)];
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(dir, e.name);
      if (e.isDirectory && !e.name.startsWith(".")) walk(p);
      else if (e.isFile && CODE_EXT.test(e.name) && !/_test\.ts$/.test(e.name)) files.push(p);
    }
  };
  for (const d of CODE_DIRS) walk(join(root, d));
  files.sort();
  for (const f of files) {
    h.update(relative(root, f));
    h.update("\0");
    h.update(Deno.readFileSync(f));
    h.update("\0");
  }
  const v = h.digest("hex").slice(0, 16);
  codeCache.set(root, v);
  return v;
}

/** Step kinds whose result depends on the project's code (everything but plain commands). */
export function dependsOnCode(step: PlannedStep): boolean {
  return step.kind !== "command";
}

/**
 * Computes every step's content hash in topological order: kind, params, command, env, expected
 * outputs, the code version (for project steps) and the hashes of the steps it needs.
 */
export function stepHashes(plan: Plan, code: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const s of plan.steps) {
    const body = {
      kind: s.kind,
      params: s.params,
      run: s.run,
      env: s.env,
      outputs: s.outputs,
      code: dependsOnCode(s) ? code : undefined,
      needs: s.needs.map((n) => out.get(n)!).sort(),
    };
    out.set(s.id, sha256(canonicalJson(body)).slice(0, 24));
  }
  return out;
}

/** Hash of an output folder: relative paths, sizes and contents, in sorted order. */
export async function hashOutputs(dir: string): Promise<string> {
  const h = createHash("sha256");
  const files: string[] = [];
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      if (e.isDirectory) await walk(p);
      else if (e.isFile && !(d === dir && e.name === STEP_META_FILE)) files.push(p);
    }
  };
  await walk(dir);
  files.sort();
  for (const f of files) {
    const info = await Deno.stat(f);
    h.update(`${relative(dir, f)}\0${info.size}\0`);
    const file = await Deno.open(f);
    for await (const chunk of file.readable) h.update(chunk); // the stream closes the file
  }
  return h.digest("hex").slice(0, 24);
}
