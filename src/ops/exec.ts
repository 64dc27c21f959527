/**
 * The single path from an op call to cmo_op_execute: capability check, input handles, output
 * slots, params packing, error translation. Scratch arrays are reused between calls.
 * @module
 */
import { type Backend, getBackend, NativeError } from "../backend/backend.ts";
import { opDecl, type OpName, packParams, type ParamValues } from "./op_decls.ts";
import { type DType, type Tensor, wrapNative } from "../tensor/tensor.ts";
import { cString } from "../backend/ffi.ts";

let inputs = new BigUint64Array(8);
const outputs = new BigUint64Array(8);
const paramBuf = new ArrayBuffer(256);
const paramView = new DataView(paramBuf);
const paramBytes = new Uint8Array(paramBuf);

/** Receives one record per native op call while profiling is on (inputs: valid only during the call). */
export type OpProfiler = (
  op: string,
  fn: string,
  ms: number,
  inputs: readonly (Tensor | null)[],
) => void;
let profiler: OpProfiler | null = null;

/** Turns per-op timing on (a callback) or off (null). Timing includes the FFI call only. */
export function setOpProfiler(p: OpProfiler | null): void {
  profiler = p;
}

function describeInputs(names: readonly string[], xs: readonly (Tensor | null)[]): string {
  return xs.map((t, i) => `${names[i] ?? `in${i}`} ${t === null ? "null" : t.describe()}`).join(
    ", ",
  );
}

/**
 * Runs a native op. `fn` is the user-facing op name for messages, `names` the input names.
 * Output slots: null lets the op allocate. Returns the output handles (given slots included).
 */
export function execOp(
  op: OpName,
  fn: string,
  ins: readonly (Tensor | null)[],
  outSlots: readonly (Tensor | null)[],
  params: ParamValues,
  names: readonly string[] = [],
): bigint[] {
  const decl = opDecl(op);
  const be: Backend = getBackend();
  if (!be.supportsOpId(decl.id)) {
    throw new Error(
      `${fn}: op ${decl.name} is not supported by the ${be.device} backend (${be.version}); ` +
        `called with ${describeInputs(names, ins)}; check backend.supportsOp("${decl.name}") first`,
    );
  }
  if (ins.length > inputs.length) inputs = new BigUint64Array(ins.length * 2);
  for (let i = 0; i < ins.length; i++) {
    const t = ins[i];
    if (t === null) {
      inputs[i] = 0n;
      continue;
    }
    inputs[i] = t._ptr(fn);
    if (t._storage!.backend !== be) {
      throw new Error(
        `${fn}: ${names[i] ?? `input ${i}`} ${t.describe()} lives on the ${
          t._storage!.backend.device
        } backend ` +
          `(${t._storage!.backend.libPath}), the current backend is ${be.device} (${be.libPath})`,
      );
    }
  }
  const nOut = decl.nOutputs;
  for (let i = 0; i < nOut; i++) {
    const s = i < outSlots.length ? outSlots[i] : null;
    outputs[i] = s === null ? 0n : s._ptr(fn);
  }
  const nBytes = packParams(decl, params, paramView);
  const t0 = profiler !== null ? performance.now() : 0;
  const status = be.sym.cmo_op_execute(
    be.handle,
    decl.id,
    inputs,
    ins.length,
    outputs,
    nOut,
    paramBytes,
    BigInt(nBytes),
  );
  if (profiler !== null) profiler(decl.name, fn, performance.now() - t0, ins);
  if (status !== 0) {
    throw new NativeError(
      status,
      cString(be.sym.cmo_last_error()),
      `${fn}: ${decl.name} failed on ${describeInputs(names, ins)}`,
    );
  }
  const res: bigint[] = new Array(nOut);
  for (let i = 0; i < nOut; i++) res[i] = outputs[i];
  return res;
}

/** Runs a single-output op and wraps the output as a new tensor of the given shape and dtype. */
export function exec1(
  op: OpName,
  fn: string,
  ins: readonly (Tensor | null)[],
  params: ParamValues,
  shape: readonly number[],
  dtype: DType,
  names: readonly string[] = [],
): Tensor {
  const [p] = execOp(op, fn, ins, [], params, names);
  return wrapNative(p, shape, dtype, getBackend());
}
