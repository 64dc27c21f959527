import assert from "node:assert/strict";
import { readdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { loadCheckpoint, readCheckpointMeta, saveCheckpoint } from "./checkpoint.ts";
import { removeStaleTemps, staleTemps } from "./resume.ts";
import type { Tensor } from "../engine.ts";

const checkpointUrl = new URL("./checkpoint.ts", import.meta.url).href;

/** A stand-in tensor (saveCheckpoint only reads shape and toArray). */
function fake(n: number, v: number): Tensor {
  const a = new Float32Array(n).fill(v);
  return { shape: [n], toArray: () => a } as unknown as Tensor;
}

Deno.test("readCheckpointMeta reads the header only and refuses a truncated file", () => {
  const dir = Deno.makeTempDirSync({ prefix: "comodal-ckpt-meta-" });
  const file = path.join(dir, "last.ckpt");
  saveCheckpoint(file, { iteration: 7, config: { seed: 1 } }, { a: fake(1000, 7) });
  assert.deepEqual(readCheckpointMeta(file), { iteration: 7, config: { seed: 1 } });
  const bytes = Deno.readFileSync(file);
  writeFileSync(file, bytes.subarray(0, bytes.length - 4));
  assert.throws(() => readCheckpointMeta(file), /truncated data/);
  writeFileSync(file, bytes.subarray(0, 20));
  assert.throws(() => readCheckpointMeta(file), /truncated header/);
});

Deno.test({
  name:
    "kill -9 at random moments of checkpoint writes always leaves a loadable, complete last.ckpt",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = Deno.makeTempDirSync({ prefix: "comodal-ckpt-kill-" });
    const file = path.join(dir, "last.ckpt");
    // The writer: checkpoints of 4 x 1 Mi floats, every value the iteration, as fast as it can.
    const writer = path.join(dir, "writer.ts");
    Deno.writeTextFileSync(
      writer,
      `import { saveCheckpoint } from ${JSON.stringify(checkpointUrl)};
const start = Number(Deno.args[0]);
const n = 1 << 20;
for (let it = start; ; it++) {
  const tensors: Record<string, unknown> = {};
  for (const k of ["model/a", "model/b", "optim/a", "optim/b"]) {
    const a = new Float32Array(n).fill(it);
    tensors[k] = { shape: [n], toArray: () => a };
  }
  saveCheckpoint(${JSON.stringify(file)}, { iteration: it }, tensors as never);
  if (it === start) console.log("ready");
}
`,
    );
    const deno = Deno.execPath();
    let last = 0;
    let sawTemp = false;
    for (let round = 0; round < 20; round++) {
      const child = new Deno.Command(deno, {
        args: ["run", "-A", "--no-lock", writer, String(last + 1)],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      // Wait for its first complete write, then kill it at a random moment of the following ones.
      const reader = child.stdout.getReader();
      const { value } = await reader.read();
      assert.equal(new TextDecoder().decode(value).trim(), "ready");
      await new Promise((r) => setTimeout(r, Math.random() * 150));
      child.kill("SIGKILL");
      reader.releaseLock();
      await child.stdout.cancel();
      const status = await child.status;
      assert.equal(status.signal, "SIGKILL");
      const ck = loadCheckpoint(file);
      const it = ck.meta.iteration;
      assert.ok(it > last, `round ${round}: iteration ${it} after ${last}`);
      assert.equal(ck.tensors.size, 4);
      for (const [name, t] of ck.tensors) {
        assert.equal(t.data.length, 1 << 20, name);
        assert.ok(t.data.every((v) => v === it), `round ${round}: ${name} is not all ${it}`);
      }
      last = it;
      sawTemp ||= staleTemps(dir).length > 0;
    }
    // Interrupted writes leave temp files beside last.ckpt; resuming removes them.
    const temps = staleTemps(dir).map((t) => t.name);
    assert.ok(temps.every((t) => /^last\.ckpt\.tmp-\d+-[a-z0-9]*$/.test(t)), temps.join());
    assert.deepEqual(removeStaleTemps(dir).sort(), temps.sort());
    assert.deepEqual(readdirSync(dir).sort(), ["last.ckpt", "writer.ts"]);
    if (!sawTemp) console.error("(no kill landed mid-write in this run)");
  },
});
