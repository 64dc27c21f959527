/**
 * notebooks/quickstart.ipynb executes headless with the Deno Jupyter kernel (scripts/run_notebook.sh)
 * and shows its training curve (SVG) and slice overlay (PNG) without errors. Skipped only when
 * Python cannot create a virtual environment (python3 -m venv).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as path from "node:path";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");

function venvAvailable(): boolean {
  const r = spawnSync("python3", ["-c", "import venv, ensurepip"], { stdio: "ignore" });
  return r.status === 0;
}

const canRun = venvAvailable();
if (!canRun) {
  console.warn(
    "notebook_test: skipped: `python3 -m venv` is not available (install python3 with the venv module)",
  );
}

interface Output {
  output_type: string;
  name?: string;
  text?: string | string[];
  data?: Record<string, string | string[]>;
  ename?: string;
  evalue?: string;
}

const join = (v: string | string[] | undefined) => (Array.isArray(v) ? v.join("") : v ?? "");

Deno.test({
  name: "quickstart notebook runs headless and shows a training curve and a slice overlay",
  ignore: !canRun,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = path.join(
      Deno.makeTempDirSync({ prefix: "comodal-notebook-" }),
      "quickstart.executed.ipynb",
    );
    const t0 = performance.now();
    const cmd = new Deno.Command("bash", {
      args: [
        path.join(root, "scripts", "run_notebook.sh"),
        path.join(root, "notebooks", "quickstart.ipynb"),
        out,
      ],
      stdout: "piped",
      stderr: "piped",
    });
    const r = await cmd.output();
    const log = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
    assert.equal(r.code, 0, `run_notebook.sh failed:\n${log.slice(-4000)}`);
    const seconds = (performance.now() - t0) / 1000;
    console.log(`notebook executed in ${seconds.toFixed(1)} s`);

    const nb = JSON.parse(readFileSync(out, "utf8"));
    const code = (nb.cells as { cell_type: string; outputs?: Output[] }[]).filter((c) =>
      c.cell_type === "code"
    );
    assert.ok(code.length >= 4, `expected at least 4 code cells, got ${code.length}`);
    const outputs = code.flatMap((c) => c.outputs ?? []);
    const errors = outputs.filter((o) => o.output_type === "error");
    assert.deepEqual(errors.map((e) => `${e.ename}: ${e.evalue}`), []);
    assert.ok(
      !outputs.some((o) =>
        o.output_type === "stream" && o.name === "stderr" && /error/i.test(join(o.text))
      ),
    );
    const stdout = outputs.filter((o) => o.output_type === "stream" && o.name === "stdout").map((
      o,
    ) => join(o.text)).join("");
    assert.match(stdout, /Trained cmc on cardiac for \d+ iterations/);
    assert.match(stdout, /lv_myocardium/);

    const data = outputs.filter((o) => o.data).map((o) => o.data!);
    const svg = data.map((d) => join(d["image/svg+xml"])).find((s) => s.length > 0);
    assert.ok(svg, "no image/svg+xml output (training curve)");
    assert.match(svg, /^<svg[\s\S]*<\/svg>\s*$/);
    assert.match(svg, /<polyline/);
    assert.match(svg, /training loss/);
    const png = data.map((d) => join(d["image/png"]).replace(/\s/g, "")).find((s) => s.length > 0);
    assert.ok(png, "no image/png output (slice overlay)");
    const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
    assert.deepEqual(
      [...bytes.subarray(0, 8)],
      [137, 80, 78, 71, 13, 10, 26, 10],
      "image/png is not a PNG",
    );
    const view = new DataView(bytes.buffer);
    // IHDR: one row (one modality) of three 128 x 128 slices at scale 3, with gaps between tiles.
    const w = view.getUint32(16), h = view.getUint32(20);
    assert.ok(
      w >= 3 * 384 && h >= 384 && h < 2 * 384,
      `PNG is ${w}x${h}, expected one row of three 384-pixel tiles`,
    );
  },
});
