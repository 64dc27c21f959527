/**
 * `workflow <file>`: runs a workflow file locally or through Slurm; `workflow status <file>` shows
 * the plan and what is cached; `workflow report --out DIR <run folders...>` writes the HTML
 * report (report steps call it).
 */
import { Command, Option } from "commander";
import pc from "picocolors";
import { loadWorkflow } from "../src/workflow/schema.ts";
import { buildPlan } from "../src/workflow/plan.ts";
import {
  describePlan,
  type EngineEvent,
  formatSummary,
  type PlanEntry,
  prepare,
  runLocal,
  type RunSummary,
} from "../src/workflow/engine.ts";
import { runSlurm } from "../src/workflow/slurm.ts";
import { writeReport } from "../src/report/html_report.ts";

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function printPlan(entries: PlanEntry[], opts: { status: boolean }): void {
  const width = Math.min(60, Math.max(...entries.map((e) => e.id.length)));
  for (const e of entries) {
    const tag = e.action === "cached"
      ? pc.green("cached")
      : e.action === "run"
      ? pc.yellow("run   ")
      : pc.dim("skip  ");
    let extra = e.why;
    if (opts.status && e.last) {
      const when = e.last.finishedAt.replace("T", " ").slice(0, 19);
      extra = e.last.status === "failed"
        ? `${extra}${extra ? "; " : ""}last: failed ${when}: ${e.last.reason}`
        : `${extra}${extra ? "; " : ""}last: done ${when}`;
    }
    console.log(`${tag} ${e.id.padEnd(width)} ${pc.dim(e.hash.slice(0, 10))} ${extra}`);
  }
  const run = entries.filter((e) => e.action === "run").length;
  const cached = entries.filter((e) => e.action === "cached").length;
  console.log(`${entries.length} steps: ${run} to run, ${cached} cached`);
}

function eventPrinter(total: number): (e: EngineEvent) => void {
  let finished = 0;
  return (e) => {
    if (e.type === "start") {
      console.log(`${pc.cyan("start")}  ${e.id}${e.attempt > 1 ? ` (attempt ${e.attempt})` : ""}`);
    } else if (e.type === "retry") {
      console.log(`${pc.yellow("retry")}  ${e.id}: ${e.reason}; again in ${e.delaySec}s`);
    } else if (e.type === "note") {
      console.log(`${pc.magenta("note")}   ${e.message}`);
    } else {
      finished++;
      const r = e.result;
      const n = `[${finished}/${total}]`;
      if (r.status === "done") {
        console.log(
          `${pc.green("done")}   ${n} ${r.id} ${
            pc.dim(`${((r.durationMs ?? 0) / 1000).toFixed(1)}s`)
          }`,
        );
      } else if (r.status === "cached") console.log(`${pc.green("cached")} ${n} ${r.id}`);
      else if (r.status === "failed") {
        console.log(
          `${pc.red("FAILED")} ${n} ${r.id}: ${r.reason}${r.log ? ` (log: ${r.log})` : ""}`,
        );
      } else console.log(`${pc.dim("skip")}   ${n} ${r.id}: ${r.reason}`);
    }
  };
}

interface WorkflowFlags {
  executor?: string;
  dryRun?: boolean;
  only: string[];
  force: string[];
  profile?: string;
  set: string[];
  workdir?: string;
  cpus?: string;
  waitRunning?: string;
  json?: boolean;
  out?: string;
  title?: string;
}

async function runCommand(file: string, o: WorkflowFlags): Promise<void> {
  const wf = loadWorkflow(file, { profile: o.profile, set: o.set });
  const plan = buildPlan(wf, { workdir: o.workdir });
  const executor = o.executor ?? wf.spec.executor ?? "local";
  if (o.dryRun) {
    const entries = describePlan(prepare(plan, { only: o.only, force: o.force }));
    if (o.json) console.log(JSON.stringify(entries, null, 1));
    else {
      console.log(`${plan.name} (${executor}, workdir ${plan.workdir})`);
      printPlan(entries, { status: false });
    }
    return;
  }
  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = () => {
    interrupts++;
    if (interrupts > 1) Deno.exit(130);
    console.error("interrupted: stopping running steps (press Ctrl-C again to quit at once)");
    controller.abort();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  let summary: RunSummary;
  try {
    const common = {
      only: o.only,
      force: o.force,
      signal: controller.signal,
      // With --json, stdout is the summary alone; notes (locks taken over, jobs re-attached) go to stderr.
      onEvent: o.json
        ? (e: EngineEvent) => e.type === "note" && console.error(`note: ${e.message}`)
        : eventPrinter(plan.steps.length),
    };
    const waitRunningSec = o.waitRunning !== undefined ? Number(o.waitRunning) : undefined;
    if (waitRunningSec !== undefined && !(waitRunningSec >= 0)) {
      throw new Error(`--wait-running: expected a number of seconds, got ${o.waitRunning}`);
    }
    summary = executor === "slurm" ? await runSlurm(plan, common) : await runLocal(plan, {
      ...common,
      cpus: o.cpus ? Number(o.cpus) : undefined,
      waitRunningSec,
    });
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
  if (o.json) console.log(JSON.stringify(summary, null, 1));
  else console.log(formatSummary(summary));
  if (!summary.ok) {
    throw new Error(
      `workflow ${plan.name}: ${summary.counts.failed} step(s) failed, ${summary.counts.skipped} skipped`,
    );
  }
}

export function register(program: Command): void {
  program
    .command("workflow")
    .description(
      "run a workflow file (workflow <file>), show its plan and cache state (workflow status <file>), " +
        "or write an HTML report (workflow report --out DIR <run folders...>)",
    )
    .argument("<file|status|report>", "workflow YAML file, or a sub-command")
    .argument("[args...]", "the workflow file for status; run folders for report")
    .addOption(new Option("--executor <name>", "where steps run").choices(["local", "slurm"]))
    .option("--dry-run", "show the plan (what runs, what is cached) and run nothing")
    .option(
      "--only <step>",
      "run only this step (name or id) and what it needs; repeatable",
      collect,
      [],
    )
    .option(
      "--force <step>",
      "run this step (name, id or *) even if cached; repeatable",
      collect,
      [],
    )
    .option("--profile <name>", "apply a profile of the file (e.g. smoke, full)")
    .option(
      "--set <key=value>",
      "override a key of the file, e.g. vars.cases=4; repeatable",
      collect,
      [],
    )
    .option("--workdir <dir>", "working folder (default: the file's workdir, else runs/<name>)")
    .option("--cpus <n>", "CPU threads the local executor may use (default: all cores)")
    .option(
      "--wait-running <seconds>",
      "local: how long to wait for a step still running from an earlier, killed run before " +
        "refusing to start (default 10)",
    )
    .option("--json", "machine-readable output")
    .option("--out <dir>", "report: output folder")
    .option("--title <text>", "report: title")
    .action(async (target: string, args: string[], o: WorkflowFlags) => {
      if (target === "report") {
        if (!o.out) throw new Error("workflow report: --out <dir> is required");
        if (args.length === 0) {
          throw new Error("workflow report: give at least one run folder to report on");
        }
        const path = await writeReport(args, { outDir: o.out, title: o.title });
        console.log(`report written to ${path}`);
        return;
      }
      if (target === "status") {
        if (args.length !== 1) {
          throw new Error("workflow status: expected exactly one workflow file");
        }
        const wf = loadWorkflow(args[0], { profile: o.profile, set: o.set });
        const plan = buildPlan(wf, { workdir: o.workdir });
        const entries = describePlan(prepare(plan, { only: o.only, force: o.force }));
        if (o.json) console.log(JSON.stringify(entries, null, 1));
        else {
          console.log(`${plan.name} (workdir ${plan.workdir})`);
          printPlan(entries, { status: true });
        }
        return;
      }
      if (args.length > 0) {
        throw new Error(`workflow: unexpected arguments after ${target}: ${args.join(" ")}`);
      }
      await runCommand(target, o);
    });
}

if (import.meta.main) {
  // Standalone use (report steps call this file directly): same behaviour as `comodal workflow`.
  const program = new Command("comodal").exitOverride();
  register(program);
  try {
    await program.parseAsync(["workflow", ...Deno.args], { from: "user" });
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    if (e.code === "commander.helpDisplayed") Deno.exit(0);
    if (!e.code?.startsWith("commander.")) console.error(`error: ${e.message ?? String(err)}`);
    Deno.exit(e.exitCode ?? 1);
  }
}
