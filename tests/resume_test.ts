/**
 * `train --resume` never damages a run folder: it takes the run's config, plan and data from the
 * folder, refuses settings and data that would change the run (writing nothing), keeps log.jsonl
 * free of repeated iterations, and gets past files left by an interrupted write.
 */
import assert from "node:assert/strict";
import {
  appendFileSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { main } from "../cli/main.ts";
import { synthesize } from "../src/data/synth.ts";
import { casesFromDataset, predictCases } from "../src/infer/predict_run.ts";
import { loadRun } from "../src/train/load_run.ts";
import { loadCheckpoint } from "../src/train/checkpoint.ts";
import { trainTask } from "../src/train/run.ts";
import { setCacheRoot } from "../src/train/data.ts";

const cache = Deno.makeTempDirSync({ prefix: "comodal-resume-cache-" });
setCacheRoot(cache);
const opts = { sanitizeResources: false, sanitizeOps: false };

function tiny(out: string, extra: Record<string, unknown> = {}) {
  return {
    task: "cardiac",
    out,
    iterations: 4,
    syntheticCases: 6,
    labeled: 2,
    patchSize: [4, 32, 32],
    network: { baseWidth: 8, maxLevels: 3 },
    optimizer: { warmup: 1 },
    validation: { every: 0, maxCases: 1, overlap: 0 },
    checkpointEvery: 2,
    deterministic: true,
    threads: 1,
    ...extra,
  };
}

const stopAt = (n: number) => ({
  onIteration: (ctx: { iteration: number; stopRequested: boolean }) => {
    if (ctx.iteration === n) ctx.stopRequested = true;
  },
});

/** A run stopped after `at` of its iterations (last.ckpt at `at`). */
async function stopped(extra: Record<string, unknown> = {}, at = 2): Promise<string> {
  const out = Deno.makeTempDirSync({ prefix: "comodal-resume-run-" });
  const r = await trainTask(tiny(out, extra), {
    quiet: true,
    skipFinalEvaluation: true,
    hooks: [stopAt(at)],
  });
  r.model.dispose();
  return out;
}

/** Every file under dir -> sha256 of its bytes. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = path.join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out[path.relative(dir, p)] = createHash("sha256").update(readFileSync(p)).digest("hex");
    }
  };
  walk(dir);
  return out;
}

/** The records of log.jsonl; lines that do not parse are skipped (see assertLogParses). */
function logRecords(out: string): Record<string, unknown>[] {
  return readFileSync(path.join(out, "log.jsonl"), "utf8").split("\n").flatMap((l) => {
    try {
      return [JSON.parse(l)];
    } catch {
      return [];
    }
  });
}

function assertLogParses(out: string): void {
  const text = readFileSync(path.join(out, "log.jsonl"), "utf8");
  assert.ok(text.endsWith("\n"));
  for (const l of text.slice(0, -1).split("\n")) JSON.parse(l);
}

function iterationsLogged(out: string): number[] {
  return logRecords(out).filter((e) => e.event === "iteration").map((e) => e.iteration as number);
}

function assertSameCheckpoints(a: string, b: string): void {
  const ca = loadCheckpoint(path.join(a, "last.ckpt"));
  const cb = loadCheckpoint(path.join(b, "last.ckpt"));
  assert.equal(ca.meta.iteration, cb.meta.iteration);
  assert.equal(ca.tensors.size, cb.tensors.size);
  for (const [name, t] of ca.tensors) {
    const u = cb.tensors.get(name)!;
    assert.ok(t.data.every((v, i) => Object.is(v, u.data[i])), `tensor ${name} differs`);
  }
}

Deno.test({
  name:
    "resume with changed settings is refused, one line per key; the folder stays byte-identical and predict still works",
  ...opts,
  fn: async () => {
    const out = await stopped();
    const before = snapshot(out);
    const config = readFileSync(path.join(out, "config.json"));
    const plan = readFileSync(path.join(out, "plan.json"));
    // A changed learning rate (not part of the model) used to be taken silently.
    await assert.rejects(
      () =>
        trainTask(tiny(out, { optimizer: { warmup: 1, lr: 1e-3 } }), { quiet: true, resume: true }),
      (e: Error) => {
        const lines = e.message.split("\n").slice(1).map((l) => l.trim());
        assert.deepEqual(lines, ["optimizer.lr: 0.0003 in the run, 0.001 given"], e.message);
        assert.match(e.message, /^Cannot resume .*keeps its config/);
        return true;
      },
    );
    // A model change used to rewrite config.json and plan.json before failing on the checkpoint.
    await assert.rejects(
      () =>
        trainTask(tiny(out, { network: { baseWidth: 16, maxLevels: 3 }, seed: 3 }), {
          quiet: true,
          resume: true,
        }),
      (e: Error) => {
        const lines = e.message.split("\n").slice(1).map((l) => l.trim());
        assert.deepEqual(lines, [
          "network.baseWidth: 8 in the run, 16 given",
          "seed: 0 in the run, 3 given",
        ]);
        assert.ok(e.message.length < 600, e.message);
        return true;
      },
    );
    assert.deepEqual(readFileSync(path.join(out, "config.json")), config);
    assert.deepEqual(readFileSync(path.join(out, "plan.json")), plan);
    assert.deepEqual(snapshot(out), before);
    // The run still predicts.
    const run = await loadRun(out, { checkpoint: "last" });
    try {
      const synth = readdirSync(path.join(cache, "synthetic")).find((n) =>
        n.startsWith("cardiac-n6-s0")
      )!;
      const cases = await casesFromDataset(path.join(cache, "synthetic", synth), run, {
        split: "val",
      });
      const preds = Deno.makeTempDirSync({ prefix: "comodal-resume-pred-" });
      const r = await predictCases(run, cases.slice(0, 1), { outDir: preds });
      assert.equal(r.cases.length, 1);
      assert.ok(readdirSync(preds).some((f) => f.endsWith(".nii.gz")));
    } finally {
      run.dispose();
    }
  },
});

Deno.test({
  name:
    "`train --resume --out R` alone continues with the run's config, exactly as an uninterrupted run",
  ...opts,
  fn: async () => {
    const extra = { optimizer: { warmup: 1, lr: 1e-3 }, seed: 5 };
    const whole = Deno.makeTempDirSync({ prefix: "comodal-resume-whole-" });
    const w = await trainTask(tiny(whole, extra), { quiet: true, skipFinalEvaluation: true });
    w.model.dispose();
    const out = await stopped(extra);
    const config = readFileSync(path.join(out, "config.json"));
    // No task, no flags: the CLI takes everything from the run folder.
    assert.equal(await main(["train", "--out", out, "--resume"]), 0);
    assertSameCheckpoints(whole, out);
    const cfgs = logRecords(out).filter((e) => e.event === "config");
    const last = cfgs[cfgs.length - 1].config as { optimizer: { lr: number }; seed: number };
    assert.equal(last.optimizer.lr, 1e-3);
    assert.equal(last.seed, 5);
    assert.deepEqual(readFileSync(path.join(out, "config.json")), config);
    assert.deepEqual(iterationsLogged(out), [1, 2, 3, 4]);
    // Execution keys may change (and a config given in full is accepted when it agrees).
    const again = await stopped(extra);
    const r = await trainTask(
      tiny(again, { ...extra, threads: 2, loaderWorkers: 0, checkpointEvery: 1, device: "cpu" }),
      { quiet: true, skipFinalEvaluation: true, resume: true },
    );
    assert.equal(r.iterations, 4);
    assert.equal(r.config.threads, 2);
    assert.equal(r.config.optimizer.lr, 1e-3);
    r.model.dispose();
  },
});

Deno.test({
  name: "resume on different data (changed files, other cases) is refused and writes nothing",
  ...opts,
  fn: async () => {
    const data = Deno.makeTempDirSync({ prefix: "comodal-resume-data-" });
    await synthesize("cardiac", { outDir: data, cases: 6, seed: 0 });
    const out = await stopped({ data, iterations: 2 }, 1);
    const before = snapshot(out);
    // Same case ids; one case's C0 image and label replaced by another case's.
    const used = logRecords(out).find((e) => e.event === "config")!.data as {
      labeled: string[];
      validation: string[];
    };
    const [id, donor] = [used.labeled[0], used.validation[0]];
    const file = (c: string, role: string) =>
      path.join(data, `${c}_C0${role === "label" ? "_manual" : ""}.nii.gz`);
    for (const role of ["image", "label"]) {
      writeFileSync(file(id, role), readFileSync(file(donor, role)));
    }
    await assert.rejects(
      () => trainTask(tiny(out, { data, iterations: 2 }), { quiet: true, resume: true }),
      (e: Error) => {
        assert.match(
          e.message,
          /^Cannot resume .*: the data is not the data the run was trained on/,
        );
        const lines = e.message.split("\n").slice(1).map((l) => l.trim());
        assert.deepEqual(
          lines.map((l) => l.split(" (")[0]),
          [`${id} C0 image`, `${id} C0 label`],
          e.message,
        );
        assert.ok(lines[1].includes(`(${file(id, "label")}): `), lines[1]);
        assert.match(lines[1], /: \d+ bytes, modified .* in the run, \d+ bytes, modified .* now$/);
        return true;
      },
    );
    assert.deepEqual(snapshot(out), before);
    // Other cases in the same folder.
    rmSync(data, { recursive: true });
    await synthesize("cardiac", { outDir: data, cases: 9, seed: 0 });
    await assert.rejects(
      () => trainTask({ out }, { quiet: true, resume: true }),
      (e: Error) => {
        assert.match(e.message, /the data is not the data the run was trained on/);
        assert.match(
          e.message,
          /\n {2}(unlabeled training|validation) cases: \d+ in the run, \d+ now;.* new: /,
        );
        return true;
      },
    );
    assert.deepEqual(snapshot(out), before);
  },
});

Deno.test({
  name: "after a crash past the last checkpoint, the resumed log.jsonl holds each iteration once",
  ...opts,
  fn: async () => {
    const out = Deno.makeTempDirSync({ prefix: "comodal-resume-log-" });
    const crashAt3 = {
      onIteration: (ctx: { iteration: number }) => {
        if (ctx.iteration === 3) throw new Error("simulated crash");
      },
    };
    await assert.rejects(
      () => trainTask(tiny(out), { quiet: true, skipFinalEvaluation: true, hooks: [crashAt3] }),
      /simulated crash/,
    );
    assert.equal(loadCheckpoint(path.join(out, "last.ckpt")).meta.iteration, 2);
    assert.deepEqual(iterationsLogged(out), [1, 2, 3]);
    // A kill mid-append leaves a cut-off last line.
    appendFileSync(
      path.join(out, "log.jsonl"),
      '{"time":"2025-01-01T00:00:00.000Z","event":"itera',
    );
    const r = await trainTask(tiny(out), { quiet: true, skipFinalEvaluation: true, resume: true });
    r.model.dispose();
    assert.deepEqual(iterationsLogged(out), [1, 2, 3, 4]);
    assertLogParses(out);
    const note = logRecords(out).find((e) => e.event === "resume") as {
      iteration: number;
      notes: string[];
    };
    assert.equal(note.iteration, 2);
    assert.ok(
      note.notes.some((n) => /removed 2 record\(s\) after iteration 2/.test(n)),
      note.notes.join("; "),
    );
    assert.ok(note.notes.some((n) => /cut off by a crash/.test(n)), note.notes.join("; "));
  },
});

Deno.test({
  name: "a stale last.ckpt.tmp from a crash mid-write is removed with a note, and never read",
  ...opts,
  fn: async () => {
    const out = await stopped();
    const stale = ["last.ckpt.tmp", "last.ckpt.tmp-999999999-abc123", "plan.json.tmp-999999998-x"];
    for (const f of stale) writeFileSync(path.join(out, f), "CMOCKPT1 half written");
    const r = await trainTask(tiny(out), { quiet: true, skipFinalEvaluation: true, resume: true });
    assert.equal(r.iterations, 4);
    r.model.dispose();
    const left = readdirSync(out);
    for (const f of stale) assert.ok(!left.includes(f), `${f} is still there`);
    const note = logRecords(out).find((e) => e.event === "resume") as { notes: string[] };
    assert.ok(
      note.notes.some((n) =>
        n.includes("last.ckpt.tmp-999999999-abc123") && /interrupted write/.test(n)
      ),
    );
    // Only a temp file and no last.ckpt: the error names it as incomplete.
    rmSync(path.join(out, "last.ckpt"));
    writeFileSync(path.join(out, "last.ckpt.tmp-999999997-zz"), "half");
    await assert.rejects(
      () => trainTask({ out }, { quiet: true, resume: true }),
      /last\.ckpt does not exist \(last\.ckpt\.tmp-999999997-zz beside it is an interrupted write, incomplete and not used\)/,
    );
  },
});
