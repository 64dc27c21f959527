/**
 * `deno task bench`: runs the benchmark modules listed in BENCHMARKS, prints a table for each and
 * writes bench/results/<name>.json. Benchmarks never run inside the tests.
 *
 *   deno task bench                      # every module
 *   deno task bench --only conv3d        # some modules (comma-separated names)
 *   deno task bench --quick              # small sizes, a smoke run
 *   deno task bench --runs 7 --warmup 2 --threads 2 --list
 *   deno task bench --torch-python /path/to/python   # PyTorch from elsewhere than .tools/torchvenv
 *
 * To add a benchmark: write bench/<name>_bench.ts exporting a BenchModule (see report.ts) and list
 * it in BENCHMARKS below.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { convBench } from "./conv_bench.ts";
import { dataBench } from "./data_bench.ts";
import { ffiBench } from "./ffi_bench.ts";
import { type BenchModule, type BenchOptions, formatTable, writeResult } from "./report.ts";
import { trainStepBench } from "./train_step.ts";
import { qualityBench } from "./quality_bench.ts";
import { setTorchPython, torchPython } from "./torch_python.ts";

/** Every benchmark module, in run order (quality only with --only quality: it trains for hours). */
export const BENCHMARKS: readonly BenchModule[] = [
  ffiBench,
  convBench,
  dataBench,
  trainStepBench,
  qualityBench,
];
const ON_REQUEST = new Set(["quality"]);
/** Modules that compare with PyTorch. */
const TORCH_MODULES = new Set(["conv3d", "train_step"]);

/** Flags of the quality bench (bench/quality_bench.ts). */
const QUALITY_FLAGS = [
  "data",
  "methods",
  "seeds",
  "folds",
  "fold",
  "labeled",
  "unlabeled",
  "test",
  "time",
  "iterations",
  "recipe",
  "work",
  "regions",
  "set",
] as const;

function positiveInt(flag: string, v: string | undefined, dflt: number, min: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    throw new Error(`--${flag} must be an integer >= ${min}, got "${v}"`);
  }
  return n;
}

/** Parses flags, runs the selected modules, prints and writes their results. */
export async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      only: { type: "string" },
      runs: { type: "string" },
      warmup: { type: "string" },
      threads: { type: "string" },
      quick: { type: "boolean", default: false },
      list: { type: "boolean", default: false },
      "no-write": { type: "boolean", default: false },
      zscore: { type: "boolean", default: false },
      "torch-python": { type: "string" },
      ...Object.fromEntries(QUALITY_FLAGS.map((f) => [f, { type: "string" as const }])),
    },
    allowPositionals: false,
  });
  if (values.list) {
    for (const m of BENCHMARKS) console.log(`${m.name.padEnd(10)} ${m.description}`);
    return 0;
  }
  const opts: BenchOptions = {
    runs: positiveInt("runs", values.runs, 5, 1),
    warmup: positiveInt("warmup", values.warmup, 2, 0),
    threads: positiveInt("threads", values.threads, 2, 1),
    quick: values.quick ?? false,
    extra: {
      ...Object.fromEntries(
        QUALITY_FLAGS.map((f) => [f, (values as unknown as Record<string, string | undefined>)[f]]),
      ),
      zscore: values.zscore,
    },
  };
  const wanted = values.only?.split(",").map((s) => s.trim()).filter(Boolean);
  const unknown = (wanted ?? []).filter((w) => !BENCHMARKS.some((m) => m.name === w));
  if (unknown.length) {
    throw new Error(
      `Unknown benchmark ${unknown.join(", ")}: choose from ${
        BENCHMARKS.map((m) => m.name).join(", ")
      }`,
    );
  }
  const selected = BENCHMARKS.filter((m) =>
    wanted ? wanted.includes(m.name) : !ON_REQUEST.has(m.name)
  );
  setTorchPython(values["torch-python"] ?? null);
  const torch = torchPython();
  if ("error" in torch && selected.some((m) => TORCH_MODULES.has(m.name))) {
    console.error(
      `PyTorch baseline unavailable: ${torch.error}. The tables give comodal's own figures only.\n`,
    );
  }
  let failed = 0;
  for (const m of selected) {
    try {
      const r = await m.run(opts);
      console.log(formatTable(r));
      if (!values["no-write"]) console.log(`  -> ${writeResult(r, opts)}`);
      console.log();
    } catch (e) {
      failed++;
      console.error(`benchmark ${m.name} failed: ${(e as Error).stack ?? e}`);
    }
  }
  return failed ? 1 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    console.error((e as Error).message);
    Deno.exit(2);
  }
}
