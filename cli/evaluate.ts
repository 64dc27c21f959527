/**
 * `evaluate --pred DIR|file --ref DIR|file [--labels map] [--ignore values] [--modality name]
 * [--out metrics.json]`: Dice, HD95 and ASSD (mm) of predicted against reference NIfTI label
 * images; writes metrics.json and prints a table.
 */
import type { Command } from "commander";
import {
  evaluateNiftiCases,
  formatSummaryTable,
  loadLabelMap,
  pairCases,
  splitIgnore,
} from "../src/metrics/evaluate_files.ts";
import { metricsToJson } from "../src/metrics/metrics.ts";
import { writeFileAtomic } from "../src/data/nifti.ts";
import { RunFolder } from "../src/train/run_folder.ts";

export function register(program: Command): void {
  program
    .command("evaluate")
    .description(
      "evaluate predicted against reference label images (NIfTI): Dice, HD95 and ASSD in mm",
    )
    .requiredOption("--pred <path>", "prediction file or folder of .nii/.nii.gz files")
    .requiredOption("--ref <path>", "reference file or folder (files paired by case id)")
    .option(
      "--labels <map>",
      'classes: "LV=1,MYO=2,RV=3,heart=1+2+3" or a .json/.yaml file (default: the labels found in the references)',
    )
    .option(
      "--ignore <values>",
      'reference label values without annotation, e.g. "255" or "-1,255": left out of both images (a label map entry named "ignore" does the same)',
    )
    .option(
      "--modality <name>",
      "with folders: use the predictions named <case>_<name> (as predict writes them) against <case> references",
    )
    .option("--out <file>", "where to write the metrics JSON", RunFolder.fileName("metrics"))
    .option("--percentile <q>", "Hausdorff percentile", "95")
    .option(
      "--hd-mode <mode>",
      "max: larger of the two directed percentiles (MONAI); pooled: percentile of both sets",
      "max",
    )
    .option("--quiet", "no progress lines")
    .action(
      async (
        o: {
          pred: string;
          ref: string;
          labels?: string;
          ignore?: string;
          modality?: string;
          out: string;
          percentile: string;
          hdMode: string;
          quiet?: boolean;
        },
      ) => {
        const q = Number(o.percentile);
        if (!(q >= 0 && q <= 100)) {
          throw new Error(`--percentile: expected a number in 0..100, got '${o.percentile}'`);
        }
        if (o.hdMode !== "max" && o.hdMode !== "pooled") {
          throw new Error(`--hd-mode: expected max or pooled, got '${o.hdMode}'`);
        }
        const map = o.labels === undefined ? undefined : splitIgnore(await loadLabelMap(o.labels));
        const ignore = [...(map?.ignore ?? [])];
        if (o.ignore !== undefined) {
          for (const part of o.ignore.split(",")) {
            const v = Number(part.trim());
            if (part.trim() === "" || !Number.isInteger(v)) {
              throw new Error(
                `--ignore: expected integer label values like 255 or -1,255, got '${o.ignore}'`,
              );
            }
            ignore.push(v);
          }
        }
        const classes = map?.classes;
        if (classes !== undefined && classes.length === 0) {
          throw new Error(`--labels: no classes besides "ignore" in '${o.labels}'`);
        }
        const { pairs, unmatched } = await pairCases(o.pred, o.ref, { modality: o.modality });
        const report = await evaluateNiftiCases(pairs, {
          classes,
          ignore,
          percentile: q,
          mode: o.hdMode,
          onProgress: o.quiet
            ? undefined
            : (done, total, id) => console.error(`[evaluate] ${done}/${total} ${id}`),
        });
        if (unmatched.length > 0) {
          report.warnings.push(
            `predictions without a reference (ignored): ${unmatched.join(", ")}`,
          );
        }
        await writeFileAtomic(o.out, new TextEncoder().encode(metricsToJson(report) + "\n"));
        for (const w of report.warnings) console.error(`warning: ${w}`);
        console.log(formatSummaryTable(report.summary, { percentile: q }));
        console.log(`metrics written to ${o.out}`);
      },
    );
}
