/**
 * Progress reporting of the data pipeline: the `onProgress(done, total, label)` callback that
 * synthesis, the fingerprint and preprocessing call, and a terminal progress bar (cli-progress)
 * behind it.
 */
import cliProgress from "cli-progress";

/** Called after each unit of work: `done` of `total`, and what was just done. */
export type ProgressFn = (done: number, total: number, label: string) => void;

export interface ProgressBar {
  onProgress: ProgressFn;
  stop(): void;
}

/** A bar on stderr; with `quiet` (or no terminal) it prints nothing. */
export function progressBar(title: string, opts: { quiet?: boolean } = {}): ProgressBar {
  if (opts.quiet || !Deno.stderr.isTerminal()) return { onProgress: () => {}, stop: () => {} };
  let bar: cliProgress.SingleBar | null = null;
  return {
    onProgress: (done, total, label) => {
      if (!bar) {
        bar = new cliProgress.SingleBar({
          format: `${title} [{bar}] {value}/{total} {label}`,
          stream: process.stderr,
          hideCursor: true,
          clearOnComplete: true,
        }, cliProgress.Presets.shades_classic);
        bar.start(total, 0, { label });
      }
      bar.setTotal(total);
      bar.update(done, { label });
    },
    stop: () => {
      bar?.stop();
      bar = null;
    },
  };
}
