#!/usr/bin/env bash
# prepare.sh — run on the development machine before scripts/gpu/test.sh is run on a GPU machine.
# Builds both native libraries and packs what the GPU machine lacks into .dev/gpu/ (git-ignored):
#   libcomodal_cpu.so, libcomodal_cuda.so   prebuilt here (-cudart static, sm_80 + sm_90)
#   libs.tar.xz                             oneDNN (libdnnl.so.2) and its libOpenCL/libgomp, for the CPU library
#   cudnn/                                  the cuDNN headers (to rebuild the CUDA library there)
#   deno.xz, node_modules.tar.xz            Deno and the npm packages, for the TypeScript parity suite
# Then, with the device tool: command "bash scripts/gpu/test.sh", carry [".dev/gpu"].
set -euo pipefail
cd "$(dirname "$0")/../.."
make --no-print-directory build/libcomodal_cpu.so cuda
out=.dev/gpu
mkdir -p "$out"
cp build/libcomodal_cpu.so build/libcomodal_cuda.so "$out/"
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')" > "$out/commit.txt"
rm -rf "$out/cudnn" && mkdir -p "$out/cudnn" && cp -r .tools/cudnn/include "$out/cudnn/"
if [ ! -f "$out/libs.tar.xz" ]; then
  libdir=/usr/lib/x86_64-linux-gnu
  tmp=$(mktemp -d)
  cp -L "$libdir/libdnnl.so.2" "$libdir/libOpenCL.so.1" "$libdir/libgomp.so.1" "$tmp/"
  tar -C "$tmp" -cJf "$out/libs.tar.xz" .
  rm -rf "$tmp"
fi
if [ "${WITH_DENO:-1}" = 1 ]; then
  deno_bin=.tools/node_modules/deno/deno
  [ -f "$out/deno.xz" ] || xz -T0 -6 -c "$deno_bin" > "$out/deno.xz"
  tar -cJf "$out/node_modules.tar.xz" node_modules
fi
du -sh "$out"/*
