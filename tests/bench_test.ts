/**
 * The benchmark harness without running any benchmark: importing bench/main.ts type-checks every
 * listed module against the engine, and the report helpers are checked on fixed data. The GPU
 * benchmark's PyTorch twin of the CMC model (bench/gpu_torch.py) runs one step on the CPU at 32^3
 * beside ours (bench/gpu_train_step.ts): same parameter count and the same loss terms. It is skipped
 * when no Python can import torch (COMODAL_TORCH_PYTHON, .tools/torchvenv of `make bench-env`,
 * python3), and
 * the GPU run's Markdown summary (bench/gpu_summary.py) is checked on fixed files.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { main as gpuTrainStep, type StepResult } from "../bench/gpu_train_step.ts";
import { BENCHMARKS, main } from "../bench/main.ts";
import { TORCH_VENV } from "../bench/torch_python.ts";
import { CONV_CASES, convForwardBackwardFlops, convForwardFlops } from "../bench/conv_bench.ts";
import { ratioBars, ratioPlotSvg } from "../bench/ratio_plot.ts";
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
    // Beside it, the plot of our time / PyTorch's: one bar for the row that has both times.
    const svg = readFileSync(join(dir, "demo.svg"), "utf8");
    assert.equal((svg.match(/class="bar"/g) ?? []).length, 1);
    assert.match(svg, />a<\/text>/);
    assert.match(svg, new RegExp(`>${(1234.5 / 0.01234).toFixed(2)}<`));
    // A table without PyTorch times writes no plot.
    writeResult({ ...RESULT, name: "solo", columns: ["case", "ours ms"] }, {
      runs: 1,
      warmup: 0,
      threads: 1,
      quick: true,
    }, dir);
    assert.ok(!existsSync(join(dir, "solo.svg")));
  } finally {
    rmSync(dir, { recursive: true });
  }
});

Deno.test("bench: ratio bars take row labels from the text cells and skip rows without both times", () => {
  const bars = ratioBars({
    columns: ["case", "pass", "ours ms", "torch ms"],
    rows: [["64^3", "forward", 50, 100], ["64^3", "fwd+bwd", 300, 200], ["x", "y", 5, null]],
  });
  assert.deepEqual(bars, [
    { label: "64^3 forward", ratio: 0.5 },
    { label: "64^3 fwd+bwd", ratio: 1.5 },
  ]);
  const svg = ratioPlotSvg({
    title: "t",
    columns: ["case", "pass", "ours ms", "torch ms"],
    rows: [["a", "b", 1, 2], ["c", "d", 3, 2]],
  })!;
  assert.match(svg, /fill="#2b8a3e"/, "faster than PyTorch in green");
  assert.match(svg, /fill="#c92a2a"/, "slower in red");
});

const BENCH_DIR = fileURLToPath(new URL("../bench/", import.meta.url));

function pythonWith(
  module: string,
  candidates: string[],
): { python: string | null; tried: string[] } {
  const tried: string[] = [];
  for (const py of candidates) {
    tried.push(py);
    try {
      const r = new Deno.Command(py, {
        args: ["-c", `import ${module}`],
        stdout: "null",
        stderr: "null",
      })
        .outputSync();
      if (r.success) return { python: py, tried };
    } catch { /* not installed */ }
  }
  return { python: null, tried };
}

const TORCH = pythonWith(
  "torch",
  [Deno.env.get("COMODAL_TORCH_PYTHON"), `${TORCH_VENV}/bin/python`, "python3"].filter(
    (p): p is string => !!p,
  ),
);
if (!TORCH.python) {
  console.warn(
    `bench_test: PyTorch twin test skipped: torch is not importable by ${TORCH.tried.join(", ")} ` +
      `(make bench-env creates ${TORCH_VENV}; or set COMODAL_TORCH_PYTHON to a Python with torch)`,
  );
}
const PY3 = pythonWith("json", ["python3"]).python;

Deno.test({
  name:
    "bench: the GPU benchmark's PyTorch CMC twin has our parameter count and loss terms (CPU, 32^3)",
  ignore: !TORCH.python,
  fn: async () => {
    const dir = mkdtempSync(join(tmpdir(), "comodal-twin-"));
    try {
      const torchJson = join(dir, "torch.json");
      const out = await new Deno.Command(TORCH.python!, {
        args: [
          join(BENCH_DIR, "gpu_torch.py"),
          ...["--device", "cpu", "--no-conv", "--models", "cmc", "--precision", "fp32"],
          ...["--size", "32", "--steps", "1", "--warmup", "0", "--json", torchJson],
        ],
        env: { OMP_NUM_THREADS: "2" },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.ok(out.success, `gpu_torch.py failed:\n${text}`);
      const t = JSON.parse(readFileSync(torchJson, "utf8")).step.cmc.fp32;

      const oursJson = join(dir, "ours.json");
      const args = ["--models", "cmc", "--size", "32", "--steps", "1", "--warmup", "0"];
      assert.equal(gpuTrainStep([...args, "--json", oursJson]), 0);
      const ours = JSON.parse(readFileSync(oursJson, "utf8")).results[0] as StepResult;

      assert.equal(t.params, ours.params, `PyTorch twin ${t.params} params, ours ${ours.params}`);
      assert.equal(ours.params, 4130026);
      // The same loss terms with the same weights on both sides: loss = sup + w (0.1 csc + 0.1 cac)
      // at w = 1. At initialisation on uniform random data the terms agree closely (different
      // random weights and data): csc ~ ln(2C - 1), cac ~ ln(K), sup ~ ln(K) + 1 - Dice.
      const o = ours.firstTerms;
      const p = t.first_terms as Record<string, number>;
      assert.equal(o.w, 1, "ours runs at ramp weight 1");
      for (const [side, v] of [["ours", o], ["torch", p]] as const) {
        for (const k of ["sup", "csc", "cac", "loss"]) {
          assert.ok(Number.isFinite(v[k]) && v[k] > 0, `${side} ${k} = ${v[k]}`);
        }
        const composed = v.sup + 0.1 * v.csc + 0.1 * v.cac;
        assert.ok(
          Math.abs(composed - v.loss) < 1e-4 * v.loss,
          `${side}: loss ${v.loss} != ${composed}`,
        );
      }
      for (const k of ["sup", "csc", "cac"]) {
        const rel = Math.abs(o[k] - p[k]) / p[k];
        assert.ok(
          rel < 0.15,
          `${k}: ours ${o[k]}, torch ${p[k]} (${(100 * rel).toFixed(1)}% apart)`,
        );
      }
    } finally {
      rmSync(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "bench: the GPU run summary reads the stage table, conv logs and step JSON into Markdown",
  ignore: !PY3,
  fn: async () => {
    const dir = mkdtempSync(join(tmpdir(), "comodal-gpusum-"));
    try {
      writeFileSync(join(dir, "stages.tsv"), "parity\tok\t30\nstep\tTIMEOUT after 300 s\t300\n");
      writeFileSync(join(dir, "notes.txt"), "C++ parity: 156 passed, 0 failed\n");
      writeFileSync(
        join(dir, "bench_ours.log"),
        [
          "== conv3d 3x3x3 pad 1 forward + backward (data + weights), build/libcomodal_cuda.so, " +
          "strict FP32 (own weight-gradient kernel for <= 32 channels) ==",
          "shape                            fwd ms   bwd-d ms   bwd-w ms   total ms    GFLOP/s",
          "[2,16,128,128,128]->16            2.000      3.000      5.000     10.000       1000",
          "== conv3d 3x3x3 pad 1 forward + backward (data + weights), build/libcomodal_cuda.so, " +
          "TF32 allowed ==",
          "[2,16,128,128,128]->16            1.000      1.000      1.000      3.000       3000",
        ].join("\n"),
      );
      writeFileSync(
        join(dir, "torch_conv.json"),
        JSON.stringify({
          conv: {
            fp32: [{ shape: "[2,16,128,128,128]->16", total_ms: 20 }],
            tf32: [{ shape: "[2,16,128,128,128]->16", total_ms: 4 }],
          },
        }),
      );
      const ours = (ms: number, peak: number, pool: number) => ({
        size: 128,
        results: [{
          model: "cmc",
          params: 4130026,
          medianMs: ms,
          losses: [2.9],
          peakMiB: peak,
          poolMiB: pool,
          deviceUsedMiB: pool + 500,
        }],
      });
      const torch = (p: string, ms: number, alloc: number, reserved: number) => ({
        step: {
          cmc: {
            [p]: {
              params: 4130026,
              size: 128,
              median_ms: ms,
              losses: [2.9],
              peak_alloc_mib: alloc,
              peak_reserved_mib: reserved,
              device_used_mib: reserved + 600,
            },
          },
        },
      });
      writeFileSync(join(dir, "step_ours_cmc_fp32.json"), JSON.stringify(ours(80, 900, 1000)));
      writeFileSync(
        join(dir, "step_torch_cmc_fp32.json"),
        JSON.stringify(torch("fp32", 100, 1000, 1200)),
      );
      writeFileSync(join(dir, "step_ours_cmc_tf32.json"), JSON.stringify(ours(90, 900, 1300)));
      writeFileSync(
        join(dir, "step_torch_cmc_tf32.json"),
        JSON.stringify(torch("tf32", 100, 1000, 1200)),
      );
      const out = await new Deno.Command(PY3!, {
        args: [join(BENCH_DIR, "gpu_summary.py"), dir],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const md = new TextDecoder().decode(out.stdout);
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      assert.equal(readFileSync(join(dir, "summary.md"), "utf8"), md);
      const lines = md.split("\n");
      assert.ok(lines.includes("| step | TIMEOUT after 300 s | 300 |"), md);
      assert.ok(lines.includes("- C++ parity: 156 passed, 0 failed"), md);
      assert.ok(
        lines.includes(
          "| [2,16,128,128,128]->16 | 10.0 | - | - | 20.0 | 3.0 | 4.0 | 0.50 | 0.75 |",
        ),
        md,
      );
      const cmc = "| CMC (2 modalities, 1 labeled + 1 unlabeled) |";
      assert.ok(
        lines.includes(
          `${cmc} strict FP32 | 4130026 / 4130026 | 80.0 | 100 | 0.80 | yes | 2.900 / 2.900 |`,
        ),
        md,
      );
      assert.ok(
        lines.includes(
          `${cmc} TF32 | 4130026 / 4130026 | 90.0 | 100 | 0.90 | no | 2.900 / 2.900 |`,
        ),
        md,
      );
      assert.ok(
        lines.includes(`${cmc} strict FP32 | 900 | 1000 | 1000 | 1200 | 1500 | 1800 | yes |`),
        md,
      );
      assert.ok(lines.includes(`${cmc} TF32 | 900 | 1000 | 1300 | 1200 | 1800 | 1800 | no |`), md);
    } finally {
      rmSync(dir, { recursive: true });
    }
  },
});
