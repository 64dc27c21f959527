#!/usr/bin/env bash
# fetch_cudnn.sh DEST — unpacks the cuDNN 9 headers and the small libcudnn.so.9 front library from
# NVIDIA's nvidia_cudnn_cu13 wheel on disk into DEST/include and DEST/lib. The CUDA backend needs
# only the headers to compile: it loads the full cuDNN (libcudnn.so.9 and its sub-libraries, e.g.
# PyTorch's copy) at run time with dlopen; the front library kept here is for inspection only.
# No network is used.
# The wheel is taken from $CUDNN_WHEEL if set, else searched in the usual wheel folders, else on /.
set -euo pipefail
dest="${1:?usage: fetch_cudnn.sh DEST}"
wheel="${CUDNN_WHEEL:-}"
if [ -z "$wheel" ]; then
  for dir in /opt/pypi-more/files /opt/pypi/files /opt/wheels "$HOME/.cache/pip/wheels"; do
    if [ -d "$dir" ]; then
      wheel="$(find "$dir" -maxdepth 3 -name 'nvidia_cudnn_cu13-*.whl' 2>/dev/null | sort | tail -1)"
      [ -n "$wheel" ] && break
    fi
  done
fi
if [ -z "$wheel" ]; then
  wheel="$(find / -xdev -name 'nvidia_cudnn_cu13-*.whl' 2>/dev/null | sort | tail -1 || true)"
fi
if [ -n "${CUDNN_WHEEL:-}" ] && [ ! -f "$CUDNN_WHEEL" ]; then
  echo "[cuda] ERROR: cannot build the CUDA backend: CUDNN_WHEEL=$CUDNN_WHEEL does not exist" >&2
  exit 1
fi
if [ -z "$wheel" ] || [ ! -f "$wheel" ]; then
  echo "[cuda] ERROR: cannot build the CUDA backend: no cuDNN wheel (nvidia_cudnn_cu13-*.whl) found on" >&2
  echo "[cuda]        this machine; set CUDNN_WHEEL=/path/to/nvidia_cudnn_cu13-<version>.whl" >&2
  exit 1
fi
command -v unzip >/dev/null 2>&1 || { echo "[cuda] ERROR: unzip is needed to unpack $wheel" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
unzip -q -o "$wheel" 'nvidia/cudnn/include/*' 'nvidia/cudnn/lib/libcudnn.so.9' -d "$tmp"
mkdir -p "$dest/include" "$dest/lib"
cp "$tmp"/nvidia/cudnn/include/*.h "$dest/include/"
cp "$tmp/nvidia/cudnn/lib/libcudnn.so.9" "$dest/lib/"
echo "[cuda] cuDNN headers from $(basename "$wheel") -> $dest"
