/**
 * `predict --run DIR (--input DIR | --manifest FILE | --data DIR) --out DIR`: segments new images
 * with a trained run (see src/train/load_run.ts and src/infer/predict_run.ts) and writes
 * <out>/<caseId>_<modality>.nii.gz on each modality's original grid, and <out>/report.html with a
 * 3D viewer page per case. On runs trained on unpaired data (cases lacking a modality, as in
 * AMOS) a case may lack modalities: the run's stored stand-ins fill in, and only the modalities the
 * case has are written.
 */
import type { Command } from "commander";
import {
  casesFromDataset,
  casesFromFolder,
  casesFromManifest,
  type PredictCase,
  predictCases,
} from "../src/infer/predict_run.ts";
import { loadRun } from "../src/train/load_run.ts";
import { progressBar } from "../src/data/progress.ts";
import { RunFolder } from "../src/train/run_folder.ts";
import { writeRunReport } from "../src/report/html_report.ts";

interface PredictFlags {
  run: string;
  input?: string;
  manifest?: string;
  data?: string;
  split?: string;
  out: string;
  checkpoint: string;
  mirror?: boolean;
  perModality?: boolean;
  overlap?: string;
  device?: "cpu" | "cuda";
  threads?: string;
  quiet?: boolean;
  labelValues: string;
}

export function register(program: Command): void {
  program
    .command("predict")
    .description(
      "segment new images with a trained run; writes <caseId>_<modality>.nii.gz on each original grid",
    )
    .requiredOption(
      "--run <dir>",
      `run folder written by train (${
        (["config", "plan", "best", "last"] as const).map(RunFolder.fileName).join(", ")
      })`,
    )
    .option(
      "--input <dir>",
      "folder of <caseId>_<modality>.nii(.gz) images (or <caseId>_0000.nii.gz by channel); " +
        "unpaired runs accept cases with only some modalities",
    )
    .option("--manifest <file>", "manifest (.yaml/.json) listing the cases")
    .option("--data <dir>", "dataset folder (its manifest.yaml or a known layout)")
    .option("--split <name>", "with --manifest/--data: only cases of this split (train, val, test)")
    .requiredOption("--out <dir>", "output folder")
    .option("--checkpoint <best|last|file>", "weights to use", "best")
    .option(
      "--mirror",
      "average over axis flips (the default of runs since mirroring became the default)",
    )
    .option("--no-mirror", "no flips: 8x fewer network calls")
    .option(
      "--per-modality",
      "co-registered cases: also write each modality decoder's map (<case>_<modality>.nii.gz) beside the fused <case>.nii.gz",
    )
    .option("--overlap <f>", "sliding-window overlap in [0, 0.95] (default: the run's)")
    .option("--device <cpu|cuda>", "compute backend (default: the run's)")
    .option("--threads <n>", "CPU threads (0 = all cores)")
    .option(
      "--label-values <index|file>",
      "voxel values written: class indices 0..K-1, or the dataset's label values (as in its label files)",
      "index",
    )
    .option("--quiet", "no progress lines")
    .action(async (o: PredictFlags) => {
      const sources = [o.input, o.manifest, o.data].filter((x) => x !== undefined);
      if (sources.length !== 1) {
        throw new Error("predict: give exactly one of --input, --manifest or --data");
      }
      if (o.split !== undefined && o.input !== undefined) {
        throw new Error("predict: --split applies to --manifest or --data, not --input");
      }
      const overlap = o.overlap === undefined ? undefined : Number(o.overlap);
      if (overlap !== undefined && !(overlap >= 0 && overlap <= 0.95)) {
        throw new Error(`--overlap: expected a number in [0, 0.95], got '${o.overlap}'`);
      }
      const threads = o.threads === undefined ? undefined : Number(o.threads);
      if (threads !== undefined && !(Number.isInteger(threads) && threads >= 0)) {
        throw new Error(`--threads: expected a non-negative integer, got '${o.threads}'`);
      }
      if (o.device !== undefined && o.device !== "cpu" && o.device !== "cuda") {
        throw new Error(`--device: expected cpu or cuda, got '${o.device}'`);
      }
      if (o.labelValues !== "index" && o.labelValues !== "file") {
        throw new Error(`--label-values: expected index or file, got '${o.labelValues}'`);
      }
      const run = await loadRun(o.run, { checkpoint: o.checkpoint, device: o.device, threads });
      try {
        let cases: PredictCase[];
        if (o.input !== undefined) cases = await casesFromFolder(o.input, run);
        else if (o.manifest !== undefined) {
          cases = await casesFromManifest(o.manifest, run, { split: o.split });
        } else cases = await casesFromDataset(o.data!, run, { split: o.split });
        if (!o.quiet) {
          console.error(
            `predict: ${cases.length} case(s) with ${run.checkpoint} (iteration ${run.iteration}), modalities ${
              run.plan.modalities.join(", ")
            }`,
          );
        }
        const windows = progressBar("[predict] sliding window", { quiet: !!o.quiet });
        const r = await predictCases(run, cases, {
          outDir: o.out,
          overlap,
          mirror: o.mirror === undefined ? undefined : o.mirror,
          perModality: Boolean(o.perModality),
          labelValues: o.labelValues,
          onProgress: o.quiet ? undefined : (done, total, id) => {
            windows.stop();
            console.error(`[predict] ${done}/${total} ${id}`);
          },
          onWindows: windows.onProgress,
        }).finally(() => windows.stop());
        const report = await writeRunReport(o.out, {
          runDir: o.run,
          labelValues: o.labelValues,
          cases: r.cases.map((c) => ({ ...c, images: cases.find((x) => x.id === c.id)!.images })),
        });
        const files = r.cases.reduce((n, c) => n + Object.keys(c.files).length, 0);
        console.log(
          `wrote ${files} prediction(s) for ${r.cases.length} case(s) to ${o.out} in ${
            r.seconds.toFixed(1)
          } s${report ? `; report ${report}` : ""}`,
        );
      } finally {
        run.dispose();
      }
    });
}
