/**
 * `synth <task> --out DIR [--cases N] [--seed S]`: writes synthetic phantoms of a task (cardiac,
 * abdomen, orbit) in the real dataset's layout, plus DIR/manifest.yaml.
 */
import type { Command } from "commander";
import { SYNTH_TASKS, synthesize, type SynthTask } from "../src/data/synth.ts";
import { progressBar } from "../src/data/progress.ts";

function positiveInt(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) {
    throw new Error(`${name}: expected a non-negative integer, got '${v}'`);
  }
  return n;
}

export function register(program: Command): void {
  program
    .command("synth")
    .description(
      `write synthetic phantoms in the layout of the real dataset (${SYNTH_TASKS.join(", ")})`,
    )
    .argument("<task>", SYNTH_TASKS.join(" | "))
    .requiredOption("--out <dir>", "output folder")
    .option("--cases <n>", "number of cases", "20")
    .option("--seed <s>", "random seed", "0")
    .option(
      "--size-scale <f>",
      "scale of the in-plane grid (1 = defaults, e.g. 128x128x12 cardiac)",
      "1",
    )
    .option("--workers <n>", "worker threads (default: one per core, up to 4)")
    .option("--quiet", "no progress bar")
    .action(
      async (
        task: string,
        o: {
          out: string;
          cases: string;
          seed: string;
          sizeScale: string;
          workers?: string;
          quiet?: boolean;
        },
      ) => {
        if (!SYNTH_TASKS.includes(task as SynthTask)) {
          throw new Error(`synth: unknown task '${task}' (choose ${SYNTH_TASKS.join(", ")})`);
        }
        const scale = Number(o.sizeScale);
        if (!(scale > 0 && scale <= 4)) {
          throw new Error(`--size-scale: expected a number in (0, 4], got '${o.sizeScale}'`);
        }
        const bar = progressBar(`synth ${task}`, { quiet: o.quiet });
        const t0 = performance.now();
        try {
          const r = await synthesize(task as SynthTask, {
            outDir: o.out,
            cases: positiveInt("--cases", o.cases),
            seed: positiveInt("--seed", o.seed),
            sizeScale: scale,
            workers: o.workers === undefined ? undefined : positiveInt("--workers", o.workers),
            onProgress: bar.onProgress,
          });
          bar.stop();
          console.log(
            `wrote ${r.files.length} files for ${o.cases} ${task} cases in ${
              ((performance.now() - t0) / 1000).toFixed(1)
            } s`,
          );
          console.log(`manifest: ${r.manifestPath}`);
        } finally {
          bar.stop();
        }
      },
    );
}
