import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import {
  bf16ToF32,
  encodeSafetensors,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  parseSafetensors,
  readSafetensors,
  writeSafetensors,
} from "./safetensors.ts";

/** Builds a file from a header object and a data section, as another writer might. */
function rawFile(header: unknown, data: Uint8Array, lengthOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

function tmp(): string {
  return mkdtempSync(path.join(tmpdir(), "safetensors-test-"));
}

Deno.test("safetensors: round trip of F32, F16, BF16, I32 and I64 tensors with metadata", () => {
  const dir = tmp();
  try {
    const file = path.join(dir, "w.safetensors");
    const a = Float32Array.from({ length: 24 }, (_, i) => Math.sin(i) * 10);
    const ints = Int32Array.from([1, -2, 3, 2147483647, -2147483648, 0]);
    writeSafetensors(file, {
      "blocks.0.attn.qkv.weight": { shape: [2, 3, 4], data: a },
      half: { shape: [3], data: [1, -2, 0.5], dtype: "F16" },
      brain: { shape: [2], data: [1, 3.140625], dtype: "BF16" },
      ints: { shape: [2, 3], data: ints },
      longs: { shape: [3], data: [5, -7, 2 ** 40], dtype: "I64" },
      empty: { shape: [0, 4], data: new Float32Array(0) },
    }, { format: "pt", note: "test" });
    assert.deepEqual(readdirSync(dir), ["w.safetensors"], "no temporary file left behind");
    const st = readSafetensors(file);
    assert.deepEqual(st.metadata, { format: "pt", note: "test" });
    assert.deepEqual(st.names, [
      "blocks.0.attn.qkv.weight",
      "half",
      "brain",
      "ints",
      "longs",
      "empty",
    ]);
    assert.deepEqual(st.info("blocks.0.attn.qkv.weight").shape, [2, 3, 4]);
    assert.deepEqual(st.readF32("blocks.0.attn.qkv.weight"), a);
    assert.deepEqual([...st.readF32("half")], [1, -2, 0.5]);
    assert.deepEqual([...st.readF32("brain")], [1, 3.140625]);
    assert.deepEqual(st.readI32("ints"), ints);
    assert.deepEqual([...st.readF32("ints")], [...ints].map(Math.fround));
    assert.deepEqual([...st.readF32("longs")], [5, -7, 2 ** 40]);
    assert.throws(() => st.readI32("longs"), /element 2 .* does not fit int32/);
    assert.throws(() => st.readI32("half"), /dtype F16, not an integer type/);
    assert.equal(st.readF32("empty").length, 0);
    // Header padded to 8 bytes; data starts right after it.
    const bytes = Deno.readFileSync(file);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(n % 8, 0);
    assert.throws(() => st.readF32("nope"), /no tensor named 'nope'/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Deno.test("safetensors: F16 and BF16 decode to known values", () => {
  const f16: [number, number][] = [
    [0x3c00, 1],
    [0xc000, -2],
    [0x7bff, 65504],
    [0x0001, 2 ** -24],
    [0x0400, 2 ** -14],
    [0x3555, 0.333251953125],
    [0x8000, -0],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
  ];
  for (const [bits, v] of f16) {
    assert.ok(
      Object.is(f16ToF32(bits), v),
      `f16 0x${bits.toString(16)} -> ${f16ToF32(bits)}, want ${v}`,
    );
    assert.equal(f32ToF16(v), bits, `f32 ${v} -> f16 0x${f32ToF16(v).toString(16)}`);
  }
  assert.ok(Number.isNaN(f16ToF32(0x7e00)));
  assert.ok(Number.isNaN(f16ToF32(f32ToF16(NaN))));
  // Round to nearest even, overflow to infinity, underflow to zero.
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // halfway: stays even
  assert.equal(f32ToF16(1 + 3 * 2 ** -11), 0x3c02); // halfway: rounds up to even
  assert.equal(f32ToF16(65520), 0x7c00);
  assert.equal(f32ToF16(2 ** -26), 0);
  const bf16: [number, number][] = [
    [0x3f80, 1],
    [0x4049, 3.140625],
    [0xc2f7, -123.5],
    [0x7f80, Infinity],
    [0xff80, -Infinity],
    [0x0001, 9.183549615799121e-41],
    [0x8000, -0],
  ];
  for (const [bits, v] of bf16) {
    assert.ok(
      Object.is(bf16ToF32(bits), v),
      `bf16 0x${bits.toString(16)} -> ${bf16ToF32(bits)}, want ${v}`,
    );
    assert.equal(f32ToBf16(v), bits);
  }
  assert.ok(Number.isNaN(bf16ToF32(0x7fc0)));
  assert.equal(f32ToBf16(Math.PI), 0x4049);
  // A file of F16/BF16 bytes written by another tool: decode through the reader.
  const data = new Uint8Array([0x00, 0x3c, 0x55, 0x35, 0x80, 0x3f, 0xf7, 0xc2]);
  const st = parseSafetensors(rawFile({
    h: { dtype: "F16", shape: [2], data_offsets: [0, 4] },
    b: { dtype: "BF16", shape: [2], data_offsets: [4, 8] },
  }, data));
  assert.deepEqual([...st.readF32("h")], [1, 0.333251953125]);
  assert.deepEqual([...st.readF32("b")], [1, -123.5]);
});

Deno.test("safetensors: every malformed input is an error naming the file and the problem", () => {
  const src = "bad.safetensors";
  const parse = (b: Uint8Array) => () => parseSafetensors(b, src);
  const ok = { dtype: "F32", shape: [2], data_offsets: [0, 8] };
  const data8 = new Uint8Array(8);
  const cases: [Uint8Array, RegExp][] = [
    [new Uint8Array(5), /bad\.safetensors: truncated: 5 bytes/],
    [
      rawFile({ a: ok }, data8, 10_000n),
      /bad\.safetensors: header length 10000 runs past the end of the file/,
    ],
    [rawFile({ a: ok }, data8, 2n ** 63n), /header length \d+ runs past the end/],
    [
      rawFile({ a: ok }, data8).slice(0, -3),
      /tensor 'a' has data_offsets \[0, 8\] out of range: the data section has 5 bytes/,
    ],
    [rawFile([1, 2], data8), /header is not a JSON object/],
    [
      (() => {
        const f = rawFile({ a: ok }, data8);
        f[8] = 0x7b + 1; // corrupt the opening brace
        return f;
      })(),
      /header is not valid UTF-8 JSON/,
    ],
    [rawFile({ a: { ...ok, dtype: "F12" } }, data8), /tensor 'a' has unknown dtype "F12"/],
    [
      rawFile({ a: { ...ok, shape: [3] } }, data8),
      /tensor 'a': shape \[3\] of F32 needs 12 bytes, but data_offsets \[0, 8\] hold 8/,
    ],
    [rawFile({ a: { ...ok, shape: [2.5] } }, data8), /tensor 'a' has an invalid shape/],
    [rawFile({ a: { ...ok, data_offsets: [0] } }, data8), /tensor 'a' has invalid data_offsets/],
    [rawFile({ a: { ...ok, data_offsets: [8, 0] } }, data8), /end before begin/],
    [
      rawFile({ a: ok, b: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }, data8),
      /tensors 'a' \[0, 8\) and 'b' \[4, 8\) overlap/,
    ],
    [rawFile({ a: ok, __metadata__: { k: 1 } }, data8), /__metadata__\.k is not a string/],
    [rawFile({ a: 5 }, data8), /entry 'a' is not an object/],
  ];
  for (const [bytes, re] of cases) {
    assert.throws(parse(bytes), (e: Error) => {
      assert.match(e.message, /^Invalid safetensors file bad\.safetensors: /);
      assert.match(e.message, re);
      return true;
    });
  }
  const dir = tmp();
  try {
    const f = path.join(dir, "short.safetensors");
    writeFileSync(f, new Uint8Array(3));
    assert.throws(
      () => readSafetensors(f),
      new RegExp(`Invalid safetensors file ${f.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: truncated`),
    );
    assert.throws(
      () => readSafetensors(path.join(dir, "missing.safetensors")),
      /Cannot read safetensors file .*missing\.safetensors/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.throws(
    () => encodeSafetensors({ a: { shape: [3], data: [1, 2] } }),
    /tensor 'a' has shape \[3\] \(3 elements\) but 2 values/,
  );
  assert.throws(
    () => encodeSafetensors({ __metadata__: { shape: [1], data: [1] } }),
    /not a valid tensor name/,
  );
});
