import assert from "node:assert/strict";
import { join } from "node:path";

const CLI = new URL("./workflow.ts", import.meta.url).pathname;

async function cli(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", CLI, ...args],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, out: dec.decode(out.stdout), err: dec.decode(out.stderr) };
}

function workflow(yaml: string): { dir: string; file: string } {
  const dir = Deno.makeTempDirSync({ prefix: "wf_cli_" });
  const file = join(dir, "w.yaml");
  Deno.writeTextFileSync(file, yaml.replaceAll("DIR", dir));
  return { dir, file };
}

Deno.test("cli workflow: dry-run, run, status, --force and --only", async () => {
  const { dir, file } = workflow(`name: cli
workdir: DIR/work
steps:
  a: {kind: command, run: "echo a > \${{ step.out }}/a"}
  b:
    kind: command
    matrix: {x: [1, 2]}
    run: "cat \${{ steps.a.out }}/a > \${{ step.out }}/b"
`);
  const dry = await cli([file, "--dry-run"]);
  assert.equal(dry.code, 0, dry.err);
  assert.match(dry.out, /run +a /);
  assert.match(dry.out, /run +b\[x=2\] .*never ran/);
  assert.match(dry.out, /3 steps: 3 to run, 0 cached/);
  assert.throws(() => Deno.statSync(join(dir, "work", "a")), "dry-run runs nothing");
  const run = await cli([file]);
  assert.equal(run.code, 0, run.err);
  assert.match(run.out, /cli: 3 done, 0 cached, 0 failed, 0 skipped/);
  const status = await cli(["status", file]);
  assert.match(status.out, /cached +b\[x=1\] .*last: done/);
  assert.match(status.out, /3 steps: 0 to run, 3 cached/);
  const forced = await cli([file, "--force", "a", "--json"]);
  const summary = JSON.parse(forced.out);
  assert.deepEqual(summary.counts, { done: 1, cached: 2, failed: 0, skipped: 0, unselected: 0 });
  const only = await cli([file, "--only", "b[x=1]", "--force", "b", "--dry-run"]);
  assert.match(only.out, /cached +a /);
  assert.match(only.out, /run +b\[x=1\] .*forced/);
  assert.match(only.out, /skip +b\[x=2\] .*not selected/);
});

Deno.test("cli workflow: bad input gives clear messages and a failing exit code", async () => {
  const bad = workflow("name: bad\nsteps:\n  a: {kind: command, run: x, needs: [zz]}\n");
  const r1 = await cli([bad.file, "--dry-run"]);
  assert.notEqual(r1.code, 0);
  assert.match(r1.err, /w\.yaml:3: steps\.a\.needs\[0\]: unknown step 'zz'/);
  const r2 = await cli([bad.file, "--executor", "pbs"]);
  assert.notEqual(r2.code, 0);
  assert.match(r2.err, /pbs.*invalid.*local, slurm/i);
  const ok = workflow(
    "name: fails\nworkdir: DIR/work\nsteps:\n  a: {kind: command, run: 'echo oops >&2; exit 7'}\n  b: {kind: command, run: 'true'}\n",
  );
  const r3 = await cli([ok.file]);
  assert.equal(r3.code, 1);
  assert.match(r3.out, /FAILED +a: exit code 7 \(log: .*a\.log\)/);
  assert.match(r3.out, /1 done, 0 cached, 1 failed/);
  // sbatch missing
  const r4 = await cli([ok.file, "--executor", "slurm", "--workdir", join(ok.dir, "w2")], {
    PATH: "/nonexistent",
  });
  assert.notEqual(r4.code, 0);
  assert.match(r4.err, /'sbatch' was not found on PATH/);
  const r5 = await cli(["status"]);
  assert.match(r5.err, /workflow status: expected exactly one workflow file/);
});

Deno.test("cli workflow: report sub-command writes report.html", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "wf_cli_report_" });
  Deno.mkdirSync(join(dir, "run1"));
  Deno.writeTextFileSync(
    join(dir, "run1", "metrics.json"),
    JSON.stringify({ mean: { dice: 0.75, hd95: 3, assd: 1 } }),
  );
  const r = await cli(["report", "--out", join(dir, "rep"), "--title", "T", dir]);
  assert.equal(r.code, 0, r.err);
  const html = Deno.readTextFileSync(join(dir, "rep", "report.html"));
  assert.match(html, /<td>0\.750<\/td>/);
});
