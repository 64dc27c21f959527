import assert from "node:assert/strict";
import { join } from "node:path";
import { collectRuns, extractMetrics, renderReport, writeReport } from "./html_report.ts";

// Smallest valid PNG (1x1 grey).
const PNG = Uint8Array.from(
  atob(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNoAAAAggCBd81ytgAAAABJRU5ErkJggg==",
  ),
  (c) => c.charCodeAt(0),
);

function fakeRun(dir: string, m: { ratio: number; method: string }, dice: number) {
  Deno.mkdirSync(join(dir, "images"), { recursive: true });
  Deno.writeTextFileSync(
    join(dir, ".comodal_step.json"),
    JSON.stringify({
      id: `train[ratio=${m.ratio},method=${m.method}]`,
      name: "train",
      kind: "train",
      hash: "h",
      matrix: m,
      params: { labeled: m.ratio, method: m.method },
    }),
  );
  Deno.writeTextFileSync(
    join(dir, "metrics.json"),
    JSON.stringify({
      cases: 2,
      perClass: {
        LV: {
          dice: { mean: dice + 0.05, std: 0, median: 0, n: 2, nonFinite: 0 },
          hd95: { mean: 3 },
          assd: { mean: 1 },
        },
        RV: { dice: { mean: dice - 0.05 }, hd95: { mean: "Infinity" }, assd: { mean: 2 } },
      },
      mean: { dice, hd95: 4.5, assd: 1.5 },
    }),
  );
  const log = Array.from(
    { length: 5 },
    (_, i) =>
      JSON.stringify({ event: "iteration", iteration: i + 1, lr: 1e-3, total: 1 / (i + 1) }),
  );
  log.push(JSON.stringify({ event: "validation", iteration: 5, dice }));
  Deno.writeTextFileSync(join(dir, "log.jsonl"), log.join("\n") + '\n{"cut');
  Deno.writeFileSync(join(dir, "images", "case1_z3.png"), PNG);
}

Deno.test("report: metrics of any summary shape", () => {
  assert.deepEqual(extractMetrics({ mean: { dice: 0.8, hd95: 2, assd: 1 } }).mean, {
    dice: 0.8,
    hd95: 2,
    assd: 1,
  });
  assert.equal(extractMetrics({ test: { summary: { mean: { dice: 0.7 } } } }).mean?.dice, 0.7);
  assert.equal(extractMetrics({ dice: { mean: 0.6 } }).mean?.dice, 0.6);
  assert.equal(
    extractMetrics({ perClass: { LV: { dice: { mean: 0.9 } } }, mean: { dice: 0.9 } }).perClass.LV
      .dice,
    0.9,
  );
  assert.equal(extractMetrics({ nothing: 1 }).mean, undefined);
});

Deno.test("report: tables, Dice-vs-ratio plot per method, training curves and overlays in one HTML file", async () => {
  const root = Deno.makeTempDirSync({ prefix: "report_" });
  const dice: Record<string, number> = {
    "0.1,cmc": 0.62,
    "0.4,cmc": 0.78,
    "0.1,supervised": 0.5,
    "0.4,supervised": 0.7,
  };
  for (const [k, d] of Object.entries(dice)) {
    const [ratio, method] = k.split(",");
    fakeRun(join(root, "train", `ratio=${ratio},method=${method}`), {
      ratio: Number(ratio),
      method,
    }, d);
  }
  const runs = collectRuns([root]);
  assert.equal(runs.length, 4);
  assert.equal(runs[0].log.length, 6, "the cut last line is ignored");
  const html = renderReport(runs, { title: "Labeled ratio" });
  assert.match(html, /<title>Labeled ratio<\/title>/);
  assert.match(html, /Dice against labeled ratio/);
  assert.match(html, /Training loss/);
  assert.match(html, /Validation Dice/);
  assert.equal((html.match(/<svg /g) ?? []).length, 3);
  // One series per method in the ratio plot (two paths in the first SVG).
  const first = html.slice(html.indexOf("<svg"), html.indexOf("</svg>"));
  assert.equal((first.match(/<path /g) ?? []).length, 2);
  assert.match(first, /method=cmc/);
  assert.match(html, /<td>0\.780<\/td>/);
  assert.match(html, /<td>0\.830<\/td>/, "per-class Dice column (LV of 0.78 run)");
  assert.match(html, /src="data:image\/png;base64,iVBORw0KGgo/);
  assert.ok(!/<link|<script|src="http/.test(html), "self-contained");
  const path = await writeReport([root], { outDir: join(root, "out"), title: "t" });
  assert.ok(Deno.statSync(path).size > 1000);
  await assert.rejects(
    writeReport([join(root, "nope")], { outDir: root }),
    /Cannot report on .*nope: folder not found/,
  );
});

Deno.test("report: the HD95 mean says how many cases it leaves out (one mask empty)", () => {
  const root = Deno.makeTempDirSync({ prefix: "report_hd_" });
  fakeRun(join(root, "a"), { ratio: 0.1, method: "cmc" }, 0.6);
  const m = JSON.parse(Deno.readTextFileSync(join(root, "a", "metrics.json")));
  m.nonFinite = { hd95: 2, assd: 2 };
  Deno.writeTextFileSync(join(root, "a", "metrics.json"), JSON.stringify(m));
  const ex = extractMetrics(m);
  assert.equal(ex.mean?.hd95Undefined, 2);
  const html = renderReport(collectRuns([root]), { title: "t" });
  assert.match(html, /4\.50 \(2 undefined, left out\)/);
  fakeRun(join(root, "b"), { ratio: 0.4, method: "cmc" }, 0.7);
  const html2 = renderReport(collectRuns([join(root, "b")]), { title: "t" });
  assert.ok(!/undefined, left out/.test(html2), "nothing said when every case has a distance");
});
