// The names of the engine's public surface that other modules are written against
// (/work/briefs/ts_api.md): removing or renaming one must fail here first.
import { deepStrictEqual } from "node:assert/strict";
import * as E from "./engine.ts";

const CONTRACT = [
  "initBackend getBackend OP_DECLS NativeError Backend",
  "Tensor tensor zeros ones full randn parameter detach",
  "tidy noGrad dispose backward zeroGrad",
  "conv3d convTranspose3d groupNorm instanceNorm",
  "relu leakyRelu sigmoid gelu exp log tanh sqrt abs neg",
  "add sub mul div maximum equal affine mulScalar addScalar",
  "concat slice split matmul softmax sum mean max expand reshape",
  "adaptiveAvgPool3d l2Normalize softmaxCrossEntropy diceStats argmax",
  "sgdUpdate adamwUpdate emaUpdate",
].join(" ").split(" ");

Deno.test("engine exports every name of the API contract", () => {
  deepStrictEqual(CONTRACT.filter((n) => !(n in E)), []);
  for (const n of CONTRACT) {
    const v = (E as Record<string, unknown>)[n];
    deepStrictEqual(typeof v === "function" || (n === "OP_DECLS" && Array.isArray(v)), true, n);
  }
});

Deno.test("assign overwrites a tensor in place and checks length and dtype", () => {
  const t = E.zeros([2, 3]);
  E.assign(t, Float32Array.from([1, 2, 3, 4, 5, 6]));
  deepStrictEqual(Array.from(t.toArray()), [1, 2, 3, 4, 5, 6]);
  for (const bad of [new Float32Array(5), new Int32Array(6)]) {
    let msg = "";
    try {
      E.assign(t, bad);
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!msg.includes("needs 6 f32 values")) {
      throw new Error(`assign accepted ${bad.constructor.name}(${bad.length}): '${msg}'`);
    }
  }
  t.dispose();
});
