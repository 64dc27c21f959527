/**
 * The 3D viewer in a real browser: headless Chromium (driven by playwright-core) opens a viewer page
 * from file:// with the network cut off, waits for NiiVue to draw, reads the canvas's pixels and
 * checks that each label's colour appears where the label is and nowhere else, that the opacity
 * slider hides the overlay and that the modality switch changes the image.
 *
 * Chromium comes from `make setup` (Debian's chromium package). Where it is missing the test is
 * skipped with a message, except in CI (the CI variable set), where a missing browser fails it.
 * With COMODAL_VIEWER_SCREENSHOT=<file.png> the test also saves a screenshot of the page.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import * as path from "node:path";
import { chromium } from "playwright-core";
import { writeNifti } from "../data/nifti.ts";
import { classColour, refColour, type Rgb } from "../viz/overlay.ts";
import { writeViewerPages } from "./viewer.ts";

/** The Chromium executable: $CHROMIUM_PATH, else the usual install places. */
export function findChromium(): string | null {
  const given = Deno.env.get("CHROMIUM_PATH");
  const candidates = [
    ...(given ? [given] : []),
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
  ];
  return candidates.find((p) => existsSync(p)) ?? null;
}

const browserPath = findChromium();
const inCi = Boolean(Deno.env.get("CI"));
if (!browserPath && !inCi) {
  console.warn(
    "viewer browser test skipped: no Chromium found (looked at $CHROMIUM_PATH, /usr/bin/chromium, " +
      "/usr/bin/chromium-browser, /usr/bin/google-chrome); `make setup` installs Debian's chromium",
  );
}

const N = 32;
const AFFINE = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
/** Blocks in voxels [x0, x1) x [y0, y1), through every slice. */
const PRED_BLOCK = [4, 12, 4, 12]; // class 1
const REF_BLOCK = [20, 28, 20, 28]; // class 2, file value 500

async function writeCase(dir: string) {
  const n = N * N * N;
  const a = new Float32Array(n), b = new Float32Array(n);
  const pred = new Uint8Array(n), ref = new Int16Array(n);
  const inside = (blk: number[], x: number, y: number) =>
    x >= blk[0] && x < blk[1] && y >= blk[2] && y < blk[3];
  for (let z = 0; z < N; z++) {
    for (let y = 0; y < N; y++) {
      for (let x = 0; x < N; x++) {
        const i = x + N * (y + N * z);
        a[i] = 100 + 2 * x; // dark on the left, bright on the right
        b[i] = 200 - 2 * x; // the other way round
        if (inside(PRED_BLOCK, x, y)) pred[i] = 1;
        if (inside(REF_BLOCK, x, y)) ref[i] = 500;
      }
    }
  }
  const f = (name: string) => path.join(dir, name);
  await writeNifti(f("c1_A.nii.gz"), { data: a, dims: [N, N, N], affine: AFFINE });
  await writeNifti(f("c1_B.nii"), { data: b, dims: [N, N, N], affine: AFFINE });
  await writeNifti(f("pred.nii.gz"), { data: pred, dims: [N, N, N], affine: AFFINE }, {
    datatype: "uint8",
  });
  await writeNifti(f("ref.nii.gz"), { data: ref, dims: [N, N, N], affine: AFFINE }, {
    datatype: "int16",
  });
  return {
    id: "c1",
    views: ["A", "B"].map((m) => ({
      modality: m,
      image: { path: f(m === "A" ? "c1_A.nii.gz" : "c1_B.nii") },
      prediction: f("pred.nii.gz"),
      reference: f("ref.nii.gz"),
    })),
  };
}

interface Frame {
  w: number;
  h: number;
  /** RGBA, rows top to bottom. */
  px: Uint8Array;
  /** The axial tile: left, top, width, height in canvas pixels. */
  tile: [number, number, number, number];
}

function near(p: Uint8Array, i: number, c: Rgb, tol: number): boolean {
  return Math.abs(p[i] - c[0]) <= tol && Math.abs(p[i + 1] - c[1]) <= tol &&
    Math.abs(p[i + 2] - c[2]) <= tol;
}

/**
 * Canvas pixel of voxel (x, y) of the axial slice: neurological (left on the left), anterior up; the
 * square slice is fitted into the tile and centred.
 */
function pixelOf(f: Frame, x: number, y: number): [number, number] {
  const [l, t, w, h] = f.tile;
  const s = Math.min(w, h);
  const x0 = l + (w - s) / 2, y0 = t + (h - s) / 2;
  return [Math.floor(x0 + ((x + 0.5) / N) * s), Math.floor(y0 + (1 - (y + 0.5) / N) * s)];
}

function rgbAt(f: Frame, x: number, y: number): number[] {
  const [px, py] = pixelOf(f, x, y);
  const i = 4 * (py * f.w + px);
  return [f.px[i], f.px[i + 1], f.px[i + 2]];
}

/** Canvas pixels of colour `c` and whether all of them lie inside the block's screen rectangle. */
function colourPixels(f: Frame, c: Rgb, blk: number[]): { count: number; outside: number } {
  const [x0, y1] = pixelOf(f, blk[0], blk[2]);
  const [x1, y0] = pixelOf(f, blk[1] - 1, blk[3] - 1);
  const m = Math.ceil(Math.min(f.tile[2], f.tile[3]) / N); // one voxel of margin
  let count = 0, outside = 0;
  for (let y = 0; y < f.h; y++) {
    for (let x = 0; x < f.w; x++) {
      if (!near(f.px, 4 * (y * f.w + x), c, 12)) continue;
      count++;
      if (x < x0 - m || x > x1 + m || y < y0 - m || y > y1 + m) outside++;
    }
  }
  return { count, outside };
}

Deno.test({
  name: "viewer in Chromium from file://: label colours where the labels are, opacity, modalities",
  ignore: !browserPath && !inCi,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    if (!browserPath) {
      throw new Error(
        "no Chromium found in CI ($CHROMIUM_PATH, /usr/bin/chromium); `make setup` installs it",
      );
    }
    const dir = Deno.makeTempDirSync({ prefix: "viewer_browser_" });
    const c = await writeCase(dir);
    const legend = {
      classes: ["background", "LV", "RV"],
      referenceValues: new Map([[0, 0], [200, 1], [500, 2]]),
    };
    const out = path.join(dir, "report");
    const [link] = writeViewerPages(out, [c], legend, { backHref: "../report.html" });
    const browser = await chromium.launch({
      executablePath: browserPath,
      // Software WebGL (SwiftShader): machines without a GPU, as CI's.
      args: ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"],
    });
    try {
      const context = await browser.newContext({
        viewport: { width: 900, height: 900 },
        deviceScaleFactor: 1,
        offline: true,
      });
      const page = await context.newPage();
      const errors: string[] = [];
      const requests: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      page.on("request", (r) => requests.push(r.url()));
      await page.goto(`file://${path.join(out, link.href)}`);
      const ready = (i: string) =>
        page.waitForFunction(
          (v) => {
            const r = document.body.dataset.ready;
            return r === v || r === "error";
          },
          i,
          { timeout: 60_000 },
        );
      await ready("0");
      assert.equal(
        await page.evaluate(() => document.body.dataset.ready),
        "0",
        `viewer failed: ${await page.textContent("#status")} ${errors.join("; ")}`,
      );
      assert.deepEqual(errors, []);
      assert.ok(requests.every((u) => u.startsWith("file://")), requests.join(", "));
      const shot = Deno.env.get("COMODAL_VIEWER_SCREENSHOT");
      if (shot) await page.screenshot({ path: shot });
      // One axial slice over the whole canvas.
      await page.evaluate(() => (globalThis as any).nv.setSliceType(0));
      const frame = async (): Promise<Frame> => {
        const r = await page.evaluate(() => {
          const nv = (globalThis as any).nv;
          nv.drawScene();
          const gl = nv.gl as WebGL2RenderingContext;
          const w = gl.drawingBufferWidth, h = gl.drawingBufferHeight;
          const px = new Uint8Array(w * h * 4);
          gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
          let s = "";
          for (let i = 0; i < px.length; i += 8192) {
            s += String.fromCharCode(...px.subarray(i, i + 8192));
          }
          return { w, h, b64: btoa(s), tile: nv.screenSlices[0].leftTopWidthHeight };
        });
        const raw = Uint8Array.from(atob(r.b64), (ch) => ch.charCodeAt(0));
        // readPixels gives rows bottom to top.
        const px = new Uint8Array(raw.length);
        const row = r.w * 4;
        for (let y = 0; y < r.h; y++) {
          px.set(raw.subarray((r.h - 1 - y) * row, (r.h - y) * row), y * row);
        }
        return { w: r.w, h: r.h, px, tile: r.tile };
      };
      await page.locator("#opacity").fill("1");
      let f = await frame();
      const predC = classColour(1), refC = refColour(2);
      const inPred = rgbAt(f, 8, 8), inRef = rgbAt(f, 24, 24), plain = rgbAt(f, 24, 8);
      assert.ok(near(Uint8Array.from(inPred), 0, predC, 12), `prediction pixel ${inPred}`);
      assert.ok(near(Uint8Array.from(inRef), 0, refC, 12), `reference pixel ${inRef}`);
      assert.ok(Math.max(...plain) - Math.min(...plain) < 8, `image pixel is grey: ${plain}`);
      const p1 = colourPixels(f, predC, PRED_BLOCK), r2 = colourPixels(f, refC, REF_BLOCK);
      const voxelPx = (Math.min(f.tile[2], f.tile[3]) / N) ** 2;
      assert.ok(p1.count > 40 * voxelPx, `prediction colour covers the block (${p1.count} px)`);
      assert.equal(p1.outside, 0, "prediction colour only where the prediction is");
      assert.ok(r2.count > 40 * voxelPx, `reference colour covers the block (${r2.count} px)`);
      assert.equal(r2.outside, 0, "reference colour only where the reference is");
      // The slider hides the overlays; the image stays.
      await page.locator("#opacity").fill("0");
      f = await frame();
      const hidden = rgbAt(f, 8, 8);
      assert.ok(
        Math.max(...hidden) - Math.min(...hidden) < 8,
        `no overlay at opacity 0: ${hidden}`,
      );
      assert.equal(colourPixels(f, predC, PRED_BLOCK).count, 0);
      // The modality switch: B is bright where A is dark.
      const darkA = rgbAt(f, 2, 16)[0];
      await page.check("input[name=modality][value='1']");
      await ready("1");
      await page.evaluate(() => (globalThis as any).nv.setSliceType(0));
      f = await frame();
      assert.ok(rgbAt(f, 2, 16)[0] > darkA + 100, `modality B is bright on the left`);
      await page.locator("#opacity").fill("1");
      f = await frame();
      assert.ok(near(Uint8Array.from(rgbAt(f, 8, 8)), 0, predC, 12), "overlay on modality B");
      assert.deepEqual(errors, []);
    } finally {
      await browser.close();
    }
  },
});
