/**
 * 3D convolution and transposed convolution with their backward ops. Parameter gradients use
 * the native accumulate-into-slot convention: an existing gradient is passed as the dW/db output
 * slot and the kernel adds into it.
 * @module
 */
import { formatShape, triple } from "../tensor/shape.ts";
import { getBackend } from "../backend/backend.ts";
import { allocTensor, recordNode, type Tensor, wrapNative } from "../tensor/tensor.ts";
import { checkF32, checkRank, needsGrad } from "./check.ts";
import { exec1, execOp } from "./exec.ts";

/** Options of conv3d: each a number or a per-axis [d,h,w] triple. */
export interface Conv3dOptions {
  stride?: number | readonly number[];
  padding?: number | readonly number[];
  dilation?: number | readonly number[];
}

interface Geometry {
  stride: [number, number, number];
  padding: [number, number, number];
  dilation: [number, number, number];
}

function geometry(fn: string, opts: Conv3dOptions, defStride: number): Geometry {
  const g: Geometry = {
    stride: triple(opts.stride ?? defStride, `${fn} stride`),
    padding: triple(opts.padding ?? 0, `${fn} padding`),
    dilation: triple(opts.dilation ?? 1, `${fn} dilation`),
  };
  for (let i = 0; i < 3; i++) {
    if (g.stride[i] < 1 || g.dilation[i] < 1 || g.padding[i] < 0) {
      throw new Error(
        `${fn}: stride ${formatShape(g.stride)} and dilation ${
          formatShape(g.dilation)
        } must be >= 1, ` +
          `padding ${formatShape(g.padding)} >= 0`,
      );
    }
  }
  return g;
}

function checkConvInputs(
  fn: string,
  x: Tensor,
  w: Tensor,
  b: Tensor | null,
  wInAxis: number,
): void {
  checkF32(fn, "x", x);
  checkF32(fn, "w", w);
  checkRank(fn, "x", x, 5);
  checkRank(fn, "w", w, 5);
  if (x.shape[1] !== w.shape[wInAxis]) {
    throw new Error(
      `${fn}: x ${x.describe()} has ${x.shape[1]} channels, w ${w.describe()} expects ${
        w.shape[wInAxis]
      }`,
    );
  }
  if (b !== null) {
    checkF32(fn, "b", b);
    const co = w.shape[1 - wInAxis];
    if (b.shape.length !== 1 || b.shape[0] !== co) {
      throw new Error(
        `${fn}: bias b ${b.describe()} must have shape [${co}] (output channels of w ${w.describe()})`,
      );
    }
  }
}

/**
 * Shared backward for conv and transposed conv: dx through *_BACKWARD_DATA, dw/db through
 * *_BACKWARD_WEIGHTS (only what is needed; dw/db accumulate into existing gradients).
 */
function convBackward(
  fn: string,
  ops: {
    data: "CONV3D_BACKWARD_DATA" | "CONV_TRANSPOSE3D_BACKWARD_DATA";
    weights: "CONV3D_BACKWARD_WEIGHTS" | "CONV_TRANSPOSE3D_BACKWARD_WEIGHTS";
  },
  x: Tensor,
  w: Tensor,
  bShape: readonly number[] | null,
  params: Record<string, number | readonly number[]>,
) {
  const xShape = x.shape, wShape = w.shape;
  return (
    g: (Tensor | null)[],
    ctx: { needs: readonly boolean[]; slot(i: number): Tensor | null },
  ) => {
    const dy = g[0]!;
    const out: (Tensor | null)[] = [null, null, null];
    if (ctx.needs[0]) out[0] = exec1(ops.data, fn, [dy, w], params, xShape, "f32", ["dy", "w"]);
    const needW = ctx.needs[1], needB = bShape !== null && ctx.needs[2];
    if (needW || needB) {
      // The kernel size cannot be inferred from x and dy for strided convs, so there dw always
      // gets a slot: the accumulated gradient, or zeros (the kernel adds into a given slot).
      // With stride 1 a NULL slot lets the kernel allocate and write (=) without a zero fill.
      let dw = needW ? ctx.slot(1) : null;
      const strided = (params.stride as readonly number[]).some((v) => v !== 1);
      if (dw === null && strided) {
        dw = allocTensor(wShape, "f32", fn);
        execOp("FILL", fn, [], [dw], { value: 0 });
      }
      const dbSlot = needB ? ctx.slot(2) : null;
      const [pw, pb] = execOp(
        ops.weights,
        fn,
        [x, dy],
        [dw, dbSlot],
        { ...params, has_bias: needB ? 1 : 0 },
        ["x", "dy"],
      );
      // An allocated dw nobody needs is still wrapped, so the rule's scope releases it.
      if (dw === null) dw = wrapNative(pw, wShape, "f32", getBackend());
      if (needW) out[1] = dw;
      if (needB) out[2] = dbSlot ?? wrapNative(pb, bShape!, "f32", getBackend());
    }
    return out;
  };
}

/** 3D convolution: x [N,Ci,D,H,W], w [Co,Ci,kd,kh,kw], b [Co] or null -> [N,Co,...]. */
export function conv3d(x: Tensor, w: Tensor, b: Tensor | null, opts: Conv3dOptions = {}): Tensor {
  const fn = "conv3d";
  checkConvInputs(fn, x, w, b, 1);
  const geo = geometry(fn, opts, 1);
  const out = [x.shape[0], w.shape[0], 0, 0, 0];
  for (let i = 0; i < 3; i++) {
    const eff = geo.dilation[i] * (w.shape[2 + i] - 1) + 1;
    const o = Math.floor((x.shape[2 + i] + 2 * geo.padding[i] - eff) / geo.stride[i]) + 1;
    if (o < 1) {
      throw new Error(
        `${fn}: x ${x.describe()} is too small for kernel ${
          formatShape(w.shape.slice(2))
        } with padding ` +
          `${formatShape(geo.padding)} and dilation ${formatShape(geo.dilation)}`,
      );
    }
    out[2 + i] = o;
  }
  const params = { ...geo, has_bias: b !== null ? 1 : 0, in_dims: x.shape.slice(2) };
  const y = exec1("CONV3D_FORWARD", fn, [x, w, b], params, out, "f32", ["x", "w", "b"]);
  if (needsGrad(x, w, b)) {
    const saved: Tensor[] = [];
    if (x.requiresGrad) saved.push(w);
    if (w.requiresGrad || (b !== null && b.requiresGrad)) saved.push(x);
    recordNode(
      fn,
      [x, w, b],
      [y],
      saved,
      convBackward(
        fn,
        { data: "CONV3D_BACKWARD_DATA", weights: "CONV3D_BACKWARD_WEIGHTS" },
        x,
        w,
        b ? b.shape : null,
        params,
      ),
    );
  }
  return y;
}

/**
 * 3D transposed convolution: x [N,Ci,D,H,W], w [Ci,Co,kd,kh,kw] (PyTorch layout), b [Co] or null.
 * Output dims (D-1)*stride - 2*padding + dilation*(k-1) + 1; stride defaults to 2.
 */
export function convTranspose3d(
  x: Tensor,
  w: Tensor,
  b: Tensor | null,
  opts: Conv3dOptions = {},
): Tensor {
  const fn = "convTranspose3d";
  checkConvInputs(fn, x, w, b, 0);
  const geo = geometry(fn, opts, 2);
  const out = [x.shape[0], w.shape[1], 0, 0, 0];
  for (let i = 0; i < 3; i++) {
    const o = (x.shape[2 + i] - 1) * geo.stride[i] - 2 * geo.padding[i] +
      geo.dilation[i] * (w.shape[2 + i] - 1) + 1;
    if (o < 1) {
      throw new Error(
        `${fn}: output dim ${i} of x ${x.describe()} with w ${w.describe()} would be ${o}`,
      );
    }
    out[2 + i] = o;
  }
  const params = { ...geo, has_bias: b !== null ? 1 : 0, in_dims: x.shape.slice(2) };
  const y = exec1("CONV_TRANSPOSE3D_FORWARD", fn, [x, w, b], params, out, "f32", ["x", "w", "b"]);
  if (needsGrad(x, w, b)) {
    const saved: Tensor[] = [];
    if (x.requiresGrad) saved.push(w);
    if (w.requiresGrad || (b !== null && b.requiresGrad)) saved.push(x);
    recordNode(
      fn,
      [x, w, b],
      [y],
      saved,
      convBackward(
        fn,
        { data: "CONV_TRANSPOSE3D_BACKWARD_DATA", weights: "CONV_TRANSPOSE3D_BACKWARD_WEIGHTS" },
        x,
        w,
        b ? b.shape : null,
        params,
      ),
    );
  }
  return y;
}
