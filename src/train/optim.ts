/**
 * Optimisers over a list of named parameters, using the engine's fused in-place update kernels,
 * and the learning-rate schedules of METHOD.md section 4.
 */
import { adamwUpdate, sgdUpdate, type Tensor, zeros } from "../engine.ts";

export interface OptimizerState {
  kind: "adamw" | "sgd";
  step: number;
  /** Per-parameter state tensors by "<param name>/<slot>". */
  slots: Record<string, Tensor>;
}

export interface Optimizer {
  readonly kind: "adamw" | "sgd";
  /** Number of steps taken so far. */
  readonly stepCount: number;
  /** Applies one update with learning rate lr to every parameter that has a gradient. */
  step(lr: number): void;
  /** Live state (tensors are owned by the optimizer; checkpoints read and write them). */
  state(): OptimizerState;
  /** Restores the step count (slot tensors are written in place through state().slots). */
  setStepCount(n: number): void;
  dispose(): void;
}

export class AdamW implements Optimizer {
  readonly kind = "adamw" as const;
  #step = 0;
  #m = new Map<string, Tensor>();
  #v = new Map<string, Tensor>();

  constructor(
    readonly params: [string, Tensor][],
    readonly opts: { beta1?: number; beta2?: number; eps?: number; weightDecay?: number } = {},
  ) {
    for (const [name, p] of params) {
      this.#m.set(name, zeros([...p.shape]).keep());
      this.#v.set(name, zeros([...p.shape]).keep());
    }
  }

  get stepCount(): number {
    return this.#step;
  }

  step(lr: number): void {
    this.#step++;
    for (const [name, p] of this.params) {
      if (!p.grad) continue;
      adamwUpdate(p, p.grad, this.#m.get(name)!, this.#v.get(name)!, {
        lr,
        beta1: this.opts.beta1 ?? 0.9,
        beta2: this.opts.beta2 ?? 0.999,
        eps: this.opts.eps ?? 1e-8,
        weightDecay: this.opts.weightDecay ?? 1e-5,
        step: this.#step,
      });
    }
  }

  state(): OptimizerState {
    const slots: Record<string, Tensor> = {};
    for (const [name] of this.params) {
      slots[`${name}/m`] = this.#m.get(name)!;
      slots[`${name}/v`] = this.#v.get(name)!;
    }
    return { kind: this.kind, step: this.#step, slots };
  }

  setStepCount(n: number): void {
    this.#step = n;
  }

  dispose(): void {
    for (const t of [...this.#m.values(), ...this.#v.values()]) t.dispose();
  }
}

export class Sgd implements Optimizer {
  readonly kind = "sgd" as const;
  #step = 0;
  #buf = new Map<string, Tensor>();

  constructor(
    readonly params: [string, Tensor][],
    readonly opts: { momentum?: number; weightDecay?: number; nesterov?: boolean } = {},
  ) {
    for (const [name, p] of params) this.#buf.set(name, zeros([...p.shape]).keep());
  }

  get stepCount(): number {
    return this.#step;
  }

  step(lr: number): void {
    this.#step++;
    for (const [name, p] of this.params) {
      if (!p.grad) continue;
      sgdUpdate(p, p.grad, this.#buf.get(name)!, {
        lr,
        momentum: this.opts.momentum ?? 0.99,
        weightDecay: this.opts.weightDecay ?? 3e-5,
        nesterov: this.opts.nesterov ?? true,
      });
    }
  }

  state(): OptimizerState {
    const slots: Record<string, Tensor> = {};
    for (const [name] of this.params) slots[`${name}/momentum`] = this.#buf.get(name)!;
    return { kind: this.kind, step: this.#step, slots };
  }

  setStepCount(n: number): void {
    this.#step = n;
  }

  dispose(): void {
    for (const t of this.#buf.values()) t.dispose();
  }
}

export type ScheduleKind = "cosine" | "poly" | "constant";

/** Longest warm-up as a fraction of the run: a short (time-budgeted) run is not mostly warm-up. */
export const MAX_WARMUP_FRACTION = 0.1;

/**
 * Learning rate at iteration t (0-based) of `total`: linear warm-up over `warmup` iterations (at most
 * MAX_WARMUP_FRACTION of the run), then
 * cosine decay to 0 ("cosine"), nnU-Net's poly decay (1 - t/T)^0.9 ("poly"), or constant.
 */
export function learningRate(
  t: number,
  opts: { base: number; total: number; warmup?: number; kind?: ScheduleKind },
): number {
  const warmup = Math.min(
    opts.warmup ?? 0,
    Math.max(0, opts.total - 1),
    Math.ceil(MAX_WARMUP_FRACTION * opts.total),
  );
  if (t < warmup) return (opts.base * (t + 1)) / warmup;
  const span = Math.max(1, opts.total - warmup);
  const x = Math.min(1, (t - warmup) / span);
  switch (opts.kind ?? "cosine") {
    case "cosine":
      return 0.5 * opts.base * (1 + Math.cos(Math.PI * x));
    case "poly":
      return opts.base * Math.pow(1 - x, 0.9);
    case "constant":
      return opts.base;
  }
}
