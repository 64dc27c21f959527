/**
 * Atomic file writes: data goes to a temporary file in the same folder, is flushed to disk, and
 * only then renamed over the target, and the folder is flushed too (so the rename itself survives a
 * power cut), so a crash never leaves a half-written file under the final name (checkpoints,
 * predictions, metrics, manifests, preprocessed arrays). A crash mid-write can leave the temporary
 * file (<name>.tmp-<pid>-<random>) behind; see TEMP_FILE_RE.
 * @module
 */
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { dirname } from "node:path";

/** Temporary files of an interrupted atomic write: group 1 is the target's name, group 2 the pid. */
export const TEMP_FILE_RE = /^(.+)\.tmp-(\d+)-[a-z0-9]*$/;

function tempName(path: string): string {
  return `${path}.tmp-${Deno.pid}-${Math.random().toString(36).slice(2)}`;
}

/** Flushes a folder's entries (the rename) to disk; a no-op where folders cannot be opened (Windows). */
async function syncDir(dir: string): Promise<void> {
  let f: Deno.FsFile | undefined;
  try {
    f = await Deno.open(dir, { read: true });
    await f.sync();
  } catch {
    /* not supported here */
  } finally {
    f?.close();
  }
}

function syncDirSync(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, "r");
    fsyncSync(fd);
  } catch {
    /* not supported here */
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
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
    await syncDir(dirname(path));
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
    syncDirSync(dirname(path));
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch { /* never created or already gone */ }
    throw new Error(`Cannot write ${path}: ${(e as Error).message}`);
  }
}
