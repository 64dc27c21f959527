/**
 * `export --run DIR --out model.onnx`: writes a trained run's network as an ONNX model, with its
 * plan (modalities, classes and label values, spacing, patch, normalisation, output names) as JSON
 * under the "comodal.plan" metadata key (see src/export/export_run.ts).
 */
import type { Command } from "commander";
import { exportRun } from "../src/export/export_run.ts";
import { RunFolder } from "../src/train/run_folder.ts";

interface ExportFlags {
  run: string;
  out: string;
  checkpoint: string;
  quiet?: boolean;
}

export function register(program: Command): void {
  program
    .command("export")
    .description("write a trained run's network as ONNX, its plan in the model's metadata")
    .requiredOption(
      "--run <dir>",
      `run folder written by train (${
        (["config", "plan", "best", "last"] as const).map(RunFolder.fileName).join(", ")
      })`,
    )
    .requiredOption("--out <file>", "ONNX file to write (model.onnx)")
    .option("--checkpoint <best|last|file>", "weights to use", "best")
    .option("--quiet", "no summary line")
    .action(async (o: ExportFlags) => {
      if (!o.out.toLowerCase().endsWith(".onnx")) {
        throw new Error(`export: --out must name a .onnx file, got '${o.out}'`);
      }
      const r = await exportRun(o.run, o.out, { checkpoint: o.checkpoint });
      if (!o.quiet) {
        const p = r.plan;
        console.error(
          `export: ${r.file} (${
            (r.bytes / 1e6).toFixed(1)
          } MB), ${p.method} from ${p.checkpoint.file} ` +
            `(iteration ${p.checkpoint.iteration}); inputs ${
              p.inputs.map((i) => i.name).join(", ")
            } [N, 1, D, H, W]; outputs ${p.outputs.map((i) => i.name).join(", ")} [N, ${
              p.regions ? p.regions.names.length : p.classes.length
            }, D, H, W]`,
        );
      }
    });
}
