/**
 * The tree is formatted (`deno fmt --check`) and lint-clean (`deno lint`), as CI requires.
 * bench/results/ (files the bench writes) and notebooks/quickstart.ipynb are excluded from formatting
 * in deno.json; the notebook because `deno fmt --check` reports it
 * as unformatted without its incremental cache even though `deno fmt` leaves its bytes unchanged.
 */
import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url).pathname;

async function deno(args: string[]): Promise<{ code: number; text: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, text: dec.decode(out.stdout) + dec.decode(out.stderr) };
}

Deno.test("style: deno fmt --check finds every file formatted", async () => {
  const r = await deno(["fmt", "--check"]);
  assert.equal(r.code, 0, `run \`deno fmt\`:\n${r.text.slice(0, 4000)}`);
});

Deno.test("style: deno lint finds no problem", async () => {
  const r = await deno(["lint"]);
  assert.equal(r.code, 0, r.text.slice(0, 4000));
});
