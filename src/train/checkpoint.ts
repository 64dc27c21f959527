/**
 * Checkpoints: model parameters, optimiser state, EMA weights, schedule position, RNG states and the
 * config in one file, written atomically (temporary file, fsync, rename, fsync of the folder), so a
 * crash (even kill -9 mid-write) never leaves a half-written checkpoint in place of a good one; at
 * worst a stale <name>.tmp-<pid>-<random> stays beside it, which resuming removes.
 *
 * Format: "CMOCKPT1", u32 little-endian JSON header length, JSON header
 * { meta, tensors: [{ name, shape, offset }] }, then float32 little-endian data.
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from "node:fs";
import { writeFileAtomicSync } from "../util/atomic_write.ts";
import type { Tensor } from "../engine.ts";

const MAGIC = "CMOCKPT1";

export interface CheckpointMeta {
  iteration: number;
  [key: string]: unknown;
}

export function saveCheckpoint(
  path: string,
  meta: CheckpointMeta,
  tensors: Record<string, Tensor>,
): void {
  const entries: { name: string; shape: number[]; offset: number }[] = [];
  const arrays: Float32Array[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const a = t.toArray();
    if (!(a instanceof Float32Array)) throw new Error(`Checkpoint: tensor ${name} is not float32`);
    entries.push({ name, shape: [...t.shape], offset });
    arrays.push(a);
    offset += a.byteLength;
  }
  const header = new TextEncoder().encode(JSON.stringify({ meta, tensors: entries }));
  const total = 8 + 4 + header.length + offset;
  const out = new Uint8Array(total);
  out.set(new TextEncoder().encode(MAGIC), 0);
  new DataView(out.buffer).setUint32(8, header.length, true);
  out.set(header, 12);
  let pos = 12 + header.length;
  for (const a of arrays) {
    out.set(new Uint8Array(a.buffer, a.byteOffset, a.byteLength), pos);
    pos += a.byteLength;
  }
  writeFileAtomicSync(path, out);
}

export interface LoadedCheckpoint {
  meta: CheckpointMeta;
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
}

export function loadCheckpoint(path: string): LoadedCheckpoint {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new Error(`Cannot read checkpoint ${path}: ${(e as Error).message}`);
  }
  if (bytes.length < 12 || new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) {
    throw new Error(`Cannot read checkpoint ${path}: not a comodal checkpoint (bad magic)`);
  }
  const hlen = new DataView(bytes.buffer, bytes.byteOffset).getUint32(8, true);
  if (12 + hlen > bytes.length) throw new Error(`Cannot read checkpoint ${path}: truncated header`);
  let header: {
    meta: CheckpointMeta;
    tensors: { name: string; shape: number[]; offset: number }[];
  };
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + hlen)));
  } catch (e) {
    throw new Error(`Cannot read checkpoint ${path}: corrupt header (${(e as Error).message})`);
  }
  const base = 12 + hlen;
  const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const t of header.tensors) {
    const n = t.shape.reduce((p, s) => p * s, 1);
    const start = base + t.offset;
    if (start + 4 * n > bytes.length) {
      throw new Error(`Cannot read checkpoint ${path}: truncated at tensor ${t.name}`);
    }
    const copy = new Float32Array(n);
    new Uint8Array(copy.buffer).set(bytes.subarray(start, start + 4 * n));
    tensors.set(t.name, { shape: t.shape, data: copy });
  }
  return { meta: header.meta, tensors };
}

/**
 * The meta of a checkpoint without reading its tensors (the header only), after checking that the
 * file is as long as its header says: a cheap check that it is complete.
 */
export function readCheckpointMeta(path: string): CheckpointMeta {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new Error(`Cannot read checkpoint ${path}: ${(e as Error).message}`);
  }
  try {
    const size = fstatSync(fd).size;
    const head = new Uint8Array(12);
    if (
      readSync(fd, head, 0, 12, 0) < 12 || new TextDecoder().decode(head.subarray(0, 8)) !== MAGIC
    ) {
      throw new Error(`Cannot read checkpoint ${path}: not a comodal checkpoint (bad magic)`);
    }
    const hlen = new DataView(head.buffer).getUint32(8, true);
    if (12 + hlen > size) throw new Error(`Cannot read checkpoint ${path}: truncated header`);
    const bytes = new Uint8Array(hlen);
    readSync(fd, bytes, 0, hlen, 12);
    let header: { meta: CheckpointMeta; tensors: { shape: number[]; offset: number }[] };
    try {
      header = JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      throw new Error(`Cannot read checkpoint ${path}: corrupt header (${(e as Error).message})`);
    }
    const end = Math.max(
      0,
      ...header.tensors.map((t) => t.offset + 4 * t.shape.reduce((p, s) => p * s, 1)),
    );
    if (12 + hlen + end > size) throw new Error(`Cannot read checkpoint ${path}: truncated data`);
    return header.meta;
  } finally {
    closeSync(fd);
  }
}
