/**
 * `export --run R --out model.onnx`: a trained run's network as an ONNX model that runs without
 * comodal, with everything needed to feed it and read its outputs in the model's metadata.
 *
 * The graph (src/export/onnx_network.ts) takes one float32 image per input modality,
 * [N, 1, D, H, W], and returns logits per output modality, [N, K, D, H, W]. The metadata_props key
 * "comodal.plan" holds a JSON `OnnxPlan`: modalities and their inputs, output names, classes and
 * the label values they stand for, target spacing, patch size, intensity normalisation and the
 * sliding-window settings the run predicts with.
 *
 * @module
 */
import { mkdirSync } from "node:fs";
import * as path from "node:path";
import { planDivisor } from "../nn/plan.ts";
import { type LoadedRun, loadRun } from "../train/load_run.ts";
import type { Regions } from "../train/regions.ts";
import { writeFileAtomicSync } from "../util/atomic_write.ts";
import { networkGraph, type OnnxPort } from "./onnx_network.ts";

/** metadata_props key of the plan. */
export const PLAN_KEY = "comodal.plan";
export const PLAN_FORMAT = "comodal-onnx-plan/1";

/** What a user of the ONNX file needs to prepare inputs and read outputs (see module doc). */
export interface OnnxPlan {
  format: typeof PLAN_FORMAT;
  task: string;
  method: string;
  backbone: string;
  checkpoint: { file: string; iteration: number };
  /** How arrays are laid out. */
  layout: string;
  /** Modalities in model order. */
  modalities: string[];
  inputs: (OnnxPort & { kind: "ct" | "mr" })[];
  outputs: OnnxPort[];
  /** Class names, background first; output channel k is class k (softmax outputs). */
  classes: string[];
  /** The label value of each class in the training dataset's label files. */
  labelValues: number[];
  /** "softmax" over the channel axis, or "sigmoid-regions" (one sigmoid per nested region). */
  outputActivation: "softmax" | "sigmoid-regions";
  /** Nested regions (class indices per output channel) with "sigmoid-regions", else null. */
  regions: Regions | null;
  /** Voxel spacing (x, y, z) in mm the images must be resampled to (after RAS reorientation). */
  targetSpacing: [number, number, number];
  /** Training patch size (D, H, W) = (z, y, x): the sliding window's size. */
  patchSize: [number, number, number];
  /** D, H and W of any input must be multiples of these. */
  sizeMultiple: [number, number, number];
  /** Intensity normalisation per modality. */
  normalization: Record<string, {
    kind: "ct" | "mr";
    method: string;
    mean?: number;
    std?: number;
    clip?: [number, number];
  }>;
  slidingWindow: {
    overlap: number;
    mirror: boolean;
    gaussianSigmaScale: number;
    minWeight: number;
    /** How several outputs of one co-registered case make its one prediction. */
    fuse: string;
  };
  postprocessing: { largestComponent: boolean };
}

/** The plan of a loaded run, for a graph with these inputs and outputs. */
export function onnxPlan(run: LoadedRun, inputs: OnnxPort[], outputs: OnnxPort[]): OnnxPlan {
  const p = run.plan;
  const kinds = p.dataset.modalityKinds;
  const classes = p.dataset.classes;
  const regions = run.model.regions;
  return {
    format: PLAN_FORMAT,
    task: p.dataset.task,
    method: run.config.method,
    backbone: run.config.network.backbone,
    checkpoint: { file: path.basename(run.checkpoint), iteration: run.iteration },
    layout:
      "images [N, 1, D, H, W] and logits [N, K, D, H, W] with (D, H, W) = (z, y, x) of the image " +
      "reoriented to RAS and resampled to targetSpacing, x fastest",
    modalities: [...p.modalities],
    inputs: inputs.map((i) => ({ ...i, kind: kinds[i.modality] ?? "mr" })),
    outputs,
    classes: [...p.classes],
    labelValues: p.classes.map((name, k) => (k === 0 ? classes.background ?? 0 : classes[name])),
    outputActivation: regions ? "sigmoid-regions" : "softmax",
    regions: regions ? { names: [...regions.names], classes: regions.classes } : null,
    targetSpacing: [...p.targetSpacing],
    patchSize: [...p.patch],
    sizeMultiple: planDivisor(p.network),
    normalization: Object.fromEntries(p.modalities.map((m) => {
      const n = p.normalization[m];
      return [
        m,
        n.kind === "ct"
          ? {
            kind: "ct" as const,
            method: "clip to [clip], then (x - mean) / std with the training set's statistics",
            mean: n.mean,
            std: n.std,
            clip: [n.p005, n.p995] as [number, number],
          }
          : {
            kind: "mr" as const,
            method: "z-score over the volume's non-zero voxels (its own mean and std)",
          },
      ];
    })),
    slidingWindow: {
      overlap: run.config.validation.overlap,
      mirror: run.config.validation.mirror,
      gaussianSigmaScale: 0.125,
      minWeight: 1e-4,
      fuse: outputs.length > 1
        ? "mean of the outputs' probabilities when the case has every modality on one grid"
        : "one output",
    },
    postprocessing: { largestComponent: run.config.validation.largestComponent },
  };
}

/** The ONNX model file of a loaded run. */
export function runToOnnx(run: LoadedRun): { bytes: Uint8Array; plan: OnnxPlan } {
  const net = networkGraph(run.model, run.plan.modalities);
  const plan = onnxPlan(run, net.inputs, net.outputs);
  const bytes = net.graph.encode({
    graphName: `${plan.task}_${plan.method}`,
    docString:
      `comodal ${plan.method} network for ${plan.task} (${run.checkpoint}, iteration ${run.iteration}); ` +
      `the "${PLAN_KEY}" metadata entry describes inputs, outputs and preprocessing`,
    metadata: { [PLAN_KEY]: JSON.stringify(plan) },
  });
  return { bytes, plan };
}

export interface ExportResult {
  file: string;
  bytes: number;
  plan: OnnxPlan;
}

/** Exports a run folder's network (weights of `checkpoint`: best, last or a file) to `out`. */
export async function exportRun(
  runDir: string,
  out: string,
  opts: { checkpoint?: string } = {},
): Promise<ExportResult> {
  const run = await loadRun(runDir, { checkpoint: opts.checkpoint, device: "cpu" });
  try {
    const { bytes, plan } = runToOnnx(run);
    const file = path.resolve(out);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileAtomicSync(file, bytes);
    return { file, bytes: bytes.length, plan };
  } finally {
    run.dispose();
  }
}
