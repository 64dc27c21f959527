import {
  assert,
  assertAlmostEquals,
  assertEquals,
  assertRejects,
  assertThrows,
} from "./testing.ts";
import * as zlib from "node:zlib";
import { fromLinear, maxAbsDiff, mul3, rotation3 } from "./affine.ts";
import {
  decodeNifti,
  encodeNifti,
  type NiftiDatatype,
  readNifti,
  splitFrames,
  writeNifti,
} from "./nifti.ts";

const tmp = await Deno.makeTempDir({ prefix: "comodal_nifti_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));

function obliqueAffine(): number[] {
  const l = mul3(rotation3(0.1, -0.2, 0.3), [1.25, 0, 0, 0, -1.5, 0, 0, 0, 8]);
  return fromLinear(l, [10, -20, 30]);
}

function ramp(n: number, scale = 1, offset = 0): Float32Array {
  return new Float32Array(n).map((_, i) => (i % 97) * scale + offset);
}

Deno.test("nifti: round trip of every datatype through .nii and .nii.gz", async () => {
  const dims = [5, 4, 3];
  const affine = obliqueAffine();
  const cases: [NiftiDatatype, Float32Array][] = [
    ["uint8", ramp(60)],
    ["int8", ramp(60, 1, -50)],
    ["int16", ramp(60, 300, -14000)],
    ["uint16", ramp(60, 600)],
    ["int32", ramp(60, 100000, -4000000)],
    ["uint32", ramp(60, 100000)],
    ["int64", ramp(60, 3, -100)],
    ["uint64", ramp(60, 3)],
    ["float32", ramp(60, 0.37, -3.5)],
    ["float64", ramp(60, 0.37, -3.5)],
  ];
  for (const [datatype, data] of cases) {
    for (const ext of [".nii", ".nii.gz"]) {
      const path = `${tmp}/rt_${datatype}${ext}`;
      await writeNifti(path, { data, dims, affine }, { datatype });
      const img = await readNifti(path);
      assertEquals(img.header.datatype, datatype);
      assertEquals(img.dims, [5, 4, 3]);
      assertEquals(img.frames, 1);
      assertEquals(Array.from(img.data), Array.from(data), `${datatype}${ext}`);
      assert(maxAbsDiff(img.affine, affine) < 1e-5, `affine of ${datatype}${ext}`);
      assertAlmostEquals(img.spacing[0], 1.25, 1e-5);
      assertAlmostEquals(img.spacing[1], 1.5, 1e-5);
      assertAlmostEquals(img.spacing[2], 8, 1e-5);
      assertEquals(img.header.affineSource, "sform");
    }
  }
});

Deno.test("nifti: NIfTI-2 round trip, 4-D, frames and expectDims errors", async () => {
  const data = ramp(2 * 3 * 4 * 3, 0.5);
  const path = `${tmp}/four.nii.gz`;
  await writeNifti(path, { data, dims: [2, 3, 4], frames: 3, affine: obliqueAffine() }, {
    version: 2,
  });
  const img = await readNifti(path);
  assertEquals(img.header.niftiVersion, 2);
  assertEquals(img.dims4, [2, 3, 4, 3]);
  assertEquals(Array.from(img.data), Array.from(data));
  const frames = splitFrames(img);
  assertEquals(frames.length, 3);
  assertEquals(frames[2].data[0], data[48]);
  await assertRejects(
    () => readNifti(path, { expectDims: 3 }),
    Error,
    "header says 4 dimensions (2x3x4x3), expected 3",
  );
  const p3 = `${tmp}/three.nii`;
  await writeNifti(p3, { data: ramp(24), dims: [2, 3, 4], affine: obliqueAffine() });
  await assertRejects(
    () => readNifti(p3, { expectDims: 4 }),
    Error,
    `${p3}: header says 3 dimensions`,
  );
});

Deno.test("nifti: scl_slope/scl_inter applied; labels stored as scaled floats", () => {
  const stored = new Float32Array([0, 1, 2, 3, 4, 5, 6, 7]);
  const bytes = encodeNifti({
    data: stored.map((v) => v * 2.5 + 10),
    dims: [2, 2, 2],
    affine: obliqueAffine(),
  }, {
    datatype: "int16",
    sclSlope: 2.5,
    sclInter: 10,
  });
  const img = decodeNifti(bytes, "scaled.nii");
  assertEquals(Array.from(img.data), Array.from(stored, (v) => v * 2.5 + 10));
  // slope 0 means "no scaling" per the standard
  const raw = encodeNifti({ data: stored, dims: [2, 2, 2], affine: obliqueAffine() }, {
    datatype: "uint8",
    sclSlope: 1,
  });
  new DataView(raw.buffer).setFloat32(112, 0, true);
  new DataView(raw.buffer).setFloat32(116, 7, true);
  assertEquals(Array.from(decodeNifti(raw, "noscale.nii").data), Array.from(stored));
});

Deno.test("nifti: qform used when sform_code is 0, pixdim when both are 0; metres converted", () => {
  const affine = obliqueAffine();
  const bytes = encodeNifti({ data: ramp(8), dims: [2, 2, 2], affine });
  const dv = new DataView(bytes.buffer);
  dv.setInt16(254, 0, true); // sform_code
  for (let i = 0; i < 12; i++) dv.setFloat32(280 + 4 * i, 999, true); // garbage srow
  const q = decodeNifti(bytes, "q.nii");
  assertEquals(q.header.affineSource, "qform");
  assert(maxAbsDiff(q.affine, affine) < 1e-4, `qform affine ${q.affine}`);
  dv.setInt16(252, 0, true);
  const p = decodeNifti(bytes, "p.nii");
  assertEquals(p.header.affineSource, "pixdim");
  assert(maxAbsDiff(p.affine, [1.25, 0, 0, 0, 0, 1.5, 0, 0, 0, 0, 8, 0, 0, 0, 0, 1]) < 1e-5);
  dv.setInt16(252, 1, true);
  bytes[123] = 1; // metres
  const m = decodeNifti(bytes, "m.nii");
  assertAlmostEquals(m.spacing[2], 8000, 1e-2);
});

Deno.test("nifti: big-endian file decodes", () => {
  const le = encodeNifti({ data: ramp(24, 11, -100), dims: [2, 3, 4], affine: obliqueAffine() }, {
    datatype: "int16",
  });
  // Byte-swap every header field we wrote and the voxels.
  const be = le.slice();
  const swap = (off: number, size: number) => be.set(le.slice(off, off + size).reverse(), off);
  swap(0, 4);
  for (let i = 0; i < 8; i++) swap(40 + 2 * i, 2);
  for (const off of [68, 70, 72, 252, 254]) swap(off, 2);
  for (let i = 0; i < 8; i++) swap(76 + 4 * i, 4);
  for (const off of [108, 112, 116, 256, 260, 264, 268, 272, 276]) swap(off, 4);
  for (let i = 0; i < 12; i++) swap(280 + 4 * i, 4);
  for (let i = 0; i < 24; i++) swap(352 + 2 * i, 2);
  const img = decodeNifti(be, "be.nii");
  assertEquals(Array.from(img.data), Array.from(ramp(24, 11, -100)));
  assert(maxAbsDiff(img.affine, obliqueAffine()) < 1e-5);
});

Deno.test("nifti: bad input errors name the file and the problem", async () => {
  const good = encodeNifti({ data: ramp(1000), dims: [10, 10, 10], affine: obliqueAffine() });
  const gz = zlib.gzipSync(good);
  const trunc = `${tmp}/trunc.nii.gz`;
  await Deno.writeFile(trunc, gz.slice(0, gz.length >> 1));
  await assertRejects(
    () => readNifti(trunc),
    Error,
    `Cannot read ${trunc}: corrupt or truncated gzip data`,
  );
  const corrupt = `${tmp}/corrupt.nii.gz`;
  const bad = gz.slice();
  for (let i = 20; i < 60; i++) bad[i] ^= 0x5a;
  await Deno.writeFile(corrupt, bad);
  await assertRejects(
    () => readNifti(corrupt),
    Error,
    `Cannot read ${corrupt}: corrupt or truncated gzip data`,
  );
  const truncRaw = `${tmp}/trunc.nii`;
  await Deno.writeFile(truncRaw, good.slice(0, 2000));
  await assertRejects(
    () => readNifti(truncRaw),
    Error,
    "truncated: header promises 1000 float32 voxels",
  );
  const magic = `${tmp}/magic.nii`;
  const m = good.slice();
  m.set([0x78, 0x79, 0x7a, 0], 344);
  await Deno.writeFile(magic, m);
  await assertRejects(
    () => readNifti(magic),
    Error,
    `Cannot read ${magic}: not a single-file NIfTI image (magic "xyz?`,
  );
  await assertRejects(
    () => readNifti(`${tmp}/nope.nii.gz`),
    Error,
    `Cannot read ${tmp}/nope.nii.gz: file not found`,
  );
  const tiny = `${tmp}/tiny.nii`;
  await Deno.writeFile(tiny, new Uint8Array(10));
  await assertRejects(() => readNifti(tiny), Error, "shorter than a NIfTI header");
  const rgb = good.slice();
  new DataView(rgb.buffer).setInt16(70, 128, true);
  assertThrows(
    () => decodeNifti(rgb, "rgb.nii"),
    Error,
    "Cannot read rgb.nii: unsupported datatype rgb24",
  );
  assertThrows(
    () =>
      encodeNifti({ data: new Float32Array([1, 300]), dims: [2, 1, 1], affine: obliqueAffine() }, {
        datatype: "uint8",
      }, "lab.nii"),
    Error,
    "Cannot write lab.nii as uint8: voxel 1 value 300 is outside [0, 255]",
  );
  assertThrows(
    () =>
      encodeNifti(
        { data: new Float32Array(3), dims: [2, 1, 1], affine: obliqueAffine() },
        {},
        "x.nii",
      ),
    Error,
    "data has 3 voxels, dims 2x1x1 need 2",
  );
});

Deno.test("nifti: a wrong sizeof_hdr names the file, the value read and the expected 348 or 540", async () => {
  const img = { data: ramp(24), dims: [4, 3, 2], affine: obliqueAffine() };
  for (const version of [1, 2] as const) {
    const bytes = encodeNifti(img, { version });
    new DataView(bytes.buffer).setInt32(0, 349, true);
    const file = `${tmp}/sizeof_v${version}.nii.gz`;
    await Deno.writeFile(file, zlib.gzipSync(bytes));
    const expected = version === 1 ? 348 : 540;
    await assertRejects(
      () => readNifti(file),
      Error,
      `Cannot read ${file}: header field sizeof_hdr is 349, expected ${expected} (the magic "n+${version}" says NIfTI-${version}`,
    );
    // A big-endian file's sizeof_hdr is read in its own byte order (value and all).
    const be = encodeNifti(img, { version });
    const dv = new DataView(be.buffer);
    dv.setInt32(0, 7, false);
    if (version === 1) dv.setInt16(40, 3, false);
    else dv.setBigInt64(16, 3n, false);
    assertThrows(() => decodeNifti(be, "be.nii"), Error, `sizeof_hdr is 7, expected ${expected}`);
  }
});

async function niftiTool(args: string[]): Promise<string | null> {
  try {
    const out = await new Deno.Command("nifti_tool", { args, stdout: "piped", stderr: "piped" })
      .output();
    if (!out.success) {
      throw new Error(
        `nifti_tool ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`,
      );
    }
    return new TextDecoder().decode(out.stdout);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

function field(text: string, name: string): number[] {
  const line = text.split("\n").find((l) => l.trim().startsWith(name + " "));
  if (!line) throw new Error(`nifti_tool output has no field ${name}`);
  return line.trim().split(/\s+/).slice(3).map(Number);
}

const HAVE_NIFTI_TOOL = (await niftiTool(["-help"])) !== null;
if (!HAVE_NIFTI_TOOL) {
  console.warn(
    "nifti_test: nifti_tool not found (apt-get install nifti-bin); skipping the cross-check",
  );
}

Deno.test({
  name: "nifti: headers agree with nifti_tool (independent reader and writer)",
  ignore: !HAVE_NIFTI_TOOL,
}, async () => {
  const affine = obliqueAffine();
  for (const version of [1, 2] as const) {
    const path = `${tmp}/x${version}.nii.gz`;
    await writeNifti(path, { data: ramp(24, 3), dims: [2, 3, 4], affine }, {
      datatype: "int16",
      version,
    });
    const nim = (await niftiTool(["-disp_nim", "-infiles", path]))!;
    assertEquals(field(nim, "dim").slice(0, 4), [3, 2, 3, 4]);
    assertEquals(field(nim, "datatype"), [4]);
    assertEquals(field(nim, "qform_code"), [1]);
    assertEquals(field(nim, "sform_code"), [1]);
    const q = field(nim, "qto_xyz"), s = field(nim, "sto_xyz");
    assert(maxAbsDiff(q, affine) < 1e-4, `qto_xyz ${q} vs ${affine}`);
    assert(maxAbsDiff(s, affine) < 1e-4, `sto_xyz ${s} vs ${affine}`);
  }
  // nifti_tool edits a header (slope, intercept, drops the sform); we read what it wrote.
  const src = `${tmp}/edit_src.nii`, dst = `${tmp}/edit_dst.nii`;
  await writeNifti(src, { data: ramp(24), dims: [2, 3, 4], affine }, { datatype: "int16" });
  await niftiTool([
    "-mod_hdr",
    "-mod_field",
    "scl_slope",
    "0.5",
    "-mod_field",
    "scl_inter",
    "-3",
    "-mod_field",
    "sform_code",
    "0",
    "-prefix",
    dst,
    "-infiles",
    src,
  ]);
  const img = await readNifti(dst);
  assertEquals(img.header.affineSource, "qform");
  assert(maxAbsDiff(img.affine, affine) < 1e-4);
  assertEquals(Array.from(img.data), Array.from(ramp(24), (v) => v * 0.5 - 3));
});
