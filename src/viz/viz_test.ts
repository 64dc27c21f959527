import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert";
import { deflateSync, inflateSync } from "node:zlib";
import { crc32, decodePng, encodePng } from "./png.ts";
import {
  classColour,
  legendRgb,
  montagePng,
  overlayPng,
  pickSlices,
  refColour,
} from "./overlay.ts";
import { textWidth } from "./font.ts";
import assert from "node:assert/strict";
import { escapeXml, lineChartSvg, niceTicks } from "./chart.ts";

function pixel(
  img: { data: Uint8Array; width: number; channels: number },
  x: number,
  y: number,
): number[] {
  const i = (y * img.width + x) * img.channels;
  return Array.from(img.data.subarray(i, i + img.channels));
}

Deno.test("crc32 of a known string", () => {
  assertEquals(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assertEquals(crc32(new TextEncoder().encode("IEND")), 0xae426082);
});

Deno.test("PNG: header, chunk CRCs and inflated IDAT hold the pixels", () => {
  const w = 5, h = 3;
  const data = new Uint8Array(w * h * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 37) & 0xff;
  const png = encodePng({ data, width: w, height: h, channels: 3 });
  assertEquals(Array.from(png.subarray(0, 8)), [137, 80, 78, 71, 13, 10, 26, 10]);
  const dv = new DataView(png.buffer, png.byteOffset);
  assertEquals(dv.getUint32(8), 13);
  assertEquals(new TextDecoder().decode(png.subarray(12, 16)), "IHDR");
  assertEquals([dv.getUint32(16), dv.getUint32(20), png[24], png[25], png[26], png[27], png[28]], [
    5,
    3,
    8,
    2,
    0,
    0,
    0,
  ]);
  assertEquals(dv.getUint32(29), crc32(png, 12, 29));
  // IDAT right after IHDR: inflate and undo the Sub filter by hand.
  const len = dv.getUint32(33);
  assertEquals(new TextDecoder().decode(png.subarray(37, 41)), "IDAT");
  const raw = new Uint8Array(inflateSync(png.subarray(41, 41 + len)));
  assertEquals(raw.length, h * (w * 3 + 1));
  for (let y = 0; y < h; y++) {
    const row = raw.subarray(y * (w * 3 + 1), (y + 1) * (w * 3 + 1));
    assertEquals(row[0], 1);
    const rec = new Uint8Array(w * 3);
    for (let i = 0; i < w * 3; i++) rec[i] = (row[1 + i] + (i >= 3 ? rec[i - 3] : 0)) & 0xff;
    assertEquals(Array.from(rec), Array.from(data.subarray(y * w * 3, (y + 1) * w * 3)));
  }
  assertEquals(new TextDecoder().decode(png.subarray(png.length - 8, png.length - 4)), "IEND");
  const back = decodePng(png);
  assertEquals([back.width, back.height, back.channels], [5, 3, 3]);
  assertEquals(Array.from(back.data), Array.from(data));
});

Deno.test("PNG decoder handles every filter type and rejects corruption", () => {
  const w = 4, h = 5, ch = 1;
  const img = Uint8Array.from({ length: w * h }, (_, i) => (i * 53 + 7) & 0xff);
  // Filter rows with types 0..4 by hand.
  const raw = new Uint8Array(h * (w + 1));
  const paeth = (a: number, b: number, c: number) => {
    const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
  };
  for (let y = 0; y < h; y++) {
    raw[y * (w + 1)] = y;
    for (let x = 0; x < w; x++) {
      const v = img[y * w + x];
      const a = x > 0 ? img[y * w + x - 1] : 0, b = y > 0 ? img[(y - 1) * w + x] : 0;
      const c = x > 0 && y > 0 ? img[(y - 1) * w + x - 1] : 0;
      const pred = [0, a, b, (a + b) >> 1, paeth(a, b, c)][y];
      raw[y * (w + 1) + 1 + x] = (v - pred) & 0xff;
    }
  }
  const good = encodePng({ data: img, width: w, height: h, channels: ch });
  // Replace the IDAT of an encoded file with the hand-filtered stream.
  const idat = new Uint8Array(deflateSync(raw));
  const head = good.subarray(0, 33);
  const chunkOf = (type: string, body: Uint8Array) => {
    const out = new Uint8Array(12 + body.length);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, body.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(body, 8);
    dv.setUint32(8 + body.length, crc32(out, 4, 8 + body.length));
    return out;
  };
  const parts = [head, chunkOf("IDAT", idat), chunkOf("IEND", new Uint8Array(0))];
  const file = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) (file.set(p, o), o += p.length);
  assertEquals(Array.from(decodePng(file).data), Array.from(img));
  const bad = good.slice();
  bad[40] ^= 0xff;
  assertThrows(() => decodePng(bad), /bad CRC/);
  assertThrows(() => decodePng(new Uint8Array(20)), /signature/);
  assertThrows(
    () => encodePng({ data: new Uint8Array(5), width: 2, height: 2, channels: 1 }),
    /5 bytes for 2x2x1/,
  );
});

Deno.test("overlay: greyscale window, solid pred contour, dashed ref contour, interior untouched", () => {
  const w = 12, h = 10;
  const slice = new Float32Array(w * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) slice[y * w + x] = x * 10; // 0..110
  const pred = new Int32Array(w * h);
  for (let y = 2; y < 8; y++) for (let x = 2; x < 8; x++) pred[y * w + x] = 2;
  const ref = new Int32Array(w * h);
  for (let y = 3; y < 9; y++) for (let x = 4; x < 10; x++) ref[y * w + x] = 1;
  const img = decodePng(overlayPng(slice, w, h, { pred, ref, windowing: { min: 0, max: 100 } }));
  assertEquals([img.width, img.height, img.channels], [12, 10, 3]);
  // Background: grey level from the window (x*10 -> x*10/100*255), clamped above 100.
  assertEquals(pixel(img, 0, 0), [0, 0, 0]);
  assertEquals(pixel(img, 11, 0), [255, 255, 255]);
  assertEquals(pixel(img, 1, 5), [26, 26, 26]);
  // Pred contour (label 2) solid: every border pixel of the square in the class colour.
  const c2 = [...classColour(2)];
  for (let x = 2; x < 8; x++) assertEquals(pixel(img, x, 2), c2);
  assertEquals(pixel(img, 2, 4), c2);
  // Not filled: pred interior away from ref contour keeps the image grey.
  assertEquals(pixel(img, 3, 5), [77, 77, 77]);
  // Ref contour (label 1) dashed: the right edge x=9, y=3..8 alternates in pairs.
  const r1 = [...refColour(1)];
  const col = [3, 4, 5, 6, 7, 8].map((y) => pixel(img, 9, y));
  const dashed = col.map((p) => JSON.stringify(p) === JSON.stringify(r1));
  assertEquals(dashed, [3, 4, 5, 6, 7, 8].map((y) => ((9 + y) >> 1) % 2 === 0));
  // Ref interior untouched.
  assertEquals(pixel(img, 6, 6)[0], 153);
});

Deno.test("overlay: scale upsamples; contour width 2 by default at scale 3, 1 on request", () => {
  const slice = new Float32Array(16).fill(1);
  const pred = new Int32Array(16);
  pred[5] =
    pred[6] =
    pred[9] =
    pred[10] =
      1; // 2x2 square in a 4x4 slice
  const img = decodePng(overlayPng(slice, 4, 4, { pred, scale: 3, windowing: { min: 0, max: 2 } }));
  assertEquals([img.width, img.height], [12, 12]);
  const c1 = [...classColour(1)];
  assertEquals(pixel(img, 3, 3), c1);
  assertEquals(pixel(img, 8, 8), c1);
  assertEquals(pixel(img, 5, 5), [128, 128, 128]); // inside the scaled square
  assertEquals(pixel(img, 1, 1), [128, 128, 128]); // outside
  assertEquals(pixel(img, 4, 4), c1); // second pixel of the 2-wide band
  const thin = decodePng(
    overlayPng(slice, 4, 4, { pred, scale: 3, lineWidth: 1, windowing: { min: 0, max: 2 } }),
  );
  assertEquals(pixel(thin, 3, 3), c1);
  assertEquals(pixel(thin, 4, 4), [128, 128, 128]);
  assertThrows(() => overlayPng(slice, 4, 5), /16 values, a 4x5 slice needs 20/);
});

Deno.test("montage: rows per modality, columns per slice, gaps, default slices in the labelled range", () => {
  const dims = [6, 4, 5] as const;
  const n = 6 * 4 * 5;
  const a = new Float32Array(n), b = new Float32Array(n);
  for (let z = 0; z < 6; z++) {
    for (let i = 0; i < 20; i++) (a[z * 20 + i] = z, b[z * 20 + i] = 5 - z);
  }
  const ref = new Int32Array(n);
  for (let z = 2; z <= 4; z++) ref[z * 20 + 7] = 1;
  assertEquals(pickSlices({ image: a, dims, ref }, 3), [2, 3, 4]);
  assertEquals(pickSlices({ image: a, dims }, 1), [3]);
  const img = decodePng(montagePng([
    { image: a, dims, ref, windowing: { min: 0, max: 5 } },
    { image: b, dims, windowing: { min: 0, max: 5 } },
  ], { slices: [1, 5], gap: 2 }));
  assertEquals([img.width, img.height], [2 * 5 + 2, 2 * 4 + 2]);
  assertEquals(pixel(img, 0, 0), [51, 51, 51]); // row 0 slice 1
  assertEquals(pixel(img, 7, 0), [255, 255, 255]); // row 0 slice 5
  assertEquals(pixel(img, 5, 0), [0, 0, 0]); // gap
  assertEquals(pixel(img, 0, 6), [204, 204, 204]); // row 1 slice 1: 5 - 1 = 4
  assertEquals(pixel(img, 7, 6), [0, 0, 0]); // row 1 slice 5: 0
});

Deno.test("line chart: SVG with one polyline per run, escaped text, ticks", () => {
  assertEquals(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assertEquals(niceTicks(-0.03, 0.07, 5), [-0.02, 0, 0.02, 0.04, 0.06]);
  assertEquals(niceTicks(3, 97, 4), [20, 40, 60, 80]);
  const svg = lineChartSvg([
    { name: "train <loss>", x: [0, 1, 2, 3, 4], y: [1, 0.5, NaN, 0.3, 0.2] },
    { name: "val", x: [0, 4], y: [0.9, 0.4], color: "#123456" },
  ], { title: "Loss & Dice", xLabel: "epoch", yLabel: "value", width: 400, height: 300 });
  if (!svg.startsWith("<svg") || !svg.trimEnd().endsWith("</svg>")) {
    throw new Error("not an SVG document");
  }
  assertEquals((svg.match(/<polyline class="series-0"/g) ?? []).length, 2); // split at NaN
  assertEquals((svg.match(/<polyline class="series-1"/g) ?? []).length, 1);
  if (
    !svg.includes("Loss &amp; Dice") || !svg.includes("train &lt;loss&gt;") ||
    !svg.includes('stroke="#123456"')
  ) {
    throw new Error("missing escaped title, legend or colour");
  }
  // First point of series 0 sits at the left/top corner of the plot (x min, y max).
  const pts = svg.match(
    /series-0" fill="none" stroke="[^"]+" stroke-width="2" points="([^"]+)"/,
  )![1].split(" ");
  assertEquals(pts[0], "64.00,36.00"); // left margin 64, top margin 36 with a title
  assertEquals(escapeXml(`a<b>&"'`), "a&lt;b&gt;&amp;&quot;&#39;");
  assertThrows(() => lineChartSvg([{ name: "x", x: [1], y: [] }]), /1 x values and 0 y values/);
});

Deno.test("montage legend: a swatch in each class colour (and the reference tint), names drawn", () => {
  const dims = [2, 8, 8] as const;
  const image = new Float32Array(128).map((_, i) => i);
  const pred = new Int32Array(128), ref = new Int32Array(128);
  pred[9] = 1;
  ref[20] = 2;
  const plain = decodePng(montagePng([{ image, dims, pred, ref }], { count: 1, scale: 8 }));
  const png = decodePng(
    montagePng([{ image, dims, pred, ref }], { count: 1, scale: 8, classes: ["bg", "LV", "RV"] }),
  );
  assert.equal(png.width, plain.width);
  assert.ok(png.height > plain.height + 20, "legend strip below the tiles");
  const legend = legendRgb(["bg", "LV", "RV"], 200, { withReference: true });
  const has = (img: { data: Uint8Array; channels: number }, c: readonly number[]) => {
    for (let i = 0; i < img.data.length; i += img.channels) {
      if (img.data[i] === c[0] && img.data[i + 1] === c[1] && img.data[i + 2] === c[2]) return true;
    }
    return false;
  };
  for (const c of [classColour(1), classColour(2), refColour(2), [235, 235, 235]]) {
    assert.ok(has(legend, c), `legend has ${c}`);
  }
  assert.ok(!has(legend, classColour(3)), "no swatch for a class that is not there");
  assert.equal(textWidth("LV"), 11);
});
