/**
 * The trainer: a loop over hooks. Each iteration draws a batch, computes the method's loss, runs
 * backward, steps the optimiser and the EMA teacher; hooks do everything else (progress, logging,
 * validation, checkpoints). A non-finite loss stops the run with the iteration and the last finite
 * values; nothing already written is touched.
 */
import {
  backward,
  emaUpdate,
  IGNORE_INDEX,
  noGrad,
  type Tensor,
  tensor,
  tidy,
  zeroGrad,
} from "../engine.ts";
import type { Module } from "../nn/module.ts";
import type { MethodModel, TrainBatch } from "./methods.ts";
import { learningRate, type Optimizer, type ScheduleKind } from "./optim.ts";

/** A batch as host arrays (what the data loader produces). */
export interface HostBatch {
  /** Patch size (D, H, W). */
  patch: [number, number, number];
  labeled: { images: Float32Array[]; labels: Int32Array[]; count: number };
  unlabeled: { images: Float32Array[]; count: number } | null;
}

export interface IterationInfo {
  iteration: number; // 1-based count of finished iterations
  total: number;
  lr: number;
  terms: Record<string, number>;
  seconds: number;
}

export interface TrainerContext {
  readonly model: MethodModel;
  readonly optimizer: Optimizer;
  /** Iterations the run will make; a time budget (`timeBudgetHook`) may change it while training. */
  total: number;
  /** Iterations finished so far. */
  iteration: number;
  /** Set by a hook to end the run after the current iteration. */
  stopRequested: boolean;
}

export interface TrainerHook {
  onStart?(ctx: TrainerContext): void | Promise<void>;
  onIteration?(ctx: TrainerContext, info: IterationInfo): void | Promise<void>;
  onEnd?(ctx: TrainerContext, info: { completed: boolean }): void | Promise<void>;
}

export class NonFiniteLossError extends Error {
  constructor(
    readonly iteration: number,
    readonly terms: Record<string, number>,
    readonly lastFinite: Record<string, number> | null,
  ) {
    super(
      `Training stopped at iteration ${iteration}: the loss is not finite (${fmt(terms)}); ` +
        `last finite values: ${
          lastFinite ? fmt(lastFinite) : "none"
        }. The last good checkpoint is kept.`,
    );
  }
}

function fmt(t: Record<string, number>): string {
  return Object.entries(t).map(([k, v]) => `${k}=${Number.isFinite(v) ? v.toPrecision(4) : v}`)
    .join(", ");
}

export interface TrainerOptions {
  model: MethodModel;
  optimizer: Optimizer;
  total: number;
  baseLr: number;
  warmup: number;
  schedule: ScheduleKind;
  emaDecay: number;
  nextBatch: () => Promise<HostBatch>;
  hooks?: TrainerHook[];
}

/** Copies a host batch onto the engine (inside the caller's tidy scope). */
export function toEngineBatch(b: HostBatch): TrainBatch {
  const [d, h, w] = b.patch;
  const img = (a: Float32Array, n: number) => tensor(a, [n, 1, d, h, w]);
  const nv = d * h * w;
  const hasLabels = b.labeled.labels.map((a) =>
    [...Array(b.labeled.count).keys()].map((s) =>
      a[s * nv] !== IGNORE_INDEX || a.subarray(s * nv, (s + 1) * nv).some((v) => v !== IGNORE_INDEX)
    )
  );
  // A sample's label maps are shared when every modality's map equals the first one, voxel for voxel.
  const sharedLabels = () =>
    [...Array(b.labeled.count).keys()].map((s) => {
      const first = b.labeled.labels[0]?.subarray(s * nv, (s + 1) * nv);
      if (!first || !hasLabels[0][s]) return false;
      return b.labeled.labels.every((a, m) => {
        if (m === 0) return true;
        const x = a.subarray(s * nv, (s + 1) * nv);
        for (let i = 0; i < nv; i++) if (x[i] !== first[i]) return false;
        return true;
      });
    });
  return {
    labeled: {
      images: b.labeled.images.map((a) => img(a, b.labeled.count)),
      sharedLabels,
      labels: b.labeled.labels.map((a) =>
        tensor(a, [b.labeled.count, 1, d, h, w], { dtype: "i32" })
      ),
      hasLabels,
    },
    unlabeled: b.unlabeled && b.unlabeled.count > 0
      ? { images: b.unlabeled.images.map((a) => img(a, b.unlabeled!.count)) }
      : null,
  };
}

/** teacher = decay * teacher + (1 - decay) * student, parameter by parameter. */
export function updateEma(teacher: Module, student: Module, decay: number): void {
  const t = teacher.parameters();
  const s = student.parameters();
  if (t.length !== s.length) {
    throw new Error(`EMA: teacher has ${t.length} parameters, student ${s.length}`);
  }
  noGrad(() => t.forEach((p, i) => emaUpdate(p, s[i], decay)));
}

export class Trainer {
  readonly ctx: TrainerContext;
  #lastFinite: Record<string, number> | null = null;

  constructor(readonly opts: TrainerOptions) {
    this.ctx = {
      model: opts.model,
      optimizer: opts.optimizer,
      total: opts.total,
      iteration: 0,
      stopRequested: false,
    };
  }

  /** Runs from ctx.iteration (0, or where a checkpoint left off) to the total. */
  async run(): Promise<{ completed: boolean }> {
    const { model, optimizer } = this.opts;
    const hooks = this.opts.hooks ?? [];
    const params: Tensor[] = model.student.parameters();
    if (model.teacher && this.ctx.iteration === 0) updateEma(model.teacher, model.student, 0);
    for (const h of hooks) await h.onStart?.(this.ctx);
    let completed = true;
    try {
      while (this.ctx.iteration < this.ctx.total) {
        if (this.ctx.stopRequested) {
          completed = false;
          break;
        }
        const t0 = performance.now();
        const host = await this.opts.nextBatch();
        const it = this.ctx.iteration;
        const terms = tidy(() => {
          const batch = toEngineBatch(host);
          const r = model.loss(batch, it, this.ctx.total);
          if (!Number.isFinite(r.terms.loss)) {
            throw new NonFiniteLossError(it + 1, r.terms, this.#lastFinite);
          }
          backward(r.loss, undefined, { releaseActivations: true });
          return r.terms;
        });
        const lr = learningRate(it, {
          base: this.opts.baseLr,
          total: this.ctx.total,
          warmup: this.opts.warmup,
          kind: this.opts.schedule,
        });
        noGrad(() => optimizer.step(lr));
        zeroGrad(params);
        if (model.teacher) updateEma(model.teacher, model.student, this.opts.emaDecay);
        this.#lastFinite = terms;
        this.ctx.iteration = it + 1;
        const info: IterationInfo = {
          iteration: it + 1,
          total: this.ctx.total,
          lr,
          terms,
          seconds: (performance.now() - t0) / 1000,
        };
        for (const h of hooks) await h.onIteration?.(this.ctx, info);
      }
    } catch (e) {
      zeroGrad(params);
      for (const h of hooks) await h.onEnd?.(this.ctx, { completed: false });
      throw e;
    }
    for (const h of hooks) await h.onEnd?.(this.ctx, { completed });
    return { completed };
  }
}
