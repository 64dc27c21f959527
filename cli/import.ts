/**
 * `import <dir> [--layout L] [--out manifest.yaml]`: builds a manifest from a dataset folder in the
 * MS-CMRSeg, AMOS, Medical Segmentation Decathlon, nnU-Net raw or BraTS layout (detected when not given).
 */
import type { Command } from "commander";
import * as path from "node:path";
import { type DatasetLayout, importDataset } from "../src/data/importers.ts";
import { saveManifest } from "../src/data/manifest.ts";

const LAYOUTS: DatasetLayout[] = ["mscmrseg", "amos", "decathlon", "nnunet", "brats"];

function fraction(name: string, v: string): number {
  const n = Number(v);
  if (!(n >= 0 && n < 1)) throw new Error(`${name}: expected a fraction in [0, 1), got '${v}'`);
  return n;
}

export function register(program: Command): void {
  program
    .command("import")
    .description(
      "build a dataset manifest from a folder (MS-CMRSeg, AMOS, Decathlon, nnU-Net raw or BraTS layout)",
    )
    .argument("<dir>", "dataset folder")
    .option("--layout <layout>", LAYOUTS.join(" | ") + " (default: detected)")
    .option("--out <file>", "manifest to write (.yaml or .json; default <dir>/manifest.yaml)")
    .option("--val <fraction>", "fraction of cases for validation", "0.2")
    .option(
      "--test <fraction>",
      "fraction of cases for testing (besides a dataset's own test list)",
      "0",
    )
    .option("--seed <s>", "seed of the split", "0")
    .action(
      async (
        dir: string,
        o: { layout?: string; out?: string; val: string; test: string; seed: string },
      ) => {
        if (o.layout !== undefined && !LAYOUTS.includes(o.layout as DatasetLayout)) {
          throw new Error(`--layout: expected one of ${LAYOUTS.join(", ")}, got '${o.layout}'`);
        }
        const seed = Number(o.seed);
        if (!Number.isInteger(seed)) {
          throw new Error(`--seed: expected an integer, got '${o.seed}'`);
        }
        const m = await importDataset(dir, {
          layout: o.layout as DatasetLayout | undefined,
          valFraction: fraction("--val", o.val),
          testFraction: fraction("--test", o.test),
          seed,
        });
        const out = o.out ?? path.join(dir, "manifest.yaml");
        await saveManifest(out, m);
        const count = (s: string) => m.cases.filter((c) => c.split === s).length;
        console.log(
          `task ${m.task}: ${m.cases.length} cases (${
            m.cases.filter((c) => c.labeled).length
          } labeled; train ${count("train")}, val ${count("val")}, test ${count("test")})`,
        );
        console.log(
          `modalities: ${m.modalities.join(", ")}; classes: ${Object.keys(m.classes).join(", ")}`,
        );
        console.log(`manifest: ${out}`);
      },
    );
}
