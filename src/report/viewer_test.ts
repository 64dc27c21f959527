import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { writeNifti } from "../data/nifti.ts";
import { legendFromPlan, writeViewerPages } from "./viewer.ts";
import { collectRuns, writeRunReport } from "./html_report.ts";

const AFFINE = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];

async function nifti(file: string, value: number) {
  await writeNifti(file, { data: new Uint8Array(8).fill(value), dims: [2, 2, 2], affine: AFFINE }, {
    datatype: "uint8",
  });
}

const PLAN = {
  classes: ["background", "LV", "RV"],
  modalities: ["C0", "LGE"],
  dataset: { classes: { LV: 500, RV: 600 }, labelMap: { "7": "ignore", "9": "RV" } },
};

Deno.test("viewer: the legend maps the dataset's label values to classes", () => {
  const l = legendFromPlan(PLAN);
  assert.deepEqual([...l.referenceValues!].sort((a, b) => a[0] - b[0]), [
    [0, 0],
    [9, 2],
    [500, 1],
    [600, 2],
  ]);
});

Deno.test("viewer: a page per case, NiiVue's script beside it, each file embedded once", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "viewer_" });
  for (const f of ["a_C0.nii.gz", "a_LGE.nii.gz", "b_C0.nii.gz", "pred.nii.gz", "ref.nii.gz"]) {
    await nifti(path.join(dir, f), 1);
  }
  const p = (f: string) => path.join(dir, f);
  const out = path.join(dir, "out");
  const links = writeViewerPages(
    out,
    [
      {
        id: "a",
        views: ["C0", "LGE"].map((m) => ({
          modality: m,
          image: { path: p(`a_${m}.nii.gz`) },
          prediction: p("pred.nii.gz"),
          reference: p("ref.nii.gz"),
        })),
      },
      { id: "b/odd name", views: [{ modality: "C0", image: { path: p("b_C0.nii.gz") } }] },
      { id: "empty", views: [] },
    ],
    legendFromPlan(PLAN),
    { backHref: "../report.html" },
  );
  assert.deepEqual(links.map((l) => l.href), ["viewer/a.html", "viewer/b_odd_name.html"]);
  assert.ok(existsSync(path.join(out, "viewer", "niivue.umd.js")));
  // Five distinct files, each embedded once although pred and ref appear in two views.
  assert.equal(readdirSync(path.join(out, "viewer", "data")).length, 5);
  const html = readFileSync(path.join(out, links[0].href), "utf8");
  assert.match(html, /<script src="niivue.umd.js"><\/script>/);
  assert.ok(!/src="(https?:)?\/\//.test(html), "no network");
  assert.match(html, /value="1"> LGE/);
  assert.match(html, /id="opacity" type="range"/);
  assert.match(html, /<\/span>LV<\/li>/);
  assert.match(html, /solid: prediction; light: reference/);
  const data = JSON.parse(html.match(/id="viewer-data">(.*?)<\/script>/s)![1]);
  assert.equal(data.views.length, 2);
  // Reference colour table: file values 9 and 600 are RV, 500 LV; prediction: indices 0..2.
  assert.deepEqual(data.colours.reference.I, [0, 9, 500, 600]);
  assert.deepEqual(data.colours.reference.labels, ["background", "RV", "LV", "RV"]);
  assert.deepEqual(data.colours.prediction.I, [0, 1, 2]);
  assert.deepEqual(data.colours.prediction.A, [0, 255, 255]);
  const page2 = readFileSync(path.join(out, links[1].href), "utf8");
  assert.match(page2, /id="show-ref" type="checkbox">/, "no reference: unchecked and hidden");
});

Deno.test("run report: a training run folder's cases with scores and viewer links", async () => {
  const run = Deno.makeTempDirSync({ prefix: "run_report_" });
  const pre = path.join(run, "cache");
  Deno.mkdirSync(path.join(pre, "cases"), { recursive: true });
  Deno.mkdirSync(path.join(run, "predictions"));
  const src = (m: string, label: boolean) => ({
    source: {
      path: path.join(pre, `p1_${m}.nii.gz`),
      frame: null,
      labelPath: label ? path.join(pre, `p1_${m}_gt.nii.gz`) : null,
    },
  });
  for (const f of ["p1_C0", "p1_LGE", "p1_C0_gt"]) await nifti(path.join(pre, `${f}.nii.gz`), 1);
  Deno.writeTextFileSync(
    path.join(pre, "cases", "p1.json"),
    JSON.stringify({ modalities: { C0: src("C0", true), LGE: src("LGE", false) } }),
  );
  await nifti(path.join(run, "predictions", "p1_C0.nii.gz"), 1);
  await nifti(path.join(run, "predictions", "p1_LGE.nii.gz"), 2);
  Deno.writeTextFileSync(
    path.join(run, "plan.json"),
    JSON.stringify({ ...PLAN, preprocessedDir: pre }),
  );
  Deno.writeTextFileSync(
    path.join(run, "metrics.json"),
    JSON.stringify({
      cases: [{ id: "p1/C0", classes: { LV: { dice: 0.91 }, RV: { dice: 0.5 } } }],
      summary: { mean: { dice: 0.7 } },
    }),
  );
  Deno.writeTextFileSync(
    path.join(run, "log.jsonl"),
    '{"event":"iteration","iteration":1,"loss":1}\n',
  );
  const runs = collectRuns([run], 0);
  assert.equal(runs.length, 1);
  assert.deepEqual(runs[0].cases.map((c) => c.views.map((v) => [v.modality, !!v.reference])), [[
    ["C0", true],
    ["LGE", false],
  ]]);
  const file = await writeRunReport(run);
  assert.equal(file, path.join(run, "report.html"));
  const html = readFileSync(file!, "utf8");
  assert.match(html, /<h2>Cases<\/h2>/);
  assert.match(html, /<a href="viewer\/p1.html">open<\/a>/);
  assert.match(html, /<td>0\.910<\/td>/);
  assert.ok(!/<script/.test(html), "the report page itself has no script");
  const page = readFileSync(path.join(run, "viewer", "p1.html"), "utf8");
  assert.match(page, /Dice C0: LV 0\.910, RV 0\.500/);

  // predict's output folder: the cases it wrote, label values of the files.
  const pout = path.join(run, "pred_out");
  Deno.mkdirSync(pout);
  await nifti(path.join(pout, "p1.nii.gz"), 1);
  const pfile = await writeRunReport(pout, {
    runDir: run,
    labelValues: "file",
    cases: [{
      id: "p1",
      images: { C0: path.join(pre, "p1_C0.nii.gz"), LGE: path.join(pre, "p1_LGE.nii.gz") },
      files: { fused: path.join(pout, "p1.nii.gz") },
    }],
  });
  const phtml = readFileSync(pfile!, "utf8");
  assert.match(phtml, /predictions of/);
  const ppage = readFileSync(path.join(pout, "viewer", "p1.html"), "utf8");
  const data = JSON.parse(ppage.match(/id="viewer-data">(.*?)<\/script>/s)![1]);
  assert.deepEqual(data.views.map((v: { modality: string }) => v.modality), ["C0", "LGE"]);
  assert.deepEqual(data.colours.prediction.I, [0, 500, 600]);
  // A report that cannot be written is a warning, not an error.
  assert.equal(
    await writeRunReport(pout, { runDir: path.join(run, "nope"), cases: [] }),
    null,
  );
});
