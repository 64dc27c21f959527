/** Worker for PatchLoader: holds the cases (shared memory) and computes batches on request. */
import { batchBuffers, type LoaderContext, makeBatch } from "./loader.ts";

type Msg = { type: "init"; ctx: LoaderContext } | { type: "batch"; index: number };

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<Msg>) => void) | null;
  postMessage: (m: unknown, transfer?: Transferable[]) => void;
};
let ctx: LoaderContext | null = null;
scope.onmessage = (e: MessageEvent<Msg>) => {
  const msg = e.data;
  if (msg.type === "init") {
    ctx = msg.ctx;
    return;
  }
  try {
    if (!ctx) throw new Error("loader worker: batch requested before init");
    const batch = makeBatch(ctx, msg.index);
    scope.postMessage({ index: msg.index, batch }, batchBuffers(batch));
  } catch (err) {
    scope.postMessage({ index: msg.index, error: `batch ${msg.index}: ${(err as Error).message}` });
  }
};
