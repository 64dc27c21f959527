/**
 * Slice overlays: an image slice in greyscale with label contours drawn on top, predicted labels as
 * solid lines in one colour per class and reference labels as dashed lines in a lighter tint of the
 * same colour (dashes drawn over the prediction, so both stay visible where they agree). Contours
 * are drawn, never filled: a contour pixel is a labelled pixel with a 4-neighbour of another label
 * (or the image border).
 *
 * Layout: a slice is `height` rows of `width` pixels, row-major (x fastest), drawn with row 0 at
 * the top. A montage takes volumes [D, H, W] and shows slices along D; given the class names, it
 * gets a legend strip below the tiles (a swatch in each class's colour and its name, the same
 * colours and names as the report's 3D viewer).
 *
 * @module
 */
import { encodePng, type RawImage } from "./png.ts";
import { drawText, GLYPH_HEIGHT, textWidth } from "./font.ts";

/** Intensity window mapped to black..white. */
export interface Windowing {
  min: number;
  max: number;
}

/** RGB colour, 0..255 per channel. */
export type Rgb = readonly [number, number, number];

/** Class colours for labels 1, 2, ... (cycled). */
export const DEFAULT_PALETTE: readonly Rgb[] = [
  [230, 25, 75],
  [60, 180, 75],
  [0, 130, 200],
  [255, 225, 25],
  [245, 130, 48],
  [145, 30, 180],
  [70, 240, 240],
  [240, 50, 230],
];

/** Options of overlayPng / overlayRgb. */
export interface OverlayOptions {
  /** Predicted labels for the slice (width*height), drawn as solid contours. */
  pred?: Int32Array;
  /** Reference labels for the slice, drawn as dashed contours in a lighter tint. */
  ref?: Int32Array;
  /** Intensity window; "auto" (default) uses the 0.5 and 99.5 percentiles of the finite values. */
  windowing?: Windowing | "auto";
  /** Integer upscaling factor (nearest neighbour) so thin contours stay readable (default 1). */
  scale?: number;
  /** Contour width in output pixels (default 1, or 2 when scale >= 3). */
  lineWidth?: number;
  palette?: readonly Rgb[];
}

/** Colour of class `label` (>= 1) in the palette. */
export function classColour(label: number, palette: readonly Rgb[] = DEFAULT_PALETTE): Rgb {
  return palette[(label - 1) % palette.length];
}

/** Tint used for reference contours: the class colour mixed halfway with white. */
export function refColour(label: number, palette: readonly Rgb[] = DEFAULT_PALETTE): Rgb {
  const c = classColour(label, palette);
  return [(c[0] + 255) >> 1, (c[1] + 255) >> 1, (c[2] + 255) >> 1];
}

/** Window from the 0.5 and 99.5 percentiles of the finite values (nearest rank). */
export function autoWindow(values: ArrayLike<number>): Windowing {
  const finite: number[] = [];
  // Subsample large inputs: the percentiles only set the display range.
  const step = Math.max(1, Math.floor(values.length / 200000));
  for (let i = 0; i < values.length; i += step) {
    if (Number.isFinite(values[i])) finite.push(values[i]);
  }
  if (finite.length === 0) return { min: 0, max: 1 };
  const s = Float64Array.from(finite).sort();
  const at = (q: number) => s[Math.min(s.length - 1, Math.max(0, Math.round(q * (s.length - 1))))];
  const min = at(0.005), max = at(0.995);
  return max > min ? { min, max } : { min, max: min + 1 };
}

function checkSize(what: string, arr: ArrayLike<number> | undefined, w: number, h: number): void {
  if (arr !== undefined && arr.length !== w * h) {
    throw new Error(
      `Cannot draw overlay: ${what} has ${arr.length} values, a ${w}x${h} slice needs ${w * h}`,
    );
  }
}

/**
 * True where pixel i has a label > 0 and a pixel of another label (or the image border) lies
 * within `t` pixels straight up, down, left or right: an inner band `t` pixels wide.
 */
function contour(labels: Int32Array, w: number, h: number, t = 1): Uint8Array {
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      const l = labels[i];
      if (l <= 0) continue;
      if (x < t || y < t || x >= w - t || y >= h - t) {
        out[i] = 1;
        continue;
      }
      for (let k = 1; k <= t; k++) {
        if (
          labels[i - k] !== l || labels[i + k] !== l || labels[i - k * w] !== l ||
          labels[i + k * w] !== l
        ) {
          out[i] = 1;
          break;
        }
      }
    }
  }
  return out;
}

function upscale<T extends Float32Array | Int32Array>(
  src: T,
  w: number,
  h: number,
  s: number,
  make: (n: number) => T,
): T {
  if (s === 1) return src;
  const W = w * s;
  const out = make(W * h * s);
  for (let y = 0; y < h * s; y++) {
    const sy = Math.floor(y / s) * w;
    for (let x = 0; x < W; x++) out[y * W + x] = src[sy + Math.floor(x / s)];
  }
  return out;
}

/** The overlay as raw RGB pixels (width*scale x height*scale). */
export function overlayRgb(
  slice: Float32Array,
  width: number,
  height: number,
  opts: OverlayOptions = {},
): RawImage {
  checkSize("the image slice", slice, width, height);
  checkSize("pred", opts.pred, width, height);
  checkSize("ref", opts.ref, width, height);
  const s = opts.scale ?? 1;
  if (!(Number.isInteger(s) && s >= 1)) {
    throw new Error(`Cannot draw overlay: scale ${s} must be an integer >= 1`);
  }
  const palette = opts.palette ?? DEFAULT_PALETTE;
  const lw = opts.lineWidth ?? (s >= 3 ? 2 : 1);
  if (!(Number.isInteger(lw) && lw >= 1)) {
    throw new Error(`Cannot draw overlay: lineWidth ${lw} must be an integer >= 1`);
  }
  const win = opts.windowing === undefined || opts.windowing === "auto"
    ? autoWindow(slice)
    : opts.windowing;
  const W = width * s, H = height * s;
  const img = upscale(slice, width, height, s, (n) => new Float32Array(n));
  const data = new Uint8Array(W * H * 3);
  const range = win.max - win.min || 1;
  for (let i = 0; i < W * H; i++) {
    const v = img[i];
    const g = Number.isFinite(v)
      ? Math.round(Math.min(1, Math.max(0, (v - win.min) / range)) * 255)
      : 0;
    data[3 * i] = data[3 * i + 1] = data[3 * i + 2] = g;
  }
  if (opts.pred) {
    const lab = upscale(opts.pred, width, height, s, (n) => new Int32Array(n));
    const c = contour(lab, W, H, lw);
    for (let i = 0; i < W * H; i++) {
      if (!c[i]) continue;
      const col = classColour(lab[i], palette);
      data[3 * i] = col[0];
      data[3 * i + 1] = col[1];
      data[3 * i + 2] = col[2];
    }
  }
  if (opts.ref) {
    const lab = upscale(opts.ref, width, height, s, (n) => new Int32Array(n));
    const c = contour(lab, W, H, lw);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const i = y * W + x;
        if (!c[i] || Math.floor((x + y) / (2 * lw)) % 2 !== 0) continue; // dashes of 2 * lineWidth pixels
        const col = refColour(lab[i], palette);
        data[3 * i] = col[0];
        data[3 * i + 1] = col[1];
        data[3 * i + 2] = col[2];
      }
    }
  }
  return { data, width: W, height: H, channels: 3 };
}

/** A PNG of an image slice with predicted (solid) and reference (dashed) label contours. */
export function overlayPng(
  slice: Float32Array,
  width: number,
  height: number,
  opts: OverlayOptions = {},
): Uint8Array {
  return encodePng(overlayRgb(slice, width, height, opts));
}

/** One row of a montage: a volume [D, H, W] (one modality) with optional labels on its grid. */
export interface MontageRow {
  image: Float32Array;
  dims: readonly [number, number, number];
  pred?: Int32Array;
  ref?: Int32Array;
  /** Default: "auto" over the whole volume, so all slices of a row share one window. */
  windowing?: Windowing | "auto";
}

/** Options of montagePng. */
export interface MontageOptions {
  /** Slice indices along D, used for every row (clamped to each row's D). */
  slices?: readonly number[];
  /** How many slices to pick when `slices` is not given (default 3). */
  count?: number;
  scale?: number;
  lineWidth?: number;
  /** Black pixels between tiles (default 2). */
  gap?: number;
  palette?: readonly Rgb[];
  /** Class names in index order, background first: draws the legend below the tiles. */
  classes?: readonly string[];
}

/**
 * A legend strip `width` pixels wide: per foreground class a solid swatch (prediction), a dashed
 * one in the tint (reference, when `withReference`) and the class name, wrapped onto lines.
 */
export function legendRgb(
  classes: readonly string[],
  width: number,
  opts: { palette?: readonly Rgb[]; withReference?: boolean; scale?: number } = {},
): RawImage {
  const palette = opts.palette ?? DEFAULT_PALETTE;
  const fs = opts.scale ?? 1;
  const sw = 7 * fs, pad = 4 * fs, lineH = GLYPH_HEIGHT * fs + 4 * fs;
  const key = opts.withReference ? "solid: prediction, dashed: reference" : "prediction";
  const items = classes.slice(1).map((name, i) => ({
    k: i + 1,
    name,
    w: sw + (opts.withReference ? sw + fs : 0) + 2 * fs + textWidth(name, fs),
  }));
  // Line layout: items left to right, a new line when the next one does not fit.
  const placed: { k: number; name: string; x: number; line: number }[] = [];
  let x = pad, line = 0;
  for (const it of items) {
    if (x > pad && x + it.w > width - pad) {
      x = pad;
      line++;
    }
    placed.push({ k: it.k, name: it.name, x, line });
    x += it.w + 3 * pad;
  }
  const keyLine = line + 1;
  const H = (keyLine + 1) * lineH + pad;
  const data = new Uint8Array(width * H * 3);
  const rect = (x0: number, y0: number, w: number, h: number, c: Rgb, dashed = false) => {
    for (let y = y0; y < y0 + h && y < H; y++) {
      for (let xx = x0; xx < x0 + w && xx < width; xx++) {
        if (dashed && Math.floor((xx - x0 + y - y0) / (2 * fs)) % 2 !== 0) continue;
        const i = 3 * (y * width + xx);
        data[i] = c[0], data[i + 1] = c[1], data[i + 2] = c[2];
      }
    }
  };
  const white: Rgb = [235, 235, 235];
  for (const p of placed) {
    const y0 = pad + p.line * lineH;
    let xx = p.x;
    rect(xx, y0, sw, sw, classColour(p.k, palette));
    xx += sw + fs;
    if (opts.withReference) {
      rect(xx, y0, sw, sw, refColour(p.k, palette), true);
      xx += sw + fs;
    }
    drawText(data, width, H, xx + fs, y0, p.name, white, fs);
  }
  drawText(data, width, H, pad, pad + keyLine * lineH, key, [160, 160, 160], fs);
  return { data, width, height: H, channels: 3 };
}

/**
 * Default slices for a row: `count` indices spread evenly over the slices that hold reference (or
 * else predicted) labels, or over the whole volume when there are none.
 */
export function pickSlices(row: MontageRow, count: number): number[] {
  const [D, H, W] = row.dims;
  const lab = row.ref ?? row.pred;
  let lo = 0, hi = D - 1;
  if (lab) {
    let first = -1, last = -1;
    for (let z = 0; z < D; z++) {
      const base = z * H * W;
      for (let i = 0; i < H * W; i++) {
        if (lab[base + i] > 0) {
          if (first < 0) first = z;
          last = z;
          break;
        }
      }
    }
    if (first >= 0) {
      lo = first;
      hi = last;
    }
  }
  const n = Math.max(1, Math.min(count, hi - lo + 1));
  const len = hi - lo + 1;
  return Array.from({ length: n }, (_, i) => lo + Math.floor(((i + 0.5) * len) / n));
}

/** A PNG grid: one row per entry of `rows` (modality), one column per slice. */
export function montagePng(rows: readonly MontageRow[], opts: MontageOptions = {}): Uint8Array {
  if (rows.length === 0) throw new Error("Cannot draw montage: no rows");
  const s = opts.scale ?? 1;
  const gap = opts.gap ?? 2;
  const tiles = rows.map((row, r) => {
    const [D, H, W] = row.dims;
    const n = D * H * W;
    if (row.image.length !== n) {
      throw new Error(
        `Cannot draw montage: row ${r} image has ${row.image.length} values, dims ${
          row.dims.join("x")
        } need ${n}`,
      );
    }
    const win = row.windowing === undefined || row.windowing === "auto"
      ? autoWindow(row.image)
      : row.windowing;
    const slices = (opts.slices ?? pickSlices(row, opts.count ?? 3)).map((z) =>
      Math.min(D - 1, Math.max(0, Math.round(z)))
    );
    return slices.map((z) => {
      const off = z * H * W;
      return overlayRgb(row.image.subarray(off, off + H * W), W, H, {
        windowing: win,
        scale: s,
        lineWidth: opts.lineWidth,
        palette: opts.palette,
        pred: row.pred?.subarray(off, off + H * W),
        ref: row.ref?.subarray(off, off + H * W),
      });
    });
  });
  const cols = Math.max(...tiles.map((t) => t.length));
  const tileW = Math.max(...tiles.flat().map((t) => t.width));
  const tileH = Math.max(...tiles.flat().map((t) => t.height));
  const W = cols * tileW + (cols - 1) * gap;
  const tilesH = rows.length * tileH + (rows.length - 1) * gap;
  const legend = opts.classes && opts.classes.length > 1
    ? legendRgb(opts.classes, W, {
      palette: opts.palette,
      withReference: rows.some((r) => r.ref),
      scale: W >= 360 ? 2 : 1,
    })
    : null;
  const H = tilesH + (legend ? gap + legend.height : 0);
  const data = new Uint8Array(W * H * 3);
  if (legend) data.set(legend.data, (tilesH + gap) * W * 3);
  tiles.forEach((row, r) => {
    row.forEach((t, c) => {
      const x0 = c * (tileW + gap), y0 = r * (tileH + gap);
      for (let y = 0; y < t.height; y++) {
        data.set(t.data.subarray(y * t.width * 3, (y + 1) * t.width * 3), ((y0 + y) * W + x0) * 3);
      }
    });
  });
  return encodePng({ data, width: W, height: H, channels: 3 });
}
