#!/usr/bin/env bash
# Executes a notebook headless with the Deno Jupyter kernel:
#   scripts/run_notebook.sh [NOTEBOOK] [OUTPUT]
# (defaults: notebooks/quickstart.ipynb -> .cache/notebooks/quickstart.executed.ipynb).
#
# 1. A Python venv with nbconvert, nbclient and jupyter-client (created once in $COMODAL_NB_VENV,
#    default .cache/nbvenv), installed from the machine's local package index when it has one
#    ($COMODAL_PIP_INDEX, default file:///opt/pypi/simple; $COMODAL_PIP_FIND_LINKS, default /opt/wheels).
# 2. The Deno kernelspec `comodal-deno` (`deno jupyter --install`, pointing at this project's Deno).
# 3. `jupyter nbconvert --to notebook --execute`; exits non-zero if a cell fails.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DENO=${DENO:-$ROOT/.tools/node_modules/.bin/deno}
if [ ! -x "$DENO" ]; then DENO=$(command -v deno || true); fi
if [ -z "$DENO" ]; then echo "run_notebook: no Deno (run 'make deno' first)" >&2; exit 1; fi
NB=$(realpath "${1:-$ROOT/notebooks/quickstart.ipynb}")
NAME=$(basename "$NB" .ipynb)
OUT=${2:-$ROOT/.cache/notebooks/$NAME.executed.ipynb}
VENV=${COMODAL_NB_VENV:-$ROOT/.cache/nbvenv}
INDEX=${COMODAL_PIP_INDEX:-file:///opt/pypi/simple}
LINKS=${COMODAL_PIP_FIND_LINKS:-/opt/wheels}
KERNEL=comodal-deno

if [ ! -f "$NB" ]; then echo "run_notebook: $NB does not exist" >&2; exit 1; fi

if [ ! -x "$VENV/bin/jupyter-nbconvert" ]; then
  echo "run_notebook: creating $VENV" >&2
  python3 -m venv "$VENV"
  pip_args=(-q --disable-pip-version-check)
  # A local index keeps pip off the network (it would retry an unreachable public index for minutes).
  if [ -d "${INDEX#file://}" ] || [[ "$INDEX" != file://* ]]; then pip_args+=(--index-url "$INDEX"); fi
  if [ -d "$LINKS" ]; then pip_args+=(--find-links "$LINKS"); fi
  "$VENV/bin/pip" install "${pip_args[@]}" nbconvert nbclient jupyter-client
fi

"$DENO" jupyter --install --name "$KERNEL" --display "Deno (comodal)" --force >/dev/null 2>&1 ||
  { echo "run_notebook: '$DENO jupyter --install' failed" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
OUT=$(realpath "$OUT")
# Run from the notebook's folder so relative imports (../mod.ts) resolve as in Jupyter.
cd "$(dirname "$NB")"
"$VENV/bin/jupyter" nbconvert --to notebook --execute \
  --ExecutePreprocessor.kernel_name="$KERNEL" \
  --ExecutePreprocessor.timeout="${COMODAL_NB_CELL_TIMEOUT:-300}" \
  --output-dir "$(dirname "$OUT")" --output "$(basename "$OUT")" "$NB"
echo "run_notebook: executed notebook written to $OUT" >&2
