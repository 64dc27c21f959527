import { deepStrictEqual, throws } from "node:assert/strict";
import { backward } from "../tensor/autograd.ts";
import { tensor } from "../tensor/factories.ts";
import { mul } from "./binary.ts";
import { sum } from "./reduce.ts";
import { tidy } from "../tensor/scope.ts";
import { conv3d, convTranspose3d } from "./conv.ts";
import { groupNorm, instanceNorm } from "./norm.ts";
import { assertClose, gradCheck, randData, seededRng } from "./test_util.ts";

type T3 = [number, number, number];

function refConv(
  x: Float32Array,
  xs: number[],
  w: Float32Array,
  ws: number[],
  b: Float32Array | null,
  s: T3,
  p: T3,
  d: T3,
) {
  const [N, Ci, D, H, W] = xs;
  const [Co, , kd, kh, kw] = ws;
  const k = [kd, kh, kw], inn = [D, H, W];
  const o = [0, 1, 2].map((i) =>
    Math.floor((inn[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) / s[i]) + 1
  );
  const out = new Float32Array(N * Co * o[0] * o[1] * o[2]);
  let idx = 0;
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < Co; co++) {
      for (let z = 0; z < o[0]; z++) {
        for (let y = 0; y < o[1]; y++) {
          for (let xx = 0; xx < o[2]; xx++) {
            let acc = b ? b[co] : 0;
            for (let ci = 0; ci < Ci; ci++) {
              for (let a = 0; a < kd; a++) {
                for (let bb = 0; bb < kh; bb++) {
                  for (let c = 0; c < kw; c++) {
                    const iz = z * s[0] - p[0] + a * d[0],
                      iy = y * s[1] - p[1] + bb * d[1],
                      ix = xx * s[2] - p[2] + c * d[2];
                    if (iz < 0 || iy < 0 || ix < 0 || iz >= D || iy >= H || ix >= W) continue;
                    acc += x[(((n * Ci + ci) * D + iz) * H + iy) * W + ix] *
                      w[(((co * Ci + ci) * kd + a) * kh + bb) * kw + c];
                  }
                }
              }
            }
            out[idx++] = acc;
          }
        }
      }
    }
  }
  return { out, shape: [N, Co, ...o] };
}

function refDeconv(
  x: Float32Array,
  xs: number[],
  w: Float32Array,
  ws: number[],
  b: Float32Array | null,
  s: T3,
) {
  const [N, Ci, D, H, W] = xs;
  const [, Co, kd, kh, kw] = ws;
  const o = [(D - 1) * s[0] + kd, (H - 1) * s[1] + kh, (W - 1) * s[2] + kw];
  const out = new Float32Array(N * Co * o[0] * o[1] * o[2]);
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < Co; co++) {
      const base = (n * Co + co) * o[0] * o[1] * o[2];
      if (b) { for (let i = 0; i < o[0] * o[1] * o[2]; i++) out[base + i] = b[co]; }
      for (let ci = 0; ci < Ci; ci++) {
        for (let z = 0; z < D; z++) {
          for (let y = 0; y < H; y++) {
            for (let xx = 0; xx < W; xx++) {
              const v = x[(((n * Ci + ci) * D + z) * H + y) * W + xx];
              for (let a = 0; a < kd; a++) {
                for (let bb = 0; bb < kh; bb++) {
                  for (let c = 0; c < kw; c++) {
                    out[base + ((z * s[0] + a) * o[1] + y * s[1] + bb) * o[2] + xx * s[2] + c] +=
                      v * w[(((ci * Co + co) * kd + a) * kh + bb) * kw + c];
                  }
                }
              }
            }
          }
        }
      }
    }
  }
  return { out, shape: [N, Co, ...o] };
}

const CONV_CASES: { xs: number[]; ws: number[]; s: T3; p: T3; d: T3; bias: boolean }[] = [
  {
    xs: [2, 2, 4, 4, 4],
    ws: [3, 2, 3, 3, 3],
    s: [1, 1, 1],
    p: [1, 1, 1],
    d: [1, 1, 1],
    bias: true,
  },
  {
    xs: [1, 3, 5, 5, 5],
    ws: [4, 3, 3, 3, 3],
    s: [2, 2, 2],
    p: [1, 1, 1],
    d: [1, 1, 1],
    bias: false,
  },
  {
    xs: [1, 2, 3, 6, 6],
    ws: [2, 2, 1, 3, 3],
    s: [1, 2, 2],
    p: [0, 1, 1],
    d: [1, 1, 1],
    bias: true,
  },
  {
    xs: [1, 1, 6, 6, 6],
    ws: [2, 1, 3, 3, 3],
    s: [1, 1, 1],
    p: [2, 2, 2],
    d: [2, 2, 2],
    bias: true,
  },
  {
    xs: [1, 16, 3, 3, 3],
    ws: [16, 16, 3, 3, 3],
    s: [1, 1, 1],
    p: [1, 1, 1],
    d: [1, 1, 1],
    bias: true,
  },
  // pointwise (1x1x1): runs as a matrix product
  {
    xs: [2, 3, 2, 3, 2],
    ws: [4, 3, 1, 1, 1],
    s: [1, 1, 1],
    p: [0, 0, 0],
    d: [1, 1, 1],
    bias: true,
  },
  {
    xs: [1, 16, 2, 2, 2],
    ws: [4, 16, 1, 1, 1],
    s: [1, 1, 1],
    p: [0, 0, 0],
    d: [1, 1, 1],
    bias: false,
  },
];

Deno.test("conv3d matches a naive reference (stride, anisotropic, dilation, C = 16 blocked)", () => {
  const rng = seededRng(12);
  tidy(() => {
    for (const c of CONV_CASES) {
      const x = randData(c.xs, rng),
        w = randData(c.ws, rng),
        b = c.bias ? randData([c.ws[0]], rng) : null;
      const ref = refConv(x, c.xs, w, c.ws, b, c.s, c.p, c.d);
      const y = conv3d(tensor(x, c.xs), tensor(w, c.ws), b ? tensor(b, [c.ws[0]]) : null, {
        stride: c.s,
        padding: c.p,
        dilation: c.d,
      });
      deepStrictEqual(y.shape, ref.shape);
      assertClose(y.toArray(), ref.out, { atol: 1e-4, rtol: 1e-4, msg: JSON.stringify(c) });
    }
  });
});

Deno.test("conv3d: gradients for x, w and b match finite differences", () => {
  const rng = seededRng(13);
  for (const c of [...CONV_CASES.slice(0, 4), ...CONV_CASES.slice(5)]) {
    const ins = [
      { data: randData(c.xs, rng), shape: c.xs },
      { data: randData(c.ws, rng), shape: c.ws },
      { data: randData([c.ws[0]], rng), shape: [c.ws[0]] },
    ];
    gradCheck(
      (xs) => conv3d(xs[0], xs[1], xs[2], { stride: c.s, padding: c.p, dilation: c.d }),
      ins,
      {
        msg: JSON.stringify(c),
        samples: 10,
        atol: 5e-3,
      },
    );
  }
});

Deno.test("conv3d: weight and bias gradients for inputs with 4-15 channels (four MRI sequences) match direct sums, = then +=", () => {
  // oneDNN has no fast weight gradient for a plain input with 4-15 channels; the kernel pads the
  // channels to a blocked 16 instead (native/cpu/conv.cpp, chanpad). Checked against the sums.
  const rng = seededRng(21);
  for (const Ci of [4, 5, 8, 15]) {
    const [N, Co, D, H, W] = [2, 16, 10, 9, 8];
    const xd = randData([N, Ci, D, H, W], rng), wd = randData([Co, Ci, 3, 3, 3], rng);
    const bd = randData([Co], rng), rd = randData([N, Co, D, H, W], rng);
    tidy(() => {
      const x = tensor(xd, [N, Ci, D, H, W]);
      const w = tensor(wd, [Co, Ci, 3, 3, 3], { requiresGrad: true });
      const b = tensor(bd, [Co], { requiresGrad: true });
      const r = tensor(rd, [N, Co, D, H, W]);
      const loss = () =>
        sum(mul(conv3d(x, w, b, { stride: [1, 1, 1], padding: [1, 1, 1] }), r), "all");
      backward(loss());
      const dw1 = w.grad!.toArray() as Float32Array, db1 = b.grad!.toArray() as Float32Array;
      backward(loss()); // accumulates
      const dw2 = w.grad!.toArray() as Float32Array;
      const ref = new Float32Array(Co * Ci * 27), refB = new Float32Array(Co);
      const S = D * H * W;
      for (let n = 0; n < N; n++) {
        for (let o = 0; o < Co; o++) {
          for (let z = 0; z < D; z++) {
            for (let y = 0; y < H; y++) {
              for (let xx = 0; xx < W; xx++) {
                const g = rd[(n * Co + o) * S + (z * H + y) * W + xx];
                refB[o] += g;
                for (let i = 0; i < Ci; i++) {
                  for (let a = 0; a < 27; a++) {
                    const iz = z + Math.floor(a / 9) - 1,
                      iy = y + (Math.floor(a / 3) % 3) - 1,
                      ix = xx + (a % 3) - 1;
                    if (iz < 0 || iy < 0 || ix < 0 || iz >= D || iy >= H || ix >= W) continue;
                    ref[(o * Ci + i) * 27 + a] += g * xd[(n * Ci + i) * S + (iz * H + iy) * W + ix];
                  }
                }
              }
            }
          }
        }
      }
      assertClose(dw1, ref, { atol: 1e-3, rtol: 1e-4, msg: `dw, Ci ${Ci}` });
      assertClose(db1, refB, { atol: 1e-3, rtol: 1e-4, msg: `db, Ci ${Ci}` });
      assertClose(dw2, ref.map((v) => 2 * v), {
        atol: 2e-3,
        rtol: 1e-4,
        msg: `dw accumulated, Ci ${Ci}`,
      });
    });
  }
});

Deno.test("convTranspose3d matches a scatter reference and its gradients", () => {
  const rng = seededRng(14);
  tidy(() => {
    for (
      const [xs, ws, s] of [
        [[1, 3, 2, 2, 2], [3, 2, 2, 2, 2], [2, 2, 2]],
        [[2, 2, 2, 3, 3], [2, 4, 1, 2, 2], [1, 2, 2]],
      ] as [number[], number[], T3][]
    ) {
      const x = randData(xs, rng), w = randData(ws, rng), b = randData([ws[1]], rng);
      const ref = refDeconv(x, xs, w, ws, b, s);
      const y = convTranspose3d(tensor(x, xs), tensor(w, ws), tensor(b, [ws[1]]), { stride: s });
      deepStrictEqual(y.shape, ref.shape);
      assertClose(y.toArray(), ref.out, { atol: 1e-4 });
    }
  });
  gradCheck((xs) => convTranspose3d(xs[0], xs[1], xs[2]), [
    { data: randData([1, 2, 2, 2, 2], rng), shape: [1, 2, 2, 2, 2] },
    { data: randData([2, 3, 2, 2, 2], rng), shape: [2, 3, 2, 2, 2] },
    { data: randData([3], rng), shape: [3] },
  ], { samples: 10, atol: 5e-3 });
});

Deno.test("conv3d rejects a channel mismatch naming both shapes", () => {
  tidy(() => {
    throws(
      () =>
        conv3d(
          tensor(new Float32Array(3 * 8), [1, 3, 2, 2, 2]),
          tensor(new Float32Array(54), [1, 2, 3, 3, 3]),
          null,
        ),
      {
        message: "conv3d: x [1,3,2,2,2] f32 has 3 channels, w [1,2,3,3,3] f32 expects 2",
      },
    );
  });
});

function refGroupNorm(
  x: Float32Array,
  shape: number[],
  g: Float32Array,
  b: Float32Array,
  groups: number,
  eps: number,
) {
  const [N, C] = shape;
  const S = x.length / (N * C);
  const out = new Float32Array(x.length);
  const cg = C / groups;
  for (let n = 0; n < N; n++) {
    for (let gi = 0; gi < groups; gi++) {
      const off = (n * C + gi * cg) * S, len = cg * S;
      let m = 0;
      for (let i = 0; i < len; i++) m += x[off + i];
      m /= len;
      let v = 0;
      for (let i = 0; i < len; i++) v += (x[off + i] - m) ** 2;
      const r = 1 / Math.sqrt(v / len + eps);
      for (let i = 0; i < len; i++) {
        const c = gi * cg + Math.floor(i / S);
        out[off + i] = (x[off + i] - m) * r * g[c] + b[c];
      }
    }
  }
  return out;
}

Deno.test("groupNorm and instanceNorm match a reference (plain and C = 16)", () => {
  const rng = seededRng(15);
  tidy(() => {
    for (
      const [shape, groups] of [[[2, 4, 3, 3, 3], 2], [[1, 16, 2, 2, 2], 4], [[2, 6, 5], 3]] as [
        number[],
        number,
      ][]
    ) {
      const c = shape[1];
      const x = randData(shape, rng, -2, 3),
        g = randData([c], rng, 0.5, 1.5),
        b = randData([c], rng);
      const y = groupNorm(tensor(x, shape), tensor(g, [c]), tensor(b, [c]), { groups });
      assertClose(y.toArray(), refGroupNorm(x, shape, g, b, groups, 1e-5), {
        atol: 1e-4,
        msg: `${shape} g${groups}`,
      });
      const yi = instanceNorm(tensor(x, shape), null, null);
      assertClose(
        yi.toArray(),
        refGroupNorm(x, shape, new Float32Array(c).fill(1), new Float32Array(c), c, 1e-5),
        { atol: 1e-4 },
      );
    }
    throws(
      () => groupNorm(tensor(new Float32Array(6), [1, 3, 2]), null, null, { groups: 2 }),
      /groups 2 must be a positive divisor of the 3 channels/,
    );
  });
});

Deno.test("groupNorm: gradients for x, gamma and beta match finite differences", () => {
  const rng = seededRng(16);
  const shape = [2, 4, 2, 2, 2];
  gradCheck((xs) => groupNorm(xs[0], xs[1], xs[2], { groups: 2 }), [
    { data: randData(shape, rng, -2, 2), shape },
    { data: randData([4], rng, 0.5, 1.5), shape: [4] },
    { data: randData([4], rng), shape: [4] },
  ], { samples: 16, h: 1e-3, atol: 5e-3 });
});

Deno.test("instanceNorm on a blocked (C = 16) conv output: gradients match finite differences", () => {
  const rng = seededRng(17);
  gradCheck(
    (xs) => instanceNorm(conv3d(xs[0], xs[1], null, { padding: 1 }), xs[2], xs[3]),
    [
      { data: randData([1, 2, 2, 2, 2], rng), shape: [1, 2, 2, 2, 2] },
      { data: randData([16, 2, 3, 3, 3], rng, -0.5, 0.5), shape: [16, 2, 3, 3, 3] },
      { data: randData([16], rng, 0.5, 1.5), shape: [16] },
      { data: randData([16], rng), shape: [16] },
    ],
    { samples: 8, h: 1e-3, atol: 5e-3 },
  );
});
