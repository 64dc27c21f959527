import { equal, match, ok, throws } from "node:assert/strict";
import { getBackend, initBackend, NativeError } from "./backend.ts";
import { defaultLibPath } from "./ffi.ts";
import { opDecl, packParams } from "../ops/op_decls.ts";
import { softmaxCrossEntropy } from "../ops/losses.ts";
import { relu } from "../ops/unary.ts";
import { tensor } from "../tensor/factories.ts";
import { tidy } from "../tensor/scope.ts";

Deno.test("initBackend loads the CPU library once and makes it current", () => {
  const be = initBackend({ device: "cpu" });
  equal(getBackend(), be);
  equal(initBackend({ device: "cpu" }), be);
  equal(be.device, "cpu");
  match(be.version, /^comodal-cpu /);
  equal(be.supportsOp("CONV3D_FORWARD"), true);
  throws(() => be.supportsOp("NOPE" as "COPY"), /Unknown native op "NOPE"/);
  const s = be.memoryStats();
  for (const k of ["liveBuffers", "liveBytes", "peakBytes", "poolBytes"] as const) {
    ok(Number.isInteger(s[k]) && s[k] >= 0, k);
  }
  throws(() => be.setThreads(-1), /setThreads: expected an integer >= 0/);
});

Deno.test("memoryStats follows allocations and resetPeak", () => {
  const be = getBackend();
  const before = be.memoryStats();
  const t = tensor(new Float32Array(1000), [1000]);
  const mid = be.memoryStats();
  equal(mid.liveBuffers, before.liveBuffers + 1);
  ok(mid.liveBytes >= before.liveBytes + 4000);
  t.dispose();
  equal(be.memoryStats().liveBytes, before.liveBytes);
  be.resetPeak();
  equal(be.memoryStats().peakBytes, before.liveBytes);
});

Deno.test("a missing library names the path and the fix, and leaves the backend usable", () => {
  const cur = getBackend();
  throws(() => initBackend({ libPath: "/nonexistent/libcomodal_cpu.so" }), {
    message:
      "Cannot load the comodal cpu library at /nonexistent/libcomodal_cpu.so: file not found; run `make native`",
  });
  equal(getBackend(), cur);
  tidy(() => equal(relu(tensor([-1, 2], [2])).toArray()[1], 2));
});

Deno.test("CUDA without a GPU says 'no CUDA device' and CPU stays current", () => {
  const cpu = getBackend();
  let exists = true;
  try {
    Deno.statSync(defaultLibPath("cuda"));
  } catch {
    exists = false;
  }
  try {
    const be = initBackend({ device: "cuda" });
    // A machine with a GPU: the CUDA backend works; switch back.
    equal(be.device, "cuda");
    initBackend({ device: "cpu" });
  } catch (e) {
    if (!exists) match((e as Error).message, /file not found; run `make native`/);
    else {
      ok(e instanceof NativeError, `expected a NativeError, got ${e}`);
      match((e as Error).message, /no CUDA device/);
      equal((e as NativeError).status, 4);
    }
  }
  equal(getBackend(), cpu);
  tidy(() => equal(relu(tensor([-1, 2], [2])).toArray()[0], 0));
});

Deno.test("native failures become NativeError naming the op and input shapes", () => {
  tidy(() => {
    const logits = tensor(new Float32Array(6), [2, 3]);
    const labels = tensor(new Int32Array([0, 7]), [2]);
    try {
      softmaxCrossEntropy(logits, labels);
      throw new Error("expected a NativeError");
    } catch (e) {
      ok(e instanceof NativeError, String(e));
      equal((e as NativeError).status, 1);
      match(
        (e as Error).message,
        /^softmaxCrossEntropy: SOFTMAX_CROSS_ENTROPY_FORWARD failed on logits \[2,3\] f32, labels \[2\] i32: /,
      );
      match((e as NativeError).nativeMessage, /7/);
    }
  });
});

Deno.test("packParams writes 8-byte little-endian fields in header order and rejects bad fields", () => {
  const view = new DataView(new ArrayBuffer(256));
  const d = opDecl("CONV3D_FORWARD");
  const n = packParams(d, {
    stride: [1, 2, 3],
    padding: [0, 1, 0],
    dilation: [1, 1, 1],
    has_bias: 1,
    in_dims: [4, 5, 6],
  }, view);
  equal(n, 13 * 8);
  equal(view.getBigInt64(8, true), 2n);
  equal(view.getBigInt64(9 * 8, true), 1n);
  equal(view.getBigInt64(12 * 8, true), 6n);
  const g = opDecl("GROUP_NORM_FORWARD");
  packParams(g, { groups: 4, eps: 1e-5 }, view);
  equal(view.getFloat64(8, true), 1e-5);
  throws(() => packParams(g, { group: 4 }, view), /unknown params field "group"/);
  throws(() => packParams(d, { stride: [1, 1, 1, 1] }, view), /takes at most 3 values/);
  throws(() => packParams(g, { groups: 1.5 }, view), /must be an integer/);
});

Deno.test("an op the backend does not support fails before the native call, naming op and shapes", () => {
  const be = getBackend();
  be._setSupported("UNARY_FORWARD", false);
  try {
    equal(be.supportsOp("UNARY_FORWARD"), false);
    tidy(() => {
      throws(() => relu(tensor([1, 2], [1, 2])), {
        message:
          `relu: op UNARY_FORWARD is not supported by the cpu backend (${be.version}); called with ` +
          `x [1,2] f32; check backend.supportsOp("UNARY_FORWARD") first`,
      });
    });
  } finally {
    be._setSupported("UNARY_FORWARD", true);
  }
  tidy(() => equal(relu(tensor([-1], [1])).item(), 0));
});

Deno.test("OpenMP threads sleep while waiting (OMP_WAIT_POLICY passive) unless the user chose a policy", () => {
  getBackend();
  const p = Deno.env.get("OMP_WAIT_POLICY");
  ok(p !== undefined, "OMP_WAIT_POLICY is set before the library loads");
  if (p !== "active") equal(p?.toLowerCase(), "passive");
});
