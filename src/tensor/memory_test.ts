// Memory stability: many forward+backward steps of a small conv -> instance norm -> leaky ReLU
// stack must not leak native buffers, bytes or resident memory. The loop runs in its own process
// so that RSS is not shared with test files running in parallel.
import { equal, ok } from "node:assert/strict";

async function runLoop(steps: number, warmup: number) {
  const script = new URL("./testdata/train_loop.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--v8-flags=--expose-gc", script, String(steps), String(warmup)],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout).trim();
  equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(text.split("\n").pop()!);
}

Deno.test("1,000 forward+backward steps keep live buffers, bytes and RSS constant", async () => {
  // 1,000 warm-up steps (V8's heap and the allocators reach their steady size), 1,000 measured.
  const r = await runLoop(2000, 1000);
  equal(r.after.liveBuffers, r.before.liveBuffers, "live buffers");
  equal(r.after.liveBytes, r.before.liveBytes, "live bytes");
  ok(
    r.before.liveBuffers > 10,
    `expected the parameters and buffers to be live: ${JSON.stringify(r.before)}`,
  );
  ok(
    r.after.rss <= r.before.rss * 1.05,
    `RSS grew from ${r.before.rss} to ${r.after.rss} bytes (more than 5%)`,
  );
  // Everything was disposed; at most the cached constant gamma/beta of norms may stay.
  ok(r.endLiveBuffers <= 2, `buffers left after disposing everything: ${r.endLiveBuffers}`);
});
