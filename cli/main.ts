/**
 * comodal command line: routes sub-commands to the modules in cli/. Each command module exports
 * `register(program)` that adds its command; commands parse flags and call the src/ API only.
 */
import { Command } from "commander";

const COMMANDS: string[] = [
  "train",
  "predict",
  "evaluate",
  "synth",
  "import",
  "preprocess",
  "workflow",
  "export",
];

export async function main(argv: string[]): Promise<number> {
  const program = new Command("comodal")
    .description(
      "Semi-supervised multimodal 3D medical image segmentation (cross-modality collaboration)",
    )
    .showHelpAfterError()
    .exitOverride();
  for (const name of COMMANDS) {
    const mod = await import(`./${name}.ts`);
    mod.register(program);
  }
  try {
    await program.parseAsync(argv, { from: "user" });
    return 0;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    if (e.code === "commander.helpDisplayed" || e.code === "commander.version") return 0;
    if (e.code?.startsWith("commander.")) return e.exitCode ?? 2;
    console.error(`error: ${e.message ?? String(err)}`);
    if (Deno.env.get("COMODAL_DEBUG")) console.error(err);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
