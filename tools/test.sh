#!/usr/bin/env bash
# Installs what is missing, fetches MNIST (for the real-data tests), builds
# (with CUDA when nvcc is there), and runs the whole test suite; then, unless
# skipped, runs the whole suite again built with AddressSanitizer,
# LeakSanitizer and UndefinedBehaviorSanitizer (CPU only, in build-asan), and
# fuzzes the IDX and safetensors readers for a short while (tools/fuzz/fuzz.sh).
# Usage: tools/test.sh
# Environment: BUILD_DIR (default build), JOBS (default nproc),
#   CUVAE_SKIP_SANITIZE=1  skip the sanitizer build and its test run
#   CUVAE_SKIP_FUZZ=1      skip the fuzzing
#   CUVAE_FUZZ_SECONDS     seconds per fuzz target (default 15)
#   CUVAE_CUDA_ARCHITECTURES  the GPUs the CUDA code is compiled for (default:
#     this machine's GPU, or sm_90 alone where there is none)
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install_deps.sh
tools/fetch_mnist.sh data/mnist

build_dir="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc)}"
# Without a GPU the CUDA code is compiled to check it (its tests skip), and
# one architecture checks it as well as four (no code depends on the
# architecture): half the CUDA compile time.
if nvidia-smi -L >/dev/null 2>&1; then cuda_default=native; else cuda_default=90-real; fi
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_ARCHITECTURES="${CUVAE_CUDA_ARCHITECTURES:-$cuda_default}"
cmake --build "$build_dir" -j "$jobs"
export CUVAE_MNIST_DIR="$PWD/data/mnist"
rm -f "$build_dir/slurm_test_result.txt"
status=0
ctest --test-dir "$build_dir" -j "$jobs" --output-on-failure || status=$?
# Whether the Slurm test (tests/slurm/slurm_test.sh) ran here or was skipped, and why.
echo "test: SweepSlurm, the sweep under a real Slurm: $(cat "$build_dir/slurm_test_result.txt" 2>/dev/null ||
  echo "no result (not run)")"
((status == 0)) || exit "$status"

if [[ "${CUVAE_SKIP_SANITIZE:-0}" != 1 ]]; then
  echo "test: the suite under ASan + LSan + UBSan (build-asan; CUVAE_SKIP_SANITIZE=1 skips)"
  start=$SECONDS
  # No benchmarks: timing code under sanitizers measures nothing useful.
  cmake -S . -B build-asan -DCUVAE_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCUVAE_BUILD_BENCHMARKS=OFF
  cmake --build build-asan -j "$jobs"
  # Leaks fail the run (LeakSanitizer works on these machines); UBSan is
  # built with -fno-sanitize-recover, so any report aborts its test.
  ASAN_OPTIONS="detect_leaks=1:check_initialization_order=1:strict_init_order=1:detect_stack_use_after_return=1" \
  UBSAN_OPTIONS="print_stacktrace=1" \
    ctest --test-dir build-asan -j "$jobs" --output-on-failure -E '^Sweep'
  # (Not the sweep tests: they test tools/sweep.py and Slurm, and ran above;
  # the vae they drive is the build tested here in every other test.)
  echo "test: sanitizer build and suite took $((SECONDS - start)) s"
fi

if [[ "${CUVAE_SKIP_FUZZ:-0}" != 1 ]]; then
  echo "test: fuzzing the file readers (CUVAE_SKIP_FUZZ=1 skips)"
  start=$SECONDS
  tools/fuzz/fuzz.sh "${CUVAE_FUZZ_SECONDS:-15}"
  echo "test: fuzzing took $((SECONDS - start)) s"
fi
