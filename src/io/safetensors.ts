/**
 * The safetensors format (https://github.com/huggingface/safetensors), read and written by hand:
 *
 *   u64 little-endian N | N bytes of UTF-8 JSON header | raw little-endian tensor data
 *
 * The header maps tensor names to { dtype, shape, data_offsets: [begin, end] } (offsets relative to
 * the first byte after the header) and may hold a "__metadata__" map of string to string. Readers
 * convert F64/F32/F16/BF16 and the integer dtypes to float32 (`readF32`) and the integer dtypes to
 * int32 (`readI32`); the writer emits F32, F16, BF16, I32 or I64 with the header padded by spaces to
 * a multiple of 8 bytes (as the reference implementation does) and writes the file atomically.
 *
 * Every error names the file and the problem: a truncated file, a header length past the end of
 * the file, a header that is not a JSON object, an unknown dtype, a shape that disagrees with the
 * byte count, offsets out of range or overlapping another tensor.
 * @module
 */
import { readFileSync } from "node:fs";
import { writeFileAtomicSync } from "../util/atomic_write.ts";

/** Element types of the format and their sizes in bytes. */
export const SAFETENSORS_DTYPES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
} as const;

export type SafeDType = keyof typeof SAFETENSORS_DTYPES;

/** Largest header accepted (the reference implementation's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafeTensorInfo {
  name: string;
  dtype: SafeDType;
  shape: number[];
  /** Byte range [begin, end) inside the data section. */
  begin: number;
  end: number;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/** A parsed safetensors file held in memory. */
export class SafetensorsFile {
  constructor(
    /** Where the bytes came from (for messages). */
    readonly source: string,
    readonly metadata: Record<string, string>,
    /** Tensors in header order. */
    readonly tensors: Map<string, SafeTensorInfo>,
    /** The data section (after the header). */
    readonly data: Uint8Array,
  ) {}

  get names(): string[] {
    return [...this.tensors.keys()];
  }

  info(name: string): SafeTensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`${this.source}: no tensor named '${name}'`);
    return t;
  }

  /** The raw little-endian bytes of a tensor (a view into the file). */
  bytes(name: string): Uint8Array {
    const t = this.info(name);
    return this.data.subarray(t.begin, t.end);
  }

  /** A tensor's values as float32, converting from any numeric dtype (I64/U64 beyond 2^53 lose precision). */
  readF32(name: string): Float32Array {
    const t = this.info(name);
    const b = this.bytes(name);
    const n = elementCount(t.shape);
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const out = new Float32Array(n);
    switch (t.dtype) {
      case "F32":
        if (LITTLE_ENDIAN) return new Float32Array(new Uint8Array(b).buffer); // copy: offsets need not be aligned
        for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
        return out;
      case "F64":
        for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
        return out;
      case "F16":
        for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(2 * i, true));
        return out;
      case "BF16":
        for (let i = 0; i < n; i++) out[i] = bf16ToF32(dv.getUint16(2 * i, true));
        return out;
      case "F8_E4M3":
      case "F8_E5M2":
        throw new Error(
          `${this.source}: tensor '${name}' has dtype ${t.dtype}, which this reader does not convert`,
        );
      default: {
        const ints = readInts(t.dtype, dv, n);
        for (let i = 0; i < n; i++) out[i] = ints(i);
        return out;
      }
    }
  }

  /** An integer tensor's values as int32 (errors on float dtypes and on values outside int32). */
  readI32(name: string): Int32Array {
    const t = this.info(name);
    if (t.dtype.startsWith("F") || t.dtype === "BF16") {
      throw new Error(`${this.source}: tensor '${name}' has dtype ${t.dtype}, not an integer type`);
    }
    const b = this.bytes(name);
    const n = elementCount(t.shape);
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const get = readInts(t.dtype, dv, n);
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const v = get(i);
      if (v < -2147483648 || v > 2147483647) {
        throw new Error(`${this.source}: tensor '${name}' element ${i} (${v}) does not fit int32`);
      }
      out[i] = v;
    }
    return out;
  }
}

function readInts(dtype: SafeDType, dv: DataView, _n: number): (i: number) => number {
  switch (dtype) {
    case "BOOL":
    case "U8":
      return (i) => dv.getUint8(i);
    case "I8":
      return (i) => dv.getInt8(i);
    case "I16":
      return (i) => dv.getInt16(2 * i, true);
    case "U16":
      return (i) => dv.getUint16(2 * i, true);
    case "I32":
      return (i) => dv.getInt32(4 * i, true);
    case "U32":
      return (i) => dv.getUint32(4 * i, true);
    case "I64":
      return (i) => Number(dv.getBigInt64(8 * i, true));
    case "U64":
      return (i) => Number(dv.getBigUint64(8 * i, true));
    default:
      throw new Error(`readInts: ${dtype} is not an integer dtype`);
  }
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** IEEE half (binary16) bits to a number. */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero and subnormals
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** bfloat16 bits (the upper half of a float32) to a number. */
export function bf16ToF32(b: number): number {
  u32Scratch[0] = (b & 0xffff) << 16;
  return f32Scratch[0];
}

/** A number to bfloat16 bits, rounding to nearest even (NaN stays NaN). */
export function f32ToBf16(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0];
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** A number to IEEE half bits, rounding to nearest even (overflow gives infinity). */
export function f32ToF16(x: number): number {
  f32Scratch[0] = x;
  const u = u32Scratch[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // underflows to (signed) zero
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && (half & 1))) half++;
    return sign | half;
  }
  let half = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) {
    half++;
    if (half === 0x400) {
      half = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | half;
}

/** Parses safetensors bytes; `source` (a path) names the file in errors. */
export function parseSafetensors(
  bytes: Uint8Array,
  source = "<safetensors bytes>",
): SafetensorsFile {
  const fail = (msg: string): never => {
    throw new Error(`Invalid safetensors file ${source}: ${msg}`);
  };
  if (bytes.length < 8) {
    fail(`truncated: ${bytes.length} bytes, but the file must start with an 8-byte header length`);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n64 = dv.getBigUint64(0, true);
  if (n64 > BigInt(bytes.length - 8)) {
    fail(
      `header length ${n64} runs past the end of the file (${bytes.length} bytes, ${
        bytes.length - 8
      } after the length field)`,
    );
  }
  const n = Number(n64);
  if (n > MAX_HEADER_BYTES) {
    fail(`header length ${n} exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + n)));
  } catch (e) {
    fail(`header is not valid UTF-8 JSON (${(e as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail("header is not a JSON object");
  }
  const data = bytes.subarray(8 + n);
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, SafeTensorInfo>();
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
        fail("__metadata__ is not an object");
      }
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== "string") fail(`__metadata__.${k} is not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      fail(`entry '${name}' is not an object`);
    }
    const e = raw as Record<string, unknown>;
    const dtype = e.dtype;
    if (typeof dtype !== "string" || !(dtype in SAFETENSORS_DTYPES)) {
      fail(
        `tensor '${name}' has unknown dtype ${JSON.stringify(dtype)} (known: ${
          Object.keys(SAFETENSORS_DTYPES).join(", ")
        })`,
      );
    }
    const shape = e.shape;
    if (!Array.isArray(shape) || shape.some((s) => !Number.isSafeInteger(s) || s < 0)) {
      fail(
        `tensor '${name}' has an invalid shape ${
          JSON.stringify(shape)
        } (expected a list of non-negative integers)`,
      );
    }
    const off = e.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 || off.some((o) => !Number.isSafeInteger(o) || o < 0)
    ) {
      fail(
        `tensor '${name}' has invalid data_offsets ${JSON.stringify(off)} (expected [begin, end])`,
      );
    }
    const [begin, end] = off as [number, number];
    if (end < begin) {
      fail(`tensor '${name}' has data_offsets [${begin}, ${end}] with end before begin`);
    }
    if (end > data.length) {
      fail(
        `tensor '${name}' has data_offsets [${begin}, ${end}] out of range: the data section has ${data.length} bytes (file truncated?)`,
      );
    }
    const size = SAFETENSORS_DTYPES[dtype as SafeDType];
    const want = elementCount(shape as number[]) * size;
    if (want !== end - begin) {
      fail(
        `tensor '${name}': shape [${
          (shape as number[]).join(", ")
        }] of ${dtype} needs ${want} bytes, ` +
          `but data_offsets [${begin}, ${end}] hold ${end - begin}`,
      );
    }
    tensors.set(name, {
      name,
      dtype: dtype as SafeDType,
      shape: [...(shape as number[])],
      begin,
      end,
    });
  }
  const sorted = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) =>
    a.begin - b.begin
  );
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].begin < sorted[i - 1].end) {
      fail(
        `tensors '${sorted[i - 1].name}' [${sorted[i - 1].begin}, ${sorted[i - 1].end}) and ` +
          `'${sorted[i].name}' [${sorted[i].begin}, ${sorted[i].end}) overlap`,
      );
    }
  }
  return new SafetensorsFile(source, metadata, tensors, data);
}

/** Reads and parses a safetensors file. */
export function readSafetensors(path: string): SafetensorsFile {
  let bytes: Uint8Array;
  try {
    const buf = readFileSync(path); // a Buffer: view it as a plain Uint8Array
    bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  } catch (e) {
    throw new Error(`Cannot read safetensors file ${path}: ${(e as Error).message}`);
  }
  return parseSafetensors(bytes, path);
}

/** A tensor to write: float data is stored as `dtype` (default F32); integer data as I32 or I64. */
export interface SafeTensorInput {
  shape: readonly number[];
  data: Float32Array | Float64Array | Int32Array | number[];
  dtype?: "F32" | "F16" | "BF16" | "I32" | "I64";
}

/** Encodes tensors (in the given order) and metadata as safetensors bytes. */
export function encodeSafetensors(
  tensors: Record<string, SafeTensorInput> | [string, SafeTensorInput][],
  metadata: Record<string, string> = {},
): Uint8Array {
  const entries = Array.isArray(tensors) ? tensors : Object.entries(tensors);
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length) header.__metadata__ = metadata;
  const parts: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === "__metadata__") {
      throw new Error("safetensors: '__metadata__' is not a valid tensor name");
    }
    if (name in header) throw new Error(`safetensors: tensor '${name}' is given twice`);
    const dtype = t.dtype ?? (t.data instanceof Int32Array ? "I32" : "F32");
    const n = elementCount(t.shape);
    if (t.shape.some((s) => !Number.isSafeInteger(s) || s < 0)) {
      throw new Error(`safetensors: tensor '${name}' has an invalid shape [${t.shape.join(", ")}]`);
    }
    if (n !== t.data.length) {
      throw new Error(
        `safetensors: tensor '${name}' has shape [${
          t.shape.join(", ")
        }] (${n} elements) but ${t.data.length} values`,
      );
    }
    const size = SAFETENSORS_DTYPES[dtype];
    const buf = new Uint8Array(n * size);
    const dv = new DataView(buf.buffer);
    for (let i = 0; i < n; i++) {
      const v = t.data[i];
      switch (dtype) {
        case "F32":
          dv.setFloat32(4 * i, v, true);
          break;
        case "F16":
          dv.setUint16(2 * i, f32ToF16(v), true);
          break;
        case "BF16":
          dv.setUint16(2 * i, f32ToBf16(v), true);
          break;
        case "I32":
          dv.setInt32(4 * i, v, true);
          break;
        case "I64":
          dv.setBigInt64(8 * i, BigInt(Math.trunc(v)), true);
          break;
      }
    }
    header[name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + buf.length] };
    parts.push(buf);
    offset += buf.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let pos = 8 + json.length;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

/** Writes tensors as a safetensors file (atomically: temporary file, fsync, rename). */
export function writeSafetensors(
  path: string,
  tensors: Record<string, SafeTensorInput> | [string, SafeTensorInput][],
  metadata: Record<string, string> = {},
): void {
  writeFileAtomicSync(path, encodeSafetensors(tensors, metadata));
}
