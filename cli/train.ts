/** `train <task|manifest>`: trains a model and writes the run folder (see src/train/run.ts). */
import type { Command } from "commander";
import { labeledProblem } from "../src/data/manifest.ts";
import { applyOverrides, METHODS, parseDuration, readConfigFile } from "../src/train/config.ts";
import { trainTask } from "../src/train/run.ts";
import { RunFolder } from "../src/train/run_folder.ts";

/** --labeled: a count (a whole number >= 1) or a ratio in (0, 1]; 1.5 is refused, not rounded. */
export function labeledArg(v: string): number {
  const n = v.trim() === "" ? NaN : Number(v);
  const problem = labeledProblem(n);
  if (problem) throw new Error(`--labeled: ${problem.replace(`got ${n}`, `got '${v}'`)}`);
  return n;
}

function intArg(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) {
      throw new Error(`${name}: expected a non-negative integer, got '${v}'`);
    }
    return n;
  };
}

export function register(program: Command): void {
  program
    .command("train")
    .description(
      "train a segmentation model on a task (cardiac, abdomen, orbit) or a manifest file",
    )
    .argument(
      "[task]",
      "task name, a manifest (.yaml/.json) or a dataset folder (imported on the fly); with --resume, the run's",
    )
    .option(
      "--data <dir>",
      "dataset folder in the task's layout (default: built-in synthetic data)",
    )
    .option(
      "--labeled <n|ratio>",
      "labeled training cases: a whole count or a ratio in (0, 1]",
      labeledArg,
    )
    .option(
      "--method <name>",
      `auto (default: early-fusion for co-registered modalities, cmc otherwise) or one of ${
        METHODS.join(", ")
      }`,
    )
    .option("--iterations <n>", "training iterations", intArg("--iterations"))
    .option(
      "--time <duration>",
      "wall-clock budget of the training loop (15m, 90s, 1h30m); the schedule fits it (default on real data: 15m)",
      parseDuration,
    )
    .option("--seed <n>", "random seed", intArg("--seed"))
    .option("--out <dir>", "run folder")
    .option(
      "--resume",
      `continue <out>/${
        RunFolder.fileName("last")
      } with the run's config and data (only --threads, --device and other ` +
        "execution keys may change; other differing settings are refused)",
    )
    .option("--config <file>", "YAML/JSON file with config keys")
    .option("--device <cpu|cuda>", "compute backend")
    .option("--threads <n>", "CPU threads (0 = all cores)", intArg("--threads"))
    .option("--deterministic", "bit-reproducible run on the same backend")
    .option("--set <key=value...>", "override any config key, e.g. --set loss.lambdaCsc=0.2")
    .action(async (task: string | undefined, o: Record<string, unknown>) => {
      if (task === undefined && !o.resume) {
        throw new Error("train: give a task, a manifest or a dataset folder");
      }
      let cfg: Record<string, unknown> = o.config ? readConfigFile(String(o.config)) : {};
      if (task !== undefined) cfg.task = task;
      for (
        const k of [
          "data",
          "labeled",
          "method",
          "iterations",
          "time",
          "seed",
          "out",
          "device",
          "threads",
        ]
      ) {
        if (o[k] !== undefined) cfg[k] = o[k];
      }
      if (o.deterministic) cfg.deterministic = true;
      if (Array.isArray(o.set)) cfg = applyOverrides(cfg, o.set as string[]);
      const result = await trainTask(cfg, { resume: Boolean(o.resume) });
      console.log(result.summaryText);
    });
}
