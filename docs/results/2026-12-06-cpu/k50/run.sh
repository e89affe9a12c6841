#!/usr/bin/env bash
# The K = 50 rows of the IWAE paper's table at a reduced budget, beside the
# K = 1 and K = 5 rows at the same budget: one and two stochastic layers,
# 5 epochs at batch 100 and lr 1e-3, the paper's initialisation and Adam eps;
# test NLL by vae eval --k 1000 on the first 2,000 test images.
# Usage: run.sh [SEEDS...]  (default: 1)
set -euo pipefail
cd "$(dirname "$0")/../../../.."
V=${CUVAE_VAE:-build/vae}
out_root=${OUT:-runs/k50}
mkdir -p "$out_root"
common="--data data/mnist --device cpu --activation tanh --init glorot --adam-eps 1e-4 --batch-size 100 --epochs 5"
for seed in "${@:-1}"; do
  for arch in "1l:--latent-dim 50 --hidden 200,200" "2l:--latent-dim 100,50 --hidden 200,200/100,100"; do
    for row in "elbo-1:--objective elbo --samples 1" "elbo-5:--objective elbo --samples 5" "iwae-5:--objective iwae --samples 5" "elbo-50:--objective elbo --samples 50" "iwae-50:--objective iwae --samples 50"; do
      name=${arch%%:*}-${row%%:*}; out=$out_root/$name-s$seed
      [[ -f $out.eval.json ]] && continue
      start=$SECONDS
      OMP_NUM_THREADS=1 $V train $common ${arch#*:} ${row#*:} --seed "$seed" --out "$out" --overwrite > "$out.log"
      train_s=$((SECONDS - start))
      OMP_NUM_THREADS=1 $V eval --model "$out/model.safetensors" --data data/mnist --device cpu --k 1000 --limit 2000 | tail -1 > "$out.eval.json"
      echo "$name seed $seed: $(python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); print("NLL %.3f ELBO %.3f active %s" % (e["nll"], e["elbo"], e.get("active_units_per_layer", e.get("active_units"))))' "$out.eval.json") train ${train_s} s"
    done
  done
done
