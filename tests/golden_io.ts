/**
 * Reader (and writer) of the golden container files in tests/golden/ (*.cmogold), produced by
 * tests/gen_golden.py from PyTorch.
 *
 * Layout: magic "CMOGOLD1" (8 bytes), u32 LE header length L, L bytes of JSON header, then raw
 * little-endian tensor data. Tensor offsets in the header are relative to the start of the data.
 *
 * @module
 */

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** Magic bytes at the start of every golden file. */
export const GOLDEN_MAGIC = "CMOGOLD1";

/** Folder of the committed golden files. */
export const GOLDEN_DIR = fileURLToPath(new URL("./golden/", import.meta.url));

/** Element type of a stored tensor. */
export type GoldenDtype = "f32" | "i32";

/** One stored tensor. */
export interface GoldenTensor {
  readonly dtype: GoldenDtype;
  readonly shape: readonly number[];
  readonly data: Float32Array | Int32Array;
}

/** One input of a case, in call order. */
export interface GoldenInput {
  readonly name: string;
  readonly requiresGrad: boolean;
}

/** One golden case: an op call with its inputs, reference outputs and gradients. */
export interface GoldenCase {
  readonly name: string;
  /** Engine function name, e.g. "conv3d". */
  readonly op: string;
  readonly attrs: Readonly<Record<string, unknown>>;
  readonly inputs: readonly GoldenInput[];
  readonly outputs: readonly string[];
  /** Outputs whose upstream gradient (dout.<name>) enters the loss. */
  readonly gradOutputs: readonly string[];
  /** in.<x>, out.<y>, dout.<y>, grad.<x> and, for optimizer cases, state tensors. */
  readonly tensors: ReadonlyMap<string, GoldenTensor>;
}

/** The contents of one golden file (one op family). */
export interface GoldenFile {
  readonly path: string;
  readonly family: string;
  readonly generator: string;
  readonly torch: string;
  readonly cases: readonly GoldenCase[];
}

interface HeaderTensor {
  dtype: string;
  shape: number[];
  offset: number;
}

interface HeaderCase {
  name: string;
  op: string;
  attrs?: Record<string, unknown>;
  inputs?: GoldenInput[];
  outputs?: string[];
  gradOutputs?: string[];
  tensors: Record<string, HeaderTensor>;
}

interface Header {
  format?: string;
  family: string;
  generator?: string;
  torch?: string;
  cases: HeaderCase[];
}

function product(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Parses golden file bytes; `path` is only used in error messages. */
export function parseGolden(bytes: Uint8Array, path = "<memory>"): GoldenFile {
  const fail = (why: string): never => {
    throw new Error(`Cannot read golden file ${path}: ${why}`);
  };
  if (bytes.length < 12) fail(`file is ${bytes.length} bytes, shorter than the 12-byte preamble`);
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  if (magic !== GOLDEN_MAGIC) fail(`magic is ${JSON.stringify(magic)}, expected "${GOLDEN_MAGIC}"`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = view.getUint32(8, true);
  const dataStart = 12 + headerLen;
  if (dataStart > bytes.length) {
    fail(`header length ${headerLen} runs past the end of the file (${bytes.length} bytes)`);
  }
  let header: Header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, dataStart))) as Header;
  } catch (e) {
    return fail(`header is not valid JSON (${(e as Error).message})`);
  }
  if (!Array.isArray(header.cases)) fail(`header has no "cases" array`);
  const dataLen = bytes.length - dataStart;
  const cases: GoldenCase[] = header.cases.map((c) => {
    const tensors = new Map<string, GoldenTensor>();
    for (const [name, t] of Object.entries(c.tensors ?? {})) {
      if (t.dtype !== "f32" && t.dtype !== "i32") {
        fail(`case ${c.name} tensor ${name} has dtype ${t.dtype}, expected f32 or i32`);
      }
      const n = product(t.shape);
      const end = t.offset + 4 * n;
      if (t.offset < 0 || end > dataLen) {
        fail(
          `case ${c.name} tensor ${name} [${t.shape}] needs bytes ${t.offset}..${end} ` +
            `of a ${dataLen}-byte data section`,
        );
      }
      // Element-wise little-endian reads: correct whatever the alignment of the file bytes
      // (a Node Buffer from readFileSync may be a view into a shared pool).
      const dv = new DataView(bytes.buffer, bytes.byteOffset + dataStart + t.offset, 4 * n);
      const dtype: GoldenDtype = t.dtype === "f32" ? "f32" : "i32";
      const data = dtype === "f32" ? new Float32Array(n) : new Int32Array(n);
      for (let i = 0; i < n; i++) {
        data[i] = dtype === "f32" ? dv.getFloat32(4 * i, true) : dv.getInt32(4 * i, true);
      }
      tensors.set(name, { dtype, shape: [...t.shape], data });
    }
    return {
      name: c.name,
      op: c.op,
      attrs: c.attrs ?? {},
      inputs: c.inputs ?? [],
      outputs: c.outputs ?? [],
      gradOutputs: c.gradOutputs ?? [],
      tensors,
    };
  });
  return {
    path,
    family: header.family,
    generator: header.generator ?? "",
    torch: header.torch ?? "",
    cases,
  };
}

/** Reads one golden file from disk. */
export function readGolden(path: string): GoldenFile {
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(readFileSync(path));
  } catch (e) {
    throw new Error(
      `Cannot read golden file ${path}: ${(e as Error).message} ` +
        `(regenerate with /tmp/torchvenv/bin/python tests/gen_golden.py)`,
    );
  }
  return parseGolden(bytes, path);
}

/** Reads every *.cmogold file of a folder (default tests/golden/), sorted by file name. */
export function readAllGolden(dir: string = GOLDEN_DIR): GoldenFile[] {
  const names = [...Deno.readDirSync(dir)]
    .filter((e) => e.isFile && e.name.endsWith(".cmogold"))
    .map((e) => e.name)
    .sort();
  if (names.length === 0) throw new Error(`No golden files (*.cmogold) found in ${dir}`);
  return names.map((n) => readGolden(`${dir.replace(/\/$/, "")}/${n}`));
}

/** Returns tensor `name` of a case or throws naming the case and the tensors it has. */
export function goldenTensor(c: GoldenCase, name: string): GoldenTensor {
  const t = c.tensors.get(name);
  if (!t) {
    throw new Error(
      `Golden case ${c.name} has no tensor ${name} (has: ${[...c.tensors.keys()].join(", ")})`,
    );
  }
  return t;
}

/** A case to serialise with {@link encodeGolden}. */
export interface GoldenCaseInit {
  name: string;
  op: string;
  attrs?: Record<string, unknown>;
  inputs?: GoldenInput[];
  outputs?: string[];
  gradOutputs?: string[];
  tensors: Record<string, { shape: number[]; data: Float32Array | Int32Array }>;
}

/** Serialises cases into the golden container format (the format tests/gen_golden.py writes). */
export function encodeGolden(family: string, cases: GoldenCaseInit[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  let offset = 0;
  const headerCases = cases.map((c) => {
    const table: Record<string, HeaderTensor> = {};
    for (const [name, t] of Object.entries(c.tensors)) {
      if (t.data.length !== product(t.shape)) {
        throw new Error(
          `Cannot encode golden tensor ${c.name}/${name}: shape [${t.shape}] has ` +
            `${product(t.shape)} elements but data has ${t.data.length}`,
        );
      }
      const pad = (8 - (offset % 8)) % 8;
      if (pad) chunks.push(new Uint8Array(pad));
      offset += pad;
      const raw = new Uint8Array(4 * t.data.length);
      const dv = new DataView(raw.buffer);
      const isF32 = t.data instanceof Float32Array;
      for (let i = 0; i < t.data.length; i++) {
        if (isF32) dv.setFloat32(4 * i, t.data[i], true);
        else dv.setInt32(4 * i, t.data[i], true);
      }
      table[name] = { dtype: isF32 ? "f32" : "i32", shape: [...t.shape], offset };
      chunks.push(raw);
      offset += raw.length;
    }
    return {
      name: c.name,
      op: c.op,
      attrs: c.attrs ?? {},
      inputs: c.inputs ?? [],
      outputs: c.outputs ?? [],
      gradOutputs: c.gradOutputs ?? [],
      tensors: table,
    };
  });
  let json = JSON.stringify({
    format: GOLDEN_MAGIC,
    family,
    generator: "tests/golden_io.ts",
    torch: "",
    cases: headerCases,
  });
  json += " ".repeat((16 - ((12 + new TextEncoder().encode(json).length) % 16)) % 16);
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(12 + hb.length + offset);
  out.set(new TextEncoder().encode(GOLDEN_MAGIC), 0);
  new DataView(out.buffer).setUint32(8, hb.length, true);
  out.set(hb, 12);
  let pos = 12 + hb.length;
  for (const c of chunks) {
    out.set(c, pos);
    pos += c.length;
  }
  return out;
}
