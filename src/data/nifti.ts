/**
 * NIfTI-1 and NIfTI-2 input and output (.nii and .nii.gz).
 *
 * Reading parses the header with nifti-reader-js, inflates with node:zlib, decodes every common
 * datatype (either byte order) into a Float32Array with scl_slope/scl_inter applied, and builds the
 * voxel-to-world affine (RAS+ mm) from the sform when sform_code > 0 (and the matrix is not singular),
 * else the qform, else pixdim.
 * Writing is our own: a NIfTI-1 (or NIfTI-2) header with both sform and qform set from the affine,
 * gzip-compressed when the name ends in .gz, written to a temporary file and renamed into place.
 */
import * as zlib from "node:zlib";
import * as nifti from "nifti-reader-js";
import {
  det3,
  fromLinear,
  linear3,
  type Mat3,
  type Mat4,
  orthogonalize3,
  spacingOf,
  type Vec3,
} from "./affine.ts";
import { writeFileAtomic } from "../util/atomic_write.ts";

export { writeFileAtomic };

export type NiftiDatatype =
  | "uint8"
  | "int8"
  | "int16"
  | "uint16"
  | "int32"
  | "uint32"
  | "int64"
  | "uint64"
  | "float32"
  | "float64";

const DATATYPE_CODES: Record<NiftiDatatype, number> = {
  uint8: 2,
  int16: 4,
  int32: 8,
  float32: 16,
  float64: 64,
  int8: 256,
  uint16: 512,
  uint32: 768,
  int64: 1024,
  uint64: 1280,
};
const DATATYPE_BYTES: Record<NiftiDatatype, number> = {
  uint8: 1,
  int8: 1,
  int16: 2,
  uint16: 2,
  int32: 4,
  uint32: 4,
  int64: 8,
  uint64: 8,
  float32: 4,
  float64: 8,
};
const CODE_NAMES: Record<number, string> = {
  1: "binary",
  32: "complex64",
  128: "rgb24",
  1536: "float128",
  1792: "complex128",
  2048: "complex256",
  2304: "rgba32",
};

/** Header facts kept beside the voxels. */
export interface NiftiHeaderInfo {
  /** The file's format (absent: NIfTI); the other fields describe a NIfTI file only. */
  format?: "nifti" | "metaimage" | "nrrd" | "dicom";
  niftiVersion: 1 | 2;
  /** Datatype stored in the file (before scaling). */
  datatype: NiftiDatatype;
  datatypeCode: number;
  sclSlope: number;
  sclInter: number;
  qformCode: number;
  sformCode: number;
  /** Which transform the affine came from ("geometry": another format's origin/spacing/direction). */
  affineSource: "sform" | "qform" | "pixdim" | "geometry";
  intentCode: number;
  intentName: string;
  descrip: string;
  /** Spatial unit multiplier applied to reach millimetres (1 for mm or unknown). */
  unitScale: number;
  /** The raw dim[0..7] of the header. */
  dim: number[];
}

/** A decoded NIfTI image. Voxels are in file order: x fastest, then y, z, then frames. */
export interface NiftiImage {
  data: Float32Array;
  /** Spatial size [x, y, z] (missing trailing dimensions are 1). */
  dims: Vec3;
  /** Number of frames/channels along the 4th dimension (1 for a 3-D image). */
  frames: number;
  /** Present when the image has more than one frame: [x, y, z, t]. */
  dims4?: [number, number, number, number];
  /** Voxel spacing in mm (column lengths of the affine). */
  spacing: Vec3;
  /** Row-major 4x4 voxel -> world (RAS+, mm) affine. */
  affine: Mat4;
  header: NiftiHeaderInfo;
  path?: string;
}

export interface ReadNiftiOptions {
  /** 3: a 4-D file with more than one frame is an error; 4: a file with one frame is an error. */
  expectDims?: 3 | 4;
}

function fail(path: string, why: string): never {
  throw new Error(`Cannot read ${path}: ${why}`);
}

function toArrayBuffer(u8: Uint8Array): ArrayBuffer {
  if (
    u8.byteOffset === 0 && u8.byteLength === u8.buffer.byteLength &&
    u8.buffer instanceof ArrayBuffer
  ) {
    return u8.buffer;
  }
  return u8.slice().buffer as ArrayBuffer;
}

/** Inflates .gz content (detected by its magic bytes) with a message naming the file on failure. */
export function inflateIfGzip(bytes: Uint8Array, path: string): Uint8Array {
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      return zlib.gunzipSync(bytes);
    } catch (e) {
      fail(path, `corrupt or truncated gzip data (${(e as Error).message})`);
    }
  }
  return bytes;
}

/** Parses NIfTI bytes (already read from disk). `path` is only used in messages. */
export function decodeNifti(
  fileBytes: Uint8Array,
  path: string,
  opts: ReadNiftiOptions = {},
): NiftiImage {
  const bytes = inflateIfGzip(fileBytes, path);
  if (bytes.length < 348) {
    fail(path, `file is ${bytes.length} bytes, shorter than a NIfTI header (348)`);
  }
  const buf = toArrayBuffer(bytes);
  let version: 1 | 2;
  if (nifti.isNIFTI1(buf)) version = 1;
  else if (nifti.isNIFTI2(buf)) version = 2;
  else {
    const magic1 = String.fromCharCode(...bytes.subarray(344, 348)).replace(/[^\x20-\x7e]/g, "?");
    const magic2 = String.fromCharCode(...bytes.subarray(4, 8)).replace(/[^\x20-\x7e]/g, "?");
    fail(
      path,
      `not a single-file NIfTI image (magic "${magic1}" at byte 344, "${magic2}" at byte 4; expected "n+1" or "n+2")`,
    );
  }
  // sizeof_hdr (bytes 0-3) must be 348 (NIfTI-1) or 540 (NIfTI-2), in the file's byte order
  // (the one in which dim[0] reads 1..7).
  const expectedSize = version === 1 ? 348 : 540;
  const dv = new DataView(buf);
  const dimAt = version === 1 ? 40 : 16;
  const plausible = (le: boolean) => {
    const d = version === 1 ? dv.getInt16(dimAt, le) : Number(dv.getBigInt64(dimAt, le));
    return d >= 1 && d <= 7;
  };
  const little = plausible(true) || !plausible(false);
  const sizeofHdr = dv.getInt32(0, little);
  if (sizeofHdr !== expectedSize && dv.getInt32(0, !little) !== expectedSize) {
    fail(
      path,
      `header field sizeof_hdr is ${sizeofHdr}, expected ${expectedSize} (the magic "n+${version}" ` +
        `says NIfTI-${version}; ${
          version === 1 ? "NIfTI-2 headers have 540" : "NIfTI-1 headers have 348"
        }): ` +
        `the header is damaged`,
    );
  }
  let h: nifti.NIFTI1 | nifti.NIFTI2;
  try {
    h = nifti.readHeader(buf);
  } catch (e) {
    fail(path, `unreadable header (${(e as Error).message})`);
  }
  const code = h.datatypeCode;
  const datatype = (Object.keys(DATATYPE_CODES) as NiftiDatatype[]).find((k) =>
    DATATYPE_CODES[k] === code
  );
  if (!datatype) {
    fail(
      path,
      `unsupported datatype ${CODE_NAMES[code] ?? "code " + code} (supported: ${
        Object.keys(DATATYPE_CODES).join(", ")
      })`,
    );
  }
  const ndim = h.dims[0];
  if (!(ndim >= 1 && ndim <= 7)) fail(path, `header says ${ndim} dimensions (dim[0] must be 1..7)`);
  const dim = h.dims.slice(0, 8).map((v) => Number(v));
  const size = (i: number) => (i <= ndim ? Math.max(1, dim[i]) : 1);
  for (let i = 1; i <= ndim; i++) {
    if (!(dim[i] >= 1) || !Number.isInteger(dim[i])) {
      fail(path, `dim[${i}] is ${dim[i]}, must be a positive integer`);
    }
  }
  for (let i = 5; i <= ndim; i++) {
    if (size(i) > 1) {
      fail(
        path,
        `header says ${ndim} dimensions with dim[${i}] = ${size(i)}; only up to 4 are supported`,
      );
    }
  }
  const dims: Vec3 = [size(1), size(2), size(3)];
  const frames = size(4);
  if (opts.expectDims === 3 && frames > 1) {
    fail(path, `header says 4 dimensions (${dims.join("x")}x${frames}), expected 3`);
  }
  if (opts.expectDims === 4 && frames === 1) {
    fail(path, `header says 3 dimensions (${dims.join("x")}), expected 4 (a multi-channel image)`);
  }
  const nvox = dims[0] * dims[1] * dims[2] * frames;
  const bpv = DATATYPE_BYTES[datatype];
  const offset = Math.max(Number(h.vox_offset), version === 1 ? 352 : 544);
  const needed = offset + nvox * bpv;
  if (bytes.length < needed) {
    fail(
      path,
      `truncated: header promises ${nvox} ${datatype} voxels (${needed} bytes with the header), file has ${bytes.length} bytes`,
    );
  }
  let slope = Number(h.scl_slope);
  let inter = Number(h.scl_inter);
  if (!Number.isFinite(slope) || slope === 0) {
    slope = 1;
    inter = 0;
  }
  if (!Number.isFinite(inter)) inter = 0;
  const data = decodeVoxels(bytes, {
    offset,
    count: nvox,
    datatype,
    littleEndian: h.littleEndian,
    slope,
    inter,
  });

  const units = h.xyzt_units & 7;
  const unitScale = units === 1 ? 1000 : units === 3 ? 0.001 : 1;
  let affine: Mat4;
  let affineSource: NiftiHeaderInfo["affineSource"];
  const srow = (h as nifti.NIFTI1).affine;
  const sform = h.sform_code > 0 && srow && srow.length >= 3
    ? [...srow[0], ...srow[1], ...srow[2], 0, 0, 0, 1].map(Number)
    : null;
  // An sform code with an unusable matrix (all zeros, as some converters write) falls back to the
  // qform when there is one.
  const sformUsable = sform !== null && sform.every(Number.isFinite) &&
    Math.abs(det3(linear3(sform))) >= 1e-12;
  if (sform && (sformUsable || !(h.qform_code > 0))) {
    affine = sform;
    affineSource = "sform";
  } else if (h.qform_code > 0) {
    affine = qformAffine(h);
    affineSource = "qform";
  } else {
    const pd = h.pixDims.map(Number);
    const px = (i: number) => (pd[i] > 0 && Number.isFinite(pd[i]) ? pd[i] : 1);
    affine = [px(1), 0, 0, 0, 0, px(2), 0, 0, 0, 0, px(3), 0, 0, 0, 0, 1];
    affineSource = "pixdim";
  }
  if (unitScale !== 1) affine = affine.map((v, i) => (i < 12 ? v * unitScale : v));
  if (affine.some((v) => !Number.isFinite(v))) {
    fail(path, `the ${affineSource} affine has non-finite entries`);
  }
  if (Math.abs(det3(linear3(affine))) < 1e-12) fail(path, `the ${affineSource} affine is singular`);
  const image: NiftiImage = {
    data,
    dims,
    frames,
    spacing: spacingOf(affine),
    affine,
    header: {
      niftiVersion: version,
      datatype,
      datatypeCode: code,
      sclSlope: slope,
      sclInter: inter,
      qformCode: h.qform_code,
      sformCode: h.sform_code,
      affineSource,
      intentCode: h.intent_code,
      intentName: h.intent_name ?? "",
      descrip: h.description ?? "",
      unitScale,
      dim,
    },
    path,
  };
  if (frames > 1) image.dims4 = [dims[0], dims[1], dims[2], frames];
  return image;
}

interface DecodeOptions {
  offset: number;
  count: number;
  datatype: NiftiDatatype;
  littleEndian: boolean;
  slope: number;
  inter: number;
}

function decodeVoxels(bytes: Uint8Array, o: DecodeOptions): Float32Array {
  const out = new Float32Array(o.count);
  const bpv = DATATYPE_BYTES[o.datatype];
  const hostLittle = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  const start = bytes.byteOffset + o.offset;
  if (o.littleEndian === hostLittle && o.datatype !== "int64" && o.datatype !== "uint64") {
    // Typed view (copy first when the offset is not aligned to the element size).
    const aligned = start % bpv === 0;
    const src = aligned ? bytes.buffer : bytes.slice(o.offset, o.offset + o.count * bpv).buffer;
    const so = aligned ? start : 0;
    let view: ArrayLike<number>;
    switch (o.datatype) {
      case "uint8":
        view = new Uint8Array(src, so, o.count);
        break;
      case "int8":
        view = new Int8Array(src, so, o.count);
        break;
      case "int16":
        view = new Int16Array(src, so, o.count);
        break;
      case "uint16":
        view = new Uint16Array(src, so, o.count);
        break;
      case "int32":
        view = new Int32Array(src, so, o.count);
        break;
      case "uint32":
        view = new Uint32Array(src, so, o.count);
        break;
      case "float32":
        view = new Float32Array(src, so, o.count);
        break;
      case "float64":
        view = new Float64Array(src, so, o.count);
        break;
      default:
        throw new Error(`unreachable datatype ${o.datatype}`);
    }
    // TypedArray.set converts element types natively; scaling then runs on Float32 only.
    if (view instanceof Float64Array && (o.slope !== 1 || o.inter !== 0)) {
      const s = o.slope, b = o.inter;
      for (let i = 0; i < o.count; i++) out[i] = view[i] * s + b;
      return out;
    }
    out.set(view as unknown as ArrayLike<number>);
    if (o.slope !== 1 || o.inter !== 0) {
      const s = o.slope, b = o.inter;
      for (let i = 0; i < o.count; i++) out[i] = out[i] * s + b;
    }
    return out;
  }
  const dv = new DataView(bytes.buffer, start, o.count * bpv);
  const le = o.littleEndian;
  const s = o.slope, b = o.inter;
  for (let i = 0; i < o.count; i++) {
    const p = i * bpv;
    let v: number;
    switch (o.datatype) {
      case "uint8":
        v = dv.getUint8(p);
        break;
      case "int8":
        v = dv.getInt8(p);
        break;
      case "int16":
        v = dv.getInt16(p, le);
        break;
      case "uint16":
        v = dv.getUint16(p, le);
        break;
      case "int32":
        v = dv.getInt32(p, le);
        break;
      case "uint32":
        v = dv.getUint32(p, le);
        break;
      case "int64":
        v = Number(dv.getBigInt64(p, le));
        break;
      case "uint64":
        v = Number(dv.getBigUint64(p, le));
        break;
      case "float32":
        v = dv.getFloat32(p, le);
        break;
      case "float64":
        v = dv.getFloat64(p, le);
        break;
    }
    out[i] = v * s + b;
  }
  return out;
}

/** The qform affine from the header's quaternion, offsets, pixdim and qfac (NIfTI method 2). */
function qformAffine(h: nifti.NIFTI1 | nifti.NIFTI2): Mat4 {
  let b = Number(h.quatern_b), c = Number(h.quatern_c), d = Number(h.quatern_d);
  let a = 1 - (b * b + c * c + d * d);
  if (a < 1e-7) {
    a = 1 / Math.sqrt(b * b + c * c + d * d);
    b *= a;
    c *= a;
    d *= a;
    a = 0;
  } else a = Math.sqrt(a);
  const pd = h.pixDims.map(Number);
  const dx = pd[1] > 0 ? pd[1] : 1, dy = pd[2] > 0 ? pd[2] : 1;
  let dz = pd[3] > 0 ? pd[3] : 1;
  if (pd[0] < 0) dz = -dz;
  const r: Mat3 = [
    a * a + b * b - c * c - d * d,
    2 * (b * c - a * d),
    2 * (b * d + a * c),
    2 * (b * c + a * d),
    a * a + c * c - b * b - d * d,
    2 * (c * d - a * b),
    2 * (b * d - a * c),
    2 * (c * d + a * b),
    a * a + d * d - c * c - b * b,
  ];
  const l: Mat3 = [
    r[0] * dx,
    r[1] * dy,
    r[2] * dz,
    r[3] * dx,
    r[4] * dy,
    r[5] * dz,
    r[6] * dx,
    r[7] * dy,
    r[8] * dz,
  ];
  return fromLinear(l, [Number(h.qoffset_x), Number(h.qoffset_y), Number(h.qoffset_z)]);
}

let readHook: ((path: string) => void) | null = null;

/** Test hook: `fn` sees the path of every file readNifti opens, before it is opened (null: none). */
export function setNiftiReadHook(fn: ((path: string) => void) | null): void {
  readHook = fn;
}

/** Calls the read hook for an image file opened by another reader (src/data/image_io.ts). */
export function notifyImageRead(path: string): void {
  readHook?.(path);
}

/** Reads a .nii or .nii.gz file. Errors name the file and what is wrong with it. */
export async function readNifti(path: string, opts: ReadNiftiOptions = {}): Promise<NiftiImage> {
  readHook?.(path);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) fail(path, "file not found");
    fail(path, (e as Error).message);
  }
  return decodeNifti(bytes, path, opts);
}

/** Splits a multi-frame image into one 3-D image per frame (sharing geometry, copying voxels). */
export function splitFrames(image: NiftiImage): NiftiImage[] {
  const n = image.dims[0] * image.dims[1] * image.dims[2];
  const out: NiftiImage[] = [];
  for (let t = 0; t < image.frames; t++) {
    out.push({
      ...image,
      data: image.data.slice(t * n, (t + 1) * n),
      frames: 1,
      dims4: undefined,
      dims: [...image.dims] as Vec3,
      affine: image.affine.slice(),
      spacing: [...image.spacing] as Vec3,
    });
  }
  return out;
}

/** Quaternion parameters of an affine (NIfTI's mat44_to_quatern, via the polar decomposition). */
export function affineToQuaternion(affine: Mat4): {
  b: number;
  c: number;
  d: number;
  qx: number;
  qy: number;
  qz: number;
  pixdim: Vec3;
  qfac: 1 | -1;
} {
  const l = linear3(affine);
  const sp = spacingOf(affine).map((v) => (v > 0 ? v : 1)) as Vec3;
  const n: Mat3 = [
    l[0] / sp[0],
    l[1] / sp[1],
    l[2] / sp[2],
    l[3] / sp[0],
    l[4] / sp[1],
    l[5] / sp[2],
    l[6] / sp[0],
    l[7] / sp[1],
    l[8] / sp[2],
  ];
  const r = orthogonalize3(n);
  let qfac: 1 | -1 = 1;
  if (det3(r) < 0) {
    qfac = -1;
    r[2] = -r[2];
    r[5] = -r[5];
    r[8] = -r[8];
  }
  const [r11, r12, r13, r21, r22, r23, r31, r32, r33] = r;
  let a = r11 + r22 + r33 + 1, b: number, c: number, d: number;
  if (a > 0.5) {
    a = 0.5 * Math.sqrt(a);
    b = 0.25 * (r32 - r23) / a;
    c = 0.25 * (r13 - r31) / a;
    d = 0.25 * (r21 - r12) / a;
  } else {
    const xd = 1 + r11 - (r22 + r33), yd = 1 + r22 - (r11 + r33), zd = 1 + r33 - (r11 + r22);
    if (xd > 1) {
      b = 0.5 * Math.sqrt(xd);
      c = 0.25 * (r12 + r21) / b;
      d = 0.25 * (r13 + r31) / b;
      a = 0.25 * (r32 - r23) / b;
    } else if (yd > 1) {
      c = 0.5 * Math.sqrt(yd);
      b = 0.25 * (r12 + r21) / c;
      d = 0.25 * (r23 + r32) / c;
      a = 0.25 * (r13 - r31) / c;
    } else {
      d = 0.5 * Math.sqrt(zd);
      b = 0.25 * (r13 + r31) / d;
      c = 0.25 * (r23 + r32) / d;
      a = 0.25 * (r21 - r12) / d;
    }
    if (a < 0) {
      b = -b;
      c = -c;
      d = -d;
    }
  }
  return { b, c, d, qx: affine[3], qy: affine[7], qz: affine[11], pixdim: sp, qfac };
}

export interface WriteNiftiOptions {
  /** Stored datatype (default float32). Integer types round and reject values out of range. */
  datatype?: NiftiDatatype;
  /** NIfTI-1 (default) or NIfTI-2 header. */
  version?: 1 | 2;
  /**
   * Written as-is into the header; voxels are stored as (value - inter) / slope. A slope of 0 means
   * "not scaled": voxels are stored as they are.
   */
  sclSlope?: number;
  sclInter?: number;
  descrip?: string;
  intentCode?: number;
  intentName?: string;
  /** sform/qform codes (default 1, scanner anatomical). */
  xformCode?: number;
  /** gzip level 1..9 (default 4) for .gz names. */
  compressionLevel?: number;
}

/** The image fields the writer needs. */
export interface WritableImage {
  data: Float32Array | Int32Array | Uint8Array | Int16Array | Float64Array | Uint16Array;
  dims: readonly number[];
  frames?: number;
  affine: readonly number[];
}

const INT_RANGES: Partial<Record<NiftiDatatype, [number, number]>> = {
  uint8: [0, 255],
  int8: [-128, 127],
  int16: [-32768, 32767],
  uint16: [0, 65535],
  int32: [-2147483648, 2147483647],
  uint32: [0, 4294967295],
  int64: [-(2 ** 53), 2 ** 53],
  uint64: [0, 2 ** 53],
};

/** Encodes an image as NIfTI bytes (uncompressed). */
export function encodeNifti(
  image: WritableImage,
  opts: WriteNiftiOptions = {},
  path = "image",
): Uint8Array {
  const datatype = opts.datatype ?? "float32";
  const version = opts.version ?? 1;
  const dims = [image.dims[0], image.dims[1] ?? 1, image.dims[2] ?? 1].map(Number);
  const frames = image.frames ?? 1;
  const nvox = dims[0] * dims[1] * dims[2] * frames;
  if (image.data.length !== nvox) {
    throw new Error(
      `Cannot write ${path}: data has ${image.data.length} voxels, dims ${dims.join("x")}${
        frames > 1 ? "x" + frames : ""
      } need ${nvox}`,
    );
  }
  if (image.affine.length !== 16) {
    throw new Error(
      `Cannot write ${path}: affine must have 16 entries, got ${image.affine.length}`,
    );
  }
  const affine = Array.from(image.affine, Number);
  const slope = opts.sclSlope ?? 1;
  const inter = opts.sclInter ?? 0;
  if (!Number.isFinite(slope) || !Number.isFinite(inter)) {
    throw new Error(
      `Cannot write ${path}: scl_slope ${slope} and scl_inter ${inter} must be finite`,
    );
  }
  // scl_slope 0 means "not scaled" (NIfTI-1 standard; readers ignore scl_inter then too).
  const storedInter = slope === 0 ? 0 : inter;
  const bpv = DATATYPE_BYTES[datatype];
  const hdrSize = version === 1 ? 348 : 540;
  const voxOffset = version === 1 ? 352 : 544;
  const out = new Uint8Array(voxOffset + nvox * bpv);
  const dv = new DataView(out.buffer);
  const q = affineToQuaternion(affine);
  const xform = opts.xformCode ?? 1;
  const ndim = frames > 1 ? 4 : 3;
  const dimArr = [ndim, dims[0], dims[1], dims[2], frames, 1, 1, 1];
  const pixdim = [q.qfac, q.pixdim[0], q.pixdim[1], q.pixdim[2], frames > 1 ? 1 : 0, 0, 0, 0];
  const writeStr = (off: number, s: string, max: number) => {
    for (let i = 0; i < Math.min(s.length, max - 1); i++) out[off + i] = s.charCodeAt(i) & 0x7f;
  };
  if (version === 1) {
    dv.setInt32(0, 348, true);
    out[38] = "r".charCodeAt(0);
    for (let i = 0; i < 8; i++) dv.setInt16(40 + 2 * i, dimArr[i], true);
    dv.setInt16(68, opts.intentCode ?? 0, true);
    dv.setInt16(70, DATATYPE_CODES[datatype], true);
    dv.setInt16(72, bpv * 8, true);
    for (let i = 0; i < 8; i++) dv.setFloat32(76 + 4 * i, pixdim[i], true);
    dv.setFloat32(108, voxOffset, true);
    dv.setFloat32(112, slope, true);
    dv.setFloat32(116, inter, true);
    out[123] = 2 | (frames > 1 ? 8 : 0); // mm (+ seconds)
    writeStr(148, opts.descrip ?? "comodal", 80);
    dv.setInt16(252, xform, true);
    dv.setInt16(254, xform, true);
    dv.setFloat32(256, q.b, true);
    dv.setFloat32(260, q.c, true);
    dv.setFloat32(264, q.d, true);
    dv.setFloat32(268, q.qx, true);
    dv.setFloat32(272, q.qy, true);
    dv.setFloat32(276, q.qz, true);
    for (let r = 0; r < 3; r++) {
      for (let c = 0; c < 4; c++) dv.setFloat32(280 + 16 * r + 4 * c, affine[r * 4 + c], true);
    }
    writeStr(328, opts.intentName ?? "", 16);
    out.set([0x6e, 0x2b, 0x31, 0x00], 344); // "n+1\0"
  } else {
    dv.setInt32(0, 540, true);
    out.set([0x6e, 0x2b, 0x32, 0x00, 0x0d, 0x0a, 0x1a, 0x0a], 4);
    dv.setInt16(12, DATATYPE_CODES[datatype], true);
    dv.setInt16(14, bpv * 8, true);
    for (let i = 0; i < 8; i++) dv.setBigInt64(16 + 8 * i, BigInt(dimArr[i]), true);
    for (let i = 0; i < 8; i++) dv.setFloat64(104 + 8 * i, pixdim[i], true);
    dv.setBigInt64(168, BigInt(voxOffset), true);
    dv.setFloat64(176, slope, true);
    dv.setFloat64(184, inter, true);
    writeStr(240, opts.descrip ?? "comodal", 80);
    dv.setInt32(344, xform, true);
    dv.setInt32(348, xform, true);
    dv.setFloat64(352, q.b, true);
    dv.setFloat64(360, q.c, true);
    dv.setFloat64(368, q.d, true);
    dv.setFloat64(376, q.qx, true);
    dv.setFloat64(384, q.qy, true);
    dv.setFloat64(392, q.qz, true);
    for (let r = 0; r < 3; r++) {
      for (let c = 0; c < 4; c++) dv.setFloat64(400 + 32 * r + 8 * c, affine[r * 4 + c], true);
    }
    dv.setInt32(500, 2 | (frames > 1 ? 8 : 0), true);
    dv.setInt32(504, opts.intentCode ?? 0, true);
    writeStr(508, opts.intentName ?? "", 16);
  }
  void hdrSize;
  // Voxels.
  const src = image.data;
  const range = INT_RANGES[datatype];
  const isInt = range !== undefined;
  const invSlope = slope === 0 ? 1 : 1 / slope;
  const o = voxOffset;
  for (let i = 0; i < nvox; i++) {
    let v = (src[i] - storedInter) * invSlope;
    if (isInt) {
      if (!Number.isFinite(v)) {
        throw new Error(`Cannot write ${path} as ${datatype}: voxel ${i} is ${src[i]}`);
      }
      v = Math.round(v);
      if (v < range[0] || v > range[1]) {
        throw new Error(
          `Cannot write ${path} as ${datatype}: voxel ${i} value ${src[i]} is outside [${
            range[0]
          }, ${range[1]}]`,
        );
      }
    }
    const p = o + i * bpv;
    switch (datatype) {
      case "uint8":
        out[p] = v;
        break;
      case "int8":
        dv.setInt8(p, v);
        break;
      case "int16":
        dv.setInt16(p, v, true);
        break;
      case "uint16":
        dv.setUint16(p, v, true);
        break;
      case "int32":
        dv.setInt32(p, v, true);
        break;
      case "uint32":
        dv.setUint32(p, v, true);
        break;
      case "int64":
        dv.setBigInt64(p, BigInt(v), true);
        break;
      case "uint64":
        dv.setBigUint64(p, BigInt(v), true);
        break;
      case "float32":
        dv.setFloat32(p, v, true);
        break;
      case "float64":
        dv.setFloat64(p, v, true);
        break;
    }
  }
  return out;
}

/** Writes .nii.gz (gzip) or .nii, atomically, with sform and qform set from the affine. */
export async function writeNifti(
  path: string,
  image: WritableImage,
  opts: WriteNiftiOptions = {},
): Promise<void> {
  let bytes = encodeNifti(image, opts, path);
  if (path.endsWith(".gz")) bytes = zlib.gzipSync(bytes, { level: opts.compressionLevel ?? 4 });
  else if (!path.endsWith(".nii")) {
    throw new Error(`Cannot write ${path}: name must end in .nii or .nii.gz`);
  }
  await writeFileAtomic(path, bytes);
}
