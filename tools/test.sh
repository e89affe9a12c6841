#!/usr/bin/env bash
# Installs what is missing, fetches MNIST (for the real-data tests), builds
# (with CUDA when nvcc is there), and runs the whole test suite.
# Usage: tools/test.sh    Environment: BUILD_DIR (default build), JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install_deps.sh
tools/fetch_mnist.sh data/mnist

build_dir="${BUILD_DIR:-build}"
jobs="${JOBS:-$(nproc)}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j "$jobs"
export CUVAE_MNIST_DIR="$PWD/data/mnist"
ctest --test-dir "$build_dir" -j "$jobs" --output-on-failure
