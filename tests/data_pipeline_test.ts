/**
 * End to end through the data CLI commands: synth -> import -> preprocess -> patches, as a user
 * would run them (commands registered on a fresh commander program, no router needed).
 */
import { Command } from "commander";
import { register as registerSynth } from "../cli/synth.ts";
import { register as registerImport } from "../cli/import.ts";
import { register as registerPreprocess } from "../cli/preprocess.ts";
import { loadManifest } from "../src/data/manifest.ts";
import { loadPlan } from "../src/data/prepared_cache.ts";
import { decodePng } from "../src/viz/png.ts";

const tmp = await Deno.makeTempDir({ prefix: "comodal_data_cli_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));

async function run(args: string[]): Promise<string> {
  const program = new Command("comodal").exitOverride();
  registerSynth(program);
  registerImport(program);
  registerPreprocess(program);
  const lines: string[] = [];
  const log = console.log;
  console.log = (...a: unknown[]) => lines.push(a.join(" "));
  try {
    await program.parseAsync(args, { from: "user" });
  } finally {
    console.log = log;
  }
  return lines.join("\n");
}

function check(cond: unknown, msg: string): void {
  if (!cond) throw new Error(msg);
}

Deno.test("data CLI: synth, import, preprocess, patches", async () => {
  const raw = `${tmp}/cardiac`;
  const s = await run([
    "synth",
    "cardiac",
    "--out",
    raw,
    "--cases",
    "3",
    "--seed",
    "4",
    "--size-scale",
    "0.4",
    "--workers",
    "0",
    "--quiet",
  ]);
  check(s.includes("manifest:"), s);
  const imp = await run(["import", raw, "--out", `${tmp}/m.json`, "--val", "0"]);
  check(imp.includes("task cardiac: 3 cases (3 labeled; train 3, val 0, test 0)"), imp);
  const m = await loadManifest(`${tmp}/m.json`);
  check(m.modalities.join() === "C0,LGE,T2", m.modalities.join());
  const pre = await run(["preprocess", `${tmp}/m.json`, "--out", `${tmp}/pre`, "--quiet"]);
  check(pre.includes("3 cases of cardiac"), pre);
  const plan = await loadPlan(`${tmp}/pre`);
  check(
    Math.abs(plan.targetSpacing[2] - plan.targetSpacing[0]) > 1,
    `anisotropic target ${plan.targetSpacing}`,
  );
  const pat = await run([
    "patches",
    `${tmp}/pre`,
    "--patch",
    "4,32,32",
    "--batches",
    "3",
    "--workers",
    "0",
    "--misalign",
    "3,5",
    "--png",
    `${tmp}/p.png`,
  ]);
  check(/patches\/s/.test(pat), pat);
  const png = decodePng(await Deno.readFile(`${tmp}/p.png`));
  check(png.width === 96 && png.height === 96, `png ${png.width}x${png.height}`);
  let err = "";
  try {
    await run(["synth", "brain", "--out", `${tmp}/x`, "--quiet"]);
  } catch (e) {
    err = (e as Error).message;
  }
  check(err.includes("unknown task 'brain'"), err);
});
