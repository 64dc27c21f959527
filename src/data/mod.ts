/**
 * The data pipeline: NIfTI I/O, geometry, manifests and importers, fingerprint and preprocessing,
 * labeled/unlabeled cases, patch sampling, augmentation, the background patch loader, seeded random
 * numbers and synthetic phantoms.
 *
 * ```ts
 * import { synthesize, loadManifest, preprocessDataset, PatchLoader } from "./src/data/mod.ts";
 * const { manifestPath } = await synthesize("cardiac", { outDir: "data/cardiac", cases: 20, seed: 0 });
 * await preprocessDataset(await loadManifest(manifestPath), { outDir: "data/cardiac_pre" });
 * const loader = await PatchLoader.create({ dir: "data/cardiac_pre", patchSize: [12, 128, 128],
 *   labeledBatch: 1, unlabeledBatch: 1, seed: 0 });
 * const batch = await loader.next(); // batch.labeled.images.C0: Float32Array [1, 1, 12, 128, 128]
 * ```
 *
 * @module
 */
export * from "./affine.ts";
export * from "./nifti.ts";
export * from "./geometry.ts";
export * from "./manifest.ts";
export * from "./importers.ts";
export * from "./case_reader.ts";
export * from "./fingerprint.ts";
export * from "./preprocess_plan.ts";
export * from "./case_transform.ts";
export * from "./prepared_cache.ts";
export * from "./cases.ts";
export * from "./augment.ts";
export * from "./sampler.ts";
export * from "./loader.ts";
export * from "./rng.ts";
export * from "./synth.ts";
export * from "./progress.ts";
export { IGNORE_INDEX, storedIgnore } from "../util/ignore.ts";
