/**
 * The FFI symbol table of native/include/comodal.h and the library loader.
 *
 * Opaque handles (cmo_backend*, cmo_buffer*) travel as "usize" (bigint on the TypeScript side), so
 * they can be stored in BigUint64Array slot arrays without conversion. Out-parameters and structs
 * are "buffer" (typed arrays, passed without copying).
 * @module
 */

/** Every cmo_* function of the header. */
export const SYMBOLS = {
  cmo_abi_version: { parameters: [], result: "i32" },
  cmo_library_device: { parameters: [], result: "i32" },
  cmo_version_string: { parameters: [], result: "pointer" },
  cmo_last_error: { parameters: [], result: "pointer" },

  cmo_backend_create: { parameters: ["i32", "buffer"], result: "i32" },
  cmo_backend_destroy: { parameters: ["usize"], result: "i32" },
  cmo_backend_set_threads: { parameters: ["usize", "i32"], result: "i32" },
  cmo_backend_set_deterministic: { parameters: ["usize", "i32"], result: "i32" },
  cmo_backend_supports_op: { parameters: ["usize", "i32"], result: "i32" },
  cmo_backend_memory_stats: { parameters: ["usize", "buffer"], result: "i32" },
  cmo_backend_reset_peak: { parameters: ["usize"], result: "i32" },
  cmo_backend_synchronize: { parameters: ["usize"], result: "i32" },
  cmo_backend_trim: { parameters: ["usize"], result: "i32" },

  cmo_buffer_create: { parameters: ["usize", "buffer", "buffer"], result: "i32" },
  cmo_buffer_release: { parameters: ["usize"], result: "i32" },
  cmo_buffer_describe: { parameters: ["usize", "buffer"], result: "i32" },
  cmo_buffer_write: { parameters: ["usize", "buffer", "i64"], result: "i32" },
  cmo_buffer_read: { parameters: ["usize", "buffer", "i64"], result: "i32" },

  cmo_op_execute: {
    parameters: ["usize", "i32", "buffer", "i32", "buffer", "i32", "buffer", "i64"],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded library's functions. */
export type NativeSymbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** Status codes of the header (cmo_status). */
export const STATUS_NAMES: readonly string[] = [
  "CMO_OK",
  "CMO_ERR_INVALID_ARGUMENT",
  "CMO_ERR_UNSUPPORTED",
  "CMO_ERR_OUT_OF_MEMORY",
  "CMO_ERR_NO_DEVICE",
  "CMO_ERR_BACKEND",
  "CMO_ERR_INTERNAL",
];

/** The ABI version this binding was written against (CMO_ABI_VERSION). */
export const ABI_VERSION = 2;

/** Default path of the library for a device, resolved from this file's location. */
export function defaultLibPath(device: "cpu" | "cuda"): string {
  return new URL(`../../build/libcomodal_${device}.so`, import.meta.url).pathname;
}

/** Reads a NUL-terminated C string returned by the library ("" for NULL). */
export function cString(p: Deno.PointerValue): string {
  if (p === null) return "";
  return new Deno.UnsafePointerView(p).getCString();
}

/**
 * Opens the library at `path`. Errors name the path and the fix: a missing file asks for
 * `make native`, a missing oneDNN asks for libdnnl-dev.
 */
export function openLibrary(
  path: string,
  device: "cpu" | "cuda",
): Deno.DynamicLibrary<typeof SYMBOLS> {
  let exists = true;
  try {
    Deno.statSync(path);
  } catch {
    exists = false;
  }
  if (!exists) {
    throw new Error(
      `Cannot load the comodal ${device} library at ${path}: file not found; run \`make native\`` +
        (device === "cuda" ? " on a machine with nvcc" : ""),
    );
  }
  try {
    return Deno.dlopen(path, SYMBOLS);
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    let fix = "rebuild it with `make native`";
    if (/dnnl/i.test(msg)) fix = "install oneDNN with `make deps` (Debian package libdnnl-dev)";
    else if (/cudnn|cuda/i.test(msg)) fix = "install the CUDA runtime and cuDNN libraries";
    else if (/undefined symbol|symbol/i.test(msg)) {
      fix = "the library does not match native/include/comodal.h; rebuild it with `make native`";
    }
    throw new Error(`Cannot load the comodal ${device} library at ${path}: ${msg}; ${fix}`);
  }
}
