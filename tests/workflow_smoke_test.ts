/**
 * Every workflow in workflows/ runs end to end with its `smoke` profile (tiny data, a tiny network,
 * a few iterations): synthesis, training, evaluation and the HTML report, through the real CLI.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadWorkflow } from "../src/workflow/schema.ts";
import { buildPlan } from "../src/workflow/plan.ts";
import { runLocal } from "../src/workflow/engine.ts";
import { PROJECT_ROOT } from "../src/workflow/commands.ts";

const DIR = join(PROJECT_ROOT, "workflows");
// all_tasks runs the three task workflows again; the three task files cover it.
const FILES = readdirSync(DIR).filter((f) => f.endsWith(".yaml") && f !== "all_tasks.yaml").sort();

for (const file of FILES) {
  Deno.test({
    name: `workflow ${file} (smoke profile) runs end to end`,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const work = Deno.makeTempDirSync({ prefix: `wf_smoke_${file.replace(".yaml", "")}_` });
      const plan = buildPlan(loadWorkflow(join(DIR, file), { profile: "smoke" }), {
        workdir: work,
      });
      const s = await runLocal(plan, { cwd: PROJECT_ROOT, cpus: 2 });
      const bad = s.results.filter((r) => r.status !== "done");
      assert.equal(
        bad.length,
        0,
        bad.map((r) =>
          `${r.id}: ${r.status} ${r.reason ?? ""}\n${
            r.log && existsSync(r.log) ? readFileSync(r.log, "utf8").slice(-1500) : ""
          }`
        ).join("\n"),
      );
      const reports = plan.steps.filter((st) => st.kind === "report");
      for (const r of reports) {
        const html = readFileSync(join(r.outDir, "report.html"), "utf8");
        assert.match(html, /<table/);
      }
      const trains = plan.steps.filter((st) => st.kind === "train");
      for (const t of trains) {
        assert.ok(existsSync(join(t.outDir, "metrics.json")), `${t.id}: no metrics.json`);
      }
    },
  });
}
