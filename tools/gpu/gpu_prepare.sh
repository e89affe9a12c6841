#!/usr/bin/env bash
# Prepares a call on a lent GPU machine (see tools/gpu/gpu_session.sh): builds
# build-gpu/ for sm_90 and any x86-64 processor (CUVAE_NATIVE=OFF: the device
# machine's processor is not this one), copies the Debian libraries the
# binaries load into .devlibs/ and gzipped MNIST into .devdata/mnist/ (both
# ignored by git; data/mnist itself is too large to travel).
set -euo pipefail
cd "$(dirname "$0")/../.."
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DCUVAE_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null
cmake --build build-gpu -j"$(nproc)"
grep -qx '/.devlibs/' .git/info/exclude 2>/dev/null || printf '/.devlibs/\n/.devdata/\n' >> .git/info/exclude
mkdir -p .devlibs .devdata/mnist
for bin in build-gpu/vae build-gpu/cuvae_tests build-gpu/vae-bench; do
  ldd "$bin" | awk '$3 ~ /^\// {print $3}'
done | sort -u | grep -v -e '/libc\.so' -e '/libm\.so' -e '/libdl\.so' -e '/librt\.so' -e '/libpthread\.so' \
  -e '/libstdc++' -e '/libgcc_s' -e '/ld-linux' -e '/usr/local/cuda' | while read -r lib; do
  cp -L "$lib" .devlibs/
done
for f in data/mnist/*-ubyte; do
  [[ -e ".devdata/mnist/$(basename "$f").gz" ]] || gzip -c "$f" > ".devdata/mnist/$(basename "$f").gz"
done
du -sh .devlibs .devdata build-gpu/vae build-gpu/cuvae_tests build-gpu/vae-bench
