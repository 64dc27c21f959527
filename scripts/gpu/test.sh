#!/usr/bin/env bash
# test.sh — the one command that tests and benchmarks the CUDA backend on a GPU machine (run from the
# repository root; prepare the carried folder with scripts/gpu/prepare.sh first, carry .dev/gpu).
#
# setup (always): checks for a GPU (stops with exit code 3 and a clear message when there is none),
#   finds cuDNN 9 (PyTorch's wheel there), the carried oneDNN, the prebuilt libraries (or rebuilds the
#   CUDA one with nvcc when REBUILD=1) and Deno. Then the stages, in this order:
#   parity   C++ parity driver: every op, CPU library vs CUDA library
#   cudnn    cuDNN missing at run time gives a clear error
#   conv     conv3d forward + backward: ours (test_cuda_parity --bench-only) and PyTorch + cuDNN
#   step     training step of the U-Net and the CMC model, strict FP32 and TF32: ours
#            (bench/gpu_train_step.ts) and the PyTorch twins (bench/gpu_torch.py), each model, precision
#            and side in its own process, ours then PyTorch for each pair
#   deno     the TypeScript parity suite (PyTorch goldens) with COMODAL_DEVICE=cuda
#   train    short CMC training run on the synthetic cardiac task (TRAIN_ITERS, default 200)
#   profile  per-op profile of one step of each model (every op synchronised)
# and last a Markdown summary (bench/gpu_summary.py; also $OUT/summary.md) to paste into
# bench/gpu_notes.md.
#
# Knobs (environment):
#   STAGES="conv,step"   run only these stages (default: all);  SKIP="train,profile"  leave these out
#   TOTAL_BUDGET=540     seconds for everything (the device tool stops a command at 600 s); each stage
#                        runs under `timeout` with min(BUDGET_<stage>, what is left - 25 s for the summary)
#   BUDGET_parity=150 BUDGET_cudnn=30 BUDGET_conv=150 BUDGET_step=300 BUDGET_deno=180 BUDGET_train=180
#   BUDGET_profile=90
#   STEP_MODELS="unet cmc" STEP_PRECISIONS="fp32 tf32" STEP_SIZE=128 STEP_STEPS=5 STEP_WARMUP=3
#   STEP_ARGS="..."      extra arguments for bench/gpu_train_step.ts (ours)
#   TORCH_ARGS="..."     extra arguments for bench/gpu_torch.py (e.g. --inputs device)
#   EXTRA_ENV="COMODAL_CUDA_SPLITK=0 COMODAL_CUDA_WGRAD=cudnn"  backend knobs for the step and profile
#   REBUILD=1            compile the CUDA library here (sm_90) instead of using the carried one
#   PYTHON=python3       the Python with PyTorch;  DENO=...  a Deno binary (default: the carried one)
#   GPU_DRY_RUN=1        no GPU needed: checks this script's logic on the CPU at a tiny size (PyTorch on
#                        the CPU, our CPU backend, 32^3, one step); the figures mean nothing
#   SKIP_BENCH=1         (old knob) same as SKIP="conv,step,profile"
# Logs go to $OUT (default /tmp/comodal-gpu-out): test.log (everything), stages.tsv, notes.txt, one log
# and JSON per benchmark, summary.md.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT="${OUT:-/tmp/comodal-gpu-out}"
mkdir -p "$OUT" build
exec > >(tee -a "$OUT/test.log") 2>&1
TEE_PID=$!
T_START=$(date +%s)
export CARRIED=.dev/gpu
export GPU_DRY_RUN="${GPU_DRY_RUN:-0}"
export PY="${PYTHON:-python3}"
ALL_STAGES="parity cudnn conv step deno train profile"
: > "$OUT/stages.tsv"
: > "$OUT/notes.txt"

step() { echo; echo "=== $* ==="; }
note() { echo "$*" >> "$OUT/notes.txt"; }
export -f step note

# ------------------------------------------------------------------ which stages
want="${STAGES:-$ALL_STAGES}"
skip="${SKIP:-}"
[ "${SKIP_BENCH:-0}" = 1 ] && skip="$skip conv step profile"
want=" $(echo "$want" | tr ',' ' ') "
skip=" $(echo "$skip" | tr ',' ' ') "
for s in $want $skip; do
  case " $ALL_STAGES " in *" $s "*) ;; *)
    echo "test.sh: unknown stage \"$s\" in STAGES/SKIP (stages: $ALL_STAGES)"; exit 2 ;;
  esac
done

# ------------------------------------------------------------------ setup: machine
step "machine"
gpu_why=""
gpu_line=""
if ! command -v nvidia-smi > /dev/null 2>&1; then
  gpu_why="nvidia-smi is not installed"
elif ! gpu_line=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
  gpu_why="nvidia-smi failed: $(echo "$gpu_line" | head -1)"
  gpu_line=""
fi
torch_line=$("$PY" -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version(), 'CUDA available', torch.cuda.is_available())" 2>&1 | tail -1)
nvcc_line=$(nvcc --version 2> /dev/null | tail -1)
{
  [ -n "$gpu_line" ] && echo "GPU: $gpu_line"
  echo "$torch_line"
  [ -n "$nvcc_line" ] && echo "nvcc: $nvcc_line"
  if git rev-parse --short HEAD > /dev/null 2>&1; then
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD 2> /dev/null || echo ' (with uncommitted changes)')"
  elif [ -f "$CARRIED/commit.txt" ]; then
    echo "commit (at prepare.sh): $(cat "$CARRIED/commit.txt")"
  fi
} | tee "$OUT/machine.txt"
if [ -z "$gpu_why" ] && ! echo "$torch_line" | grep -q "CUDA available True"; then
  gpu_why="PyTorch ($PY) sees no CUDA device: $torch_line"
fi
if [ -n "$gpu_why" ]; then
  if [ "$GPU_DRY_RUN" != 1 ]; then
    echo
    echo "test.sh: no GPU on this machine ($gpu_why)."
    echo "This script measures the CUDA backend and needs a GPU machine (device tool, carry .dev/gpu)."
    echo "Nothing was measured. GPU_DRY_RUN=1 PYTHON=<python with torch> checks its logic on the CPU."
    exit 3
  fi
  echo "GPU_DRY_RUN=1: no GPU ($gpu_why); checking the logic on the CPU at a tiny size"
  echo "DRY RUN on the CPU (no GPU: $gpu_why): figures are not the GPU's" >> "$OUT/machine.txt"
fi

# ------------------------------------------------------------------ setup: libraries and Deno
step "libraries"
cudnn_lib="$("$PY" -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2> /dev/null || true)"
if [ -z "$cudnn_lib" ] || [ ! -f "$cudnn_lib/libcudnn.so.9" ]; then
  cudnn_lib="$(dirname "$(find / -xdev -name 'libcudnn.so.9' 2> /dev/null | head -1)" 2> /dev/null || true)"
fi
echo "cuDNN library folder: ${cudnn_lib:-not found}"
export COMODAL_CUDNN_PATH="$cudnn_lib"
mkdir -p /tmp/comodal-libs
[ -f "$CARRIED/libs.tar.xz" ] && tar -C /tmp/comodal-libs -xJf "$CARRIED/libs.tar.xz"
export LD_LIBRARY_PATH="/tmp/comodal-libs:${cudnn_lib}:${LD_LIBRARY_PATH:-}"
[ -f "$CARRIED/libcomodal_cpu.so" ] && cp "$CARRIED/libcomodal_cpu.so" build/
if [ "${REBUILD:-0}" = 1 ] || { [ ! -f "$CARRIED/libcomodal_cuda.so" ] && [ ! -f build/libcomodal_cuda.so ]; }; then
  mkdir -p .tools/cudnn && cp -r "$CARRIED/cudnn/include" .tools/cudnn/ 2> /dev/null
  t0=$(date +%s)
  if timeout 300 nvcc -O3 -std=c++17 -shared -Xcompiler -fPIC -cudart static --extended-lambda \
    -gencode arch=compute_90,code=sm_90 -I.tools/cudnn/include -o build/libcomodal_cuda.so \
    native/cuda/*.cu -ldl; then
    echo "built build/libcomodal_cuda.so for sm_90 in $(($(date +%s) - t0)) s"
  else
    note "CUDA library build: FAILED"
  fi
elif [ -f "$CARRIED/libcomodal_cuda.so" ]; then
  cp "$CARRIED/libcomodal_cuda.so" build/
fi
ls -l build/libcomodal_cpu.so build/libcomodal_cuda.so 2>&1
DENO="${DENO:-}"
if [ -z "$DENO" ] && [ -f "$CARRIED/deno.xz" ]; then
  xz -dc "$CARRIED/deno.xz" > /tmp/deno && chmod +x /tmp/deno && DENO=/tmp/deno
fi
[ -z "$DENO" ] && [ -x .tools/node_modules/.bin/deno ] && DENO=.tools/node_modules/.bin/deno
[ -f "$CARRIED/node_modules.tar.xz" ] && [ ! -d node_modules ] && tar -xJf "$CARRIED/node_modules.tar.xz"
echo "Deno: ${DENO:-none (carry .dev/gpu made by scripts/gpu/prepare.sh): the deno, step (ours), train and profile stages need it}"
export DENO
if [ "$GPU_DRY_RUN" = 1 ]; then
  export DEV=cpu TDEV=cpu SIZE="${STEP_SIZE:-32}" STEPS="${STEP_STEPS:-1}" WARMUP="${STEP_WARMUP:-1}"
  export CONV_QUICK="--quick --precision fp32"
else
  export DEV=cuda TDEV=cuda SIZE="${STEP_SIZE:-128}" STEPS="${STEP_STEPS:-5}" WARMUP="${STEP_WARMUP:-3}"
  export CONV_QUICK=""
fi
export STEP_MODELS="${STEP_MODELS:-unet cmc}" STEP_PRECISIONS="${STEP_PRECISIONS:-fp32 tf32}"

# ------------------------------------------------------------------ stages
stage_parity() {
  step "parity driver (CPU library vs CUDA library, every op)"
  g++ -std=c++17 -O2 -I native/include native/cuda/tests/test_cuda_parity.cpp -ldl -o build/test_cuda_parity || return 1
  ./build/test_cuda_parity --cpu build/libcomodal_cpu.so --cuda build/libcomodal_cuda.so 2>&1 | tee "$OUT/parity.log"
  local rc=$?
  note "C++ parity: $(tail -1 "$OUT/parity.log")"
  return $rc
}

stage_cudnn() {
  step "bad input: cuDNN missing at run time (expects a clear 'cuDNN not found')"
  [ -x build/test_cuda_parity ] || g++ -std=c++17 -O2 -I native/include native/cuda/tests/test_cuda_parity.cpp -ldl \
    -o build/test_cuda_parity || return 1
  local miss
  miss=$(env -u COMODAL_CUDNN_PATH LD_LIBRARY_PATH=/tmp/comodal-libs ./build/test_cuda_parity --cuda build/libcomodal_cuda.so \
    --cpu /nonexistent 2>&1 | grep -m1 "backend_create" || true)
  echo "$miss"
  if echo "$miss" | grep -q "cuDNN not found"; then
    note "cuDNN missing: clear error (ok)"
  else
    note "cuDNN missing: NO clear error (or cuDNN found through ldconfig): $miss"
    return 1
  fi
}

stage_conv() {
  local rc=0
  step "conv3d benchmark: comodal CUDA backend"
  # cuDNN's algorithm lists go to cudnn_find.log (stderr), the table to stdout
  [ -x build/test_cuda_parity ] || g++ -std=c++17 -O2 -I native/include native/cuda/tests/test_cuda_parity.cpp -ldl \
    -o build/test_cuda_parity || return 1
  COMODAL_CUDNN_VERBOSE=1 ./build/test_cuda_parity --cuda build/libcomodal_cuda.so --bench-only \
    2> "$OUT/cudnn_find.log" | tee "$OUT/bench_ours.log" || rc=1
  step "conv3d benchmark: PyTorch + cuDNN"
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 "$PY" bench/gpu_torch.py --conv --models "" --device "$TDEV" $CONV_QUICK \
    --json "$OUT/torch_conv.json" ${TORCH_ARGS:-} 2>&1 | tee "$OUT/bench_torch.log" || rc=1
  return $rc
}

stage_step() {
  local rc=0 m p tf
  # shellcheck disable=SC2086
  [ -n "${EXTRA_ENV:-}" ] && export ${EXTRA_ENV} && echo "backend knobs: ${EXTRA_ENV}"
  for m in $STEP_MODELS; do
    for p in $STEP_PRECISIONS; do
      tf=0 && [ "$p" = tf32 ] && tf=1
      step "training step: $m, $p, batch 2 x ${SIZE}^3: ours ($DEV backend), then PyTorch ($TDEV)"
      if [ -n "$DENO" ]; then
        # shellcheck disable=SC2086
        NO_COLOR=1 COMODAL_CUDA_TF32=$tf COMODAL_DEVICE=$DEV "$DENO" run -A --no-check bench/gpu_train_step.ts \
          --models "$m" --size "$SIZE" --steps "$STEPS" --warmup "$WARMUP" --json "$OUT/step_ours_${m}_${p}.json" \
          ${STEP_ARGS:-} 2>&1 | grep -v '^    at ' | tee -a "$OUT/train_step.log" || rc=1
      else
        echo "(ours skipped: no Deno)" && rc=1
      fi
      # shellcheck disable=SC2086
      PYTHONUNBUFFERED=1 "$PY" bench/gpu_torch.py --no-conv --models "$m" --precision "$p" --size "$SIZE" \
        --steps "$STEPS" --warmup "$WARMUP" --device "$TDEV" --json "$OUT/step_torch_${m}_${p}.json" \
        ${TORCH_ARGS:-} 2>&1 | tee -a "$OUT/train_step.log" || rc=1
    done
  done
  return $rc
}

stage_deno() {
  [ -n "$DENO" ] || { echo "no Deno"; return 1; }
  step "TypeScript parity suite (goldens), COMODAL_DEVICE=cuda (log: deno_parity.log; failures below)"
  NO_COLOR=1 COMODAL_CUDA_TF32=0 COMODAL_DEVICE=cuda "$DENO" test -A --no-check ${DENO_TESTS:-tests/parity_test.ts} \
    > "$OUT/deno_parity.log" 2>&1
  local rc=$?
  grep -E "FAILED|=> |^error" "$OUT/deno_parity.log" | head -40
  local line
  line=$(grep -E '^(ok|FAILED) \|' "$OUT/deno_parity.log" | tail -1)
  echo "$line"
  note "Deno parity (COMODAL_DEVICE=cuda): ${line:-no summary line (see deno_parity.log)}"
  return $rc
}

stage_train() {
  [ -n "$DENO" ] || { echo "no Deno"; return 1; }
  [ -n "${EXTRA_ENV:-}" ] && export ${EXTRA_ENV}
  step "short training run: CMC on the synthetic cardiac task, CUDA backend"
  NO_COLOR=1 "$DENO" run -A --no-check cli/main.ts train cardiac --device cuda --iterations "${TRAIN_ITERS:-200}" \
    --out /tmp/comodal-run --set syntheticCases=8 --set validation.every=100 --set validation.maxCases=2 \
    --set images=false 2>&1 | tr '\r' '\n' > "$OUT/train_run.log"
  grep -m2 "loss" "$OUT/train_run.log"
  grep "loss" "$OUT/train_run.log" | tail -2
  sed -n '/^Trained/,$p' "$OUT/train_run.log"
  if grep -qi "^Trained" "$OUT/train_run.log"; then
    note "short CUDA training run (${TRAIN_ITERS:-200} iterations): completed; $(grep -m1 -i "dice" "$OUT/train_run.log" | head -c 200)"
  else
    tail -20 "$OUT/train_run.log"
    note "short CUDA training run: FAILED (train_run.log)"
    return 1
  fi
}

stage_profile() {
  [ -n "$DENO" ] || { echo "no Deno"; return 1; }
  [ -n "${EXTRA_ENV:-}" ] && export ${EXTRA_ENV}
  local m rc=0
  for m in $STEP_MODELS; do
    step "per-op profile of one $m training step (every op synchronised, TF32 allowed)"
    # shellcheck disable=SC2086
    NO_COLOR=1 COMODAL_CUDA_SYNC_OPS=1 COMODAL_CUDA_TF32=1 COMODAL_DEVICE=$DEV "$DENO" run -A --no-check \
      bench/gpu_train_step.ts --profile --models "$m" --steps 1 --warmup 2 --size "$SIZE" ${STEP_ARGS:-} 2>&1 \
      | grep -v '^    at ' | tee -a "$OUT/profile.log" || rc=1
  done
  return $rc
}
export -f stage_parity stage_cudnn stage_conv stage_step stage_deno stage_train stage_profile

TOTAL_BUDGET="${TOTAL_BUDGET:-540}"
SUMMARY_RESERVE=25
declare -A DEFAULT_BUDGET=([parity]=150 [cudnn]=30 [conv]=150 [step]=300 [deno]=180 [train]=180 [profile]=90)
DRY_SKIPS=" cudnn deno train "  # need a real CUDA device
for s in $ALL_STAGES; do
  if [[ "$want" != *" $s "* ]]; then continue; fi
  if [[ "$skip" == *" $s "* ]]; then
    printf '%s\tskipped (SKIP)\t0\n' "$s" >> "$OUT/stages.tsv"
    continue
  fi
  if [ "$GPU_DRY_RUN" = 1 ] && [[ "$DRY_SKIPS" == *" $s "* ]]; then
    printf '%s\tskipped (dry run: needs a GPU)\t0\n' "$s" >> "$OUT/stages.tsv"
    continue
  fi
  var="BUDGET_$s"
  budget="${!var:-${DEFAULT_BUDGET[$s]}}"
  left=$((TOTAL_BUDGET - ($(date +%s) - T_START) - SUMMARY_RESERVE))
  [ "$left" -lt "$budget" ] && budget=$left
  if [ "$left" -lt 10 ]; then
    printf '%s\tskipped (no time left of TOTAL_BUDGET=%s s)\t0\n' "$s" "$TOTAL_BUDGET" >> "$OUT/stages.tsv"
    echo "=== $s: skipped, no time left of TOTAL_BUDGET=$TOTAL_BUDGET s ==="
    continue
  fi
  t0=$(date +%s)
  timeout -k 10 "$budget" bash -o pipefail -c "stage_$s"
  rc=$?
  dt=$(($(date +%s) - t0))
  case $rc in
    0) status=ok ;;
    124 | 137) status="TIMEOUT after ${budget} s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\n' "$s" "$status" "$dt" >> "$OUT/stages.tsv"
  echo "=== $s: $status in $dt s ==="
done

step "summary (also $OUT/summary.md; paste into bench/gpu_notes.md)"
echo "total $(($(date +%s) - T_START)) s"
timeout 20 python3 bench/gpu_summary.py "$OUT" || echo "(summary failed)"
rc=0
# exit 1 when a stage failed, timed out or had no time left (SKIP and dry-run skips are fine)
grep -qv $'\tok\t\|\tskipped (SKIP)\|\tskipped (dry run' "$OUT/stages.tsv" && rc=1
exec >&- 2>&-
wait "$TEE_PID" 2> /dev/null
exit $rc
