/**
 * Module weights <-> safetensors: `saveSafetensorsFrom` writes a module's parameters under their
 * dotted names; `loadSafetensorsInto` copies a file's tensors into a module's parameters by name
 * (PyTorch state-dict names, e.g. a SAM-Med3D image encoder converted to safetensors) and reports
 * what did not match.
 * @module
 */
import { assign } from "../engine.ts";
import type { Module } from "../nn/module.ts";
import { readSafetensors, type SafetensorsFile, writeSafetensors } from "./safetensors.ts";

export interface LoadWeightsOptions {
  /**
   * Only file keys that start with this are considered, with it removed (e.g. "image_encoder." for
   * a whole SAM-Med3D checkpoint, or "module.image_encoder." for one saved from DataParallel).
   */
  prefix?: string;
  /** Throw when any key is missing, unexpected or of another shape (default false: report only). */
  strict?: boolean;
}

export interface LoadWeightsReport {
  source: string;
  /** Module parameters written from the file. */
  loaded: string[];
  /** Module parameters the file does not have (left as initialised). */
  missing: string[];
  /** File keys (under the prefix, prefix removed) the module does not have. */
  unexpected: string[];
  /** Keys present on both sides with different shapes (not loaded). */
  mismatched: { name: string; file: number[]; module: number[] }[];
  /** File keys outside the prefix (not considered). */
  ignored: number;
}

function listNames(names: string[], most = 20): string {
  return names.length <= most
    ? names.join(", ")
    : `${names.slice(0, most).join(", ")}, ... (${names.length - most} more)`;
}

/** A short multi-line description of a load report. */
export function describeLoadReport(r: LoadWeightsReport): string {
  const lines = [`${r.loaded.length} tensors loaded from ${r.source}`];
  if (r.missing.length) {
    lines.push(`missing in the file (${r.missing.length}): ${listNames(r.missing)}`);
  }
  if (r.unexpected.length) {
    lines.push(`unexpected in the file (${r.unexpected.length}): ${listNames(r.unexpected)}`);
  }
  if (r.mismatched.length) {
    lines.push(
      `shape mismatch (${r.mismatched.length}): ` +
        r.mismatched.map((m) =>
          `${m.name} file [${m.file.join(", ")}] vs module [${m.module.join(", ")}]`
        ).join("; "),
    );
  }
  if (r.ignored) lines.push(`${r.ignored} keys outside the prefix ignored`);
  return lines.join("\n");
}

/**
 * Copies the tensors of a safetensors file into a module's parameters by name. Float tensors of any
 * width (F32, F16, BF16, F64) are converted to float32. Shape-mismatched tensors are never loaded;
 * in strict mode any missing, unexpected or mismatched key throws an error listing them all
 * (nothing is written then).
 */
export function loadSafetensorsInto(
  module: Module,
  file: string | SafetensorsFile,
  opts: LoadWeightsOptions = {},
): LoadWeightsReport {
  const st = typeof file === "string" ? readSafetensors(file) : file;
  const prefix = opts.prefix ?? "";
  const params = new Map(module.namedParameters());
  const report: LoadWeightsReport = {
    source: st.source,
    loaded: [],
    missing: [],
    unexpected: [],
    mismatched: [],
    ignored: 0,
  };
  const plan: [string, string][] = [];
  const seen = new Set<string>();
  for (const key of st.names) {
    if (!key.startsWith(prefix)) {
      report.ignored++;
      continue;
    }
    const name = key.slice(prefix.length);
    const p = params.get(name);
    if (!p) {
      report.unexpected.push(name);
      continue;
    }
    seen.add(name);
    const shape = st.info(key).shape;
    if (shape.join() !== p.shape.join()) {
      report.mismatched.push({ name, file: shape, module: [...p.shape] });
      continue;
    }
    plan.push([name, key]);
  }
  report.missing = [...params.keys()].filter((n) => !seen.has(n));
  if (opts.strict) {
    if (report.missing.length || report.unexpected.length || report.mismatched.length) {
      throw new Error(
        `Cannot load ${st.source} strictly${prefix ? ` (prefix '${prefix}')` : ""}:\n` +
          describeLoadReport({ ...report, loaded: plan.map(([n]) => n) }).split("\n")
            .slice(1).join("\n"),
      );
    }
  }
  for (const [name, key] of plan) {
    assign(params.get(name)!, st.readF32(key));
    report.loaded.push(name);
  }
  return report;
}

/** Writes a module's parameters (float32) to a safetensors file, each name prefixed with `prefix`. */
export function saveSafetensorsFrom(
  module: Module,
  path: string,
  opts: { prefix?: string; metadata?: Record<string, string>; dtype?: "F32" | "F16" | "BF16" } = {},
): void {
  const entries = module.namedParameters().map(([n, p]) => {
    const data = p.toArray();
    if (!(data instanceof Float32Array)) {
      throw new Error(`saveSafetensorsFrom: parameter ${n} is not float32`);
    }
    return [`${opts.prefix ?? ""}${n}`, {
      shape: [...p.shape],
      data,
      dtype: opts.dtype ?? "F32",
    }] as [
      string,
      { shape: number[]; data: Float32Array; dtype: "F32" | "F16" | "BF16" },
    ];
  });
  writeSafetensors(path, entries, opts.metadata ?? {});
}
