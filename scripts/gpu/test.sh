#!/usr/bin/env bash
# test.sh — the one command that tests the CUDA backend on a GPU machine (run from the repository
# root; prepare the carried folder with scripts/gpu/prepare.sh first, carry .dev/gpu).
#   1. finds cuDNN 9 (PyTorch's wheel there) and the carried oneDNN for the CPU library
#   2. uses the carried prebuilt libraries, or rebuilds the CUDA one with nvcc when REBUILD=1
#   3. builds and runs the C++ parity driver: every op, CPU library vs CUDA library
#   4. conv3d forward + backward benchmark: ours (strict FP32 and TF32) and PyTorch + cuDNN
#   5. if Deno was carried: the TypeScript parity suite (goldens from PyTorch) with COMODAL_DEVICE=cuda
# Logs go to $OUT (when set) and to stdout; the last lines are a summary.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/comodal-gpu-out}"
mkdir -p "$OUT" build
carried=.dev/gpu
summary=()
step() { echo; echo "=== $* ==="; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi failed"
nvcc --version 2>/dev/null | tail -1
python3 -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version())" 2>&1

step "libraries"
cudnn_lib="$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null || true)"
if [ -z "$cudnn_lib" ] || [ ! -f "$cudnn_lib/libcudnn.so.9" ]; then
  cudnn_lib="$(dirname "$(find / -xdev -name 'libcudnn.so.9' 2>/dev/null | head -1)" 2>/dev/null || true)"
fi
echo "cuDNN library folder: ${cudnn_lib:-not found}"
export COMODAL_CUDNN_PATH="$cudnn_lib"
mkdir -p /tmp/comodal-libs
[ -f "$carried/libs.tar.xz" ] && tar -C /tmp/comodal-libs -xJf "$carried/libs.tar.xz"
export LD_LIBRARY_PATH="/tmp/comodal-libs:${cudnn_lib}:${LD_LIBRARY_PATH:-}"
[ -f "$carried/libcomodal_cpu.so" ] && cp "$carried/libcomodal_cpu.so" build/
if [ "${REBUILD:-0}" = 1 ] || [ ! -f "$carried/libcomodal_cuda.so" ]; then
  mkdir -p .tools/cudnn && cp -r "$carried/cudnn/include" .tools/cudnn/ 2>/dev/null
  t0=$(date +%s)
  nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -cudart static --extended-lambda \
    -gencode arch=compute_90,code=sm_90 -I.tools/cudnn/include -o build/libcomodal_cuda.so \
    native/cuda/*.cu -ldl && echo "built build/libcomodal_cuda.so for sm_90 in $(( $(date +%s) - t0 )) s" \
    || summary+=("CUDA library build: FAILED")
else
  cp "$carried/libcomodal_cuda.so" build/
fi

step "parity driver (CPU library vs CUDA library, every op)"
g++ -std=c++17 -O2 -I native/include native/cuda/tests/test_cuda_parity.cpp -ldl -o build/test_cuda_parity
./build/test_cuda_parity --cpu build/libcomodal_cpu.so --cuda build/libcomodal_cuda.so 2>&1 | tee "$OUT/parity.log"
summary+=("C++ parity: $(tail -1 "$OUT/parity.log")")

step "bad input: cuDNN missing at run time (expects a clear 'cuDNN not found')"
miss=$(env -u COMODAL_CUDNN_PATH LD_LIBRARY_PATH=/tmp/comodal-libs ./build/test_cuda_parity --cuda build/libcomodal_cuda.so \
  --cpu /nonexistent 2>&1 | grep -m1 "backend_create" || true)
echo "$miss"
if echo "$miss" | grep -q "cuDNN not found"; then summary+=("cuDNN missing: clear error (ok)");
else summary+=("cuDNN missing: NO clear error (or cuDNN found through ldconfig): $miss"); fi

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  step "conv3d benchmark: comodal CUDA backend"
  # cuDNN's algorithm lists go to cudnn_find.log (stderr), the table to stdout
  COMODAL_CUDNN_VERBOSE=1 ./build/test_cuda_parity --cuda build/libcomodal_cuda.so --bench-only \
    2> "$OUT/cudnn_find.log" | tee "$OUT/bench_ours.log"
  step "conv3d benchmark: PyTorch + cuDNN"
  PYTHONUNBUFFERED=1 python3 bench/gpu_torch.py --json "$OUT/bench_torch.json" ${TORCH_ARGS:-} 2>&1 | tee "$OUT/bench_torch.log"
fi

if [ -f "$carried/deno.xz" ]; then
  step "TypeScript parity suite (goldens), COMODAL_DEVICE=cuda"
  xz -dc "$carried/deno.xz" > /tmp/deno && chmod +x /tmp/deno
  [ -f "$carried/node_modules.tar.xz" ] && [ ! -d node_modules ] && tar -xJf "$carried/node_modules.tar.xz"
  NO_COLOR=1 COMODAL_CUDA_TF32=0 COMODAL_DEVICE=cuda /tmp/deno test -A --no-check ${DENO_TESTS:-tests/parity_test.ts} 2>&1 \
    | tee "$OUT/deno_parity.log"
  summary+=("Deno parity: $(grep -E '^(ok|FAILED) \|' "$OUT/deno_parity.log" | tail -1)")
  if [ "${SKIP_BENCH:-0}" != 1 ]; then
    # EXTRA_ENV, e.g. "COMODAL_CUDA_SPLITK=0 COMODAL_CUDA_WGRAD=cudnn", sets backend knobs for the step
    [ -n "${EXTRA_ENV:-}" ] && export ${EXTRA_ENV} && echo "step benchmark with ${EXTRA_ENV}"
    step "training step: U-Net and CMC on the TypeScript engine, CUDA backend (batch 2, 128^3)"
    for tf in 0 1; do
      NO_COLOR=1 COMODAL_CUDA_TF32=$tf COMODAL_DEVICE=cuda /tmp/deno run -A --no-check bench/gpu_train_step.ts \
        --torch-json "$OUT/bench_torch.json" ${STEP_ARGS:-} 2>&1 | grep -v '^    at ' | tee -a "$OUT/train_step.log"
    done
    step "short training run: CMC on the synthetic cardiac task, CUDA backend"
    NO_COLOR=1 /tmp/deno run -A --no-check cli/main.ts train cardiac --device cuda --iterations "${TRAIN_ITERS:-200}" \
      --out /tmp/comodal-run --set syntheticCases=8 --set validation.every=100 --set validation.maxCases=2 \
      --set images=false 2>&1 | tr '\r' '\n' > "$OUT/train_run.log"
    grep -m2 "loss" "$OUT/train_run.log"
    grep "loss" "$OUT/train_run.log" | tail -2
    sed -n '/^Trained/,$p' "$OUT/train_run.log"
    grep -qi "^Trained" "$OUT/train_run.log" && summary+=("short CUDA training run: completed") \
      || { tail -20 "$OUT/train_run.log"; summary+=("short CUDA training run: FAILED"); }
    if [ "${PROFILE:-1}" = 1 ]; then
      step "per-op profile of one training step (every op synchronised, TF32 allowed)"
      NO_COLOR=1 COMODAL_CUDA_SYNC_OPS=1 COMODAL_CUDA_TF32=1 COMODAL_DEVICE=cuda /tmp/deno run -A --no-check \
        bench/gpu_train_step.ts --profile --steps 1 --warmup 2 ${STEP_ARGS:-} 2>&1 | grep -v '^    at ' | tee -a "$OUT/train_step.log"
    fi
  fi
fi

step "summary"
printf '%s\n' "${summary[@]}"
