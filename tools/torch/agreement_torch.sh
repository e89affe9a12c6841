#!/usr/bin/env bash
# Does cuvae train the same model as PyTorch? Trains the seed's configuration
# (30 epochs) with several seeds in both, evaluates each on the test set
# (ELBO, NLL with K = 100), and prints per-seed values, the means, and the
# mean over seeds of the paired test-NLL difference with its standard error.
# The two draw different random numbers, so single runs differ by their noise
# (about a nat at epoch 30); the means over seeds are what should agree.
#
#   [OBJECTIVE=elbo|iwae|iwae-dreg|miwae|piwae|ciwae] [SAMPLES=K] [THREADS=N] [BATCH=B] [MODEL="FLAGS"]
#   [OUT=DIR] tools/torch/agreement_torch.sh [SEEDS] [EPOCHS]
#   e.g. OBJECTIVE=iwae SAMPLES=5 tools/torch/agreement_torch.sh "0 1 2" 30
#        BATCH=100 MODEL="--latent-dim 100,50 --hidden 200,200/100,100 --activation tanh --init glorot --adam-eps 1e-4" \
#          OUT=runs/agreement-2l tools/torch/agreement_torch.sh "1 2 3" 10
#
# OBJECTIVE and SAMPLES go to both trainers (vae train --objective/--samples,
# torch_reference.py the same), and so do BATCH (--batch-size, default 200) and
# MODEL, flags both take with the same meaning (--latent-dim, --hidden,
# --activation, --init, --adam-eps, --outer-samples, --ciwae-beta); THREADS
# caps both (OMP_NUM_THREADS, --threads).
# Needs build/vae, MNIST in data/mnist and python3-torch (tools/install_deps.sh --torch).
set -euo pipefail
cd "$(dirname "$0")/../.."

seeds="${1:-0 1 2}"
epochs="${2:-30}"
objective="${OBJECTIVE:-elbo}"
samples="${SAMPLES:-1}"
threads="${THREADS:-}"
batch="${BATCH:-200}"
read -r -a model <<<"${MODEL:-}"
[[ "$batch" =~ ^[1-9][0-9]*$ ]] || { echo "agreement_torch: BATCH must be a positive integer, got '$batch'" >&2; exit 2; }
[[ "$samples" =~ ^[1-9][0-9]*$ ]] || { echo "agreement_torch: SAMPLES must be a positive integer, got '$samples'" >&2; exit 2; }
[[ -z "$threads" || "$threads" =~ ^[1-9][0-9]*$ ]] || { echo "agreement_torch: THREADS must be a positive integer, got '$threads'" >&2; exit 2; }
[[ -n "$threads" ]] && export OMP_NUM_THREADS="$threads"
vae="${VAE:-build/vae}"  # VAE: another binary (a copy, so that rebuilding does not touch a running comparison)
out=runs/agreement
[[ "$objective" != elbo || "$samples" != 1 ]] && out="runs/agreement-$objective-$samples"
out="${OUT:-$out}"
mkdir -p "$out"
echo "agreement_torch: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc --all) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); cuvae: $("$vae" --version 2>/dev/null || echo "$vae")"
echo "agreement_torch: objective $objective, K = $samples, $epochs epochs at batch $batch, seeds $seeds${threads:+, $threads thread(s) each}${MODEL:+; $MODEL}"
for seed in $seeds; do
  # A seed whose results are already there (an earlier call) is reused.
  if [[ -f "$out/cuvae-$seed-eval.json" && -f "$out/torch-$seed.json" ]]; then continue; fi
  "$vae" train --data data/mnist --out "$out/cuvae-$seed" --overwrite --epochs "$epochs" --seed "$seed" --device cpu \
    --objective "$objective" --samples "$samples" --batch-size "$batch" "${model[@]}" > "$out/cuvae-$seed.log"
  "$vae" eval --model "$out/cuvae-$seed/model.safetensors" --data data/mnist --k 100 --device cpu | tail -1 > "$out/cuvae-$seed-eval.json"
  /usr/bin/python3 tools/torch/torch_reference.py --data data/mnist --epochs "$epochs" --seed "$seed" --eval-k 100 \
    --objective "$objective" --samples "$samples" --batch-size "$batch" "${model[@]}" ${threads:+--threads "$threads"} \
    --json "$out/torch-$seed.json" > "$out/torch-$seed.log"
done
python3 - "$out" $seeds <<'PY'
import csv, json, math, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = []
for s in seeds:
    m = list(csv.DictReader(open(f"{out}/cuvae-{s}/metrics.csv")))
    e = json.load(open(f"{out}/cuvae-{s}-eval.json"))
    t = json.load(open(f"{out}/torch-{s}.json"))
    rows.append((s, float(m[-1]["bound"]), e["elbo"], e["nll"], t["epochs"][-1]["bound"], t["test_elbo"], t["test_nll"]))
print(f"{'seed':>4} | {'cuvae: train bound':>18} {'test ELBO':>10} {'test NLL':>9} | {'torch: train bound':>18} {'test ELBO':>10} {'test NLL':>9}")
for r in rows:
    print(f"{r[0]:>4} | {r[1]:18.3f} {r[2]:10.3f} {r[3]:9.3f} | {r[4]:18.3f} {r[5]:10.3f} {r[6]:9.3f}")
mean = [statistics.mean(r[i] for r in rows) for i in range(1, 7)]
print(f"mean | {mean[0]:18.3f} {mean[1]:10.3f} {mean[2]:9.3f} | {mean[3]:18.3f} {mean[4]:10.3f} {mean[5]:9.3f}")
print(f"cuvae - torch, means: train bound {mean[0]-mean[3]:+.3f}, test ELBO {mean[1]-mean[4]:+.3f}, test NLL {mean[2]-mean[5]:+.3f} nats")
if len(rows) >= 2:
    diff = [r[3] - r[6] for r in rows]
    se = statistics.stdev(diff) / math.sqrt(len(diff))
    spread = (statistics.stdev(r[3] for r in rows), statistics.stdev(r[6] for r in rows))
    print(f"test NLL, cuvae - torch over {len(rows)} seeds: {statistics.mean(diff):+.3f} +- {se:.3f} nats (standard error); "
          f"seed spread (standard deviation): cuvae {spread[0]:.3f}, torch {spread[1]:.3f}")
PY
