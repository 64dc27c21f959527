/** Every file in workflows/ loads, validates and plans with both profiles. */
import assert from "node:assert/strict";
import { join } from "node:path";
import { loadWorkflow } from "./schema.ts";
import { buildPlan } from "./plan.ts";
import { stepCommand } from "./commands.ts";

const DIR = new URL("../../workflows/", import.meta.url).pathname;
const FILES = [
  "cardiac",
  "abdomen",
  "orbit",
  "all_tasks",
  "labeled_ratio",
  "ablation",
  "modalities",
  "misalignment",
];

Deno.test("workflows: each paper/task workflow plans with smoke and full profiles", () => {
  const present = [...Deno.readDirSync(DIR)].filter((e) => e.isFile && e.name.endsWith(".yaml"))
    .map((e) => e.name);
  for (const f of FILES) assert.ok(present.includes(`${f}.yaml`), `workflows/${f}.yaml missing`);
  for (const name of present) {
    const sizes: Record<string, number> = {};
    for (const profile of ["smoke", "full"]) {
      const plan = buildPlan(loadWorkflow(join(DIR, name), { profile }), {
        workdir: "/tmp/plan-only",
      });
      sizes[profile] = plan.steps.length;
      const kinds = new Set(plan.steps.map((s) => s.kind));
      assert.ok(kinds.has("report"), `${name}: a report step`);
      for (const s of plan.steps) {
        const argv = stepCommand(s, "/tmp/out", { workdir: "/tmp/plan-only", threads: 2 }).argv
          .join(" ");
        assert.ok(!argv.includes("${{"), `${name} ${s.id}: unresolved reference in ${argv}`);
        if (s.kind === "train") {
          assert.match(argv, / train \S+ .*--out \/tmp\/out/);
          if (profile === "smoke") {
            assert.match(argv, /--iterations 2 /, `${name} ${s.id}: smoke trains 2 iterations`);
            assert.equal(s.resources.gpus, 0);
          } else assert.equal(s.resources.gpus, 1);
        }
      }
    }
    assert.ok(sizes.smoke <= sizes.full, `${name}: smoke is not larger than full`);
  }
});

Deno.test("workflows: labeled_ratio sweeps ratio x method; ablation variants switch one part off each", () => {
  const lr = buildPlan(loadWorkflow(join(DIR, "labeled_ratio.yaml"), { profile: "full" }), {
    workdir: "/tmp/w",
  });
  assert.equal(lr.instancesOf.get("train")!.length, 20);
  assert.equal(lr.byId.get("train[ratio=0.1,method=mutual]")!.params.labeled, 0.1);
  const ab = buildPlan(loadWorkflow(join(DIR, "ablation.yaml"), { profile: "smoke" }), {
    workdir: "/tmp/w",
  });
  const sets = (id: string) =>
    (ab.byId.get(id)!.params.set ?? {}) as Record<string, Record<string, unknown>>;
  assert.equal(sets("no_mia").network.mia, false);
  assert.equal(sets("no_mia").network.baseWidth, 4, "smoke settings merged with the variant's");
  assert.equal(sets("no_fusion").network.fusion, "none");
  assert.equal(sets("no_csc").loss.lambdaCsc, 0);
  assert.equal(sets("no_cac").loss.lambdaCac, 0);
  assert.equal(sets("full").loss, undefined);
});
