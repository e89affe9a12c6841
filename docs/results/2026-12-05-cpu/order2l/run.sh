#!/usr/bin/env bash
# Two stochastic layers, 5 epochs at batch 100, objectives at 8 samples per image, seeds 1 2.
set -euo pipefail
cd /work/main
V=/work/runs/vae-bench2
common="--data data/mnist --device cpu --latent-dim 100,50 --hidden 200,200/100,100 --activation tanh --init glorot --adam-eps 1e-4 --batch-size 100 --epochs 5"
for seed in 1 2; do
  for row in "elbo-8:--objective elbo --samples 8" "iwae-8:--objective iwae --samples 8" "miwae-2x4:--objective miwae --outer-samples 2 --samples 4" "piwae-2x4:--objective piwae --outer-samples 2 --samples 4" "ciwae-0.05-8:--objective ciwae --ciwae-beta 0.05 --samples 8"; do
    name=${row%%:*}; flags=${row#*:}
    out=/work/runs/order2l/$name-s$seed
    [[ -f $out.eval.json ]] && continue
    OMP_NUM_THREADS=1 $V train $common $flags --seed $seed --out $out --overwrite > $out.log
    OMP_NUM_THREADS=1 $V eval --model $out/model.safetensors --data data/mnist --device cpu --k 1000 --limit 2000 | tail -1 > $out.eval.json
    echo "$name seed $seed: $(python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); print("NLL %.3f ELBO %.3f active %s" % (e["nll"], e["elbo"], e.get("active_units_per_layer")))' $out.eval.json)"
  done
done
