import assert from "node:assert/strict";
import { statSync } from "node:fs";
import {
  encodeGolden,
  GOLDEN_DIR,
  goldenTensor,
  parseGolden,
  readAllGolden,
  readGolden,
} from "./golden_io.ts";

Deno.test("golden_io: encode then parse round-trips tensors, dtypes and metadata", () => {
  const bytes = encodeGolden("demo", [{
    name: "case_a",
    op: "add",
    attrs: { axis: 2, flag: true },
    inputs: [{ name: "a", requiresGrad: true }, { name: "lab", requiresGrad: false }],
    outputs: ["y"],
    gradOutputs: ["y"],
    tensors: {
      "in.a": { shape: [2, 3], data: new Float32Array([1, -2, 3.5, 1e-30, -0, 7]) },
      "in.lab": { shape: [3], data: new Int32Array([-100, 0, 2147483647]) },
      "out.y": { shape: [], data: new Float32Array([0.125]) },
    },
  }]);
  assert.equal(new TextDecoder().decode(bytes.subarray(0, 8)), "CMOGOLD1");
  const f = parseGolden(bytes, "demo.cmogold");
  assert.equal(f.family, "demo");
  assert.equal(f.cases.length, 1);
  const c = f.cases[0];
  assert.equal(c.op, "add");
  assert.deepEqual(c.attrs, { axis: 2, flag: true });
  assert.deepEqual(c.inputs.map((i) => i.requiresGrad), [true, false]);
  const a = goldenTensor(c, "in.a");
  assert.deepEqual(a.shape, [2, 3]);
  assert.ok(a.data instanceof Float32Array);
  assert.deepEqual([...a.data], [1, -2, 3.5, Math.fround(1e-30), -0, 7]);
  const lab = goldenTensor(c, "in.lab");
  assert.ok(lab.data instanceof Int32Array);
  assert.deepEqual([...lab.data], [-100, 0, 2147483647]);
  assert.deepEqual(goldenTensor(c, "out.y").shape, []);
  assert.throws(
    () => goldenTensor(c, "grad.a"),
    /has no tensor grad\.a \(has: in\.a, in\.lab, out\.y\)/,
  );
});

Deno.test("golden_io: corrupt files give errors naming the file and the problem", () => {
  const good = encodeGolden("demo", [{
    name: "c",
    op: "relu",
    tensors: { "in.x": { shape: [4], data: new Float32Array(4) } },
  }]);
  const badMagic = good.slice();
  badMagic[0] = 0x58;
  assert.throws(() => parseGolden(badMagic, "x.cmogold"), /x\.cmogold: magic is "XMOGOLD1"/);
  assert.throws(
    () => parseGolden(good.subarray(0, good.length - 4), "t.cmogold"),
    /t\.cmogold.*in\.x \[4\]/,
  );
  assert.throws(() => parseGolden(new Uint8Array(5), "s.cmogold"), /shorter than the 12-byte/);
  assert.throws(
    () => readGolden("/nonexistent/none.cmogold"),
    /Cannot read golden file \/nonexistent/,
  );
});

Deno.test("golden_io: committed golden files are complete and small", () => {
  const files = readAllGolden();
  assert.ok(files.length >= 10, `expected >= 10 op families, found ${files.length}`);
  let bytes = 0;
  let cases = 0;
  const names = new Set<string>();
  for (const f of files) {
    bytes += statSync(f.path).size;
    for (const c of f.cases) {
      cases++;
      assert.ok(!names.has(c.name), `duplicate case name ${c.name}`);
      names.add(c.name);
      if (c.inputs.length === 0) continue; // optimizer cases: explicit states
      for (const i of c.inputs) goldenTensor(c, `in.${i.name}`);
      for (const o of c.outputs) goldenTensor(c, `out.${o}`);
      for (const o of c.gradOutputs) {
        assert.deepEqual(goldenTensor(c, `dout.${o}`).shape, goldenTensor(c, `out.${o}`).shape);
      }
      for (const i of c.inputs.filter((i) => i.requiresGrad)) {
        assert.deepEqual(
          goldenTensor(c, `grad.${i.name}`).shape,
          goldenTensor(c, `in.${i.name}`).shape,
        );
      }
    }
  }
  assert.ok(cases >= 100, `expected >= 100 cases, found ${cases}`);
  assert.ok(
    bytes < 2 * 1024 * 1024,
    `golden files take ${bytes} bytes, limit 2 MB (${GOLDEN_DIR})`,
  );
});

Deno.test("golden_io: values written by PyTorch agree with a recomputation in TypeScript", () => {
  const byName = new Map(readAllGolden().flatMap((f) => f.cases.map((c) => [c.name, c] as const)));
  // binary add with per-channel broadcasting: y[n,c,d,h,w] = a[n,c,d,h,w] + b[0,c,0,0,0]
  const add = byName.get("binary_add_per_channel")!;
  const a = goldenTensor(add, "in.a");
  const b = goldenTensor(add, "in.b");
  const y = goldenTensor(add, "out.y");
  const [n, ch, d, h, w] = a.shape;
  const inner = d * h * w;
  for (let i = 0; i < n * ch * inner; i++) {
    const c = Math.floor(i / inner) % ch;
    assert.ok(Math.abs(y.data[i] - (a.data[i] + b.data[c])) <= 1e-6 * (1 + Math.abs(y.data[i])));
  }
  // matmul rank 2 in float64
  const mm = byName.get("matmul_rank2")!;
  const ma = goldenTensor(mm, "in.a").data;
  const mb = goldenTensor(mm, "in.b").data;
  const my = goldenTensor(mm, "out.y").data;
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 5; j++) {
      let s = 0;
      for (let k = 0; k < 4; k++) s += ma[i * 4 + k] * mb[k * 5 + j];
      assert.ok(Math.abs(my[i * 5 + j] - s) < 1e-5, `matmul_rank2 y[${i},${j}]`);
    }
  }
  // relu gradient = dout where x > 0, else 0
  const relu = byName.get("unary_relu")!;
  const x = goldenTensor(relu, "in.x").data;
  const dy = goldenTensor(relu, "dout.y").data;
  const dx = goldenTensor(relu, "grad.x").data;
  for (let i = 0; i < x.length; i++) assert.equal(dx[i], x[i] > 0 ? dy[i] : 0);
  // cross-entropy labels are i32 and contain the ignored label
  const ce = byName.get("softmax_cross_entropy_ignore_default")!;
  const labels = goldenTensor(ce, "in.labels");
  assert.equal(labels.dtype, "i32");
  assert.ok([...labels.data].includes(-100));
  assert.deepEqual(goldenTensor(ce, "out.loss").shape, []);
});
