/**
 * A small line-plot writer: series of (x, y) points to a self-contained SVG string (axes with
 * round tick values, grid, legend, markers). No dependencies; text is escaped.
 */

export interface Series {
  name: string;
  points: [number, number][];
}

export interface PlotOptions {
  title?: string;
  xLabel?: string;
  yLabel?: string;
  width?: number;
  height?: number;
  /** Fixed y range; default: from the data (with Dice-like data kept within [0, 1]). */
  yRange?: [number, number];
  /** Draw a marker at each point (default: when a series has at most 30 points). */
  markers?: boolean;
}

export const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
  "#7f7f7f",
  "#bcbd22",
];

export function escapeXml(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!,
  );
}

/** About `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten). */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi === lo) {
    const d = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= d;
    hi += d;
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const start = Math.ceil(lo / step - 1e-9) * step;
  const out: number[] = [];
  for (let v = start; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function fmt(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/** Renders a line chart. Points with non-finite coordinates are left out. */
export function lineChartSvg(series: Series[], opts: PlotOptions = {}): string {
  const W = opts.width ?? 520;
  const H = opts.height ?? 320;
  const m = { left: 68, right: 16, top: opts.title ? 30 : 12, bottom: 44 };
  // Legend columns as wide as the longest name allows (about 6 px per character at 11 px).
  const longest = Math.min(40, Math.max(0, ...series.map((s) => s.name.length)));
  const legendCols = Math.max(1, Math.min(3, Math.floor((W - 68 - 16) / (longest * 6.2 + 24))));
  const legendRows = series.length > 1 ? Math.ceil(series.length / legendCols) : 0;
  const plotW = W - m.left - m.right;
  const plotH = H - m.top - m.bottom - legendRows * 16;
  const clean = series.map((s) => ({
    name: s.name,
    points: s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)).sort((a, b) =>
      a[0] - b[0]
    ),
  }));
  const xs = clean.flatMap((s) => s.points.map((p) => p[0]));
  const ys = clean.flatMap((s) => s.points.map((p) => p[1]));
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
  );
  out.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  if (opts.title) {
    out.push(
      `<text x="${W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">${
        escapeXml(opts.title)
      }</text>`,
    );
  }
  if (xs.length === 0) {
    out.push(
      `<text x="${W / 2}" y="${H / 2}" text-anchor="middle" fill="#888">no data</text></svg>`,
    );
    return out.join("");
  }
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = opts.yRange ?? [Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - (Math.abs(y0) || 1) * 0.1, y1 + (Math.abs(y1) || 1) * 0.1];
  if (!opts.yRange) {
    const pad = (y1 - y0) * 0.05; // keep points off the frame
    [y0, y1] = [y0 - pad, y1 + pad];
  }
  const xt = niceTicks(x0, x1, 6);
  const yt = niceTicks(y0, y1, 5);
  if (!opts.yRange) {
    y0 = Math.min(y0, yt[0] ?? y0);
    y1 = Math.max(y1, yt[yt.length - 1] ?? y1);
  }
  const sx = (x: number) => m.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y: number) => m.top + plotH - ((y - y0) / (y1 - y0)) * plotH;
  for (const t of yt) {
    if (t < y0 - 1e-12 || t > y1 + 1e-12) continue;
    const y = sy(t).toFixed(1);
    out.push(`<line x1="${m.left}" x2="${m.left + plotW}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`);
    out.push(
      `<text x="${m.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${
        fmt(t)
      }</text>`,
    );
  }
  for (const t of xt) {
    if (t < x0 - 1e-12 || t > x1 + 1e-12) continue;
    const x = sx(t).toFixed(1);
    out.push(`<line x1="${x}" x2="${x}" y1="${m.top}" y2="${m.top + plotH}" stroke="#f0f0f0"/>`);
    out.push(`<text x="${x}" y="${m.top + plotH + 14}" text-anchor="middle">${fmt(t)}</text>`);
  }
  out.push(
    `<rect x="${m.left}" y="${m.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#333"/>`,
  );
  if (opts.xLabel) {
    out.push(
      `<text x="${m.left + plotW / 2}" y="${m.top + plotH + 32}" text-anchor="middle">${
        escapeXml(opts.xLabel)
      }</text>`,
    );
  }
  if (opts.yLabel) {
    const cy = m.top + plotH / 2;
    out.push(
      `<text x="13" y="${cy}" text-anchor="middle" transform="rotate(-90 13 ${cy})">${
        escapeXml(opts.yLabel)
      }</text>`,
    );
  }
  clean.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    if (s.points.length === 0) return;
    const d = s.points.map(([x, y], k) =>
      `${k === 0 ? "M" : "L"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`
    ).join("");
    out.push(
      `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.8"><title>${
        escapeXml(s.name)
      }</title></path>`,
    );
    if (opts.markers ?? s.points.length <= 30) {
      for (const [x, y] of s.points) {
        out.push(
          `<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${color}"><title>${
            escapeXml(`${s.name}: (${fmt(x)}, ${fmt(y)})`)
          }</title></circle>`,
        );
      }
    }
  });
  if (legendRows > 0) {
    const colW = plotW / legendCols;
    clean.forEach((s, i) => {
      const lx = m.left + (i % legendCols) * colW;
      const ly = H - legendRows * 16 + Math.floor(i / legendCols) * 16 + 8;
      out.push(
        `<rect x="${lx}" y="${ly - 5}" width="12" height="3" fill="${
          PALETTE[i % PALETTE.length]
        }"/>`,
      );
      const name = s.name.length > 40 ? s.name.slice(0, 39) + "…" : s.name;
      out.push(`<text x="${lx + 16}" y="${ly}">${escapeXml(name)}</text>`);
    });
  }
  out.push("</svg>");
  return out.join("");
}
