#!/usr/bin/env bash
# `make bench-env`: creates the virtual environment VENV (default .tools/torchvenv) and installs
# bench/requirements.txt into it with pip, from the package indexes pip is configured with
# (pip.conf, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS). Extra pip flags: PIP_ARGS.
# Where pip is configured with local (file://) extra indexes only, they are used as the index, so
# a machine without access to the default index does not wait on it package by package.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.tools/torchvenv}
python=${PYTHON:-python3}
command -v "$python" >/dev/null || {
  echo "[bench-env] ERROR: $python not found; install Python 3 with its venv module" >&2
  exit 1
}
if [ ! -x "$venv/bin/python" ]; then
  echo "[bench-env] creating $venv"
  "$python" -m venv "$venv" || {
    echo "[bench-env] ERROR: $python -m venv failed (Debian: apt-get install python3-venv)" >&2
    exit 1
  }
fi
args=()
index=$("$python" -m pip config get global.index-url 2>/dev/null || true)
extra=${PIP_EXTRA_INDEX_URL:-$("$python" -m pip config get global.extra-index-url 2>/dev/null || true)}
if [ -z "${PIP_INDEX_URL:-}" ] && [ -z "$index" ] && [ -n "$extra" ]; then
  local_only=1
  for u in $extra; do [[ $u == file://* ]] || local_only=0; done
  if [ $local_only = 1 ]; then
    set -- $extra
    args+=(--index-url "$1")
    shift
    for u in "$@"; do args+=(--extra-index-url "$u"); done
  fi
fi
echo "[bench-env] installing bench/requirements.txt into $venv ${args[*]:+(${args[*]})}"
# (pip's notes about packages a local index does not hold are left out.)
# shellcheck disable=SC2086
set +e
"$venv/bin/python" -m pip install --quiet "${args[@]}" ${PIP_ARGS:-} -r bench/requirements.txt 2>&1 |
  grep -v "is ignored: it is neither a file nor a directory"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || {
  echo "[bench-env] ERROR: pip could not install bench/requirements.txt: torch==2.13.0+cpu must be" \
    "on an index pip is configured with (or give one: PIP_ARGS=\"--extra-index-url URL\")" >&2
  exit 1
}
"$venv/bin/python" -c "import torch, numpy, nibabel, scipy; print('[bench-env] torch', torch.__version__, 'ready in', '$venv')"
