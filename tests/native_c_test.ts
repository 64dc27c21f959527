/**
 * Runs the C++ tests of the CPU library alone (native/tests/test_native.cpp: runtime, convolutions,
 * group norm; native/tests/test_ops.cpp: the other kernels) through `make native-test`, so the
 * suite covers them. Each program closes with a "N passed, N failed" line. Skipped, with a message, only where no C++ compiler
 * exists to build the test program.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

function hasCompiler(): boolean {
  try {
    const r = new Deno.Command("g++", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync();
    return r.success;
  } catch {
    return false;
  }
}

const compiler = hasCompiler();
if (!compiler) console.warn("native_c_test: g++ not found, the C++ library tests are skipped");

Deno.test({
  name: "native C++ tests of the CPU library pass (make native-test)",
  ignore: !compiler,
  fn: async () => {
    const out = await new Deno.Command("make", {
      args: ["--no-print-directory", "native-test"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    const summaries = [...text.matchAll(/(\d+) passed, (\d+) failed/g)];
    assert.equal(summaries.length, 2, `expected a summary line from each test program:\n${text}`);
    for (const m of summaries) {
      assert.equal(Number(m[2]), 0, `native tests failed:\n${text}`);
      assert.ok(Number(m[1]) > 100, `too few native checks ran:\n${text}`);
    }
    assert.ok(out.success, `make native-test exited with ${out.code}:\n${text}`);
  },
});
