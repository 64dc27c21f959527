/**
 * Voxel-level check of inference across refactors: trains a few tiny runs that cover the kinds of
 * output `predict` writes (per-modality maps of misaligned cardiac data, the fused map and region
 * outputs of co-registered BraTS data, stand-ins of unpaired abdomen data, the low-resolution
 * stage), predicts with several options and records a hash of every written label map (voxels,
 * dims and affine), the runs' own final predictions included.
 *
 *   deno run -A scripts/predict_check.ts --out DIR            trains the runs into DIR/runs
 *   deno run -A scripts/predict_check.ts --out DIR2 --runs DIR/runs
 *                                                             predicts with those runs again
 *   deno run -A scripts/predict_check.ts --compare DIR/hashes.json DIR2/hashes.json
 *
 * Training is deterministic (one thread), so the runs of two checkouts can be compared too.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { readNifti } from "../src/data/nifti.ts";
import { setCacheRoot } from "../src/train/data.ts";
import { type RunPlan, trainTask } from "../src/train/run.ts";
import { RunFolder } from "../src/train/run_folder.ts";
import { casesFromDataset, predictCases, type PredictOptions } from "../src/infer/predict_run.ts";
import { loadRun } from "../src/train/load_run.ts";
import { writeBrats2021 } from "../tests/real_layouts.ts";

const { values: args } = parseArgs({
  options: {
    out: { type: "string" },
    runs: { type: "string" },
    compare: { type: "boolean" },
  },
  allowPositionals: true,
  args: Deno.args,
});

if (args.compare) {
  const [a, b] = Deno.args.filter((x) => !x.startsWith("--"));
  const ha = JSON.parse(readFileSync(a, "utf8")), hb = JSON.parse(readFileSync(b, "utf8"));
  const keys = [...new Set([...Object.keys(ha), ...Object.keys(hb)])].sort();
  const diff = keys.filter((k) => ha[k] !== hb[k]);
  for (const k of diff) {
    console.log(`differs: ${k} (${ha[k] ?? "missing"} vs ${hb[k] ?? "missing"})`);
  }
  console.log(`${keys.length - diff.length} of ${keys.length} label maps identical`);
  Deno.exit(diff.length ? 1 : 0);
}

if (!args.out) throw new Error("give --out DIR");
const out = path.resolve(args.out);
Deno.mkdirSync(out, { recursive: true });
setCacheRoot(path.join(out, "cache"));
const runsDir = path.resolve(args.runs ?? path.join(out, "runs"));

const common = {
  iterations: 3,
  optimizer: { warmup: 1 },
  images: false,
  deterministic: true,
  threads: 1,
  loaderWorkers: 0,
};
interface RunSpec {
  name: string;
  config: () => Promise<Record<string, unknown>>;
  /** The split predicted (every case when absent). */
  split?: string;
}
const bratsData = path.join(out, "brats");
const specs: RunSpec[] = [
  {
    name: "cardiac-cmc",
    split: "val",
    config: () =>
      Promise.resolve({
        task: "cardiac",
        syntheticCases: 6,
        labeled: 2,
        patchSize: [4, 32, 32],
        network: { baseWidth: 8, maxLevels: 3 },
        validation: { every: 0, overlap: 0.25 },
      }),
  },
  {
    name: "brats-regions-fused",
    split: "val",
    config: async () => {
      if (!existsSync(bratsData)) await writeBrats2021(bratsData, { cases: 5 });
      return {
        task: bratsData,
        modalities: ["t1", "t1ce", "t2", "flair"],
        patchSize: [8, 16, 16],
        network: { baseWidth: 4, maxLevels: 3 },
        validation: { every: 0, overlap: 0 },
      };
    },
  },
  {
    name: "abdomen-unpaired",
    config: () =>
      Promise.resolve({
        task: "abdomen",
        syntheticCases: 6,
        patchSize: [8, 32, 32],
        network: { baseWidth: 4, maxLevels: 3 },
        validation: { every: 0, overlap: 0 },
      }),
  },
  {
    name: "abdomen-lowres-mutual",
    config: () =>
      Promise.resolve({
        task: "abdomen",
        method: "mutual",
        syntheticCases: 6,
        patchVoxels: 2048,
        network: { baseWidth: 4, maxLevels: 3 },
        validation: { every: 0, overlap: 0, largestComponent: true },
      }),
  },
];

async function hashNifti(file: string): Promise<string> {
  const img = await readNifti(file);
  const h = createHash("sha256");
  h.update(JSON.stringify({ dims: img.dims, affine: img.affine, type: img.header.datatype }));
  h.update(new Uint8Array(Float32Array.from(img.data).buffer));
  return h.digest("hex").slice(0, 16);
}

const hashes: Record<string, string> = {};
async function hashFolder(dir: string, key: string) {
  for (const name of readdirSync(dir).sort()) {
    if (name.endsWith(".nii.gz")) hashes[`${key}/${name}`] = await hashNifti(path.join(dir, name));
  }
}

const variants: Record<string, Partial<PredictOptions>> = {
  default: {},
  "no-mirror": { mirror: false },
  "per-modality": { perModality: true, mirror: false },
  "file-values": { labelValues: "file", mirror: false, overlap: 0.5 },
};

for (const spec of specs) {
  const dir = path.join(runsDir, spec.name);
  const folder = new RunFolder(dir);
  if (!folder.exists("last")) {
    const t = performance.now();
    const r = await trainTask({ ...common, ...(await spec.config()), out: dir }, { quiet: true });
    r.model.dispose();
    console.error(`trained ${spec.name} in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  }
  const plan = folder.readJson("plan").value as RunPlan;
  console.error(`${spec.name}: stage ${plan.stage}, spacing ${plan.targetSpacing}`);
  await hashFolder(folder.path("predictions"), `${spec.name}/train-predictions`);
  const source = JSON.parse(readFileSync(folder.path("log"), "utf8").split("\n")[0]).data
    .source;
  const run = await loadRun(dir);
  try {
    const cases = await casesFromDataset(source, run, { split: spec.split });
    for (const [v, o] of Object.entries(variants)) {
      const dest = path.join(out, "pred", spec.name, v);
      await predictCases(run, cases, { outDir: dest, ...o });
      await hashFolder(dest, `${spec.name}/${v}`);
    }
  } finally {
    run.dispose();
  }
}
writeFileSync(path.join(out, "hashes.json"), JSON.stringify(hashes, null, 1) + "\n");
console.log(
  `${Object.keys(hashes).length} label maps hashed into ${path.join(out, "hashes.json")}`,
);
