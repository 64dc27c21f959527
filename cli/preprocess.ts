/**
 * `preprocess <manifest> --out DIR`: fingerprint, reorient, resample, crop and normalise every case
 * (cached). `patches <dir>`: draws training batches from a preprocessed folder, reports the rate and
 * can write a PNG of the first batch.
 */
import type { Command } from "commander";
import { loadManifest, type ManifestCase } from "../src/data/manifest.ts";
import { preprocessDataset } from "../src/data/prepared_cache.ts";
import { progressBar } from "../src/data/progress.ts";
import { PatchLoader } from "../src/data/loader.ts";

function numbers(name: string, v: string, count: number): number[] {
  const xs = v.split(/[,x]/).map(Number);
  if (xs.length !== count || xs.some((x) => !(x > 0))) {
    throw new Error(
      `${name}: expected ${count} positive numbers like ${
        count === 3 ? "1.25,1.25,8" : "1"
      }, got '${v}'`,
    );
  }
  return xs;
}

async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) total += await dirBytes(p);
    else if (e.isFile) total += (await Deno.stat(p)).size;
  }
  return total;
}

export function register(program: Command): void {
  program
    .command("preprocess")
    .description(
      "fingerprint and preprocess a dataset (RAS, target spacing, crop, normalisation), cached on disk",
    )
    .argument("<manifest>", "manifest .yaml/.json (see `import`)")
    .requiredOption("--out <dir>", "output folder")
    .option("--spacing <x,y,z>", "target spacing in mm (default: from the fingerprint)")
    .option("--splits <list>", "splits to process", "train,val,test")
    .option("--no-crop", "keep the full field of view")
    .option("--non-finite <mode>", "NaN/Inf voxels in images: error | zero", "error")
    .option("--force", "ignore the cache")
    .option("--quiet", "no progress bar")
    .action(
      async (
        file: string,
        o: {
          out: string;
          spacing?: string;
          splits: string;
          crop: boolean;
          nonFinite: string;
          force?: boolean;
          quiet?: boolean;
        },
      ) => {
        if (o.nonFinite !== "error" && o.nonFinite !== "zero") {
          throw new Error(`--non-finite: expected error or zero, got '${o.nonFinite}'`);
        }
        const splits = o.splits.split(",").map((s) => s.trim());
        for (const s of splits) {
          if (!["train", "val", "test"].includes(s)) {
            throw new Error(`--splits: unknown split '${s}'`);
          }
        }
        const manifest = await loadManifest(file);
        const bar = progressBar("preprocess", { quiet: o.quiet });
        const t0 = performance.now();
        try {
          const plan = await preprocessDataset(manifest, {
            outDir: o.out,
            targetSpacing: o.spacing ? numbers("--spacing", o.spacing, 3) : undefined,
            splits: splits as ManifestCase["split"][],
            crop: o.crop,
            nonFinite: o.nonFinite,
            force: o.force,
            onProgress: bar.onProgress,
          });
          bar.stop();
          const secs = (performance.now() - t0) / 1000;
          const mb = (await dirBytes(`${o.out}/cases`)) / 1e6;
          console.log(
            `${plan.cases.length} cases of ${plan.task} -> ${o.out} in ${secs.toFixed(1)} s (${
              mb.toFixed(1)
            } MB written)`,
          );
          console.log(
            `target spacing ${
              plan.targetSpacing.map((v) => v.toFixed(3)).join(" x ")
            } mm; classes ${plan.classes.join(", ")}`,
          );
        } finally {
          bar.stop();
        }
      },
    );

  program
    .command("patches")
    .description("draw augmented training batches from a preprocessed folder and report the rate")
    .argument("<dir>", "preprocessed folder")
    .option("--patch <d,h,w>", "patch size in voxels (z, y, x)", "16,96,96")
    .option("--batches <n>", "number of batches", "20")
    .option("--labeled <n>", "labeled patches per batch", "1")
    .option("--unlabeled <n>", "unlabeled patches per batch", "1")
    .option("--workers <n>", "background workers", "1")
    .option("--seed <s>", "seed", "0")
    .option("--misalign <mm,deg>", "simulate misalignment: translation (mm) and rotation (degrees)")
    .option("--png <file>", "write the middle slice of each modality of the first batch")
    .action(
      async (
        dir: string,
        o: {
          patch: string;
          batches: string;
          labeled: string;
          unlabeled: string;
          workers: string;
          seed: string;
          misalign?: string;
          png?: string;
        },
      ) => {
        const patch = numbers("--patch", o.patch, 3).map(Math.round) as [number, number, number];
        const mis = o.misalign ? o.misalign.split(",").map(Number) : null;
        if (mis && (mis.length !== 2 || mis.some((v) => !(v >= 0)))) {
          throw new Error(`--misalign: expected 'mm,deg', got '${o.misalign}'`);
        }
        const loader = await PatchLoader.create({
          dir,
          patchSize: patch,
          labeledBatch: Number(o.labeled),
          unlabeledBatch: Number(o.unlabeled),
          seed: Number(o.seed),
          workers: Number(o.workers),
          misalign: mis ? { translationMm: mis[0], rotationDeg: mis[1] } : null,
        });
        try {
          const n = Number(o.batches);
          const t0 = performance.now();
          let first = null;
          for (let i = 0; i < n; i++) {
            const b = await loader.next();
            first ??= b;
          }
          const secs = (performance.now() - t0) / 1000;
          const per = Number(o.labeled) + Number(o.unlabeled);
          console.log(
            `${n} batches (${per} patches of ${
              patch.join("x")
            } x ${loader.modalities.length} modalities each) in ${secs.toFixed(2)} s: ${
              (n * per / secs).toFixed(1)
            } patches/s`,
          );
          console.log(
            `labeled cases ${loader.labeledCases.length}, unlabeled cases ${loader.unlabeledCases.length}`,
          );
          if (o.png && first) {
            const { overlayPng } = await import("../src/viz/overlay.ts");
            const [d, h, w] = patch;
            const z = Math.floor(d / 2);
            const part = first.labeled ?? first.unlabeled!;
            const m = loader.modalities[0];
            const slice = part.images[m].slice(z * h * w, (z + 1) * h * w);
            const ref = first.labeled
              ? first.labeled.labels[m].slice(z * h * w, (z + 1) * h * w).map((v) => Math.max(0, v))
              : undefined;
            await Deno.writeFile(o.png, overlayPng(slice, w, h, { ref, scale: 3 }));
            console.log(`wrote ${o.png} (${m}, slice ${z})`);
          }
        } finally {
          await loader.close();
        }
      },
    );
}
