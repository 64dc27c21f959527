/**
 * Benchmark results: the common shape every benchmark module returns, a plain-text table for the
 * terminal, a Markdown table for the README, and the writer of bench/results/<name>.json.
 *
 * @module
 */

import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, totalmem } from "node:os";
import { fileURLToPath } from "node:url";
import { ratioPlotSvg } from "./ratio_plot.ts";

/** Folder that receives <name>.json. */
export const RESULTS_DIR = fileURLToPath(new URL("./results/", import.meta.url));

/** A table cell: numbers are formatted by the table, null prints "-". */
export type Cell = string | number | null;

/** What one benchmark module produces. */
export interface BenchResult {
  /** File stem of bench/results/<name>.json. */
  name: string;
  title: string;
  /** Column headers of the table. */
  columns: string[];
  rows: Cell[][];
  /** Lines printed under the table (units, caveats, baseline availability). */
  notes: string[];
  /** Machine-readable details (raw run times, versions, settings). */
  details: Record<string, unknown>;
}

/** Options every benchmark module accepts. */
export interface BenchOptions {
  /** Timed repetitions (the median is reported); at least 5 for published figures. */
  runs: number;
  /** Untimed repetitions first. */
  warmup: number;
  /** Kernel threads for the engine and the baseline. */
  threads: number;
  /** Smaller problem sizes, for a smoke run. */
  quick: boolean;
  /** Module-specific flags (the quality bench: --data, --methods, --seeds, ...). */
  extra?: Record<string, string | boolean | undefined>;
}

/** A benchmark module as bench/main.ts lists it. */
export interface BenchModule {
  name: string;
  description: string;
  run(opts: BenchOptions): Promise<BenchResult>;
}

/** Median of a non-empty list. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error("median of an empty list");
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Runs fn warmup times, then returns the wall time of each of `runs` calls in ms. */
export function timeRuns(fn: () => void, opts: { warmup: number; runs: number }): number[] {
  for (let i = 0; i < opts.warmup; i++) fn();
  const out: number[] = [];
  for (let i = 0; i < opts.runs; i++) {
    const t0 = performance.now();
    fn();
    out.push(performance.now() - t0);
  }
  return out;
}

function fmtCell(c: Cell): string {
  if (c === null) return "-";
  if (typeof c === "string") return c;
  if (!Number.isFinite(c)) return String(c);
  const a = Math.abs(c);
  if (a >= 100) return c.toFixed(0);
  if (a >= 10) return c.toFixed(1);
  if (a >= 1) return c.toFixed(2);
  return c.toPrecision(3);
}

/** The result as an aligned plain-text table with its title and notes. */
export function formatTable(r: BenchResult): string {
  const cells = [r.columns, ...r.rows.map((row) => row.map(fmtCell))];
  const widths = r.columns.map((_, j) => Math.max(...cells.map((row) => (row[j] ?? "").length)));
  const line = (row: string[]) =>
    row.map((c, j) => (j === 0 ? c.padEnd(widths[j]) : c.padStart(widths[j]))).join("  ");
  return [
    r.title,
    line(cells[0]),
    widths.map((w) => "-".repeat(w)).join("  "),
    ...cells.slice(1).map(line),
    ...r.notes.map((n) => `  ${n}`),
  ].join("\n");
}

/** The result as a Markdown table (for the README). */
export function formatMarkdown(r: BenchResult): string {
  const rows = r.rows.map((row) => `| ${row.map(fmtCell).join(" | ")} |`);
  return [
    `| ${r.columns.join(" | ")} |`,
    `|${r.columns.map((_, j) => (j === 0 ? "---" : "---:")).join("|")}|`,
    ...rows,
    ...(r.notes.length ? ["", ...r.notes.map((n) => `_${n}_`)] : []),
  ].join("\n");
}

/** Describes the machine the numbers come from. */
export function machineInfo(): Record<string, unknown> {
  const c = cpus();
  return {
    cpu: c[0]?.model ?? "unknown",
    cores: c.length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    os: `${Deno.build.os} ${Deno.build.arch}`,
    deno: Deno.version.deno,
  };
}

/**
 * Writes bench/results/<name>.json (table, Markdown, machine, details), and <name>.svg (our time /
 * PyTorch's per workload) when the table has both times; returns the JSON's path.
 */
export function writeResult(r: BenchResult, opts: BenchOptions, dir: string = RESULTS_DIR): string {
  mkdirSync(dir, { recursive: true });
  const path = `${dir.replace(/\/$/, "")}/${r.name}.json`;
  const doc = {
    name: r.name,
    title: r.title,
    date: new Date().toISOString(),
    machine: machineInfo(),
    options: opts,
    columns: r.columns,
    rows: r.rows,
    notes: r.notes,
    markdown: formatMarkdown(r),
    details: r.details,
  };
  writeFileSync(path, JSON.stringify(doc, null, 2) + "\n");
  // Workloads timed against PyTorch also get the plot of the ratios (bench/ratio_plot.ts).
  const svg = ratioPlotSvg(r);
  if (svg) writeFileSync(path.replace(/\.json$/, ".svg"), svg);
  return path;
}
