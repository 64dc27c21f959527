/**
 * The bench's plot: comodal's time over PyTorch's per workload, one horizontal bar per table row
 * that has both times (columns "ours ms" and "torch ms"), with the parity line at 1. Written beside
 * the JSON result as bench/results/<name>.svg.
 */
import { escapeXml } from "../src/report/svg_plot.ts";
import type { BenchResult } from "./report.ts";

export interface RatioBar {
  label: string;
  ratio: number;
}

/** The rows' labels (every text cell before the times) and ours / torch ratios; [] without both columns. */
export function ratioBars(r: Pick<BenchResult, "columns" | "rows">): RatioBar[] {
  const ours = r.columns.indexOf("ours ms"), torch = r.columns.indexOf("torch ms");
  if (ours < 0 || torch < 0) return [];
  const bars: RatioBar[] = [];
  for (const row of r.rows) {
    const a = Number(row[ours]), b = Number(row[torch]);
    if (!(a > 0) || !(b > 0)) continue;
    const label = row.slice(0, Math.min(ours, torch)).filter((c) => typeof c === "string").join(
      " ",
    );
    bars.push({ label: label || `row ${bars.length + 1}`, ratio: a / b });
  }
  return bars;
}

/** An SVG bar chart of the ratios (null when the result has no row with both times). */
export function ratioPlotSvg(r: Pick<BenchResult, "columns" | "rows" | "title">): string | null {
  const bars = ratioBars(r);
  if (bars.length === 0) return null;
  const rowH = 22, left = 230, plotW = 360, top = 34, width = left + plotW + 60;
  const height = top + bars.length * rowH + 34;
  const max = Math.max(1.2, ...bars.map((b) => b.ratio)) * 1.05;
  const x = (v: number) => left + (v / max) * plotW;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="8" y="18" font-weight="bold">${
      escapeXml(`${r.title}: comodal time / PyTorch time (below 1 = faster)`)
    }</text>`,
  ];
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    const colour = b.ratio <= 1 ? "#2b8a3e" : "#c92a2a";
    parts.push(
      `<text x="${left - 6}" y="${y + 14}" text-anchor="end">${escapeXml(b.label)}</text>`,
      `<rect class="bar" x="${left}" y="${y + 3}" width="${
        (x(b.ratio) - left).toFixed(1)
      }" height="${rowH - 6}" fill="${colour}"/>`,
      `<text x="${(x(b.ratio) + 4).toFixed(1)}" y="${y + 14}">${b.ratio.toFixed(2)}</text>`,
    );
  });
  const yEnd = top + bars.length * rowH;
  parts.push(
    `<line x1="${x(1).toFixed(1)}" y1="${top - 4}" x2="${x(1).toFixed(1)}" y2="${
      yEnd + 4
    }" stroke="black" stroke-dasharray="4 3"/>`,
    `<text x="${x(1).toFixed(1)}" y="${yEnd + 20}" text-anchor="middle">1 (PyTorch)</text>`,
    `</svg>`,
  );
  return parts.join("\n") + "\n";
}
