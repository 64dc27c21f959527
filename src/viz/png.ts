/**
 * A small PNG encoder and decoder without dependencies (node:zlib for deflate, CRC-32 written here).
 *
 * The encoder writes 8-bit greyscale, RGB or RGBA, non-interlaced, with the "Sub" filter on every
 * row (good for smooth medical images). The decoder reads what this encoder writes and any other
 * 8-bit non-interlaced greyscale/RGB/RGBA PNG with filters 0-4; it exists for tests and for reading
 * back figures.
 *
 * @module
 */
import { deflateSync, inflateSync } from "node:zlib";

/** Raw 8-bit pixels, row-major, `channels` bytes per pixel. */
export interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  /** 1 = grey, 3 = RGB, 4 = RGBA. */
  channels: 1 | 3 | 4;
}

const SIGNATURE = Uint8Array.from([137, 80, 78, 71, 13, 10, 26, 10]);

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO 3309, as PNG uses) of the bytes. */
export function crc32(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function colourType(channels: number): number {
  if (channels === 1) return 0;
  if (channels === 3) return 2;
  if (channels === 4) return 6;
  throw new Error(`Cannot encode PNG: ${channels} channels, expected 1, 3 or 4`);
}

function chunk(type: string, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + payload.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, payload.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(payload, 8);
  dv.setUint32(8 + payload.length, crc32(out, 4, 8 + payload.length));
  return out;
}

/** Encodes raw pixels as a PNG file. */
export function encodePng(image: RawImage): Uint8Array {
  const { data, width, height, channels } = image;
  const ct = colourType(channels);
  if (!(Number.isInteger(width) && Number.isInteger(height) && width > 0 && height > 0)) {
    throw new Error(`Cannot encode PNG: size ${width}x${height} must be positive integers`);
  }
  if (data.length !== width * height * channels) {
    throw new Error(
      `Cannot encode PNG: ${data.length} bytes for ${width}x${height}x${channels}, expected ${
        width * height * channels
      }`,
    );
  }
  const stride = width * channels;
  const filtered = new Uint8Array(height * (stride + 1));
  for (let y = 0; y < height; y++) {
    const src = y * stride;
    const dst = y * (stride + 1);
    filtered[dst] = 1; // Sub
    for (let i = 0; i < stride; i++) {
      const left = i >= channels ? data[src + i - channels] : 0;
      filtered[dst + 1 + i] = (data[src + i] - left) & 0xff;
    }
  }
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, width);
  dv.setUint32(4, height);
  ihdr[8] = 8;
  ihdr[9] = ct;
  const parts = [
    SIGNATURE,
    chunk("IHDR", ihdr),
    chunk("IDAT", new Uint8Array(deflateSync(filtered, { level: 6 }))),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** Decodes an 8-bit, non-interlaced greyscale/RGB/RGBA PNG; checks every chunk's CRC. */
export function decodePng(bytes: Uint8Array): RawImage {
  for (let i = 0; i < 8; i++) {
    if (bytes[i] !== SIGNATURE[i]) {
      throw new Error("Cannot decode PNG: the signature is wrong (not a PNG file)");
    }
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 8;
  let width = 0, height = 0, channels: 1 | 3 | 4 = 1;
  const idat: Uint8Array[] = [];
  let sawEnd = false;
  while (pos + 12 <= bytes.length) {
    const len = dv.getUint32(pos);
    const type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    if (pos + 12 + len > bytes.length) {
      throw new Error(`Cannot decode PNG: chunk ${type} runs past the end of the file`);
    }
    const crc = dv.getUint32(pos + 8 + len);
    if (crc !== crc32(bytes, pos + 4, pos + 8 + len)) {
      throw new Error(`Cannot decode PNG: chunk ${type} has a bad CRC`);
    }
    const body = bytes.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") {
      const h = new DataView(body.buffer, body.byteOffset, body.byteLength);
      width = h.getUint32(0);
      height = h.getUint32(4);
      const depth = body[8], ct = body[9], interlace = body[12];
      if (depth !== 8 || interlace !== 0 || ![0, 2, 6].includes(ct)) {
        throw new Error(
          `Cannot decode PNG: bit depth ${depth}, colour type ${ct}, interlace ${interlace} not supported`,
        );
      }
      channels = ct === 0 ? 1 : ct === 2 ? 3 : 4;
    } else if (type === "IDAT") {
      idat.push(body);
    } else if (type === "IEND") {
      sawEnd = true;
      break;
    }
    pos += 12 + len;
  }
  if (!sawEnd || width === 0) throw new Error("Cannot decode PNG: missing IHDR or IEND chunk");
  const compressed = new Uint8Array(idat.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of idat) {
    compressed.set(p, o);
    o += p.length;
  }
  const raw = new Uint8Array(inflateSync(compressed));
  const stride = width * channels;
  if (raw.length !== height * (stride + 1)) {
    throw new Error(
      `Cannot decode PNG: image data has ${raw.length} bytes, expected ${height * (stride + 1)}`,
    );
  }
  const data = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    const src = y * (stride + 1) + 1;
    const dst = y * stride;
    for (let i = 0; i < stride; i++) {
      const a = i >= channels ? data[dst + i - channels] : 0;
      const b = y > 0 ? data[dst - stride + i] : 0;
      const c = y > 0 && i >= channels ? data[dst - stride + i - channels] : 0;
      const x = raw[src + i];
      let v: number;
      switch (f) {
        case 0:
          v = x;
          break;
        case 1:
          v = x + a;
          break;
        case 2:
          v = x + b;
          break;
        case 3:
          v = x + ((a + b) >> 1);
          break;
        case 4:
          v = x + paeth(a, b, c);
          break;
        default:
          throw new Error(`Cannot decode PNG: row ${y} has unknown filter ${f}`);
      }
      data[dst + i] = v & 0xff;
    }
  }
  return { data, width, height, channels };
}
