import * as path from "node:path";
import {
  gdcmReadImageNode,
  metaWriteImageNode,
  niftiReadImageNode,
  nrrdWriteImageNode,
} from "@itk-wasm/image-io";
import { apply4, type Mat4 } from "./affine.ts";
import { readNifti, writeNifti } from "./nifti.ts";
import { lpsToRas, readImage, stripImageExt, writeImage } from "./image_io.ts";
import { writeDicomSeries } from "./dicom_testing.ts";
import { assert, assertAlmostEquals, assertEquals, assertRejects } from "./testing.ts";

const DIMS: [number, number, number] = [5, 4, 3];
const N = DIMS[0] * DIMS[1] * DIMS[2];

/** An oblique RAS affine: rotated about two axes, one axis flipped, anisotropic, shifted origin. */
function obliqueAffine(): Mat4 {
  const a = 0.4, b = -0.3;
  const rz = [Math.cos(a), -Math.sin(a), 0, Math.sin(a), Math.cos(a), 0, 0, 0, 1];
  const rx = [1, 0, 0, 0, Math.cos(b), -Math.sin(b), 0, Math.sin(b), Math.cos(b)];
  const r = [0, 1, 2].flatMap((i) =>
    [0, 1, 2].map((j) => rz[i * 3] * rx[j] + rz[i * 3 + 1] * rx[3 + j] + rz[i * 3 + 2] * rx[6 + j])
  );
  const sp = [0.8, 1.25, -2.5]; // the negative step flips the third axis
  return [
    r[0] * sp[0],
    r[1] * sp[1],
    r[2] * sp[2],
    -12.5,
    r[3] * sp[0],
    r[4] * sp[1],
    r[5] * sp[2],
    30.25,
    r[6] * sp[0],
    r[7] * sp[1],
    r[8] * sp[2],
    7,
    0,
    0,
    0,
    1,
  ];
}

function tmp(prefix: string): string {
  return Deno.makeTempDirSync({ prefix: `comodal-io-${prefix}-` });
}

/** Every voxel's value and world position agree between two images of one volume. */
function assertSameVolume(
  a: { data: Float32Array; affine: Mat4; dims: number[] },
  b: typeof a,
  what: string,
) {
  assertEquals(b.dims, a.dims, `${what}: dims`);
  for (let z = 0; z < a.dims[2]; z++) {
    for (let y = 0; y < a.dims[1]; y++) {
      for (let x = 0; x < a.dims[0]; x++) {
        const i = x + a.dims[0] * (y + a.dims[1] * z);
        assertAlmostEquals(b.data[i], a.data[i], 1e-4, `${what}: value at ${x},${y},${z}`);
        const pa = apply4(a.affine, [x, y, z]), pb = apply4(b.affine, [x, y, z]);
        for (let k = 0; k < 3; k++) {
          assertAlmostEquals(pb[k], pa[k], 1e-3, `${what}: world ${"xyz"[k]} of ${x},${y},${z}`);
        }
      }
    }
  }
}

Deno.test("MetaImage and NRRD written by ITK from our NIfTI give the same voxels at the same world positions", async () => {
  const dir = tmp("orient");
  const data = new Float32Array(N).map((_, i) => i * 1.5 - 7);
  const nii = path.join(dir, "vol.nii.gz");
  await writeNifti(nii, { data, dims: DIMS, affine: obliqueAffine() });
  const ref = await readNifti(nii);
  // ITK reads the NIfTI (converting its RAS sform to LPS itself) and writes each format: the
  // comparison does not go through our own LPS conversion on the writing side.
  const itk = await niftiReadImageNode(nii);
  assert(itk.couldRead, "ITK reads our NIfTI");
  const img = itk.image;
  const variants: [string, () => Promise<unknown>][] = [
    ["vol.mha", () => metaWriteImageNode(img, path.join(dir, "vol.mha"))],
    ["vol.mhd", () => metaWriteImageNode(img, path.join(dir, "vol.mhd"), { useCompression: true })],
    ["vol.nrrd", () => nrrdWriteImageNode(img, path.join(dir, "vol.nrrd"))],
    ["vol.nhdr", () => nrrdWriteImageNode(img, path.join(dir, "vol.nhdr"))],
  ];
  for (const [name, write] of variants) {
    await write();
    const back = await readImage(path.join(dir, name));
    assertSameVolume(ref, back, name);
    assertEquals(back.frames, 1);
    assertEquals(back.header.affineSource, "geometry");
  }
  // The compressed .mhd keeps its voxels in a .zraw file beside it.
  assert(
    [...Deno.readDirSync(dir)].some((e) => e.name.endsWith(".zraw")),
    "the compressed MetaImage writes .zraw",
  );
  // The header says LPS: the first axis' direction in the NRRD file is the RAS one negated in x/y.
  const header = Deno.readTextFileSync(path.join(dir, "vol.nhdr"));
  assert(/space: left-posterior-superior/.test(header), header);
  // Our writer gives the same: a round trip through .mha and .nrrd.
  for (const name of ["ours.mha", "ours.nrrd"]) {
    await writeImage(path.join(dir, name), { data, dims: DIMS, affine: ref.affine });
    assertSameVolume(ref, await readImage(path.join(dir, name)), name);
  }
  assertEquals(stripImageExt("case_0000.nii.gz"), "case_0000");
  assertEquals(stripImageExt("Case00.mhd"), "Case00");
});

Deno.test("MetaImage: 4-D and integer voxels", async () => {
  const dir = tmp("4d");
  const vox = new Int16Array(N * 2).map((_, i) => i - 50);
  const image = {
    imageType: { dimension: 4, componentType: "int16", pixelType: "Scalar", components: 1 },
    name: "x",
    origin: [1, 2, 3, 0],
    spacing: [1, 1, 2, 1],
    direction: new Float64Array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]),
    size: [...DIMS, 2],
    metadata: new Map(),
    data: vox,
  };
  const p = path.join(dir, "two.mha");
  await metaWriteImageNode(image as never, p);
  const img = await readImage(p);
  assertEquals(img.frames, 2);
  assertEquals(img.dims, DIMS);
  assertEquals(img.header.datatype, "int16");
  assertEquals(Array.from(img.data.subarray(0, 3)), [-50, -49, -48]);
  // LPS origin (1, 2, 3) is RAS (-1, -2, 3).
  assertEquals([img.affine[3], img.affine[7], img.affine[11]], [-1, -2, 3]);
  await assertRejects(() => readImage(p, { expectDims: 3 }), Error, "expected 3");
});

Deno.test("bad MetaImage/NRRD files: errors name the file and the problem", async () => {
  const dir = tmp("bad");
  const good = path.join(dir, "good.mha");
  await writeImage(good, { data: new Float32Array(N), dims: DIMS, affine: obliqueAffine() });
  const bytes = Deno.readFileSync(good);
  const trunc = path.join(dir, "trunc.mha");
  Deno.writeFileSync(trunc, bytes.slice(0, bytes.length - 40));
  let e = await assertRejects(() => readImage(trunc), Error, trunc);
  assert(/not read completely/.test(e.message), e.message);
  const garbage = path.join(dir, "garbage.nrrd");
  Deno.writeTextFileSync(garbage, "hello\n");
  e = await assertRejects(() => readImage(garbage), Error, garbage);
  assert(/NRRD/.test(e.message), e.message);
  await writeImage(path.join(dir, "hdr.mhd"), {
    data: new Float32Array(N),
    dims: DIMS,
    affine: obliqueAffine(),
  });
  Deno.removeSync(path.join(dir, "hdr.raw"));
  e = await assertRejects(() => readImage(path.join(dir, "hdr.mhd")), Error, "hdr.mhd");
  assert(/names the data file .*hdr\.raw, which does not exist/.test(e.message), e.message);
  await assertRejects(() => readImage(path.join(dir, "nope.mha")), Error, "file not found");
  Deno.writeTextFileSync(path.join(dir, "x.png"), "png");
  await assertRejects(() => readImage(path.join(dir, "x.png")), Error, "unknown image format");
});

/** A DICOM LPS affine: oblique rows and columns, 0.7 x 0.6 mm pixels, 2 mm slices. */
function obliqueLps(): Mat4 {
  const ras = obliqueAffine();
  // Keep the orientation, set scanner-like spacings (columns of unit length times spacing).
  const sp = [0.7, 0.6, 2];
  const out = lpsToRas(ras);
  for (let c = 0; c < 3; c++) {
    const len = Math.hypot(out[c], out[4 + c], out[8 + c]);
    for (let r = 0; r < 3; r++) out[r * 4 + c] *= sp[c] / len;
  }
  // Slices are stacked along the normal of the rows and columns (no gantry tilt).
  const row = [out[0], out[4], out[8]], col = [out[1], out[5], out[9]];
  const nrm = [
    row[1] * col[2] - row[2] * col[1],
    row[2] * col[0] - row[0] * col[2],
    row[0] * col[1] - row[1] * col[0],
  ];
  const len = Math.hypot(...nrm);
  for (let r = 0; r < 3; r++) out[r * 4 + 2] = (nrm[r] / len) * sp[2];
  return out;
}

Deno.test("DICOM series: oblique, shuffled files, rescale applied, geometry as ITK's GDCM reader gives it", async () => {
  const dir = path.join(tmp("dicom"), "series1");
  const stored = new Int16Array(N).map((_, i) => (i * 37) % 200 - 100);
  const lps = obliqueLps();
  const files = writeDicomSeries(dir, { stored, dims: DIMS, lps, slope: 2, intercept: -1024 });
  const img = await readImage(dir);
  assertEquals(img.dims, DIMS);
  assertEquals(img.header.format, "dicom");
  for (let i = 0; i < N; i++) assertEquals(img.data[i], stored[i] * 2 - 1024);
  const ras = lpsToRas(lps);
  assertSameVolume(
    { data: img.data, affine: ras, dims: DIMS },
    img,
    "dicom vs the written geometry",
  );
  assertAlmostEquals(img.spacing[2], 2, 1e-4);
  // ITK's DICOM reader (GDCM) on each slice file agrees on its origin, orientation and values.
  const plane = DIMS[0] * DIMS[1];
  for (const k of [0, 2]) {
    const g = await gdcmReadImageNode(files[k]);
    assert(g.couldRead, "GDCM reads the slice dcmjs wrote");
    const gi = g.image;
    const gd = Array.from(gi.direction as ArrayLike<number>, Number);
    const gRas = lpsToRas([
      gd[0] * gi.spacing[0],
      gd[1] * gi.spacing[1],
      gd[2],
      gi.origin[0],
      gd[3] * gi.spacing[0],
      gd[4] * gi.spacing[1],
      gd[5],
      gi.origin[1],
      gd[6] * gi.spacing[0],
      gd[7] * gi.spacing[1],
      gd[8],
      gi.origin[2],
      0,
      0,
      0,
      1,
    ]);
    for (const [x, y] of [[0, 0], [4, 0], [0, 3], [4, 3]]) {
      const mine = apply4(img.affine, [x, y, k]);
      const theirs = apply4(gRas, [x, y, 0]);
      for (let c = 0; c < 3; c++) {
        assertAlmostEquals(mine[c], theirs[c], 1e-3, `slice ${k} ${x},${y}`);
      }
      assertAlmostEquals(
        Number(gi.data![x + DIMS[0] * y]),
        img.data[k * plane + x + DIMS[0] * y],
        1e-3,
      );
    }
  }
});

Deno.test("DICOM series with a missing slice, two series, or compressed pixels: clear errors", async () => {
  const root = tmp("dicom-bad");
  const stored = new Int16Array(DIMS[0] * DIMS[1] * 5).fill(7);
  const dims: [number, number, number] = [DIMS[0], DIMS[1], 5];
  const gap = path.join(root, "gap");
  const files = writeDicomSeries(gap, { stored, dims, lps: obliqueLps(), skip: [2] });
  const e = await assertRejects(() => readImage(gap), Error, `Cannot read DICOM series ${gap}`);
  assert(/not evenly spaced: 4 mm between/.test(e.message), e.message);
  assert(
    e.message.includes(path.basename(files[1])) && e.message.includes(path.basename(files[3])),
    e.message,
  );
  assert(/2 mm elsewhere: a slice is missing/.test(e.message), e.message);

  const two = path.join(root, "two");
  writeDicomSeries(two, { stored, dims, lps: obliqueLps(), seriesUid: "1.2.3.1" });
  const other = path.join(root, "other");
  const more = writeDicomSeries(other, { stored, dims, lps: obliqueLps(), seriesUid: "1.2.3.2" });
  Deno.copyFileSync(more[0], path.join(two, "other.dcm"));
  await assertRejects(
    () => readImage(two),
    Error,
    "holds 2 series (SeriesInstanceUID 1.2.3.1, 1.2.3.2",
  );

  const empty = path.join(root, "empty");
  Deno.mkdirSync(empty);
  Deno.writeTextFileSync(path.join(empty, "notes.txt"), "no images here");
  await assertRejects(() => readImage(empty), Error, "the folder holds no DICOM file");

  const broken = path.join(root, "broken");
  const bf = writeDicomSeries(broken, { stored, dims, lps: obliqueLps() });
  const b = Deno.readFileSync(bf[0]);
  Deno.writeFileSync(bf[0], b.slice(0, 300));
  const eb = await assertRejects(() => readImage(broken), Error, path.basename(bf[0]));
  assert(/is not a readable DICOM file/.test(eb.message), eb.message);

  const jpeg = path.join(root, "jpeg");
  writeDicomSeries(jpeg, {
    stored,
    dims,
    lps: obliqueLps(),
    transferSyntax: "1.2.840.10008.1.2.4.70",
  });
  await assertRejects(() => readImage(jpeg), Error, "transfer syntax 1.2.840.10008.1.2.4.70");
});
