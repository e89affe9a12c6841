#!/usr/bin/env bash
# From a fresh clone: install what is missing, fetch MNIST, build Release,
# train the seed's configuration (30 epochs, batch 200, L = 50) on the best
# device, evaluate it, and say where the images are.
# Usage: tools/quickstart.sh [extra `vae train` flags, e.g. --epochs 5]
set -euo pipefail
cd "$(dirname "$0")/.."

tools/install_deps.sh
tools/fetch_mnist.sh data/mnist
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)" --target vae

out=runs/quickstart
# --overwrite: each quick start trains afresh into the same folder.
build/vae train --data data/mnist --out "$out" --device auto --overwrite "$@"
build/vae eval --model "$out/model.safetensors" --data data/mnist --k 100
echo
echo "The model, metrics and the seed's images are in $out/:"
echo "  $out/task_3_1.png           25 samples from the prior"
echo "  $out/task_3_2.png           10 test images above their reconstructions"
echo "  $out/task_3_3_0..4.png      5 latent interpolations"
echo "  $out/model.safetensors      the trained model; $out/metrics.csv the ELBO per epoch"
