/**
 * PatchLoader: batches of labeled and unlabeled patches, prefetched in the background by a pool of
 * workers (or in this thread with `workers: 0`) with a bounded number of batches in flight.
 *
 * Batch i is a pure function of (seed, i): its random generator is `new Rng(seed, "batch", i)`, so the
 * stream is identical whatever the number of workers or their timing, and a resumed run continues
 * with `startBatch`. Unlabeled cases are loaded without their label files (see cases.ts); when a run
 * has no unlabeled case, unlabeled patches are drawn from the labeled cases' images only.
 */
import type { AugmentOptions, MisalignOptions } from "./augment.ts";
import { type LabeledCase, loadPreprocessedCases, type UnlabeledCase } from "./cases.ts";
import { loadPlan } from "./prepared_cache.ts";
import type { PreprocessPlan } from "./preprocess_plan.ts";
import { Rng } from "./rng.ts";
import { PatchSampler } from "./sampler.ts";

export interface PatchLoaderOptions {
  /** Preprocessed folder (preprocess.json). */
  dir: string;
  /** [d, h, w] voxels (z, y, x). */
  patchSize: [number, number, number];
  /** Modalities in output order (default: the plan's). */
  modalities?: string[];
  labeledBatch: number;
  unlabeledBatch: number;
  /** Labeled cases that keep labels (default: all labeled training cases). */
  labeledIds?: string[];
  seed: number;
  /** First batch index (to resume). */
  startBatch?: number;
  augment?: AugmentOptions | false;
  misalign?: MisalignOptions | null;
  foregroundFraction?: number;
  /** Background workers (default 1; 0 = compute in this thread when asked). */
  workers?: number;
  /** Batches computed ahead (default 2 per worker, at least 2). */
  prefetch?: number;
  /** Splits to draw from (default ["train"]). */
  splits?: ("train" | "val" | "test")[];
}

export interface LabeledBatch {
  /** Case id per item and modality. */
  ids: Record<string, string>[];
  /** Per modality: Float32Array [B, 1, D, H, W]. */
  images: Record<string, Float32Array>;
  /** Per modality: Int32Array [B, D, H, W] of class indices (IGNORE_INDEX where ignored or a modality has no map). */
  labels: Record<string, Int32Array>;
  forcedForeground: boolean[];
}

export interface UnlabeledBatch {
  ids: Record<string, string>[];
  images: Record<string, Float32Array>;
}

export interface Batch {
  index: number;
  patchSize: [number, number, number];
  modalities: string[];
  labeled: LabeledBatch | null;
  unlabeled: UnlabeledBatch | null;
}

/** Everything a batch needs; sent once to each worker (arrays on SharedArrayBuffers are shared). */
export interface LoaderContext {
  modalities: string[];
  patchSize: [number, number, number];
  labeledBatch: number;
  unlabeledBatch: number;
  seed: number;
  augment?: AugmentOptions | false;
  misalign?: MisalignOptions | null;
  foregroundFraction?: number;
  labeled: LabeledCase[];
  unlabeled: UnlabeledCase[];
}

/**
 * Picks the case(s) of one batch item: one case for every modality when the drawn case has them all
 * (paired data), else, per missing modality, a random case that has it (unpaired data such as AMOS
 * CT and MRI from different patients). Pass the result to PatchSampler.sampleLabeled/sampleUnlabeled.
 */
export function pickCases<C extends { id: string; volumes: Readonly<Record<string, unknown>> }>(
  pool: C[],
  mods: string[],
  rng: Rng,
  what: string,
): Record<string, C> {
  const first = pool[rng.int(pool.length)];
  const out: Record<string, C> = {};
  for (const m of mods) {
    if (m in first.volumes) out[m] = first;
    else {
      const having = pool.filter((c) => m in c.volumes);
      if (having.length === 0) throw new Error(`PatchLoader: no ${what} case has modality ${m}`);
      out[m] = having[rng.int(having.length)];
    }
  }
  return out;
}

/** Computes batch `index` (deterministic in the context's seed and the index). */
export function makeBatch(ctx: LoaderContext, index: number): Batch {
  const sampler = new PatchSampler({
    patchSize: ctx.patchSize,
    modalities: ctx.modalities,
    augment: ctx.augment,
    misalign: ctx.misalign,
    foregroundFraction: ctx.foregroundFraction,
  });
  const rng = new Rng(ctx.seed, "batch", index);
  const n = sampler.patchVoxels;
  let labeled: LabeledBatch | null = null;
  if (ctx.labeledBatch > 0) {
    if (ctx.labeled.length === 0) {
      throw new Error("PatchLoader: labeledBatch > 0 but there are no labeled cases");
    }
    labeled = { ids: [], images: {}, labels: {}, forcedForeground: [] };
    for (const m of ctx.modalities) {
      labeled.images[m] = new Float32Array(ctx.labeledBatch * n);
      labeled.labels[m] = new Int32Array(ctx.labeledBatch * n);
    }
    for (let b = 0; b < ctx.labeledBatch; b++) {
      const item = rng.derive("labeled", b);
      const p = sampler.sampleLabeled(
        pickCases(ctx.labeled, ctx.modalities, item, "labeled"),
        item,
      );
      for (const m of ctx.modalities) {
        labeled.images[m].set(p.images[m], b * n);
        labeled.labels[m].set(p.labels[m], b * n);
      }
      labeled.ids.push(p.ids);
      labeled.forcedForeground.push(p.forcedForeground);
    }
  }
  let unlabeled: UnlabeledBatch | null = null;
  if (ctx.unlabeledBatch > 0) {
    // Labeled cases lend their images (a view without labels) when there are no unlabeled cases,
    // or for a modality no unlabeled case has (unpaired data such as AMOS CT / MRI).
    const views: UnlabeledCase[] = ctx.labeled.map((c) => ({
      kind: "unlabeled",
      id: c.id,
      volumes: c.volumes,
    }));
    const lacking = ctx.modalities.filter((m) => !ctx.unlabeled.some((c) => m in c.volumes));
    const pool: UnlabeledCase[] = ctx.unlabeled.length === 0
      ? views
      : [...ctx.unlabeled, ...views.filter((v) => lacking.some((m) => m in v.volumes))];
    if (pool.length === 0) {
      throw new Error("PatchLoader: unlabeledBatch > 0 but there are no cases");
    }
    unlabeled = { ids: [], images: {} };
    for (const m of ctx.modalities) unlabeled.images[m] = new Float32Array(ctx.unlabeledBatch * n);
    for (let b = 0; b < ctx.unlabeledBatch; b++) {
      const item = rng.derive("unlabeled", b);
      const p = sampler.sampleUnlabeled(pickCases(pool, ctx.modalities, item, "unlabeled"), item);
      for (const m of ctx.modalities) unlabeled.images[m].set(p.images[m], b * n);
      unlabeled.ids.push(p.ids);
    }
  }
  return { index, patchSize: ctx.patchSize, modalities: ctx.modalities, labeled, unlabeled };
}

/** Buffers of a batch, for transfer from a worker. */
export function batchBuffers(b: Batch): ArrayBuffer[] {
  const out: ArrayBuffer[] = [];
  for (const part of [b.labeled?.images, b.labeled?.labels, b.unlabeled?.images]) {
    for (const a of Object.values(part ?? {})) out.push(a.buffer as ArrayBuffer);
  }
  return out;
}

interface Pending {
  promise: Promise<Batch>;
}

export class PatchLoader {
  /** The preprocessing plan (null for a loader built with fromCases). */
  readonly plan: PreprocessPlan | null;
  readonly modalities: string[];
  readonly labeledCases: readonly string[];
  readonly unlabeledCases: readonly string[];
  private readonly ctx: LoaderContext;
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly waiters = new Map<
    number,
    { resolve: (b: Batch) => void; reject: (e: Error) => void }
  >();
  private nextIndex: number;
  private readonly prefetch: number;
  private closed = false;

  private constructor(
    plan: PreprocessPlan | null,
    ctx: LoaderContext,
    opts: { startBatch?: number; workers?: number; prefetch?: number },
  ) {
    this.plan = plan;
    this.ctx = ctx;
    this.modalities = ctx.modalities;
    this.labeledCases = ctx.labeled.map((c) => c.id);
    this.unlabeledCases = ctx.unlabeled.map((c) => c.id);
    this.nextIndex = opts.startBatch ?? 0;
    const nw = opts.workers ?? 1;
    this.prefetch = Math.max(1, opts.prefetch ?? Math.max(2, 2 * nw));
    for (let i = 0; i < nw; i++) {
      const w = new Worker(new URL("./loader_worker.ts", import.meta.url).href, { type: "module" });
      w.onmessage = (e: MessageEvent<{ index: number; batch?: Batch; error?: string }>) => {
        const waiter = this.waiters.get(e.data.index);
        if (!waiter) return;
        this.waiters.delete(e.data.index);
        if (e.data.error) waiter.reject(new Error(e.data.error));
        else waiter.resolve(e.data.batch!);
      };
      w.onerror = (e) => {
        e.preventDefault();
        for (const [, waiter] of this.waiters) {
          waiter.reject(new Error(`PatchLoader worker failed: ${e.message}`));
        }
        this.waiters.clear();
      };
      w.postMessage({ type: "init", ctx });
      this.workers.push(w);
    }
  }

  /** Loads the preprocessed cases and starts the workers. */
  static async create(opts: PatchLoaderOptions): Promise<PatchLoader> {
    const workers = opts.workers ?? 1;
    const plan = await loadPlan(opts.dir);
    for (const m of opts.modalities ?? []) {
      if (!plan.modalities.includes(m)) {
        throw new Error(
          `PatchLoader: modality ${m} is not in ${opts.dir} (${plan.modalities.join(", ")})`,
        );
      }
    }
    const data = await loadPreprocessedCases(opts.dir, {
      splits: opts.splits ?? ["train"],
      labeledIds: opts.labeledIds,
      shared: workers > 0,
      modalities: opts.modalities,
    });
    const modalities = opts.modalities ?? data.plan.modalities;
    if (opts.labeledBatch > 0 && data.labeled.length === 0) {
      throw new Error(
        `PatchLoader: no labeled cases in ${opts.dir} for splits ${
          (opts.splits ?? ["train"]).join(", ")
        }`,
      );
    }
    const ctx: LoaderContext = {
      modalities,
      patchSize: opts.patchSize,
      labeledBatch: opts.labeledBatch,
      unlabeledBatch: opts.unlabeledBatch,
      seed: opts.seed,
      augment: opts.augment,
      misalign: opts.misalign,
      foregroundFraction: opts.foregroundFraction,
      labeled: data.labeled,
      unlabeled: data.unlabeled,
    };
    // Fail early on bad settings (patch size, modalities) in this thread.
    new PatchSampler({
      patchSize: opts.patchSize,
      modalities,
      augment: opts.augment,
      misalign: opts.misalign,
    });
    return new PatchLoader(data.plan, ctx, opts);
  }

  /**
   * A loader over cases already in memory (e.g. from loadPreprocessedCases). With workers, arrays on
   * SharedArrayBuffers (`shared: true` when loading) are shared; other arrays are copied into each
   * worker once.
   */
  static fromCases(
    cases: { labeled: LabeledCase[]; unlabeled: UnlabeledCase[] },
    opts: Omit<PatchLoaderOptions, "dir" | "labeledIds" | "splits"> & { modalities: string[] },
  ): PatchLoader {
    if (opts.labeledBatch > 0 && cases.labeled.length === 0) {
      throw new Error("PatchLoader: labeledBatch > 0 but there are no labeled cases");
    }
    new PatchSampler({
      patchSize: opts.patchSize,
      modalities: opts.modalities,
      augment: opts.augment,
      misalign: opts.misalign,
    });
    const ctx: LoaderContext = {
      modalities: opts.modalities,
      patchSize: opts.patchSize,
      labeledBatch: opts.labeledBatch,
      unlabeledBatch: opts.unlabeledBatch,
      seed: opts.seed,
      augment: opts.augment,
      misalign: opts.misalign,
      foregroundFraction: opts.foregroundFraction,
      labeled: cases.labeled,
      unlabeled: cases.unlabeled,
    };
    return new PatchLoader(null, ctx, opts);
  }

  /** Index of the batch the next call to next() returns (store it in checkpoints). */
  position(): number {
    return this.nextIndex;
  }

  /** Computes any batch directly in this thread (same result as the stream's batch `index`). */
  batchAt(index: number): Batch {
    return makeBatch(this.ctx, index);
  }

  private request(index: number): Pending {
    let p = this.pending.get(index);
    if (p) return p;
    let promise: Promise<Batch>;
    if (this.workers.length === 0) {
      promise = Promise.resolve().then(() => makeBatch(this.ctx, index));
    } else {
      const w = this.workers[index % this.workers.length];
      promise = new Promise<Batch>((resolve, reject) =>
        this.waiters.set(index, { resolve, reject })
      );
      w.postMessage({ type: "batch", index });
    }
    promise.catch(() => {}); // surfaced by next()
    p = { promise };
    this.pending.set(index, p);
    return p;
  }

  /** The next batch; keeps up to `prefetch` batches in flight. */
  async next(): Promise<Batch> {
    if (this.closed) throw new Error("PatchLoader: next() after close()");
    const i = this.nextIndex++;
    const p = this.request(i);
    if (this.workers.length > 0) { for (let k = 1; k < this.prefetch; k++) this.request(i + k); }
    try {
      return await p.promise;
    } finally {
      this.pending.delete(i);
    }
  }

  /** Number of batches requested but not yet handed out. */
  inFlight(): number {
    return this.pending.size;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Batch> {
    while (!this.closed) yield await this.next();
  }

  /** Stops the workers. */
  close(): Promise<void> {
    this.closed = true;
    for (const w of this.workers) w.terminate();
    this.workers.length = 0;
    for (const [, waiter] of this.waiters) waiter.reject(new Error("PatchLoader closed"));
    this.waiters.clear();
    this.pending.clear();
    return Promise.resolve();
  }
}
