/**
 * Backend selection and lifetime: loads the native library, creates the native backend, keeps the
 * current one, and turns native failures into NativeError.
 * @module
 */
import {
  ABI_VERSION,
  cString,
  defaultLibPath,
  type NativeSymbols,
  openLibrary,
  STATUS_NAMES,
} from "./ffi.ts";
import { OP_DECLS, opDecl, type OpName } from "../ops/op_decls.ts";

/** A failed native call: `status` is the cmo_status code, `nativeMessage` the library's text. */
export class NativeError extends Error {
  readonly status: number;
  readonly nativeMessage: string;
  constructor(status: number, nativeMessage: string, prefix: string) {
    const code = STATUS_NAMES[status] ?? `status ${status}`;
    super(`${prefix}: ${nativeMessage || "(no message)"} [${code}]`);
    this.name = "NativeError";
    this.status = status;
    this.nativeMessage = nativeMessage;
  }
}

/** Memory statistics of a backend, in buffers and bytes. */
export interface MemoryStats {
  liveBuffers: number;
  liveBytes: number;
  peakBytes: number;
  /** Released blocks the allocator keeps for reuse (not in use). */
  poolBytes: number;
  deviceTotalBytes: number;
  deviceFreeBytes: number;
  /** Everything the allocator holds: blocks in use plus poolBytes (PyTorch's memory_reserved). */
  reservedBytes: number;
}

/** Options of initBackend. */
export interface BackendOptions {
  device?: "cpu" | "cuda";
  /** Kernel threads (CPU); default COMODAL_THREADS or all cores. */
  threads?: number;
  deterministic?: boolean;
  /** Library path; default COMODAL_LIB or build/libcomodal_<device>.so. */
  libPath?: string;
}

/** One native backend (one library, one cmo_backend handle). */
export class Backend {
  readonly device: "cpu" | "cuda";
  readonly version: string;
  readonly libPath: string;
  /** @internal the library functions */
  readonly sym: NativeSymbols;
  /** @internal the cmo_backend* handle */
  readonly handle: bigint;
  readonly #supported: Uint8Array;
  #threads = 0;
  #deterministic = false;
  readonly #stats = new BigInt64Array(7);

  /** @internal use initBackend */
  constructor(device: "cpu" | "cuda", libPath: string, sym: NativeSymbols, handle: bigint) {
    this.device = device;
    this.libPath = libPath;
    this.sym = sym;
    this.handle = handle;
    this.version = cString(sym.cmo_version_string());
    this.#supported = new Uint8Array(64);
    for (const d of OP_DECLS) {
      this.#supported[d.id] = sym.cmo_backend_supports_op(handle, d.id) ? 1 : 0;
    }
  }

  /** True when this backend implements the op. */
  supportsOp(name: OpName): boolean {
    return this.#supported[opDecl(name).id] === 1;
  }

  /** @internal marks an op as unsupported (tests of the capability check) */
  _setSupported(name: OpName, on: boolean): void {
    this.#supported[opDecl(name).id] = on ? 1 : 0;
  }

  /** @internal fast path by id */
  supportsOpId(id: number): boolean {
    return this.#supported[id] === 1;
  }

  /** Throws a NativeError carrying cmo_last_error() when status is not CMO_OK. */
  check(status: number, what: string): void {
    if (status !== 0) throw new NativeError(status, cString(this.sym.cmo_last_error()), what);
  }

  memoryStats(): MemoryStats {
    this.check(this.sym.cmo_backend_memory_stats(this.handle, this.#stats), "memoryStats");
    const s = this.#stats;
    return {
      liveBuffers: Number(s[0]),
      liveBytes: Number(s[1]),
      peakBytes: Number(s[2]),
      poolBytes: Number(s[3]),
      deviceTotalBytes: Number(s[4]),
      deviceFreeBytes: Number(s[5]),
      reservedBytes: Number(s[6]),
    };
  }

  resetPeak(): void {
    this.check(this.sym.cmo_backend_reset_peak(this.handle), "resetPeak");
  }

  /** Kernel threads (CPU); 0 = all cores. */
  setThreads(n: number): void {
    if (!Number.isInteger(n) || n < 0) {
      throw new Error(`setThreads: expected an integer >= 0, got ${n}`);
    }
    this.check(this.sym.cmo_backend_set_threads(this.handle, n), `setThreads(${n})`);
    this.#threads = n;
  }

  get threads(): number {
    return this.#threads;
  }

  setDeterministic(on: boolean): void {
    this.check(this.sym.cmo_backend_set_deterministic(this.handle, on ? 1 : 0), "setDeterministic");
    this.#deterministic = on;
  }

  get deterministic(): boolean {
    return this.#deterministic;
  }

  synchronize(): void {
    this.check(this.sym.cmo_backend_synchronize(this.handle), "synchronize");
  }

  /** Frees cached primitives and pooled memory not in use. */
  trim(): void {
    this.check(this.sym.cmo_backend_trim(this.handle), "trim");
  }
}

const backends = new Map<string, Backend>();
let current: Backend | null = null;

function envGet(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: fall back to defaults
  }
}

/**
 * OpenMP threads that spin while waiting are ruinous when the cores are shared (parallel test
 * processes, data workers): on 2 busy cores small ops ran 30-100x and conv steps ~2x slower than
 * with sleeping threads. libgomp reads OMP_WAIT_POLICY once, when the library loads it, so it is
 * set here (to "passive") before the first dlopen unless the user chose a policy.
 */
function preferPassiveOpenMP(): void {
  try {
    if (Deno.env.get("OMP_WAIT_POLICY") === undefined) Deno.env.set("OMP_WAIT_POLICY", "passive");
  } catch {
    // no --allow-env: leave OpenMP's default
  }
}

/**
 * Loads the library for the device, creates its backend (once per library path) and makes it
 * current. Options apply to the backend each call. A CUDA backend without a GPU throws a
 * NativeError "no CUDA device" and leaves the current backend as it was.
 */
export function initBackend(opts: BackendOptions = {}): Backend {
  const envDevice = envGet("COMODAL_DEVICE");
  const device = opts.device ?? (envDevice === "cuda" ? "cuda" : "cpu");
  if (device !== "cpu" && device !== "cuda") {
    throw new Error(`initBackend: device must be "cpu" or "cuda", got ${JSON.stringify(device)}`);
  }
  const libPath = opts.libPath ?? envGet("COMODAL_LIB") ?? defaultLibPath(device);
  let be = backends.get(libPath);
  if (!be) {
    preferPassiveOpenMP();
    const lib = openLibrary(libPath, device);
    const sym = lib.symbols;
    const abi = sym.cmo_abi_version();
    if (abi !== ABI_VERSION) {
      lib.close();
      throw new Error(
        `Cannot use ${libPath}: ABI version ${abi}, this binding expects ${ABI_VERSION}; rebuild with \`make native\``,
      );
    }
    const libDevice = sym.cmo_library_device() === 1 ? "cuda" : "cpu";
    if (libDevice !== device) {
      lib.close();
      throw new Error(
        `Cannot use ${libPath} as the ${device} backend: the library serves ${libDevice}`,
      );
    }
    const out = new BigUint64Array(1);
    const status = sym.cmo_backend_create(0, out);
    if (status !== 0) {
      const msg = cString(sym.cmo_last_error());
      lib.close();
      throw new NativeError(status, msg, `initBackend(${device}) with ${libPath}`);
    }
    be = new Backend(device, libPath, sym, out[0]);
    backends.set(libPath, be);
    const envThreads = envGet("COMODAL_THREADS");
    let t = opts.threads ?? 0;
    if (opts.threads === undefined && envThreads !== undefined && envThreads !== "") {
      t = Number(envThreads);
      if (!Number.isInteger(t) || t < 0) {
        throw new Error(
          `COMODAL_THREADS must be an integer >= 0 (0 = all cores), got "${envThreads}"`,
        );
      }
    }
    be.setThreads(t);
  } else if (opts.threads !== undefined) {
    be.setThreads(opts.threads);
  }
  if (opts.deterministic !== undefined) be.setDeterministic(opts.deterministic);
  current = be;
  return be;
}

/** The current backend; initialises the default one on first use. */
export function getBackend(): Backend {
  return current ?? initBackend();
}
