#!/bin/bash
# Reduced-budget CPU comparison of the objectives (issue 24): the IWAE paper's
# model (tanh, Glorot init, Adam eps 1e-4), batch 100, one seed, EPOCHS epochs
# each (EPOCHS epochs of 600 steps), then vae eval --k 1000 on the first 1000 test images.
# usage: run.sh VAE OUTDIR EPOCHS
set -euo pipefail
VAE=$1; OUT=$2; EPOCHS=$3; DATA=/work/main/data/mnist
export OMP_NUM_THREADS=2
mkdir -p "$OUT"
common="--data $DATA --device cpu --activation tanh --init glorot --adam-eps 1e-4 --batch-size 100 --seed 1 --epochs $EPOCHS"
for row in "iwae-64:--objective iwae --samples 64" \
           "miwae-8x8:--objective miwae --outer-samples 8 --samples 8" \
           "piwae-8x8:--objective piwae --outer-samples 8 --samples 8" \
           "ciwae-0.05:--objective ciwae --ciwae-beta 0.05 --samples 64"; do
  name=${row%%:*}; flags=${row#*:}
  start=$SECONDS
  # shellcheck disable=SC2086
  "$VAE" train $common $flags --out "$OUT/$name" > "$OUT/$name.train.log" 2>&1
  train_s=$((SECONDS - start)); start=$SECONDS
  "$VAE" eval --model "$OUT/$name/model.safetensors" --data $DATA --device cpu --k 1000 --limit 1000 \
    --bounds 1,8,64 > "$OUT/$name.eval.log" 2>&1
  eval_s=$((SECONDS - start))
  echo "$name train_s=$train_s eval_s=$eval_s" >> "$OUT/times.txt"
  rm -f "$OUT/$name"/task_*.png "$OUT/$name"/training_curve.png "$OUT/$name"/checkpoint.safetensors
done
