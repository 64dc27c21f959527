import { deepStrictEqual as assertEquals } from "node:assert";
import { join } from "node:path";
import { Command } from "commander";
import { writeNifti } from "../src/data/nifti.ts";
import { register } from "./evaluate.ts";

Deno.test("evaluate command writes metrics.json (Infinity kept) and prints a table", async () => {
  const dir = await Deno.makeTempDir({ prefix: "comodal_cli_eval_" });
  const logs: string[] = [];
  const origLog = console.log, origErr = console.error;
  try {
    const dims = [4, 4, 3];
    const affine = [1.5, 0, 0, 0, 0, 1.5, 0, 0, 0, 0, 4, 0, 0, 0, 0, 1];
    const ref = new Float32Array(48), pred = new Float32Array(48);
    ref[5] = ref[6] = 1;
    pred[5] = 1;
    ref[40] = 2; // class 2 missing from the prediction
    await writeNifti(join(dir, "ref.nii.gz"), { data: ref, dims, affine });
    await writeNifti(join(dir, "pred.nii.gz"), { data: pred, dims, affine });
    const out = join(dir, "m.json");
    console.log = (...a: unknown[]) => logs.push(a.join(" "));
    console.error = () => {};
    const program = new Command("comodal").exitOverride();
    register(program);
    await program.parseAsync(
      [
        "evaluate",
        "--pred",
        join(dir, "pred.nii.gz"),
        "--ref",
        join(dir, "ref.nii.gz"),
        "--labels",
        "a=1,b=2",
        "--out",
        out,
      ],
      { from: "user" },
    );
    const json = JSON.parse(await Deno.readTextFile(out));
    assertEquals(json.cases[0].classes.a.dice, 2 / 3);
    // ref->pred distances [0, 1.5] (x neighbour, 1.5 mm): 95th percentile 0.95 * 1.5.
    if (Math.abs(json.cases[0].classes.a.hd95 - 1.425) > 1e-9) {
      throw new Error(`hd95 ${json.cases[0].classes.a.hd95}`);
    }
    assertEquals(json.cases[0].classes.b.hd95, "Infinity");
    assertEquals(json.summary.nonFinite.hd95, 1);
    assertEquals(json.settings.hdMode, "max");
    const text = logs.join("\n");
    if (!/^a\s+0\.6667/m.test(text) || !/^b\s+0\.0000 ± 0\.0000\s+- ± -/m.test(text)) {
      throw new Error(`table:\n${text}`);
    }
  } finally {
    console.log = origLog;
    console.error = origErr;
    await Deno.remove(dir, { recursive: true });
  }
});
