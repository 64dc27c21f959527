/**
 * The Python the benchmarks run PyTorch with: `--torch-python PATH` (bench/main.ts), else
 * COMODAL_TORCH_PYTHON, else the virtual environment `make bench-env` creates at .tools/torchvenv
 * (CPU PyTorch, numpy, nibabel and scipy pinned in bench/requirements.txt).
 * @module
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** The virtual environment `make bench-env` creates. */
export const TORCH_VENV = fileURLToPath(new URL("../.tools/torchvenv", import.meta.url));

/** How to get a PyTorch for the comparison, for messages. */
export const BENCH_ENV_HINT = "run `make bench-env` (creates .tools/torchvenv with CPU PyTorch " +
  "from bench/requirements.txt), or point --torch-python or COMODAL_TORCH_PYTHON at a Python " +
  "with torch";

let override: string | null = null;

/** Sets the Python given on the command line (null: back to COMODAL_TORCH_PYTHON / the venv). */
export function setTorchPython(p: string | null): void {
  override = p;
}

/** The Python to use and where it came from (whether or not it exists). */
export function torchPythonPath(): { python: string; from: string } {
  if (override) return { python: override, from: "--torch-python" };
  const env = Deno.env.get("COMODAL_TORCH_PYTHON");
  if (env) return { python: env, from: "COMODAL_TORCH_PYTHON" };
  return { python: `${TORCH_VENV}/bin/python`, from: "make bench-env" };
}

/** The Python if it exists, else why not and how to get one. */
export function torchPython(): { python: string } | { error: string } {
  const { python, from } = torchPythonPath();
  if (existsSync(python)) return { python };
  return { error: `${python} (${from}) not found: ${BENCH_ENV_HINT}` };
}
