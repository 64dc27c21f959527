/**
 * Trainer hooks: progress display, a JSONL metrics log that survives a crash (one appended line per
 * event), periodic checkpoints, and a user callback for notebooks and workflow steps.
 */
import { appendFileSync } from "node:fs";
import cliProgress from "cli-progress";
import type { IterationInfo, TrainerContext, TrainerHook } from "./trainer.ts";

/** Appends one JSON object per line; each line is written with a single append call. */
export class JsonlLog {
  constructor(readonly path: string) {}
  write(record: Record<string, unknown>): void {
    appendFileSync(this.path, JSON.stringify({ time: new Date().toISOString(), ...record }) + "\n");
  }
}

export function logHook(log: JsonlLog, every = 1): TrainerHook {
  return {
    onStart: (ctx) => log.write({ event: "start", iteration: ctx.iteration, total: ctx.total }),
    onIteration: (_ctx, info) => {
      if (info.iteration % every === 0 || info.iteration === info.total) {
        log.write({
          event: "iteration",
          iteration: info.iteration,
          lr: info.lr,
          seconds: info.seconds,
          ...info.terms,
        });
      }
    },
    onEnd: (ctx, { completed }) => log.write({ event: "end", iteration: ctx.iteration, completed }),
  };
}

function shortTerms(terms: Record<string, number>): string {
  const keys = ["loss", "sup", "csc", "cac", "consistency", "mutual"];
  return keys.filter((k) => k in terms).map((k) => `${k} ${terms[k].toFixed(3)}`).join(" ");
}

/**
 * A progress bar with loss terms, it/s and ETA on a terminal; on a pipe (CI, workflow logs) a plain
 * line every `lineEvery` iterations.
 */
export function progressHook(
  opts: { label?: string; lineEvery?: number; quiet?: boolean } = {},
): TrainerHook {
  const tty = Deno.stderr.isTerminal();
  let bar: cliProgress.SingleBar | null = null;
  let t0 = 0;
  let start = 0;
  const lineEvery = opts.lineEvery ?? 25;
  return {
    onStart: (ctx: TrainerContext) => {
      if (opts.quiet) return;
      t0 = performance.now();
      start = ctx.iteration;
      if (tty) {
        bar = new cliProgress.SingleBar({
          format: `${
            opts.label ?? "train"
          } [{bar}] {value}/{total} | {terms} | {rate} it/s | ETA {eta_formatted}`,
          barsize: 24,
          hideCursor: true,
          etaBuffer: 20,
          stream: process.stderr,
        }, cliProgress.Presets.shades_classic);
        bar.start(ctx.total, ctx.iteration, { terms: "", rate: "-" });
      }
    },
    onIteration: (_ctx, info: IterationInfo) => {
      if (opts.quiet) return;
      const elapsed = (performance.now() - t0) / 1000;
      const rate = (info.iteration - start) / Math.max(elapsed, 1e-9);
      if (bar) {
        bar.update(info.iteration, { terms: shortTerms(info.terms), rate: rate.toFixed(2) });
      } else if (info.iteration % lineEvery === 0 || info.iteration === info.total) {
        const eta = (info.total - info.iteration) / Math.max(rate, 1e-9);
        console.error(
          `${opts.label ?? "train"} ${info.iteration}/${info.total} | ${
            shortTerms(info.terms)
          } | lr ${info.lr.toExponential(2)} | ${rate.toFixed(2)} it/s | ETA ${Math.round(eta)} s`,
        );
      }
    },
    onEnd: () => {
      bar?.stop();
    },
  };
}

/** Calls `fn` every `every` iterations (and at the end when `atEnd`). */
export function everyHook(
  every: number,
  fn: (ctx: TrainerContext, final: boolean) => void | Promise<void>,
  opts: { atEnd?: boolean } = {},
): TrainerHook {
  return {
    onIteration: async (ctx, info) => {
      if (every > 0 && info.iteration % every === 0 && info.iteration !== info.total) {
        await fn(ctx, false);
      }
    },
    onEnd: async (ctx, { completed }) => {
      if (opts.atEnd && completed) await fn(ctx, true);
    },
  };
}

/**
 * A wall-clock budget for the training loop: after a few warm-up iterations it measures the seconds
 * per iteration (everything the loop does, validation and checkpoints included, amortised) and sets
 * the run's total so that the loop ends when the budget is spent; it measures again every 5% of the
 * run, so the cosine schedule ends at the budget even when the speed changes. The loop never runs
 * past the budget: once it is spent, the current iteration is the last.
 */
export function timeBudgetHook(
  budgetS: number,
  opts: {
    warmup?: number;
    now?: () => number;
    onChange?: (total: number, secPerIt: number) => void;
  } = {},
): TrainerHook {
  const now = opts.now ?? (() => performance.now() / 1000);
  const warmup = opts.warmup ?? 3;
  let t0 = 0, startIt = 0, tMeasure = 0, itMeasure = -1, nextCheck = 0;
  return {
    onStart(ctx) {
      t0 = now();
      startIt = ctx.iteration;
    },
    onIteration(ctx) {
      const it = ctx.iteration;
      const t = now();
      if (t - t0 >= budgetS) {
        ctx.total = it;
        return;
      }
      if (it - startIt === warmup) {
        tMeasure = t;
        itMeasure = it;
        nextCheck = it + 5;
        return;
      }
      if (itMeasure < 0 || it < nextCheck) return;
      const secPerIt = (t - tMeasure) / (it - itMeasure);
      const total = it + Math.max(0, Math.floor((budgetS - (t - t0)) / secPerIt));
      if (total !== ctx.total) {
        ctx.total = total;
        opts.onChange?.(total, secPerIt);
      }
      nextCheck = it + Math.max(5, Math.ceil(0.05 * total));
    },
  };
}
