/**
 * Atomic file writes: data goes to a temporary file in the same folder, is flushed to disk, and
 * only then renamed over the target, so a crash never leaves a half-written file under the final
 * name (checkpoints, predictions, metrics, manifests, preprocessed arrays).
 * @module
 */
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";

function tempName(path: string): string {
  return `${path}.tmp-${Deno.pid}-${Math.random().toString(36).slice(2)}`;
}

/** Writes `bytes` to `path` atomically (async). */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const tmp = tempName(path);
  try {
    const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      let off = 0;
      while (off < bytes.length) off += await f.write(bytes.subarray(off));
      await f.sync();
    } finally {
      f.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw new Error(`Cannot write ${path}: ${(e as Error).message}`);
  }
}

/** Writes `bytes` to `path` atomically (blocking; for synchronous callers such as hooks). */
export function writeFileAtomicSync(path: string, bytes: Uint8Array): void {
  const tmp = tempName(path);
  try {
    const fd = openSync(tmp, "w");
    try {
      let off = 0;
      while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch { /* never created or already gone */ }
    throw new Error(`Cannot write ${path}: ${(e as Error).message}`);
  }
}
