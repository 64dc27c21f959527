/**
 * The benchmark harness without running any benchmark: importing bench/main.ts type-checks every
 * listed module against the engine, and the report helpers are checked on fixed data.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BENCHMARKS, main } from "../bench/main.ts";
import { CONV_CASES, convForwardBackwardFlops, convForwardFlops } from "../bench/conv_bench.ts";
import {
  type BenchResult,
  formatMarkdown,
  formatTable,
  median,
  timeRuns,
  writeResult,
} from "../bench/report.ts";

const RESULT: BenchResult = {
  name: "demo",
  title: "Demo table",
  columns: ["case", "ours ms", "torch ms"],
  rows: [["a", 1234.5, 0.01234], ["bb", 12.345, null]],
  notes: ["a note"],
  details: { k: 1 },
};

Deno.test("bench: modules are listed once each and the CLI rejects unknown names", async () => {
  const names = BENCHMARKS.map((m) => m.name);
  assert.equal(new Set(names).size, names.length, `duplicate module names in ${names}`);
  for (const want of ["ffi", "conv3d"]) assert.ok(names.includes(want), `${want} is not listed`);
  await assert.rejects(
    () => main(["--only", "nope"]),
    /Unknown benchmark nope: choose from ffi, conv3d/,
  );
  await assert.rejects(() => main(["--runs", "0"]), /--runs must be an integer >= 1, got "0"/);
});

Deno.test("bench: conv FLOP counts follow 2*N*Co*out^3*Ci*k^3, backward weights and data each one forward", () => {
  const c = CONV_CASES[0]; // N2 C16->16 64^3, padding 1: output 64^3
  assert.equal(convForwardFlops(c), 2 * 2 * 16 * 64 ** 3 * 16 * 27);
  assert.equal(convForwardBackwardFlops(c), 3 * convForwardFlops(c));
  const first = CONV_CASES.find((x) => !x.inputGrad)!;
  assert.equal(convForwardBackwardFlops(first), 2 * convForwardFlops(first));
});

Deno.test("bench: median, timing and tables", () => {
  assert.equal(median([5, 1, 3]), 3);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.throws(() => median([]), /empty/);
  let calls = 0;
  const runs = timeRuns(() => void calls++, { warmup: 2, runs: 3 });
  assert.equal(runs.length, 3);
  assert.equal(calls, 5);
  const table = formatTable(RESULT).split("\n");
  assert.equal(table[0], "Demo table");
  assert.equal(table[1], "case  ours ms  torch ms");
  assert.equal(table[3], "a        1235    0.0123");
  assert.equal(table[4], "bb       12.3         -");
  assert.equal(table[5], "  a note");
  const md = formatMarkdown(RESULT).split("\n");
  assert.equal(md[0], "| case | ours ms | torch ms |");
  assert.equal(md[1], "|---|---:|---:|");
  assert.equal(md[3], "| bb | 12.3 | - |");
});

Deno.test("bench: writeResult writes the table, Markdown and machine description as JSON", () => {
  const dir = mkdtempSync(join(tmpdir(), "comodal-bench-"));
  try {
    const path = writeResult(RESULT, { runs: 5, warmup: 1, threads: 2, quick: false }, dir);
    assert.equal(path, join(dir, "demo.json"));
    const doc = JSON.parse(readFileSync(path, "utf8"));
    assert.equal(doc.name, "demo");
    assert.deepEqual(doc.rows, RESULT.rows);
    assert.equal(doc.options.threads, 2);
    assert.ok(doc.markdown.startsWith("| case | ours ms | torch ms |"));
    assert.ok(typeof doc.machine.cores === "number" && doc.machine.cores > 0);
    assert.ok(!Number.isNaN(Date.parse(doc.date)));
  } finally {
    rmSync(dir, { recursive: true });
  }
});
