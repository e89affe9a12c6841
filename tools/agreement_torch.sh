#!/usr/bin/env bash
# Does cuvae train the same model as PyTorch? Trains the seed's configuration
# (30 epochs) with several seeds in both, evaluates each on the test set
# (ELBO, NLL with K = 100), and prints per-seed values and the means.
# The two draw different random numbers, so single runs differ by their noise
# (about a nat at epoch 30); the means over seeds are what should agree.
#
#   tools/agreement_torch.sh [SEEDS] [EPOCHS]     e.g. tools/agreement_torch.sh "0 1 2" 30
#
# Needs build/vae, MNIST in data/mnist and python3-torch (tools/install_deps.sh --torch).
set -euo pipefail
cd "$(dirname "$0")/.."

seeds="${1:-0 1 2}"
epochs="${2:-30}"
out=runs/agreement
mkdir -p "$out"
echo "agreement_torch: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short=12 HEAD)"
for seed in $seeds; do
  # A seed whose results are already there (same commit's earlier call) is reused.
  if [[ -f "$out/cuvae-$seed-eval.json" && -f "$out/torch-$seed.json" ]]; then continue; fi
  build/vae train --data data/mnist --out "$out/cuvae-$seed" --epochs "$epochs" --seed "$seed" --device cpu > "$out/cuvae-$seed.log"
  build/vae eval --model "$out/cuvae-$seed/model.safetensors" --data data/mnist --k 100 --device cpu | tail -1 > "$out/cuvae-$seed-eval.json"
  /usr/bin/python3 tools/torch_reference.py --data data/mnist --epochs "$epochs" --seed "$seed" --eval-k 100 \
    --json "$out/torch-$seed.json" > "$out/torch-$seed.log"
done
python3 - "$out" $seeds <<'PY'
import csv, json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = []
for s in seeds:
    m = list(csv.DictReader(open(f"{out}/cuvae-{s}/metrics.csv")))
    e = json.load(open(f"{out}/cuvae-{s}-eval.json"))
    t = json.load(open(f"{out}/torch-{s}.json"))
    rows.append((s, float(m[-1]["elbo"]), e["elbo"], e["nll"], t["epochs"][-1]["elbo"], t["test_elbo"], t["test_nll"]))
print(f"{'seed':>4} | {'cuvae: train ELBO':>17} {'test ELBO':>10} {'test NLL':>9} | {'torch: train ELBO':>17} {'test ELBO':>10} {'test NLL':>9}")
for r in rows:
    print(f"{r[0]:>4} | {r[1]:17.3f} {r[2]:10.3f} {r[3]:9.3f} | {r[4]:17.3f} {r[5]:10.3f} {r[6]:9.3f}")
mean = [statistics.mean(r[i] for r in rows) for i in range(1, 7)]
print(f"mean | {mean[0]:17.3f} {mean[1]:10.3f} {mean[2]:9.3f} | {mean[3]:17.3f} {mean[4]:10.3f} {mean[5]:9.3f}")
print(f"cuvae - torch, means: train ELBO {mean[0]-mean[3]:+.3f}, test ELBO {mean[1]-mean[4]:+.3f}, test NLL {mean[2]-mean[5]:+.3f} nats")
PY
