import assert from "node:assert/strict";
import { join } from "node:path";
import { loadWorkflow, parseDuration, parseMemoryMiB } from "./schema.ts";
import { WorkflowError } from "./yaml_source.ts";

function tmpFiles(files: Record<string, string>): string {
  const dir = Deno.makeTempDirSync({ prefix: "wf_schema_" });
  for (const [name, text] of Object.entries(files)) Deno.writeTextFileSync(join(dir, name), text);
  return dir;
}

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof WorkflowError, `expected WorkflowError, got ${err}`);
    return err.message;
  }
  assert.fail("expected an error");
}

Deno.test("schema: unknown key names file, key path and line", () => {
  const dir = tmpFiles({
    "w.yaml": "name: w\nsteps:\n  a:\n    kind: command\n    run: echo hi\n    parms: {x: 1}\n",
  });
  const msg = errorOf(() => loadWorkflow(join(dir, "w.yaml")));
  assert.match(msg, /w\.yaml:6: steps\.a\.parms: unknown key 'parms'/);
});

Deno.test("schema: wrong type and unknown kind point at their lines", () => {
  const dir = tmpFiles({
    "w.yaml":
      "name: w\nsteps:\n  a:\n    kind: command\n    run: echo\n    retries: two\n  b:\n    kind: bake\n",
  });
  const msg = errorOf(() => loadWorkflow(join(dir, "w.yaml")));
  assert.match(msg, /w\.yaml:6: steps\.a\.retries: /);
  assert.match(msg, /w\.yaml:8: steps\.b\.kind: expected one of synthesise/);
});

Deno.test("schema: invalid YAML and missing run are reported with lines", () => {
  const dir = tmpFiles({
    "bad.yaml": "name: w\nsteps: [\n",
    "norun.yaml": "name: w\nsteps:\n  a:\n    kind: command\n",
  });
  assert.match(errorOf(() => loadWorkflow(join(dir, "bad.yaml"))), /bad\.yaml:\d+: invalid YAML/);
  assert.match(
    errorOf(() => loadWorkflow(join(dir, "norun.yaml"))),
    /norun\.yaml:3: steps\.a\.run: a command step needs 'run'/,
  );
  assert.match(
    errorOf(() => loadWorkflow(join(dir, "nope.yaml"))),
    /Cannot read workflow .*nope\.yaml: file not found/,
  );
});

Deno.test("schema: extends merges files; profiles and --set override with provenance", () => {
  const dir = tmpFiles({
    "base.yaml":
      "name: base\nvars: {cases: 8, task: cardiac}\ndefaults:\n  retries: 2\nsteps:\n  a: {kind: command, run: echo a}\n",
    "child.yaml": [
      "extends: base.yaml",
      "name: child",
      "vars: {cases: 20}",
      "profiles:",
      "  smoke:",
      "    vars: {cases: 2}",
      "    steps:",
      "      a: {retries: oops}",
      "  full: {}",
      "steps:",
      "  b: {kind: command, run: echo b, needs: a}",
      "",
    ].join("\n"),
  });
  const wf = loadWorkflow(join(dir, "child.yaml"));
  assert.equal(wf.spec.name, "child");
  assert.deepEqual(wf.spec.vars, { cases: 20, task: "cardiac" });
  assert.equal(wf.spec.defaults?.retries, 2);
  assert.deepEqual(Object.keys(wf.spec.steps), ["a", "b"]);
  assert.equal(wf.files.length, 2);
  const full = loadWorkflow(join(dir, "child.yaml"), { profile: "full", set: ["vars.cases=3"] });
  assert.equal(full.spec.vars?.cases, 3);
  // The profile's bad value is reported at the profile's line in child.yaml.
  const msg = errorOf(() => loadWorkflow(join(dir, "child.yaml"), { profile: "smoke" }));
  assert.match(msg, /child\.yaml:8: steps\.a\.retries/);
  assert.match(
    errorOf(() => loadWorkflow(join(dir, "child.yaml"), { profile: "huge" })),
    /unknown profile 'huge' \(profiles: smoke, full\)/,
  );
});

Deno.test("schema: extends cycle is detected", () => {
  const dir = tmpFiles({
    "a.yaml": "extends: b.yaml\nname: a\nsteps: {}\n",
    "b.yaml": "extends: a.yaml\nname: b\n",
  });
  assert.match(errorOf(() => loadWorkflow(join(dir, "a.yaml"))), /'extends' forms a cycle/);
});

Deno.test("schema: durations and memory sizes", () => {
  assert.equal(parseDuration("90s"), 90);
  assert.equal(parseDuration("2h"), 7200);
  assert.equal(parseDuration("01:30:00"), 5400);
  assert.equal(parseDuration("1-00:00:00"), 86400);
  assert.equal(parseDuration("10:00"), 600);
  assert.equal(parseMemoryMiB("4G"), 4096);
  assert.equal(parseMemoryMiB("512M"), 512);
  assert.throws(() => parseDuration("soon"), /Cannot parse duration 'soon'/);
});

Deno.test("schema: the step name 'logs' is reserved", () => {
  const dir = tmpFiles({ "w.yaml": "name: w\nsteps:\n  logs: {kind: command, run: 'true'}\n" });
  assert.match(
    errorOf(() => loadWorkflow(join(dir, "w.yaml"))),
    /w\.yaml:3: steps\.logs: the step name 'logs' is reserved/,
  );
});
