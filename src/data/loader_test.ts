import { assert, assertEquals, assertRejects } from "./testing.ts";
import { synthesize } from "./synth.ts";
import { loadManifest, selectLabeled } from "./manifest.ts";
import { preprocessDataset } from "./prepared_cache.ts";
import { PatchLoader } from "./loader.ts";
import { IGNORE_INDEX } from "../util/ignore.ts";

const tmp = await Deno.makeTempDir({ prefix: "comodal_loader_" });
globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));

// A small cardiac set: synthesise, preprocess (all cases in train).
const syn = await synthesize("cardiac", {
  outDir: `${tmp}/raw`,
  cases: 4,
  seed: 2,
  sizeScale: 0.4,
  workers: 0,
});
const manifest = await loadManifest(syn.manifestPath);
for (const c of manifest.cases) c.split = "train";
const PRE = `${tmp}/pre`;
await preprocessDataset(manifest, { outDir: PRE });
const PATCH: [number, number, number] = [4, 24, 24];

function digestBatch(b: Awaited<ReturnType<PatchLoader["next"]>>): number[] {
  const sums: number[] = [];
  for (const part of [b.labeled?.images, b.labeled?.labels, b.unlabeled?.images]) {
    for (const [, a] of Object.entries(part ?? {}).sort()) {
      let s = 0;
      for (let i = 0; i < a.length; i++) s += a[i] * ((i % 7) + 1);
      sums.push(Math.round(s * 1000) / 1000);
    }
  }
  return sums;
}

Deno.test("loader: batch shapes, labels, and the same stream with 0 or 2 workers", async () => {
  const opts = {
    dir: PRE,
    patchSize: PATCH,
    labeledBatch: 2,
    unlabeledBatch: 1,
    seed: 11,
    modalities: ["C0", "LGE"],
    misalign: { translationMm: 4, rotationDeg: 5 },
  };
  const inline = await PatchLoader.create({ ...opts, workers: 0 });
  const pooled = await PatchLoader.create({ ...opts, workers: 2, prefetch: 3 });
  try {
    const n = 4 * 24 * 24;
    for (let i = 0; i < 5; i++) {
      const a = await inline.next();
      const b = await pooled.next();
      assertEquals(a.index, i);
      assertEquals(b.index, i);
      assertEquals(a.labeled!.images.C0.length, 2 * n);
      assertEquals(a.labeled!.labels.LGE.length, 2 * n);
      assertEquals(a.unlabeled!.images.LGE.length, n);
      assertEquals(digestBatch(a), digestBatch(b), `batch ${i}`);
      assertEquals(a.labeled!.ids, b.labeled!.ids);
      assert(pooled.inFlight() <= 3, `in flight ${pooled.inFlight()}`);
      for (const v of a.labeled!.labels.C0) assert(v >= 0 && v <= 3);
    }
    // batchAt(i) reproduces stream batch i; a resumed loader continues the stream.
    assertEquals(
      digestBatch(inline.batchAt(3)),
      digestBatch(
        await (async () => {
          const r = await PatchLoader.create({ ...opts, workers: 0, startBatch: 3 });
          const b = await r.next();
          await r.close();
          return b;
        })(),
      ),
    );
  } finally {
    await inline.close();
    await pooled.close();
  }
});

Deno.test("loader: cases outside labeledIds are only ever unlabeled, and never bring labels", async () => {
  const keep = selectLabeled(manifest.cases, { labeled: 2, seed: 1 });
  const loader = await PatchLoader.create({
    dir: PRE,
    patchSize: PATCH,
    labeledBatch: 1,
    unlabeledBatch: 2,
    seed: 3,
    labeledIds: keep,
    workers: 0,
  });
  try {
    assertEquals([...loader.labeledCases].sort(), keep);
    assertEquals(loader.unlabeledCases.length, 2);
    const seenUnlabeled = new Set<string>();
    for (let i = 0; i < 12; i++) {
      const b = await loader.next();
      for (const ids of b.labeled!.ids) {
        for (const id of Object.values(ids)) {
          assert(keep.includes(id), `labeled patch from ${id}`);
        }
      }
      for (const ids of b.unlabeled!.ids) {
        for (const id of Object.values(ids)) {
          assert(!keep.includes(id), `unlabeled patch from labeled case ${id}`);
          seenUnlabeled.add(id);
        }
      }
      assertEquals(Object.keys(b.unlabeled!).sort(), ["ids", "images"]);
    }
    assertEquals(seenUnlabeled.size, 2);
  } finally {
    await loader.close();
  }
  await assertRejects(
    () =>
      PatchLoader.create({
        dir: PRE,
        patchSize: PATCH,
        labeledBatch: 1,
        unlabeledBatch: 0,
        seed: 0,
        labeledIds: ["nobody"],
      }),
    Error,
    "Cannot keep labels of case nobody",
  );
  await assertRejects(
    () =>
      PatchLoader.create({
        dir: PRE,
        patchSize: PATCH,
        labeledBatch: 1,
        unlabeledBatch: 0,
        seed: 0,
        modalities: ["CT"],
        workers: 0,
      }),
    Error,
    "modality CT is not in",
  );
});

Deno.test("loader: foreground forcing reaches about one third of labeled patches", async () => {
  const loader = await PatchLoader.create({
    dir: PRE,
    patchSize: PATCH,
    labeledBatch: 4,
    unlabeledBatch: 0,
    seed: 5,
    workers: 0,
    augment: false,
  });
  try {
    let forced = 0, total = 0;
    for (let i = 0; i < 30; i++) {
      const b = await loader.next();
      b.labeled!.forcedForeground.forEach((f, k) => {
        total++;
        if (f) {
          forced++;
          const fg = ["C0", "LGE", "T2"].some((m) =>
            b.labeled!.labels[m].subarray(k * 2304, (k + 1) * 2304).some((v) => v > 0)
          );
          assert(fg, "forced patch has foreground");
        }
      });
      assert(b.labeled!.labels.T2.every((v) => v !== IGNORE_INDEX));
    }
    assert(forced / total > 0.2 && forced / total < 0.47, `forced ${forced}/${total}`);
  } finally {
    await loader.close();
  }
});

Deno.test("loader: fromCases over in-memory cases gives the same stream as create", async () => {
  const { loadPreprocessedCases } = await import("./cases.ts");
  const data = await loadPreprocessedCases(PRE, { shared: true });
  const opts = {
    patchSize: PATCH,
    labeledBatch: 1,
    unlabeledBatch: 1,
    seed: 21,
    modalities: ["C0", "LGE", "T2"],
  };
  const a = PatchLoader.fromCases(data, { ...opts, workers: 1 });
  const b = await PatchLoader.create({ ...opts, dir: PRE, workers: 0 });
  try {
    for (let i = 0; i < 3; i++) {
      assertEquals(digestBatch(await a.next()), digestBatch(await b.next()));
    }
    assertEquals(a.plan, null);
  } finally {
    await a.close();
    await b.close();
  }
});
