import assert from "node:assert/strict";
import { escapeXml, lineChartSvg, niceTicks } from "./svg_plot.ts";

Deno.test("svg: nice ticks are round and cover the range", () => {
  assert.deepEqual(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(niceTicks(3, 97, 5), [20, 40, 60, 80]);
  assert.deepEqual(niceTicks(0.1, 1.0, 6), [0.2, 0.4, 0.6, 0.8, 1]);
  assert.equal(niceTicks(5, 5).length > 0, true);
});

Deno.test("svg: line chart maps points into the plot box, one path per series, escaped text", () => {
  const svg = lineChartSvg(
    [
      { name: "cmc <ours>", points: [[0.1, 0.5], [0.4, 0.7], [1, 0.9]] },
      { name: "supervised", points: [[0.1, 0.3], [1, 0.8], [0.4, NaN]] },
    ],
    { title: "Dice & ratio", xLabel: "labeled ratio", yLabel: "Dice", width: 400, height: 300 },
  );
  assert.ok(svg.startsWith("<svg") && svg.endsWith("</svg>"));
  assert.equal((svg.match(/<path /g) ?? []).length, 2);
  assert.ok(svg.includes("Dice &amp; ratio"));
  assert.ok(svg.includes("cmc &lt;ours&gt;"));
  assert.equal((svg.match(/<circle /g) ?? []).length, 5, "the NaN point is left out");
  // x = 0.1 is the left edge (68 px), x = 1 the right edge (400 - 16 px).
  const d = /<path d="M([\d.]+),([\d.]+)L[\d.]+,[\d.]+L([\d.]+),([\d.]+)"/.exec(svg)!;
  assert.equal(Number(d[1]), 68);
  assert.equal(Number(d[3]), 384);
  assert.ok(Number(d[4]) < Number(d[2]), "higher Dice is drawn higher");
  assert.match(lineChartSvg([], { title: "x" }), /no data/);
  assert.equal(escapeXml(`a<b>"c"&'`), "a&lt;b&gt;&quot;c&quot;&amp;&#39;");
});
