/**
 * Unlabeled means never opened (issue 13, item 2). A tiny CT task (4 training cases, 1 validation,
 * 1 test) whose label maps reach into the air outside the body, so labels shape both the crop box and
 * the CT statistics. With `labeled: 2`, the two training cases left unlabeled and the test case must
 * behave as if they had no label file at all:
 *
 * - their label files corrupt and unreadable: training and the final predictions are identical to a
 *   run on a manifest where those files do not exist;
 * - no reader opens them (a spy on readNifti and Deno.readFile) during import, fingerprint,
 *   preprocessing, sampling, validation and the final report; test-split labels neither;
 * - a preprocessing cache filled by a run that used every label is not reused for them by a
 *   `labeled: 2` run (crop, statistics and label files of the cache).
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { loadManifest, type Manifest, selectLabeled } from "../src/data/manifest.ts";
import { readNifti, setNiftiReadHook, writeNifti } from "../src/data/nifti.ts";
import { Rng } from "../src/data/rng.ts";
import { loadCheckpoint } from "../src/train/checkpoint.ts";
import { trainTask } from "../src/train/run.ts";
import { setCacheRoot } from "../src/train/data.ts";

const DIMS: [number, number, number] = [24, 20, 10];
const AFFINE = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1];
const SPLITS: Record<string, "train" | "val" | "test"> = {
  t0: "train",
  t1: "train",
  t2: "train",
  t3: "train",
  v0: "val",
  s0: "test",
};

/** One CT case: air -1000, a body ellipsoid, an organ sphere; the label also covers an air slab. */
async function writeCase(dir: string, id: string): Promise<void> {
  const [X, Y, Z] = DIMS;
  const r = new Rng(0, id);
  const img = new Int16Array(X * Y * Z), lab = new Uint8Array(X * Y * Z);
  const ox = 12 + r.uniform(-2, 2), oy = 10 + r.uniform(-2, 2), oz = 5 + r.uniform(-1, 1);
  const rad = 3 + r.uniform(0, 1);
  for (let z = 0, i = 0; z < Z; z++) {
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++, i++) {
        const body = ((x - 12) / 8) ** 2 + ((y - 10) / 7) ** 2 + ((z - 5) / 6) ** 2 < 1;
        const organ = Math.hypot(x - ox, y - oy, 2 * (z - oz)) < rad;
        img[i] = Math.round((organ ? 150 : body ? 30 : -1000) + 15 * r.normal());
        // Annotation that bleeds into the air at the left edge: it widens a labelled crop and pulls
        // the CT percentiles of a labelled fingerprint towards -1000.
        if (organ || (x < 2 && y > 6 && y < 14)) lab[i] = 1;
      }
    }
  }
  await writeNifti(path.join(dir, `${id}_ct.nii.gz`), { data: img, dims: DIMS, affine: AFFINE }, {
    datatype: "int16",
  });
  await writeNifti(path.join(dir, `${id}_seg.nii.gz`), { data: lab, dims: DIMS, affine: AFFINE }, {
    datatype: "uint8",
  });
}

/** Writes the cases and a manifest. `without`: cases that are unlabeled and have no label entry. */
async function writeTask(dir: string, without: readonly string[] = []): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  for (const id of Object.keys(SPLITS)) await writeCase(dir, id);
  const m: Manifest = {
    task: "tinyct",
    modalities: ["CT"],
    modalityKinds: { CT: "ct" },
    classes: { organ: 1 },
    cases: Object.entries(SPLITS).map(([id, split]) => ({
      id,
      images: { CT: `${id}_ct.nii.gz` },
      ...(without.includes(id) ? {} : { labels: { CT: `${id}_seg.nii.gz` } }),
      labeled: !without.includes(id),
      split,
    })),
  };
  const file = path.join(dir, "manifest.json");
  await Deno.writeTextFile(file, JSON.stringify(m, null, 1));
  return file;
}

function tiny(task: string, out: string, labeled: number) {
  return {
    task,
    out,
    method: "mean-teacher",
    iterations: 3,
    labeled,
    seed: 0,
    patchSize: [4, 16, 16],
    network: { baseWidth: 4, maxLevels: 3 },
    optimizer: { warmup: 1 },
    validation: { every: 2, overlap: 0 },
    deterministic: true,
    threads: 1,
    loaderWorkers: 0,
    images: false,
  };
}

/** Trains with its own cache folder (a fresh preprocessing unless `cache` is shared). */
async function train(task: string, out: string, labeled: number, cache: string) {
  setCacheRoot(cache);
  const r = await trainTask(tiny(task, out, labeled), { quiet: true });
  r.model.dispose();
  return out;
}

/** What must match between runs: weights, loss log, validation Dice and the final predictions. */
async function outcome(out: string) {
  const ck = loadCheckpoint(path.join(out, "last.ckpt"));
  const weights = Object.fromEntries(
    [...ck.tensors].map(([k, t]) => [k, Array.from(t.data)]),
  );
  const log = readFileSync(path.join(out, "log.jsonl"), "utf8").trim().split("\n")
    .map((l) => JSON.parse(l))
    .filter((e) => e.event === "iteration" || e.event === "validation" || e.event === "final")
    .map(({ seconds: _s, time: _t, ...rest }) => rest);
  const predictions: Record<string, number[]> = {};
  for (const e of [...Deno.readDirSync(path.join(out, "predictions"))].sort()) {
    predictions[e.name] = Array.from((await readNifti(path.join(out, "predictions", e.name))).data);
  }
  return { weights, log, predictions };
}

const root = Deno.makeTempDirSync({ prefix: "comodal-unlabeled-" });
const all = await loadManifest(await writeTask(path.join(root, "probe")));
const kept = selectLabeled(all.cases, { labeled: 2, seed: 0 });
const hidden = ["t0", "t1", "t2", "t3"].filter((id) => !kept.includes(id));
const labelFile = (dir: string, id: string) => path.resolve(dir, `${id}_seg.nii.gz`);

/** The reference: unlabeled training cases and the test case have no label file at all. */
let reference: Awaited<ReturnType<typeof outcome>> | null = null;
async function referenceOutcome() {
  if (!reference) {
    const dir = path.join(root, "absent");
    const task = await writeTask(dir, [...hidden, "s0"]);
    for (const id of [...hidden, "s0"]) await Deno.remove(labelFile(dir, id));
    reference = await outcome(
      await train(task, path.join(root, "run-absent"), 2, path.join(root, "cache-absent")),
    );
  }
  return reference;
}

Deno.test({
  name:
    "unlabeled cases' and test cases' label files corrupt and unreadable: training and predictions match a run without those files",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = path.join(root, "corrupt");
    const task = await writeTask(dir);
    for (const id of [...hidden, "s0"]) {
      await Deno.writeTextFile(labelFile(dir, id), "this is not a NIfTI file");
      await Deno.chmod(labelFile(dir, id), 0o000);
    }
    const got = await outcome(
      await train(task, path.join(root, "run-corrupt"), 2, path.join(root, "cache-corrupt")),
    );
    const want = await referenceOutcome();
    assert.ok(Object.keys(want.predictions).length >= 1);
    assert.deepEqual(got.log, want.log);
    assert.deepEqual(got.predictions, want.predictions);
    assert.deepEqual(got.weights, want.weights);
  },
});

/** Every file a training run opens through readNifti or Deno.readFile. */
async function spiedRun(task: string, out: string, cache: string): Promise<Set<string>> {
  const opened = new Set<string>();
  const seen = (p: string | URL) => opened.add(path.resolve(String(p)));
  const readFile = Deno.readFile;
  setNiftiReadHook(seen);
  Deno.readFile = ((p: string | URL, o?: Deno.ReadFileOptions) => {
    seen(p);
    return readFile(p, o);
  }) as typeof Deno.readFile;
  try {
    await train(task, out, 2, cache);
  } finally {
    setNiftiReadHook(null);
    Deno.readFile = readFile;
  }
  return opened;
}

/** One spied run on intact label files (fresh cache), shared by the two tests below. */
let spiedResult: { dir: string; out: string; opened: Set<string> } | null = null;
async function spied() {
  if (!spiedResult) {
    const dir = path.join(root, "intact");
    const task = await writeTask(dir);
    const out = path.join(root, "run-spied");
    spiedResult = { dir, out, opened: await spiedRun(task, out, path.join(root, "cache-spied")) };
  }
  return spiedResult;
}

Deno.test({
  name:
    "no reader opens an unlabeled case's label file (import, fingerprint, preprocessing, sampling, validation, final report)",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { dir, opened } = await spied();
    for (const id of hidden) {
      assert.ok(!opened.has(labelFile(dir, id)), `${id}'s label file was opened`);
    }
    // The spy sees the reads that are allowed: kept training labels and the validation labels.
    for (const id of [...kept, "v0"]) assert.ok(opened.has(labelFile(dir, id)), `${id} not read`);
    assert.ok(opened.has(path.resolve(dir, "t0_ct.nii.gz")));
  },
});

Deno.test({
  name: "test-split labels are not opened during training",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { dir, out, opened } = await spied();
    assert.ok(!opened.has(labelFile(dir, "s0")), "the test case's label file was opened");
    assert.ok(existsSync(path.join(out, "metrics.json")));
  },
});

Deno.test({
  name:
    "a preprocessing cache filled with every label is not reused for cases a later run leaves unlabeled",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = path.join(root, "reused");
    const task = await writeTask(dir);
    const cache = path.join(root, "cache-reused");
    await train(task, path.join(root, "run-all"), 4, cache);
    const out = await train(task, path.join(root, "run-reused"), 2, cache);
    const got = await outcome(out);
    const want = await referenceOutcome();
    // No label-derived file or record of an unlabeled case is left in the cache.
    const ppDir = JSON.parse(readFileSync(path.join(out, "plan.json"), "utf8")).preprocessedDir;
    for (const id of [...hidden, "s0"]) {
      assert.ok(!existsSync(path.join(ppDir, "cases", `${id}_CT.lab`)), `${id}: stale label file`);
      const rec = JSON.parse(readFileSync(path.join(ppDir, "cases", `${id}.json`), "utf8"));
      assert.equal(rec.labeled, false, id);
      assert.equal(rec.modalities.CT.labelFile, null, id);
      assert.equal(rec.modalities.CT.source.labelPath, null, id);
    }
    assert.deepEqual(got.log, want.log);
    assert.deepEqual(got.predictions, want.predictions);
    assert.deepEqual(got.weights, want.weights);
  },
});
