/**
 * Cost of crossing into the native library: the raw cmo_abi_version call, a raw cmo_op_execute of
 * AFFINE_SCALAR on one element with preallocated buffers, and the engine's affine() on a
 * one-element tensor (validation, output allocation, release). The raw calls use a small symbol
 * table of their own so they measure Deno FFI and the library, nothing of the engine.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import * as E from "../src/engine.ts";
import { type BenchModule, type BenchOptions, type BenchResult, median } from "./report.ts";

const RAW_SYMBOLS = {
  cmo_abi_version: { parameters: [], result: "i32" },
  cmo_last_error: { parameters: [], result: "pointer" },
  cmo_backend_create: { parameters: ["i32", "buffer"], result: "i32" },
  cmo_backend_destroy: { parameters: ["pointer"], result: "i32" },
  cmo_backend_set_threads: { parameters: ["pointer", "i32"], result: "i32" },
  cmo_buffer_create: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  cmo_buffer_release: { parameters: ["pointer"], result: "i32" },
  cmo_buffer_write: { parameters: ["pointer", "buffer", "i64"], result: "i32" },
  cmo_op_execute: {
    parameters: ["pointer", "i32", "buffer", "i32", "buffer", "i32", "buffer", "i64"],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

const OP_AFFINE_SCALAR = 12; // CMO_OP_AFFINE_SCALAR in native/include/comodal.h

function libPath(): string {
  return Deno.env.get("COMODAL_LIB") ??
    fileURLToPath(new URL("../build/libcomodal_cpu.so", import.meta.url));
}

/** ns per call of `body(n)` running n calls, median over runs. */
function nsPerCall(
  body: (n: number) => void,
  n: number,
  opts: BenchOptions,
): { ns: number; runsNs: number[] } {
  body(Math.max(1, n >> 3)); // warm-up (JIT, caches)
  for (let i = 0; i < opts.warmup; i++) body(n);
  const runsNs: number[] = [];
  for (let r = 0; r < opts.runs; r++) {
    const t0 = performance.now();
    body(n);
    runsNs.push(((performance.now() - t0) * 1e6) / n);
  }
  return { ns: median(runsNs), runsNs };
}

type RawLib = Deno.DynamicLibrary<typeof RAW_SYMBOLS>;

function check(lib: RawLib, status: number, what: string): void {
  if (status !== 0) {
    const p = lib.symbols.cmo_last_error();
    const msg = p ? new Deno.UnsafePointerView(p).getCString() : "";
    throw new Error(`ffi bench: ${what} failed with status ${status}: ${msg}`);
  }
}

function pointerFrom(cell: BigUint64Array, what: string): Deno.PointerObject {
  const p = Deno.UnsafePointer.create(cell[0]);
  if (!p) throw new Error(`ffi bench: ${what} returned a null pointer`);
  return p;
}

/** The FFI overhead benchmark module. */
export const ffiBench: BenchModule = {
  name: "ffi",
  description: "per-call overhead: raw FFI, raw op execute, engine op on one element",
  // deno-lint-ignore require-await
  async run(opts: BenchOptions): Promise<BenchResult> {
    const n = opts.quick ? 20_000 : 200_000;
    const nEngine = opts.quick ? 5_000 : 50_000;
    const lib: RawLib = Deno.dlopen(libPath(), RAW_SYMBOLS);
    const s = lib.symbols;
    const cell = new BigUint64Array(1);
    check(lib, s.cmo_backend_create(0, cell), "cmo_backend_create");
    const backend = pointerFrom(cell, "cmo_backend_create");
    const buffers: Deno.PointerObject[] = [];
    try {
      check(lib, s.cmo_backend_set_threads(backend, 1), "cmo_backend_set_threads");
      const desc = new BigInt64Array([1n, 1n, 0n, 0n, 0n, 0n, 0n, 0n, 0n]); // ndim 1, [1], f32, plain
      for (const what of ["input", "output"]) {
        check(lib, s.cmo_buffer_create(backend, desc, cell), `cmo_buffer_create(${what})`);
        buffers.push(pointerFrom(cell, "cmo_buffer_create"));
      }
      check(lib, s.cmo_buffer_write(buffers[0], new Float32Array([1.5]), 4n), "cmo_buffer_write");
      const inputs = new BigUint64Array([BigInt(Deno.UnsafePointer.value(buffers[0]))]);
      const outputs = new BigUint64Array([BigInt(Deno.UnsafePointer.value(buffers[1]))]);
      const params = new Float64Array([2, 1]); // alpha, beta
      const abi = nsPerCall(
        (k) => {
          for (let i = 0; i < k; i++) s.cmo_abi_version();
        },
        n,
        opts,
      );
      const rawOp = nsPerCall(
        (k) => {
          for (let i = 0; i < k; i++) {
            if (
              s.cmo_op_execute(backend, OP_AFFINE_SCALAR, inputs, 1, outputs, 1, params, 16n) !== 0
            ) {
              check(lib, 1, "cmo_op_execute(AFFINE_SCALAR)");
            }
          }
        },
        n,
        opts,
      );

      E.initBackend({ device: "cpu", threads: opts.threads });
      const x = E.tensor(new Float32Array([1.5]), [1]);
      const xg = E.tensor(new Float32Array([1.5]), [1], { requiresGrad: true });
      let engineOp: { ns: number; runsNs: number[] };
      let engineTape: { ns: number; runsNs: number[] };
      try {
        engineOp = nsPerCall(
          (k) => {
            E.noGrad(() => {
              for (let i = 0; i < k; i++) E.affine(x, 2, 1).dispose();
            });
          },
          nEngine,
          opts,
        );
        engineTape = nsPerCall(
          (k) => {
            E.tidy(() => {
              for (let i = 0; i < k; i++) E.affine(xg, 2, 1);
            });
          },
          nEngine / 10,
          opts,
        );
      } finally {
        E.dispose([x, xg]);
      }
      return {
        name: opts.quick ? "ffi_quick" : "ffi",
        title: "Native call overhead (ns per call)",
        columns: ["call", "ns per call", "calls per run"],
        rows: [
          ["cmo_abi_version (raw FFI)", abi.ns, n],
          ["cmo_op_execute AFFINE_SCALAR, 1 element (raw)", rawOp.ns, n],
          ["engine affine() 1 element, noGrad, + dispose", engineOp.ns, nEngine],
          ["engine affine() 1 element, recorded on tape, tidy", engineTape.ns, nEngine / 10],
        ],
        notes: [
          `median of ${opts.runs} runs; raw calls use preallocated buffers and one kernel thread`,
        ],
        details: {
          abi,
          rawOp,
          engineOp,
          engineTape,
          library: libPath(),
          engine: E.getBackend().version,
        },
      };
    } finally {
      for (const b of buffers) s.cmo_buffer_release(b);
      s.cmo_backend_destroy(backend);
      lib.close();
    }
  },
};
