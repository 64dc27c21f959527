/**
 * Reading the scan formats users have, behind one reader: `readImage` returns the same
 * `NiftiImage` (voxels in file order, x fastest, and a row-major voxel -> world affine in RAS+ mm)
 * for
 *
 * - NIfTI (.nii, .nii.gz): src/data/nifti.ts;
 * - MetaImage (.mha, and .mhd with its .raw or .zraw data file) and NRRD (.nrrd, and .nhdr with its
 *   data file): @itk-wasm/image-io (ITK's readers compiled to WebAssembly);
 * - DICOM series (a folder holding the files of one series): dcmjs parses each file; the slices are
 *   ordered by their position along the slice normal (ImagePositionPatient projected on the cross
 *   product of the ImageOrientationPatient rows), every slice's RescaleSlope/RescaleIntercept is
 *   applied, and the affine comes from ImageOrientationPatient, PixelSpacing and the positions of
 *   the first and last slices. A missing or repeated slice, mixed orientations or sizes, several
 *   series in one folder and compressed pixel data are errors naming the folder (and the files).
 *
 * ITK, MetaImage, NRRD and DICOM give geometry in LPS (x to the patient's left, y to the back); the
 * affine is turned into RAS+ by negating its first two rows, so a voxel has the same world
 * coordinates whichever format holds it.
 *
 * `writeImage` writes .nii/.nii.gz (src/data/nifti.ts) and .mha/.mhd/.nrrd/.nhdr (through
 * @itk-wasm/image-io) from the same fields. Predictions are always written as NIfTI.
 */
import * as path from "node:path";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
// The format libraries load on first use (most processes, and the data loader's workers, read
// NIfTI only).
const itkIo = () => import("@itk-wasm/image-io");
const dicomLib = async () => (await import("dcmjs")).default.data;
import { det3, linear3, type Mat4, spacingOf, type Vec3 } from "./affine.ts";
import {
  type NiftiDatatype,
  type NiftiImage,
  notifyImageRead,
  readNifti,
  type ReadNiftiOptions,
  type WritableImage,
  writeNifti,
  type WriteNiftiOptions,
} from "./nifti.ts";

export type ImageFormat = "nifti" | "metaimage" | "nrrd" | "dicom";

/** Image file names the readers take (a DICOM series is a folder instead). */
export const IMAGE_FILE_RE = /\.(nii|nii\.gz|mha|mhd|nrrd|nhdr)$/i;

/** The file's name without its image extension (.nii.gz, .nii, .mha, .mhd, .nrrd, .nhdr). */
export function stripImageExt(name: string): string {
  return name.replace(IMAGE_FILE_RE, "");
}

/** The format a file name says (null: not an image name). */
export function formatOfName(p: string): Exclude<ImageFormat, "dicom"> | null {
  const m = IMAGE_FILE_RE.exec(p);
  if (!m) return null;
  const ext = m[1].toLowerCase();
  if (ext.startsWith("nii")) return "nifti";
  return ext === "mha" || ext === "mhd" ? "metaimage" : "nrrd";
}

function fail(p: string, why: string): never {
  throw new Error(`Cannot read ${p}: ${why}`);
}

/** Whether the file starts like a DICOM Part 10 file ("DICM" after the 128-byte preamble). */
function hasDicomMagic(file: string): boolean {
  let fd: Deno.FsFile | undefined;
  try {
    fd = Deno.openSync(file, { read: true });
    const head = new Uint8Array(132);
    let got = 0;
    while (got < 132) {
      const n = fd.readSync(head.subarray(got));
      if (n === null || n === 0) break;
      got += n;
    }
    return got === 132 && head[128] === 0x44 && head[129] === 0x49 && head[130] === 0x43 &&
      head[131] === 0x4d;
  } catch {
    return false;
  } finally {
    fd?.close();
  }
}

/** The DICOM files of a folder (not descending into sub-folders; hidden files skipped). */
export function dicomFilesIn(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.filter((n) => !n.startsWith(".")).sort().map((n) => path.join(dir, n))
    .filter((f) => {
      try {
        return statSync(f).isFile() && hasDicomMagic(f);
      } catch {
        return false;
      }
    });
}

/** Whether `dir` is a folder holding at least one DICOM file (a series to read with readImage). */
export function isDicomSeriesDir(dir: string): boolean {
  try {
    if (!statSync(dir).isDirectory()) return false;
  } catch {
    return false;
  }
  return dicomFilesIn(dir).length > 0;
}

/**
 * Reads an image: a NIfTI, MetaImage or NRRD file, or a folder holding one DICOM series. Errors
 * name the file (or folder) and what is wrong with it.
 */
export async function readImage(p: string, opts: ReadNiftiOptions = {}): Promise<NiftiImage> {
  const fmt = formatOfName(p);
  if (fmt === "nifti") return readNifti(p, opts);
  notifyImageRead(p);
  let isDir = false;
  try {
    isDir = statSync(p).isDirectory();
  } catch {
    fail(p, "file not found");
  }
  let img: NiftiImage;
  if (isDir) img = await readDicomSeries(p);
  else if (fmt) img = await readItk(p, fmt);
  else {
    fail(
      p,
      "unknown image format: expected .nii, .nii.gz, .mha, .mhd, .nrrd or .nhdr, or a folder " +
        "holding a DICOM series",
    );
  }
  checkDims(p, img, opts);
  return img;
}

function checkDims(p: string, img: NiftiImage, opts: ReadNiftiOptions): void {
  if (opts.expectDims === 3 && img.frames > 1) {
    fail(p, `image has 4 dimensions (${img.dims.join("x")}x${img.frames}), expected 3`);
  }
  if (opts.expectDims === 4 && img.frames === 1) {
    fail(p, `image has 3 dimensions (${img.dims.join("x")}), expected 4 (a multi-channel image)`);
  }
}

// --- MetaImage and NRRD through @itk-wasm/image-io -------------------------------------------

const ITK_NOISE =
  /^(Exception while running pipeline:|stdout:|stderr:|exception:|Build module in Debug mode)/;

/**
 * Runs an itk-wasm call with the console captured: ITK's pipelines print their messages (such as
 * "data not read completely") through it, and they belong in the error, not on the terminal.
 */
async function captureItk<T>(
  fn: () => Promise<T>,
): Promise<{ value?: T; error?: unknown; log: string }> {
  const lines: string[] = [];
  const { log, error, warn } = console;
  const keep = (...a: unknown[]) => {
    lines.push(a.map((x) => String(x)).join(" "));
  };
  console.log = console.error = console.warn = keep;
  try {
    return { value: await fn(), log: lines.join("\n") };
  } catch (e) {
    return { error: e, log: lines.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
    console.warn = warn;
  }
}

/** ITK's message out of a captured pipeline log (its stderr lines, without the noise). */
function itkMessage(log: string): string {
  const lines = log.split("\n").map((l) => l.replace(/^(stderr:|stdout:|exception:)\s*/, "").trim())
    .filter((l) => l && !ITK_NOISE.test(l));
  return [...new Set(lines)].join("; ");
}

/** The data file a detached header (.mhd ElementDataFile, .nhdr "data file") names, if any. */
function detachedDataFile(p: string, fmt: "metaimage" | "nrrd"): string | null {
  let text: string;
  try {
    text = new TextDecoder("latin1").decode(readFileSync(p).subarray(0, 65536));
  } catch (e) {
    fail(p, (e as Error).message);
  }
  const re = fmt === "metaimage"
    ? /^\s*ElementDataFile\s*=\s*(.+?)\s*$/m
    : /^\s*data ?file\s*:\s*(.+?)\s*$/m;
  const m = re.exec(text);
  if (!m) return null;
  const v = m[1];
  // LOCAL: data in this file; LIST / %-patterns: several files, left to ITK.
  if (/^(LOCAL|LIST)\b/i.test(v) || v.includes("%") || v.includes(" ")) return null;
  return path.resolve(path.dirname(p), v);
}

const ITK_TYPES: Record<string, NiftiDatatype> = {
  uint8: "uint8",
  int8: "int8",
  uint16: "uint16",
  int16: "int16",
  uint32: "uint32",
  int32: "int32",
  uint64: "uint64",
  int64: "int64",
  float32: "float32",
  float64: "float64",
};

async function readItk(p: string, fmt: "metaimage" | "nrrd"): Promise<NiftiImage> {
  const kind = fmt === "metaimage" ? "MetaImage" : "NRRD";
  const lower = p.toLowerCase();
  if (lower.endsWith(".mhd") || lower.endsWith(".nhdr")) {
    const data = detachedDataFile(p, fmt);
    if (data && !existsSync(data)) {
      fail(p, `the ${kind} header names the data file ${data}, which does not exist`);
    }
  }
  const io = await itkIo();
  const reader = fmt === "metaimage" ? io.metaReadImageNode : io.nrrdReadImageNode;
  const r = await captureItk(() => reader(p));
  if (r.error !== undefined || !r.value) {
    const msg = itkMessage(r.log) ||
      (r.error instanceof Error ? r.error.message : `ITK error ${String(r.error)}`);
    fail(p, `not a readable ${kind} file (${msg})`);
  }
  if (!r.value.couldRead) fail(p, `not a ${kind} file (ITK's ${kind} reader does not take it)`);
  return fromItk(r.value.image as ItkImage, p, fmt);
}

interface ItkImage {
  imageType: { dimension: number; componentType: string; pixelType: string; components: number };
  origin: ArrayLike<number>;
  spacing: ArrayLike<number>;
  direction: ArrayLike<number>;
  size: ArrayLike<number>;
  data: ArrayLike<number | bigint> | null;
}

/** An ITK image (LPS geometry) as a NiftiImage (RAS+ affine). */
function fromItk(im: ItkImage, p: string, format: ImageFormat): NiftiImage {
  const nd = im.imageType.dimension;
  if (nd < 2 || nd > 4) fail(p, `image has ${nd} dimensions; 2, 3 or 4 are supported`);
  const datatype = ITK_TYPES[im.imageType.componentType];
  if (!datatype) {
    fail(
      p,
      `unsupported voxel type ${im.imageType.componentType} (supported: ${
        Object.keys(ITK_TYPES).join(", ")
      })`,
    );
  }
  if (im.imageType.pixelType === "Complex") fail(p, "complex-valued images are not supported");
  const size = Array.from(im.size, Number);
  const dims: Vec3 = [size[0], size[1] ?? 1, nd >= 3 ? size[2] : 1];
  const comps = Math.max(1, im.imageType.components);
  const t4 = nd === 4 ? size[3] : 1;
  if (comps > 1 && t4 > 1) {
    fail(p, `image has ${t4} time points of ${comps} components each; one of the two is supported`);
  }
  const frames = comps > 1 ? comps : t4;
  const n = dims[0] * dims[1] * dims[2];
  const src = im.data;
  if (!src || src.length !== n * frames) {
    fail(p, `holds ${src?.length ?? 0} values, its size ${size.join("x")} needs ${n * frames}`);
  }
  const data = new Float32Array(n * frames);
  if (comps > 1) {
    // Interleaved components (vector pixels) become frames.
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < comps; c++) data[c * n + i] = Number(src[i * comps + c]);
    }
  } else if (typeof src[0] === "bigint") {
    for (let i = 0; i < data.length; i++) data[i] = Number(src[i]);
  } else data.set(src as ArrayLike<number>);
  // Direction: row-major nd x nd; spacing and origin per axis; missing axes are unit.
  const dir = (r: number, c: number) =>
    r < nd && c < nd ? Number(im.direction[r * nd + c]) : r === c ? 1 : 0;
  const sp = (c: number) => (c < nd ? Number(im.spacing[c]) : 1);
  const org = (r: number) => (r < nd ? Number(im.origin[r]) : 0);
  const lps: Mat4 = [];
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 3; c++) lps.push(dir(r, c) * sp(c));
    lps.push(org(r));
  }
  lps.push(0, 0, 0, 1);
  const affine = lpsToRas(lps);
  if (affine.some((v) => !Number.isFinite(v))) fail(p, "the image geometry has non-finite entries");
  if (Math.abs(det3(linear3(affine))) < 1e-12) {
    fail(p, "the image geometry is singular (zero spacing or a degenerate direction matrix)");
  }
  const image: NiftiImage = {
    data,
    dims,
    frames,
    spacing: spacingOf(affine),
    affine,
    header: syntheticHeader(format, datatype, [nd, ...size]),
    path: p,
  };
  if (frames > 1) image.dims4 = [dims[0], dims[1], dims[2], frames];
  return image;
}

/** LPS <-> RAS: negate the first two rows (the same operation both ways). */
export function lpsToRas(m: readonly number[]): Mat4 {
  return m.map((v, i) => (i < 8 ? -v : v));
}

function syntheticHeader(
  format: ImageFormat,
  datatype: NiftiDatatype,
  dim: number[],
  slope = 1,
  inter = 0,
): NiftiImage["header"] {
  return {
    format,
    niftiVersion: 1,
    datatype,
    datatypeCode: 0,
    sclSlope: slope,
    sclInter: inter,
    qformCode: 0,
    sformCode: 0,
    affineSource: "geometry",
    intentCode: 0,
    intentName: "",
    descrip: "",
    unitScale: 1,
    dim,
  };
}

// --- Writing ---------------------------------------------------------------------------------

/**
 * Writes an image by its name: .nii/.nii.gz with src/data/nifti.ts, .mha/.mhd/.nrrd/.nhdr through
 * @itk-wasm/image-io (voxels as float32 unless `datatype` says otherwise; .mhd and .nhdr write their
 * data file beside them; `compress` stores MetaImage data zlib-compressed, .mhd then writes .zraw).
 */
export async function writeImage(
  p: string,
  image: WritableImage,
  opts: WriteNiftiOptions & { compress?: boolean } = {},
): Promise<void> {
  const fmt = formatOfName(p);
  if (fmt === "nifti") return writeNifti(p, image, opts);
  if (!fmt) {
    throw new Error(
      `Cannot write ${p}: name must end in .nii, .nii.gz, .mha, .mhd, .nrrd or .nhdr`,
    );
  }
  const frames = image.frames ?? 1;
  if (frames !== 1) throw new Error(`Cannot write ${p}: only 3-D images are written as ${fmt}`);
  const dims = [image.dims[0], image.dims[1] ?? 1, image.dims[2] ?? 1].map(Number);
  const n = dims[0] * dims[1] * dims[2];
  if (image.data.length !== n) {
    throw new Error(
      `Cannot write ${p}: data has ${image.data.length} voxels, dims ${dims.join("x")} need ${n}`,
    );
  }
  const lps = lpsToRas(Array.from(image.affine, Number));
  const spacing = spacingOf(lps);
  const direction = new Float64Array(9);
  for (let r = 0; r < 3; r++) {
    for (let c = 0; c < 3; c++) direction[r * 3 + c] = lps[r * 4 + c] / spacing[c];
  }
  const datatype = opts.datatype ?? "float32";
  const ctor: Record<string, new (n: number) => ArrayLike<number> & { [i: number]: number }> = {
    uint8: Uint8Array,
    int8: Int8Array,
    uint16: Uint16Array,
    int16: Int16Array,
    uint32: Uint32Array,
    int32: Int32Array,
    float32: Float32Array,
    float64: Float64Array,
  };
  const C = ctor[datatype];
  if (!C) throw new Error(`Cannot write ${p}: datatype ${datatype} is not supported for ${fmt}`);
  const data = new C(n);
  for (let i = 0; i < n; i++) data[i] = image.data[i];
  const itkImage = {
    imageType: { dimension: 3, componentType: datatype, pixelType: "Scalar", components: 1 },
    name: "image",
    origin: [lps[3], lps[7], lps[11]],
    spacing,
    direction,
    size: dims,
    metadata: new Map(),
    data,
  };
  const io = await itkIo();
  const r = await captureItk(() =>
    io.writeImageNode(itkImage as never, p, { useCompression: opts.compress ?? false })
  );
  if (r.error !== undefined) {
    throw new Error(`Cannot write ${p}: ${itkMessage(r.log) || String(r.error)}`);
  }
}

// --- DICOM series through dcmjs --------------------------------------------------------------

/** Uncompressed transfer syntaxes (dcmjs inflates the deflated one). */
const PLAIN_SYNTAXES: Record<string, string> = {
  "1.2.840.10008.1.2": "implicit VR little endian",
  "1.2.840.10008.1.2.1": "explicit VR little endian",
  "1.2.840.10008.1.2.1.99": "deflated explicit VR little endian",
  "1.2.840.10008.1.2.2": "explicit VR big endian",
};

interface Slice {
  file: string;
  rows: number;
  cols: number;
  iop: number[];
  ipp: number[];
  pixelSpacing: number[];
  slope: number;
  inter: number;
  bits: number;
  signed: boolean;
  bigEndian: boolean;
  pixels: ArrayBuffer;
  series: string;
  thickness: number;
  /** Position along the slice normal (mm). */
  pos: number;
}

function num(v: unknown): number {
  const x = Array.isArray(v) ? v[0] : v;
  return typeof x === "number" ? x : typeof x === "string" ? Number(x) : NaN;
}

function nums(v: unknown): number[] {
  if (Array.isArray(v)) return v.map(num);
  if (typeof v === "string") return v.split("\\").map(Number);
  return [];
}

type DicomData = Awaited<ReturnType<typeof dicomLib>>;

function readSlice(dcm: DicomData, dir: string, file: string): Omit<Slice, "pos"> {
  const { DicomMessage, DicomMetaDictionary } = dcm;
  const where = `Cannot read DICOM series ${dir}: ${path.basename(file)}`;
  let parsed: { meta: Record<string, { Value?: unknown[] }>; dict: Record<string, unknown> };
  try {
    const bytes = readFileSync(file);
    parsed = DicomMessage.readFile(
      bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength),
    );
  } catch (e) {
    throw new Error(`${where} is not a readable DICOM file (${(e as Error).message})`);
  }
  const syntax = String(parsed.meta["00020010"]?.Value?.[0] ?? "").replace(/\0/g, "").trim();
  if (!(syntax in PLAIN_SYNTAXES)) {
    throw new Error(
      `${where} stores its pixels with transfer syntax ${
        syntax || "(none)"
      }, a compressed encoding; only uncompressed DICOM (${
        Object.values(PLAIN_SYNTAXES).join(", ")
      }) is read: decompress the series first`,
    );
  }
  // deno-lint-ignore no-explicit-any
  const ds = DicomMetaDictionary.naturalizeDataset(parsed.dict) as any;
  const need = (key: string) => {
    if (ds[key] === undefined || ds[key] === null || ds[key] === "") {
      throw new Error(`${where} has no ${key}, which a slice of a volume needs`);
    }
    return ds[key];
  };
  const frames = num(ds.NumberOfFrames);
  if (Number.isFinite(frames) && frames > 1) {
    throw new Error(
      `${where} is a multi-frame file (${frames} frames); only series of single-frame files are read`,
    );
  }
  const spp = num(ds.SamplesPerPixel ?? 1);
  if (spp !== 1) throw new Error(`${where} has ${spp} samples per pixel (colour); expected 1`);
  const iop = nums(need("ImageOrientationPatient"));
  const ipp = nums(need("ImagePositionPatient"));
  const pixelSpacing = nums(ds.PixelSpacing ?? ds.ImagerPixelSpacing ?? [1, 1]);
  if (iop.length !== 6 || iop.some((v) => !Number.isFinite(v))) {
    throw new Error(
      `${where}: ImageOrientationPatient is ${
        JSON.stringify(ds.ImageOrientationPatient)
      }, expected 6 numbers`,
    );
  }
  if (ipp.length !== 3 || ipp.some((v) => !Number.isFinite(v))) {
    throw new Error(
      `${where}: ImagePositionPatient is ${
        JSON.stringify(ds.ImagePositionPatient)
      }, expected 3 numbers`,
    );
  }
  if (pixelSpacing.length !== 2 || pixelSpacing.some((v) => !(v > 0))) {
    throw new Error(
      `${where}: PixelSpacing is ${JSON.stringify(ds.PixelSpacing)}, expected 2 positive numbers`,
    );
  }
  const bits = num(need("BitsAllocated"));
  if (![8, 16, 32].includes(bits)) {
    throw new Error(`${where}: BitsAllocated is ${bits}; 8, 16 or 32 are read`);
  }
  const pd = need("PixelData");
  const pixels = Array.isArray(pd) ? pd[0] : pd;
  if (!(pixels instanceof ArrayBuffer)) throw new Error(`${where}: PixelData is not readable`);
  let slope = num(ds.RescaleSlope ?? 1), inter = num(ds.RescaleIntercept ?? 0);
  if (!Number.isFinite(slope) || slope === 0) slope = 1;
  if (!Number.isFinite(inter)) inter = 0;
  return {
    file,
    rows: num(need("Rows")),
    cols: num(need("Columns")),
    iop,
    ipp,
    pixelSpacing,
    slope,
    inter,
    bits,
    signed: num(ds.PixelRepresentation ?? 0) === 1,
    bigEndian: syntax === "1.2.840.10008.1.2.2",
    pixels,
    series: String(ds.SeriesInstanceUID ?? ""),
    thickness: num(ds.SpacingBetweenSlices ?? ds.SliceThickness ?? 1),
  };
}

function cross(a: number[], b: number[]): number[] {
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

const dot = (a: number[], b: number[]) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const fmtMm = (v: number) => `${Number(v.toFixed(3))} mm`;

/** Reads the DICOM series in `dir` (see the module doc). */
export async function readDicomSeries(dir: string): Promise<NiftiImage> {
  const dcm = await dicomLib();
  const where = `Cannot read DICOM series ${dir}`;
  const files = dicomFilesIn(dir);
  if (files.length === 0) {
    throw new Error(
      `${where}: the folder holds no DICOM file (files with "DICM" after a 128-byte preamble)`,
    );
  }
  const raw = files.map((f) => readSlice(dcm, dir, f));
  const series = [...new Set(raw.map((s) => s.series))];
  if (series.length > 1) {
    throw new Error(
      `${where}: the folder holds ${series.length} series (SeriesInstanceUID ${
        series.slice(0, 3).join(", ")
      }${series.length > 3 ? ", ..." : ""}); put each series in its own folder`,
    );
  }
  const first = raw[0];
  for (const s of raw) {
    if (s.rows !== first.rows || s.cols !== first.cols) {
      throw new Error(
        `${where}: ${path.basename(s.file)} is ${s.cols}x${s.rows} pixels, ${
          path.basename(first.file)
        } ${first.cols}x${first.rows}; a series' slices must have one size`,
      );
    }
    if (s.iop.some((v, i) => Math.abs(v - first.iop[i]) > 1e-4)) {
      throw new Error(
        `${where}: ${path.basename(s.file)} has ImageOrientationPatient ${s.iop.join("\\")}, ${
          path.basename(first.file)
        } ${first.iop.join("\\")}; a series' slices must share one orientation`,
      );
    }
    if (s.pixelSpacing.some((v, i) => Math.abs(v - first.pixelSpacing[i]) > 1e-4)) {
      throw new Error(
        `${where}: ${path.basename(s.file)} has PixelSpacing ${s.pixelSpacing.join("\\")}, ${
          path.basename(first.file)
        } ${first.pixelSpacing.join("\\")}; a series' slices must share one pixel spacing`,
      );
    }
    if (s.bits !== first.bits || s.signed !== first.signed) {
      throw new Error(
        `${where}: ${path.basename(s.file)} stores ${s.bits}-bit pixels, ${
          path.basename(first.file)
        } ${first.bits}-bit; a series' slices must share one pixel format`,
      );
    }
  }
  const row = first.iop.slice(0, 3), col = first.iop.slice(3, 6);
  const normal = cross(row, col);
  const nn = Math.hypot(...normal);
  if (!(nn > 0.5)) {
    throw new Error(`${where}: ImageOrientationPatient ${first.iop.join("\\")} is degenerate`);
  }
  const slices: Slice[] = raw.map((s) => ({ ...s, pos: dot(s.ipp, normal) / nn }))
    .sort((a, b) => a.pos - b.pos);
  const n = slices.length;
  if (n > 1) {
    const steps = slices.slice(1).map((s, i) => s.pos - slices[i].pos);
    const same = steps.findIndex((d) => d < 1e-3);
    if (same >= 0) {
      throw new Error(
        `${where}: ${path.basename(slices[same].file)} and ${
          path.basename(slices[same + 1].file)
        } lie at the same position (${fmtMm(slices[same].pos)} along the slice normal); ` +
          `a series holds each slice once`,
      );
    }
    const sorted = [...steps].sort((a, b) => a - b);
    const typical = sorted[Math.floor((sorted.length - 1) / 2)];
    const off = steps.findIndex((d) => Math.abs(d - typical) > 0.1 * typical + 1e-3);
    if (off >= 0) {
      const d = steps[off];
      const missing = Math.round(d / typical) - 1;
      throw new Error(
        `${where}: the slices are not evenly spaced: ${fmtMm(d)} between ${
          path.basename(slices[off].file)
        } (at ${fmtMm(slices[off].pos)}) and ${path.basename(slices[off + 1].file)} (at ${
          fmtMm(slices[off + 1].pos)
        }), ${fmtMm(typical)} elsewhere${
          missing >= 1 ? `: ${missing === 1 ? "a slice is" : `${missing} slices are`} missing` : ""
        }`,
      );
    }
  }
  // LPS affine: x along the row direction (columns), y along the column direction (rows), z from
  // the first slice's position to the last one's (this also covers a tilted gantry).
  const [rowSp, colSp] = first.pixelSpacing;
  const a = slices[0].ipp;
  const zStep = n > 1
    ? slices[n - 1].ipp.map((v, i) => (v - a[i]) / (n - 1))
    : normal.map((v) => (v / nn) * (first.thickness > 0 ? first.thickness : 1));
  const lps: Mat4 = [
    row[0] * colSp,
    col[0] * rowSp,
    zStep[0],
    a[0],
    row[1] * colSp,
    col[1] * rowSp,
    zStep[1],
    a[1],
    row[2] * colSp,
    col[2] * rowSp,
    zStep[2],
    a[2],
    0,
    0,
    0,
    1,
  ];
  const affine = lpsToRas(lps);
  const plane = first.rows * first.cols;
  const data = new Float32Array(plane * n);
  const bpv = first.bits / 8;
  for (let k = 0; k < n; k++) {
    const s = slices[k];
    if (s.pixels.byteLength < plane * bpv) {
      throw new Error(
        `${where}: ${path.basename(s.file)} holds ${s.pixels.byteLength} bytes of pixel data, ` +
          `${first.cols}x${first.rows} ${first.bits}-bit pixels need ${plane * bpv}`,
      );
    }
    const dv = new DataView(s.pixels);
    const le = !s.bigEndian;
    const out = data.subarray(k * plane, (k + 1) * plane);
    for (let i = 0; i < plane; i++) {
      const o = i * bpv;
      const v = bpv === 1
        ? (s.signed ? dv.getInt8(o) : dv.getUint8(o))
        : bpv === 2
        ? (s.signed ? dv.getInt16(o, le) : dv.getUint16(o, le))
        : (s.signed ? dv.getInt32(o, le) : dv.getUint32(o, le));
      out[i] = v * s.slope + s.inter;
    }
  }
  const datatype = s0Type(first.bits, first.signed);
  return {
    data,
    dims: [first.cols, first.rows, n],
    frames: 1,
    spacing: spacingOf(affine),
    affine,
    header: syntheticHeader(
      "dicom",
      datatype,
      [3, first.cols, first.rows, n],
      first.slope,
      first.inter,
    ),
    path: dir,
  };
}

function s0Type(bits: number, signed: boolean): NiftiDatatype {
  return `${signed ? "int" : "uint"}${bits}` as NiftiDatatype;
}
