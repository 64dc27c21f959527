# comodal — set-up, native build, tests. Every target is idempotent and fast when nothing changed.
SHELL := /bin/bash
DENO_VERSION := 2.9.6
TOOLS := .tools
DENO := $(TOOLS)/node_modules/.bin/deno
BUILD := build
CXX ?= g++
CXXFLAGS := -std=c++17 -O3 -march=x86-64-v3 -fno-trapping-math -fPIC -fopenmp -Wall -Wextra -Wno-unused-parameter
CPU_SRCS := $(wildcard native/cpu/*.cpp)
CPU_HDRS := native/include/comodal.h $(wildcard native/cpu/*.hpp native/common/*.hpp)
CPU_LIB := $(BUILD)/libcomodal_cpu.so
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA_SRCS := $(wildcard native/cuda/*.cu native/cuda/*.cpp)
CUDA_HDRS := $(wildcard native/cuda/*.cuh native/cuda/*.hpp native/common/*.hpp)
CUDA_LIB := $(BUILD)/libcomodal_cuda.so
CUDNN_DIR := $(TOOLS)/cudnn
NVCC_GENCODE := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
	-gencode arch=compute_90,code=compute_90

.PHONY: setup deps browser deno npm native cuda test bench bench-env check clean

## setup: everything a fresh machine needs, then the native build
setup: deps browser deno npm native

# Debian packages: oneDNN (CPU kernels), nifti-bin (independent NIfTI reader for cross-checks).
deps:
	@missing=""; for p in libdnnl-dev nifti-bin; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "[setup] installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null) || \
	  { echo "[setup] ERROR: could not install$$missing with apt-get; install them by hand (oneDNN is required for the CPU backend)"; exit 1; }; \
	fi

# Chromium (Debian's package) for the browser test of the reports' 3D viewer (headless, software
# WebGL). Without it that one test is skipped outside CI, so a failed install is a warning here.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ] && [ -z "$${CHROMIUM_PATH:-}" ]; then \
	  echo "[setup] installing Debian package: chromium"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi; \
	  ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null) || \
	  echo "[setup] WARNING: could not install chromium with apt-get; the viewer's browser test will be skipped (set CHROMIUM_PATH to a Chromium or Chrome binary)"; \
	fi

deno: $(DENO)
$(DENO):
	@echo "[setup] installing Deno $(DENO_VERSION) from npm into $(TOOLS)"
	@mkdir -p $(TOOLS) && npm install --silent --no-audit --no-fund --prefix $(TOOLS) deno@$(DENO_VERSION) >/dev/null
	@$(DENO) --version | head -1

npm: $(DENO)
	@$(DENO) install --frozen >/dev/null 2>&1 || $(DENO) install --frozen

native: $(CPU_LIB) cuda

$(CPU_LIB): $(CPU_SRCS) $(CPU_HDRS)
	@mkdir -p $(BUILD)
	@echo "[build] $@"
	@$(CXX) $(CXXFLAGS) -shared -o $@ $(CPU_SRCS) -ldnnl

# CUDA backend: built wherever nvcc exists (no GPU needed); cuDNN headers from the wheel. cuDNN is
# loaded at run time with dlopen (so the library loads without it and can report "cuDNN not found").
cuda:
ifeq ($(NVCC),)
	@echo "[build] nvcc not found: skipping the CUDA backend"
else
	@if [ -n "$(CUDA_SRCS)" ]; then $(MAKE) --no-print-directory $(CUDA_LIB); fi
endif

$(CUDNN_DIR)/include/cudnn.h:
	@bash native/cuda/fetch_cudnn.sh $(CUDNN_DIR)

$(CUDA_LIB): $(CUDA_SRCS) $(CUDA_HDRS) native/include/comodal.h $(CUDNN_DIR)/include/cudnn.h
	@mkdir -p $(BUILD)
	@echo "[build] $@"
	@$(NVCC) -O3 -std=c++17 -shared -Xcompiler -fPIC -cudart static --extended-lambda $(NVCC_GENCODE) \
	  -I$(CUDNN_DIR)/include -o $@ $(CUDA_SRCS) -ldl

## test: the whole suite; ends with "N passed, N failed"
test: setup
	@bash tests/run.sh

bench: setup
	@$(DENO) task bench

## bench-env: the PyTorch side of the bench, a virtual environment at .tools/torchvenv with
## bench/requirements.txt (CPU PyTorch pinned), installed by pip from the package indexes it is
## configured with (scripts/bench_env.sh; PIP_ARGS adds pip flags). The bench uses it by default.
TORCH_VENV ?= $(TOOLS)/torchvenv
bench-env: $(TORCH_VENV)/.requirements

$(TORCH_VENV)/.requirements: bench/requirements.txt scripts/bench_env.sh
	@bash scripts/bench_env.sh $(TORCH_VENV)
	@cp bench/requirements.txt $@

check: $(DENO)
	@$(DENO) task check

clean:
	rm -rf $(BUILD)

## native-test: C++ tests of the CPU library alone (test_native: runtime, conv, norm; test_ops: the
## other kernels); native-test-asan: the same under ASan/UBSan
NATIVE_TESTS := test_native test_ops
ASAN_FLAGS := -std=c++17 -O1 -g -fno-omit-frame-pointer -march=x86-64-v3 -fPIC -fopenmp \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined

.PHONY: native-test native-test-asan native-bench

$(BUILD)/test_%: native/tests/test_%.cpp $(CPU_LIB) $(CPU_HDRS)
	@$(CXX) $(CXXFLAGS) -o $@ $< -L$(BUILD) -l:libcomodal_cpu.so -ldnnl -Wl,-rpath,'$$ORIGIN'

native-test: $(addprefix $(BUILD)/,$(NATIVE_TESTS))
	@rc=0; for t in $(NATIVE_TESTS); do $(BUILD)/$$t || rc=1; done; exit $$rc

$(BUILD)/asan/libcomodal_cpu.so: $(CPU_SRCS) $(CPU_HDRS)
	@mkdir -p $(BUILD)/asan
	@echo "[build] $@ (ASan/UBSan)"
	@$(CXX) $(ASAN_FLAGS) -shared -o $@ $(CPU_SRCS) -ldnnl

$(BUILD)/asan/test_%: native/tests/test_%.cpp $(BUILD)/asan/libcomodal_cpu.so
	@$(CXX) $(ASAN_FLAGS) -o $@ $< -L$(BUILD)/asan -l:libcomodal_cpu.so -ldnnl -Wl,-rpath,'$$ORIGIN'

native-test-asan: $(addprefix $(BUILD)/asan/,$(NATIVE_TESTS))
	@rc=0; for t in $(NATIVE_TESTS); do \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(BUILD)/asan/$$t || rc=1; done; exit $$rc

$(BUILD)/bench_conv: native/tests/bench_conv.cpp $(CPU_LIB) $(CPU_HDRS)
	@$(CXX) $(CXXFLAGS) -o $@ native/tests/bench_conv.cpp -L$(BUILD) -l:libcomodal_cpu.so -ldnnl -Wl,-rpath,'$$ORIGIN'

## native-bench: conv forward+backward timings of the CPU library (not a test)
native-bench: $(BUILD)/bench_conv
	@OMP_WAIT_POLICY=passive $(BUILD)/bench_conv
