/**
 * A small SVG line chart (no dependencies): axes with "nice" ticks, one polyline per series with
 * gaps at non-finite values, a legend, title and axis labels. Text is XML-escaped.
 *
 * @module
 */

/** One line of the chart. */
export interface ChartSeries {
  name: string;
  x: readonly number[];
  y: readonly number[];
  /** CSS colour; default from a fixed palette. */
  color?: string;
  /** Draw a dot at each point (default: only when the series has a single point). */
  markers?: boolean;
}

/** Options of lineChartSvg. */
export interface LineChartOptions {
  title?: string;
  xLabel?: string;
  yLabel?: string;
  width?: number;
  height?: number;
  /** Fixed y range; default from the data. */
  yMin?: number;
  yMax?: number;
}

const COLOURS = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
];

/** Escapes text for SVG/XML content and attribute values. */
export function escapeXml(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!,
  );
}

/** About `count` round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!(Number.isFinite(lo) && Number.isFinite(hi))) return [];
  if (hi === lo) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  const step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  const out: number[] = [];
  const first = Math.ceil(lo / step - 1e-9), last = Math.floor(hi / step + 1e-9);
  for (let k = first; k <= last; k++) out.push(Number((k * step).toPrecision(12)));
  return out;
}

function fmt(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

/** An SVG document with one line per series. */
export function lineChartSvg(series: readonly ChartSeries[], opts: LineChartOptions = {}): string {
  const width = opts.width ?? 640, height = opts.height ?? 400;
  for (const s of series) {
    if (s.x.length !== s.y.length) {
      throw new Error(
        `Cannot draw chart: series "${s.name}" has ${s.x.length} x values and ${s.y.length} y values`,
      );
    }
  }
  const pts = series.flatMap((s) => s.x.map((x, i) => [x, s.y[i]] as const)).filter(([x, y]) =>
    Number.isFinite(x) && Number.isFinite(y)
  );
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  let y0 = opts.yMin ?? Math.min(...pts.map((p) => p[1])),
    y1 = opts.yMax ?? Math.max(...pts.map((p) => p[1]));
  if (pts.length === 0) [x0, x1, y0, y1] = [0, 1, opts.yMin ?? 0, opts.yMax ?? 1];
  if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
  if (y1 === y0) [y0, y1] = [y0 - 1, y1 + 1];
  const m = { left: 64, right: 16, top: opts.title ? 36 : 16, bottom: 48 };
  const legendH = series.length > 0 ? 18 * series.length + 8 : 0;
  const pw = width - m.left - m.right, ph = height - m.top - m.bottom;
  const sx = (x: number) => m.left + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => m.top + ph - ((y - y0) / (y1 - y0)) * ph;
  const r = (v: number) => v.toFixed(2);
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  if (opts.title) {
    out.push(
      `<text x="${r(width / 2)}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${
        escapeXml(opts.title)
      }</text>`,
    );
  }
  out.push(`<g stroke="#ccc" stroke-width="1">`);
  const xt = niceTicks(x0, x1, 6), yt = niceTicks(y0, y1, 5);
  for (const t of yt) {
    out.push(`<line x1="${m.left}" x2="${m.left + pw}" y1="${r(sy(t))}" y2="${r(sy(t))}"/>`);
  }
  out.push(`</g>`);
  out.push(
    `<g stroke="black" stroke-width="1"><line x1="${m.left}" y1="${m.top + ph}" x2="${
      m.left + pw
    }" y2="${m.top + ph}"/>` +
      `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}"/></g>`,
  );
  for (const t of xt) {
    out.push(`<text x="${r(sx(t))}" y="${m.top + ph + 16}" text-anchor="middle">${fmt(t)}</text>`);
  }
  for (const t of yt) {
    out.push(`<text x="${m.left - 6}" y="${r(sy(t) + 4)}" text-anchor="end">${fmt(t)}</text>`);
  }
  if (opts.xLabel) {
    out.push(
      `<text x="${r(m.left + pw / 2)}" y="${height - 10}" text-anchor="middle">${
        escapeXml(opts.xLabel)
      }</text>`,
    );
  }
  if (opts.yLabel) {
    out.push(
      `<text x="14" y="${r(m.top + ph / 2)}" text-anchor="middle" transform="rotate(-90 14 ${
        r(m.top + ph / 2)
      })">${escapeXml(opts.yLabel)}</text>`,
    );
  }
  series.forEach((s, si) => {
    const colour = escapeXml(s.color ?? COLOURS[si % COLOURS.length]);
    // Split at non-finite values so gaps stay gaps.
    const runs: string[][] = [[]];
    s.x.forEach((x, i) => {
      const y = s.y[i];
      if (Number.isFinite(x) && Number.isFinite(y)) {
        runs[runs.length - 1].push(`${r(sx(x))},${r(sy(y))}`);
      } else if (runs[runs.length - 1].length > 0) runs.push([]);
    });
    for (const run of runs) {
      if (run.length > 1) {
        out.push(
          `<polyline class="series-${si}" fill="none" stroke="${colour}" stroke-width="2" points="${
            run.join(" ")
          }"/>`,
        );
      }
    }
    const finiteCount = runs.reduce((a, run) => a + run.length, 0);
    if (s.markers ?? finiteCount === 1) {
      for (const run of runs) {
        for (const p of run) {
          const [cx, cy] = p.split(",");
          out.push(`<circle class="series-${si}" cx="${cx}" cy="${cy}" r="3" fill="${colour}"/>`);
        }
      }
    }
  });
  if (legendH > 0) {
    const lx = m.left + pw - 150, ly = m.top + 8;
    out.push(
      `<g class="legend"><rect x="${lx - 6}" y="${
        ly - 4
      }" width="150" height="${legendH}" fill="white" fill-opacity="0.8" stroke="#999"/>`,
    );
    series.forEach((s, si) => {
      const colour = escapeXml(s.color ?? COLOURS[si % COLOURS.length]);
      const y = ly + 10 + si * 18;
      out.push(
        `<line x1="${lx}" x2="${
          lx + 20
        }" y1="${y}" y2="${y}" stroke="${colour}" stroke-width="2"/>`,
      );
      out.push(`<text x="${lx + 26}" y="${y + 4}">${escapeXml(s.name)}</text>`);
    });
    out.push(`</g>`);
  }
  out.push(`</svg>`);
  return out.join("\n");
}
