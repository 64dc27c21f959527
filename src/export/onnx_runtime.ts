/**
 * Running an exported model in ONNX Runtime (onnxruntime-node, CPU): an inference session with its
 * plan, a sliding-window predictor (src/infer/sliding_window.ts) with the session as network, and
 * a whole preprocessed case predicted with it as `predict` does (src/train/validate.ts
 * predictCase).
 *
 * @module
 */
import * as ort from "onnxruntime-node";
import type { Volume } from "../data/cases.ts";
import {
  type PatchBatch,
  type PatchPredictor,
  slidingWindowInference,
} from "../infer/sliding_window.ts";
import { resampleOnto } from "../infer/predictor.ts";
import { type OnnxPlan, PLAN_FORMAT, PLAN_KEY } from "./export_run.ts";
import { readOnnxMetadata } from "./onnx_graph.ts";

export interface OnnxModel {
  session: ort.InferenceSession;
  plan: OnnxPlan;
  release(): Promise<void>;
}

/** Opens an exported model (a file or its bytes) and reads its plan. */
export async function openOnnxModel(source: string | Uint8Array): Promise<OnnxModel> {
  const bytes = typeof source === "string" ? await Deno.readFile(source) : source;
  const what = typeof source === "string" ? source : "the ONNX model";
  const raw = readOnnxMetadata(bytes)[PLAN_KEY];
  if (raw === undefined) throw new Error(`Cannot open ${what}: it has no ${PLAN_KEY} metadata`);
  const plan = JSON.parse(raw) as OnnxPlan;
  if (plan.format !== PLAN_FORMAT) {
    throw new Error(`Cannot open ${what}: plan format ${plan.format}, expected ${PLAN_FORMAT}`);
  }
  const session = await ort.InferenceSession.create(bytes);
  return { session, plan, release: () => session.release() };
}

/** Logits per output of one batch, images given per modality in plan.modalities order. */
export async function runOnnx(
  model: OnnxModel,
  images: readonly Float32Array[],
  shape: readonly [number, number, number, number],
): Promise<Float32Array[]> {
  const { plan, session } = model;
  const dims = [shape[0], 1, shape[1], shape[2], shape[3]];
  const feeds = Object.fromEntries(plan.inputs.map((p) => {
    const i = plan.modalities.indexOf(p.modality);
    return [p.name, new ort.Tensor("float32", images[i] as Float32Array, dims)];
  }));
  const got = await session.run(feeds);
  return plan.outputs.map((o) => got[o.name].data as Float32Array);
}

function sigmoid(v: number): number {
  return 1 / (1 + Math.exp(-v));
}

/** Probabilities [B, K, vox] from one output's logits [B, C, vox] (softmax or nested regions). */
export function outputProbabilities(
  logits: Float32Array,
  batch: number,
  vox: number,
  plan: OnnxPlan,
): Float32Array {
  const K = plan.classes.length;
  const out = new Float32Array(batch * K * vox);
  if (plan.outputActivation === "softmax") {
    for (let b = 0; b < batch; b++) {
      const base = b * K * vox;
      for (let v = 0; v < vox; v++) {
        let max = -Infinity;
        for (let k = 0; k < K; k++) max = Math.max(max, logits[base + k * vox + v]);
        let s = 0;
        for (let k = 0; k < K; k++) {
          s += out[base + k * vox + v] = Math.exp(logits[base + k * vox + v] - max);
        }
        for (let k = 0; k < K; k++) out[base + k * vox + v] /= s;
      }
    }
    return out;
  }
  // Nested regions r = 0..R-1: P(class of ring r) = prod_{j<=r} s_j * (1 - s_{r+1}).
  const regions = plan.regions!.classes;
  const R = regions.length;
  for (let b = 0; b < batch; b++) {
    for (let v = 0; v < vox; v++) {
      const s = Array.from({ length: R }, (_, r) => sigmoid(logits[(b * R + r) * vox + v]));
      out[b * K * vox + v] = 1 - s[0];
      let prefix = 1;
      for (let r = 0; r < R; r++) {
        prefix *= s[r];
        const ring = regions[r].filter((c) => !(regions[r + 1] ?? []).includes(c));
        out[(b * K + Math.min(...ring)) * vox + v] = r + 1 < R ? prefix * (1 - s[r + 1]) : prefix;
      }
    }
  }
  return out;
}

/**
 * A sliding-window predictor with the session as network: it returns the probabilities of the
 * outputs `outputs` (indices into plan.outputs), concatenated over the channel axis. Batches carry
 * one patch per modality in plan.modalities order.
 */
export function onnxPredictor(model: OnnxModel, outputs: number[]): PatchPredictor {
  return async (batch: PatchBatch) => {
    const [d, h, w] = batch.patchSize;
    const B = batch.batchSize;
    const vox = d * h * w;
    const logits = await runOnnx(model, batch.patches, [B, d, h, w]);
    const K = model.plan.classes.length;
    const probs = outputs.map((o) => outputProbabilities(logits[o], B, vox, model.plan));
    if (probs.length === 1) return probs[0];
    // Concatenate over channels: [B, K * outputs, vox].
    const out = new Float32Array(B * K * probs.length * vox);
    for (let b = 0; b < B; b++) {
      probs.forEach((p, i) =>
        out.set(p.subarray(b * K * vox, (b + 1) * K * vox), (b * probs.length + i) * K * vox)
      );
    }
    return out;
  };
}

/** Key of the fused prediction in predictVolumesOnnx's result (as FUSED_OUTPUT in predict). */
export const ONNX_FUSED = "fused";

function gridKey(v: Volume): string {
  return JSON.stringify([v.dims, v.affine.map((x) => Math.round(x * 1e4) / 1e4)]);
}

/**
 * Probabilities [K, z, y, x] per output modality (by name) of one preprocessed case (volumes of
 * every modality of the plan, on the run's target spacing), and under ONNX_FUSED their mean when
 * the model has several outputs and the modalities share one grid. Each distinct grid of the
 * output modalities is predicted in one pass, the other modalities resampled onto it.
 */
export async function predictVolumesOnnx(
  model: OnnxModel,
  volumes: Readonly<Record<string, Volume>>,
  opts: { overlap?: number; mirror?: boolean } = {},
): Promise<Map<string, Float32Array>> {
  const plan = model.plan;
  const K = plan.classes.length;
  for (const m of plan.modalities) {
    if (!volumes[m]) throw new Error(`Cannot predict with the ONNX model: no ${m} volume`);
  }
  const groups = new Map<string, number[]>();
  plan.outputs.forEach((o, i) => {
    const key = gridKey(volumes[o.modality]);
    groups.set(key, [...(groups.get(key) ?? []), i]);
  });
  const result = new Map<string, Float32Array>();
  for (const outs of groups.values()) {
    const ref = volumes[plan.outputs[outs[0]].modality];
    const sources = plan.modalities.map((m) => volumes[m]);
    const inputs = sources.map((v) => gridKey(v) === gridKey(ref) ? v.data : resampleOnto(v, ref));
    const dims: [number, number, number] = [ref.dims[2], ref.dims[1], ref.dims[0]];
    const probs = await slidingWindowInference({ data: inputs, dims }, onnxPredictor(model, outs), {
      patchSize: plan.patchSize,
      numClasses: K * outs.length,
      overlap: opts.overlap ?? plan.slidingWindow.overlap,
      mirror: opts.mirror ?? plan.slidingWindow.mirror,
      outputs: "probabilities",
      padValue: sources.map((v) => v.padValue),
    });
    const n = dims[0] * dims[1] * dims[2];
    outs.forEach((o, i) =>
      result.set(plan.outputs[o].modality, probs.slice(i * K * n, (i + 1) * K * n))
    );
  }
  if (result.size > 1 && groups.size === 1) {
    const all = [...result.values()];
    const fused = new Float32Array(all[0].length);
    for (const p of all) for (let i = 0; i < fused.length; i++) fused[i] += p[i];
    for (let i = 0; i < fused.length; i++) fused[i] /= all.length;
    result.set(ONNX_FUSED, fused);
  }
  return result;
}
