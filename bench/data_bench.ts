/**
 * Data pipeline benchmark: NIfTI read and read+preprocess throughput (MB/s of stored voxel bytes)
 * for a 256x256x128 int16 .nii.gz volume and for a multimodal synthetic cardiac case, and the
 * PatchLoader rate for 2-modality 96^3 augmented patches (patches/s, in this thread and with
 * background workers).
 *
 * @module
 */
import process from "node:process";
import {
  type BenchModule,
  type BenchOptions,
  type BenchResult,
  type Cell,
  median,
} from "./report.ts";
import { readNifti, writeNifti } from "../src/data/nifti.ts";
import type { Manifest } from "../src/data/manifest.ts";
import { loadManifest } from "../src/data/manifest.ts";
import { preprocessDataset } from "../src/data/prepared_cache.ts";
import { synthesize } from "../src/data/synth.ts";
import { PatchLoader } from "../src/data/loader.ts";
import { Rng } from "../src/data/rng.ts";

/** CPU time of this process (all threads) in ms. */
function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Wall times (ms) of each run; `cpu` receives the CPU ms of each run (shared machines inflate wall time). */
async function timeAsync(
  fn: () => Promise<unknown>,
  opts: { warmup: number; runs: number },
  cpu: number[] = [],
): Promise<number[]> {
  for (let i = 0; i < opts.warmup; i++) await fn();
  const out: number[] = [];
  for (let i = 0; i < opts.runs; i++) {
    const c0 = cpuMs();
    const t0 = performance.now();
    await fn();
    out.push(performance.now() - t0);
    cpu.push(cpuMs() - c0);
  }
  return out;
}

/** A smooth MR-like int16 volume with a body outline and noise. */
function bodyVolume(dims: [number, number, number], seed: number, labels = false): Float32Array {
  const [nx, ny, nz] = dims;
  const out = new Float32Array(nx * ny * nz);
  const rng = new Rng(seed);
  const noise = rng.fillNormal(new Float32Array(out.length), 20);
  let i = 0;
  for (let z = 0; z < nz; z++) {
    for (let y = 0; y < ny; y++) {
      for (let x = 0; x < nx; x++, i++) {
        const u = (x - nx / 2) / (nx * 0.42),
          v = (y - ny / 2) / (ny * 0.36),
          w = (z - nz / 2) / (nz * 0.6);
        const r = u * u + v * v + w * w;
        if (labels) out[i] = r < 0.15 ? 1 : r < 0.3 && x > nx / 2 ? 2 : 0;
        else {out[i] = r < 1
            ? Math.round(
              600 + 300 * Math.sin(x / 9) * Math.cos(y / 11) + 200 * (r < 0.15 ? 1 : 0) + noise[i],
            )
            : 0;}
      }
    }
  }
  return out;
}

async function fileSize(p: string): Promise<number> {
  return (await Deno.stat(p)).size;
}

export const dataBench: BenchModule = {
  name: "data",
  description:
    "NIfTI read / read+preprocess MB/s (256x256x128 int16, multimodal case), loader patches/s (2 x 96^3)",
  async run(opts: BenchOptions): Promise<BenchResult> {
    const tmp = await Deno.makeTempDir({ prefix: "comodal_data_bench_" });
    const rows: Cell[][] = [];
    const details: Record<string, unknown> = {};
    const timing = {
      warmup: Math.min(opts.warmup, 1),
      runs: opts.quick ? 1 : Math.max(1, Math.min(opts.runs, 5)),
    };
    try {
      // 1. One 256x256x128 int16 volume (LPS storage, anisotropic spacing).
      const dims: [number, number, number] = opts.quick ? [128, 128, 64] : [256, 256, 128];
      const affine = [-0.8, 0, 0, 100, 0, -0.8, 0, 110, 0, 0, 2.5, -150, 0, 0, 0, 1];
      const img = `${tmp}/vol.nii.gz`, lab = `${tmp}/vol_seg.nii.gz`;
      await writeNifti(img, { data: bodyVolume(dims, 1), dims, affine }, { datatype: "int16" });
      await writeNifti(lab, { data: bodyVolume(dims, 1, true), dims, affine }, {
        datatype: "uint8",
      });
      const rawMB = (dims[0] * dims[1] * dims[2] * 2) / 1e6;
      let cpu: number[] = [];
      const readMs = median(await timeAsync(() => readNifti(img), timing, cpu));
      rows.push([
        `read ${dims.join("x")} int16 .nii.gz`,
        rawMB,
        (await fileSize(img)) / 1e6,
        readMs,
        rawMB / (readMs / 1000),
        rawMB / (median(cpu) / 1000),
      ]);
      const single: Manifest = {
        task: "bench",
        modalities: ["MR"],
        classes: { a: 1, b: 2 },
        root: tmp,
        cases: [{
          id: "vol",
          images: { MR: img },
          labels: { MR: lab },
          labeled: true,
          split: "train",
        }],
      };
      cpu = [];
      const preMs = median(
        await timeAsync(
          () =>
            preprocessDataset(single, {
              outDir: `${tmp}/pre1`,
              targetSpacing: [0.8, 0.8, 2.5],
              force: true,
            }),
          timing,
          cpu,
        ),
      );
      rows.push([
        `read+preprocess ${dims.join("x")} (same spacing)`,
        rawMB,
        (await fileSize(img)) / 1e6,
        preMs,
        rawMB / (preMs / 1000),
        rawMB / (median(cpu) / 1000),
      ]);
      cpu = [];
      const preResMs = median(
        await timeAsync(
          () =>
            preprocessDataset(single, {
              outDir: `${tmp}/pre2`,
              targetSpacing: [1, 1, 2],
              force: true,
            }),
          timing,
          cpu,
        ),
      );
      rows.push([
        `read+preprocess ${dims.join("x")} (resample to 1x1x2 mm)`,
        rawMB,
        (await fileSize(img)) / 1e6,
        preResMs,
        rawMB / (preResMs / 1000),
        rawMB / (median(cpu) / 1000),
      ]);

      // 2. A multimodal case: one synthetic cardiac case (C0, LGE, T2 with labels).
      const syn = await synthesize("cardiac", {
        outDir: `${tmp}/cardiac`,
        cases: 1,
        seed: 1,
        workers: 0,
      });
      const cm = await loadManifest(syn.manifestPath);
      cm.cases[0].split = "train";
      let mmBytes = 0, mmFile = 0;
      for (const f of syn.files.filter((f) => !f.endsWith("_manual.nii.gz"))) {
        const im = await readNifti(f);
        mmBytes += im.data.length * (im.header.datatype === "float32" ? 4 : 2);
        mmFile += await fileSize(f);
      }
      cpu = [];
      const mmMs = median(
        await timeAsync(
          () => preprocessDataset(cm, { outDir: `${tmp}/pre3`, force: true }),
          timing,
          cpu,
        ),
      );
      rows.push([
        "read+preprocess cardiac case (C0+LGE+T2, labels)",
        mmBytes / 1e6,
        mmFile / 1e6,
        mmMs,
        mmBytes / 1e6 / (mmMs / 1000),
        mmBytes / 1e6 / (median(cpu) / 1000),
      ]);

      // 3. Loader: 2-modality 96^3 augmented patches from 1 mm isotropic volumes.
      const ld: [number, number, number] = opts.quick ? [112, 112, 112] : [160, 160, 128];
      const iso = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
      const cases: Manifest["cases"] = [];
      for (let c = 0; c < 2; c++) {
        for (const m of ["A", "B"]) {
          await writeNifti(`${tmp}/l${c}_${m}.nii.gz`, {
            data: bodyVolume(ld, 10 + c + (m === "B" ? 5 : 0)),
            dims: ld,
            affine: iso,
          }, { datatype: "int16" });
        }
        await writeNifti(`${tmp}/l${c}_seg.nii.gz`, {
          data: bodyVolume(ld, 10 + c, true),
          dims: ld,
          affine: iso,
        }, { datatype: "uint8" });
        cases.push({
          id: `l${c}`,
          images: { A: `${tmp}/l${c}_A.nii.gz`, B: `${tmp}/l${c}_B.nii.gz` },
          labels: { shared: `${tmp}/l${c}_seg.nii.gz` },
          labeled: true,
          split: "train",
          aligned: true,
        });
      }
      await preprocessDataset({
        task: "loader",
        modalities: ["A", "B"],
        classes: { a: 1, b: 2 },
        root: tmp,
        cases,
      }, { outDir: `${tmp}/pre4` });
      const nBatches = opts.quick ? 4 : 12;
      const loaderRates: Record<string, number> = {};
      for (const workers of [0, 1, 2]) {
        const loader = await PatchLoader.create({
          dir: `${tmp}/pre4`,
          patchSize: [96, 96, 96],
          labeledBatch: 1,
          unlabeledBatch: 1,
          seed: 1,
          workers,
        });
        try {
          await loader.next(); // warm up (JIT, worker start)
          const c0 = cpuMs();
          const t0 = performance.now();
          for (let i = 0; i < nBatches; i++) await loader.next();
          const ms = performance.now() - t0;
          const cms = cpuMs() - c0;
          const patches = nBatches * 2;
          loaderRates[`workers${workers}`] = patches / (ms / 1000);
          rows.push([
            `loader 2x96^3 augmented, ${
              workers === 0 ? "this thread" : `${workers} worker${workers > 1 ? "s" : ""}`
            }`,
            null,
            null,
            ms / patches,
            patches / (ms / 1000),
            patches / (cms / 1000),
          ]);
        } finally {
          await loader.close();
        }
      }
      details.loaderPatchesPerSecond = loaderRates;
      details.volumeDims = dims;
    } finally {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
    return {
      name: "data",
      title: "Data pipeline: NIfTI read, preprocessing and patch loading",
      columns: [
        "task",
        "voxel MB",
        "file MB",
        "ms (median)",
        "MB/s or patches/s",
        "per CPU-second",
      ],
      rows,
      notes: [
        "MB/s: stored voxel bytes (int16 = 2 B/voxel) per second of wall time; loader rows: ms per patch and patches/s",
        "per CPU-second: the same per second of CPU time of the process (all threads), robust on a shared machine",
        "a loader patch = both modalities (96^3 each) with flips, rotations, scaling and intensity augmentation; labeled and unlabeled alternate",
        "preprocess = read, RAS reorientation, resampling, body crop, normalisation, label mapping, write (cache bypassed)",
      ],
      details,
    };
  },
};
