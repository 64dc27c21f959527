/**
 * The CUDA library (build/libcomodal_cuda.so) on any machine: it loads without a GPU and without
 * cuDNN, exports exactly the functions of comodal.h (as the CPU library does), reports itself as the CUDA device, and
 * answers cmo_backend_create with CMO_ERR_NO_DEVICE and "no CUDA device" where no GPU exists. The C++
 * parity driver (test_cuda_parity.cpp) is built and run too: where a GPU exists it compares every op
 * with the CPU library, elsewhere it must say that no device exists. The source of two kernels
 * (weight gradient, matrix product) runs on the CPU through host emulation against naive references
 * (test_kernels_host.cpp), on every machine with g++, and so does the caching allocator's policy
 * (block_allocator.hpp, test_allocator_host.cpp: invariants, failure paths, and the replay of recorded
 * training-step allocation traces in alloc_traces/ against the previous policy). Ignored, with a message, only
 * where the library was not built (no nvcc) or no C++ compiler exists.
 */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../../..", import.meta.url));
const CUDA_LIB = `${ROOT}build/libcomodal_cuda.so`;
const CPU_LIB = `${ROOT}build/libcomodal_cpu.so`;
const CMO_ERR_NO_DEVICE = 4;
const CMO_DEVICE_CUDA = 1;

function run(cmd: string, args: string[]): { ok: boolean; code: number; out: string } {
  try {
    const r = new Deno.Command(cmd, { args, cwd: ROOT, stdout: "piped", stderr: "piped" })
      .outputSync();
    const dec = new TextDecoder();
    return { ok: r.success, code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
  } catch (e) {
    return { ok: false, code: -1, out: String(e) };
  }
}

const haveLib = existsSync(CUDA_LIB);
if (!haveLib) {
  console.warn(`cuda_library_test: ${CUDA_LIB} not built (no nvcc?): CUDA library tests ignored`);
}
const haveGxx = run("g++", ["--version"]).ok;

function exportedCmoSymbols(lib: string): string[] {
  const r = run("nm", ["-D", "--defined-only", lib]);
  assert.ok(r.ok, `nm -D ${lib} failed: ${r.out}`);
  return r.out.split("\n").map((l) => l.trim().split(/\s+/).pop() ?? "").filter((s) =>
    s.startsWith("cmo_")
  ).sort();
}

Deno.test({
  name: "CUDA library: exports exactly the cmo_* functions of comodal.h, as the CPU library does",
  ignore: !haveLib || !existsSync(CPU_LIB),
  fn() {
    const header = Deno.readTextFileSync(`${ROOT}native/include/comodal.h`);
    const declared = [
      ...new Set(
        [...header.matchAll(/^(?:const char\*|int32_t|cmo_status) (cmo_[a-z_]+)\(/gm)].map((m) =>
          m[1]
        ),
      ),
    ]
      .sort();
    assert.ok(declared.length >= 19, `only ${declared.length} functions found in comodal.h`);
    assert.deepEqual(exportedCmoSymbols(CUDA_LIB), declared);
    assert.deepEqual(exportedCmoSymbols(CPU_LIB), declared);
  },
});

Deno.test({
  name: "CUDA library: loads without cuDNN (no DT_NEEDED on libcudnn), cuDNN is opened at run time",
  ignore: !haveLib,
  fn() {
    const r = run("readelf", ["-d", CUDA_LIB]);
    assert.ok(r.ok, `readelf failed: ${r.out}`);
    const needed = r.out.split("\n").filter((l) => l.includes("(NEEDED)"));
    assert.ok(needed.length > 0, "readelf shows no NEEDED entries at all");
    assert.ok(
      !needed.some((l) => l.includes("cudnn")),
      `links cuDNN directly:\n${needed.join("\n")}`,
    );
    assert.ok(
      !needed.some((l) => l.includes("libcuda.so")),
      `links the driver directly:\n${needed.join("\n")}`,
    );
  },
});

Deno.test({
  name: "CUDA library: identifies itself; without a GPU, backend_create says 'no CUDA device'",
  ignore: !haveLib,
  fn() {
    const lib = Deno.dlopen(
      CUDA_LIB,
      {
        cmo_library_device: { parameters: [], result: "i32" },
        cmo_version_string: { parameters: [], result: "pointer" },
        cmo_last_error: { parameters: [], result: "pointer" },
        cmo_backend_create: { parameters: ["i32", "buffer"], result: "i32" },
        cmo_backend_destroy: { parameters: ["pointer"], result: "i32" },
        cmo_backend_supports_op: { parameters: ["pointer", "i32"], result: "i32" },
      } as const,
    );
    try {
      assert.equal(lib.symbols.cmo_library_device(), CMO_DEVICE_CUDA);
      const version = Deno.UnsafePointerView.getCString(lib.symbols.cmo_version_string()!);
      assert.match(
        version,
        /^comodal-cuda \d+\.\d+\.\d+ \(CUDA runtime \d+\.\d+, built against cuDNN 9\./,
      );
      const out = new BigUint64Array(1);
      const st = lib.symbols.cmo_backend_create(0, out);
      if (st === 0) {
        // A GPU machine: the backend must serve all 35 ops.
        const be = Deno.UnsafePointer.create(out[0]);
        for (let op = 1; op <= 35; op++) {
          assert.equal(lib.symbols.cmo_backend_supports_op(be, op), 1, `op ${op}`);
        }
        assert.equal(lib.symbols.cmo_backend_destroy(be), 0);
      } else {
        const msg = Deno.UnsafePointerView.getCString(lib.symbols.cmo_last_error()!);
        assert.equal(st, CMO_ERR_NO_DEVICE, `status ${st}: ${msg}`);
        assert.match(msg, /no CUDA device/);
        assert.match(msg, /COMODAL_DEVICE=cpu/);
        assert.equal(out[0], 0n, "the out pointer must stay NULL on failure");
      }
    } finally {
      lib.close();
    }
  },
});

Deno.test({
  name: "CUDA parity driver builds and runs (compares every op where a GPU exists)",
  ignore: !haveLib || !haveGxx,
  fn() {
    const exe = `${ROOT}build/test_cuda_parity`;
    const b = run("g++", [
      "-std=c++17",
      "-O2",
      "-I",
      "native/include",
      "native/cuda/tests/test_cuda_parity.cpp",
      "-ldl",
      "-o",
      exe,
    ]);
    assert.ok(b.ok, `building the parity driver failed:\n${b.out}`);
    const r = run(exe, ["--cpu", CPU_LIB, "--cuda", CUDA_LIB]);
    const summary = r.out.match(/(\d+) passed, (\d+) failed/);
    assert.ok(summary, `the driver printed no summary line:\n${r.out}`);
    if (/no CUDA device/.test(r.out)) {
      assert.equal(r.code, 0, r.out);
    } else {
      assert.equal(Number(summary[2]), 0, `parity failures:\n${r.out}`);
      assert.ok(Number(summary[1]) > 150, `too few parity checks ran:\n${r.out}`);
    }
  },
});

Deno.test({
  name:
    "CUDA kernels' source, emulated on the CPU, matches naive references (weight gradient, matmul)",
  ignore: !haveGxx,
  fn() {
    const exe = `${ROOT}build/test_kernels_host`;
    const b = run("g++", [
      "-std=c++20",
      "-O2",
      "-pthread",
      "-Wno-unknown-pragmas",
      "native/cuda/tests/test_kernels_host.cpp",
      "-o",
      exe,
    ]);
    assert.ok(b.ok, `building test_kernels_host failed:\n${b.out}`);
    const r = run(exe, []);
    const summary = r.out.match(/(\d+) passed, (\d+) failed/);
    assert.ok(summary, `no summary line:\n${r.out}`);
    assert.equal(Number(summary[2]), 0, r.out);
    assert.ok(Number(summary[1]) >= 15, `too few kernel checks ran:\n${r.out}`);
    assert.ok(r.ok, r.out);
  },
});

Deno.test({
  name:
    "CUDA caching allocator (block_allocator.hpp) on the host: invariants, failures, training-step traces",
  ignore: !haveGxx,
  fn() {
    const exe = `${ROOT}build/test_allocator_host`;
    const b = run("g++", [
      "-std=c++17",
      "-O2",
      "-Wall",
      "native/cuda/tests/test_allocator_host.cpp",
      "-o",
      exe,
    ]);
    assert.ok(b.ok, `building test_allocator_host failed:\n${b.out}`);
    // The traces (COMODAL_ALLOC_TRACE of the CPU runtime) are committed gzipped; the driver reads text.
    const src = `${ROOT}native/cuda/tests/alloc_traces`;
    const dst = `${ROOT}build/alloc_traces`;
    mkdirSync(dst, { recursive: true });
    const traces = readdirSync(src).filter((f) => f.endsWith(".trace.gz")).sort().map((f) => {
      const out = `${dst}/${f.slice(0, -3)}`;
      writeFileSync(out, gunzipSync(readFileSync(`${src}/${f}`)));
      return out;
    });
    assert.ok(traces.length >= 4, `expected the U-Net and CMC traces in ${src}`);
    const r = run(exe, traces);
    const summary = r.out.match(/(\d+) passed, (\d+) failed/);
    assert.ok(summary, `no summary line:\n${r.out}`);
    assert.equal(Number(summary[2]), 0, r.out);
    assert.ok(Number(summary[1]) >= 60, `too few allocator checks ran:\n${r.out}`);
    assert.equal((r.out.match(/^trace .*events/gm) ?? []).length, traces.length, r.out);
    assert.ok(r.ok, r.out);
  },
});
