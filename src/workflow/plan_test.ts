import assert from "node:assert/strict";
import { join } from "node:path";
import { loadWorkflow } from "./schema.ts";
import { buildPlan, expandMatrix, selectSteps, withAncestors } from "./plan.ts";

function planOf(yaml: string, profile?: string) {
  const dir = Deno.makeTempDirSync({ prefix: "wf_plan_" });
  Deno.writeTextFileSync(join(dir, "w.yaml"), yaml);
  return buildPlan(loadWorkflow(join(dir, "w.yaml"), { profile }), { workdir: join(dir, "work") });
}

const SWEEP = `name: sweep
vars: {task: cardiac, cases: 6}
defaults:
  resources: {cpus: 1}
  params: {train: {iterations: 50}}
steps:
  data:
    kind: synthesise
    params: {task: "\${{ vars.task }}", cases: "\${{ vars.cases }}"}
  train:
    kind: train
    matrix: {ratio: [0.1, 0.4], method: [cmc, supervised]}
    params: {task: cardiac, data: "\${{ steps.data.out }}", labeled: "\${{ matrix.ratio }}", method: "\${{ matrix.method }}"}
    resources: {cpus: 2, time: 10m}
  evaluate:
    kind: command
    needs: train
    matrix: {ratio: [0.1, 0.4], method: [cmc, supervised]}
    run: "cat \${{ steps.train.out }}/metrics.json > \${{ step.out }}/m.json"
  report:
    kind: report
    needs: [evaluate]
    params: {inputs: "\${{ steps.train.out }}"}
`;

Deno.test("plan: matrix expands into named instances with matched dependencies", () => {
  const plan = planOf(SWEEP);
  const ids = plan.steps.map((s) => s.id);
  assert.equal(ids.length, 1 + 4 + 4 + 1);
  assert.ok(ids.includes("train[ratio=0.1,method=cmc]"));
  const t = plan.byId.get("train[ratio=0.4,method=supervised]")!;
  assert.deepEqual(t.needs, ["data"]);
  assert.equal(t.params.labeled, 0.4); // a whole reference keeps its number type
  assert.equal(t.params.method, "supervised");
  assert.equal(t.params.iterations, 50); // from defaults.params.train
  assert.equal(t.params.data, join(plan.workdir, "data"));
  assert.equal(t.resources.cpus, 2);
  assert.equal(t.resources.timeSec, 600);
  assert.equal(t.outDir, join(plan.workdir, "train", "ratio=0.4,method=supervised"));
  const e = plan.byId.get("evaluate[ratio=0.1,method=cmc]")!;
  assert.deepEqual(e.needs, ["train[ratio=0.1,method=cmc]"]);
  assert.equal(
    e.run,
    `cat ${
      join(plan.workdir, "train", "ratio=0.1,method=cmc")
    }/metrics.json > \${{ step.out }}/m.json`,
  );
  const r = plan.byId.get("report")!;
  assert.equal(r.needs.length, 8); // evaluate (needs) + train (reference), all instances
  assert.equal(r.params.inputs, join(plan.workdir, "train"));
  // topological order
  const pos = new Map(ids.map((id, i) => [id, i]));
  for (const s of plan.steps) for (const n of s.needs) assert.ok(pos.get(n)! < pos.get(s.id)!);
  assert.equal(selectSteps(plan, ["train"]).size, 4);
  assert.equal(withAncestors(plan, ["evaluate[ratio=0.1,method=cmc]"]).size, 3);
});

Deno.test("plan: matrix include/exclude", () => {
  const combos = expandMatrix({
    a: [1, 2],
    b: ["x", "y"],
    exclude: [{ a: 2, b: "y" }],
    include: [{ a: 3, b: "z" }],
  });
  assert.deepEqual(combos, [{ a: 1, b: "x" }, { a: 1, b: "y" }, { a: 2, b: "x" }, {
    a: 3,
    b: "z",
  }]);
});

Deno.test("plan: missing dependency, cycle and bad reference are reported with lines", () => {
  assert.throws(
    () =>
      planOf(
        "name: w\nsteps:\n  a: {kind: command, run: x, needs: [b]}\n  b: {kind: command, run: y, needs: [c]}\n",
      ),
    /w\.yaml:4: steps\.b\.needs\[0\]: unknown step 'c' \(steps: a, b\)/,
  );
  assert.throws(
    () =>
      planOf(
        "name: w\nsteps:\n  a: {kind: command, run: x, needs: c}\n  b: {kind: command, run: y, needs: a}\n  c: {kind: command, run: y, needs: b}\n",
      ),
    /dependency cycle: (a -> c -> b -> a|b -> a -> c -> b|c -> b -> a -> c)/,
  );
  assert.throws(
    () => planOf("name: w\nsteps:\n  a:\n    kind: command\n    run: echo ${{ matrix.nope }}\n"),
    /w\.yaml:5: steps\.a\.run: unknown reference '\$\{\{ matrix\.nope \}\}'/,
  );
  assert.throws(
    () => planOf("name: w\nsteps:\n  a:\n    kind: command\n    run: echo ${{ 1 + 2 }}\n"),
    /is not a reference/,
  );
  assert.throws(
    () => planOf("name: w\nsteps:\n  a:\n    kind: command\n    run: echo ${{ steps.zz.out }}\n"),
    /unknown step 'zz'/,
  );
});

Deno.test("plan: a report without inputs reports on what it needs", () => {
  const plan = planOf(`name: r
steps:
  a: {kind: command, matrix: {x: [1, 2]}, run: "true"}
  report: {kind: report, needs: a}
`);
  assert.deepEqual(plan.byId.get("report")!.params.inputs, [
    join(plan.workdir, "a", "x=1"),
    join(plan.workdir, "a", "x=2"),
  ]);
  assert.throws(
    () => planOf("name: r\nsteps:\n  report: {kind: report}\n"),
    /w\.yaml:3: steps\.report\.params: a report step needs params\.inputs or needs/,
  );
});
