#!/usr/bin/env bash
# cuvae against the PyTorch reference (tools/torch/torch_reference.py) at its best
# on this machine, back to back, same data and configuration: the ratio of
# training throughputs and the difference of the ELBO after the same epochs.
#
#   [ROUNDS=N] [SEARCH_STEPS=S] [TORCH_OPENBLAS_CORETYPE=CORE] [MODEL="FLAGS"] [CUVAE_VAE=BINARY]
#     tools/torch/compare_torch.sh [EPOCHS] [BATCH_SIZES]
#   e.g. ROUNDS=2 tools/torch/compare_torch.sh 2 20,200
#   MODEL: flags both trainers take with the same meaning (--latent-dim, --hidden, --activation, --init,
#   --objective, --samples, --outer-samples, --ciwae-beta, --adam-eps), e.g. the IWAE paper's two-layer model:
#   MODEL="--latent-dim 100,50 --hidden 200,200/100,100 --activation tanh --init glorot"
#   (default: the seed's configuration). CUVAE_VAE: the cuvae binary (default build/vae).
#
# PyTorch at its best: Debian's PyTorch runs its GEMMs in OpenBLAS, whose
# threads and kernel matter as much as torch's own threads (on 2 cores, as
# installed, its pthread OpenBLAS oversubscribes them: 2.5-4x slower). So
# for each batch size the script first runs a short search over
#   torch threads 1 and 2 (torch.set_num_threads and openblas_set_num_threads)
#   x OPENBLAS_NUM_THREADS unset and 1 (the pool OpenBLAS starts with)
#   x the OpenBLAS kernel as the environment has it, and OpenBLAS's own choice
#     (OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE both unset, in these benchmark
#     commands only), and TORCH_OPENBLAS_CORETYPE=CORE if given
# (SEARCH_STEPS steps each, default: half an epoch), then compares cuvae
# with the fastest configuration, cuvae then PyTorch ROUNDS times, EPOCHS
# epochs each, and names the configuration that won. Throughput is the
# median over epochs of each epoch's samples/s, for both.
#
# Needs build/vae, MNIST in data/mnist, and Debian's python3-torch
# (tools/install_deps.sh --torch). Set DEVICE=cuda to compare on a GPU (no
# search there).
set -euo pipefail
cd "$(dirname "$0")/../.."

epochs="${1:-3}"
batches="${2:-200}"
device="${DEVICE:-cpu}"
python=/usr/bin/python3
out=runs/compare-torch
vae="${CUVAE_VAE:-build/vae}"
read -r -a model <<<"${MODEL:-}"
mkdir -p "$out"
[[ -x "$vae" ]] || { echo "compare_torch: $vae is missing; run tools/test.sh first" >&2; exit 1; }
"$python" -c "import torch" 2>/dev/null || { echo "compare_torch: $python has no torch; run tools/install_deps.sh --torch" >&2; exit 1; }

rounds="${ROUNDS:-1}"
ncpu="$(nproc)"
echo "compare_torch: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $ncpu cores; $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- src include kernels || echo -dirty)"
echo "compare_torch: environment OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE:-unset}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
what="the seed's configuration"
[[ -n "${MODEL:-}" ]] && what="$MODEL"
echo "compare_torch: $epochs epochs of $what, device $device, $rounds round(s)"

# A configuration: "THREADS|OPENBLAS_NUM_THREADS|KERNEL", KERNEL "env" (as
# set), "own" (both variables unset) or a core name.
configs=()
if [[ "$device" == cpu ]]; then
  kernels=(env)
  [[ -n "${OPENBLAS_CORETYPE:-}${OPENBLAS_L2_SIZE:-}" ]] && kernels+=(own)
  [[ -n "${TORCH_OPENBLAS_CORETYPE:-}" ]] && kernels+=("$TORCH_OPENBLAS_CORETYPE")
  for kernel in "${kernels[@]}"; do
    for threads in $(printf '%s\n' 1 "$ncpu" | sort -un); do
      for obt in unset 1; do configs+=("$threads|$obt|$kernel"); done
    done
  done
else
  configs=("0|unset|env")
fi

torch_run() {  # CONFIG JSON ARGS... : tools/torch/torch_reference.py in that configuration
  local config="$1" json="$2"; shift 2
  local threads obt kernel
  IFS='|' read -r threads obt kernel <<<"$config"
  local -a pre=(env)
  # env's options (-u) before its assignments: "env A=1 -u B" runs a program named -u.
  [[ "$kernel" == own ]] && pre+=(-u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
  [[ "$obt" != unset ]] && pre+=("OPENBLAS_NUM_THREADS=$obt")
  [[ "$kernel" != env && "$kernel" != own ]] && pre+=("OPENBLAS_CORETYPE=$kernel")
  "${pre[@]}" "$python" tools/torch/torch_reference.py --data data/mnist --device "$device" --threads "$threads" \
    --json "$json" "${model[@]}" "$@"
}
describe() {  # CONFIG -> words
  local threads obt kernel
  IFS='|' read -r threads obt kernel <<<"$1"
  local k="kernel as the environment sets it (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
  [[ "$kernel" == own ]] && k="OpenBLAS's own kernel (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE unset)"
  [[ "$kernel" != env && "$kernel" != own ]] && k="OPENBLAS_CORETYPE=$kernel"
  echo "torch threads $threads, OPENBLAS_NUM_THREADS=$obt, $k"
}
rate() { "$python" -c 'import json,sys,statistics; print("%.0f" % statistics.median(e["samples_per_s"] for e in json.load(open(sys.argv[1]))["epochs"]))' "$1"; }

for batch in ${batches//,/ }; do
  best="${configs[0]}"
  if [[ ${#configs[@]} -gt 1 ]]; then
    steps="${SEARCH_STEPS:-$(( 30000 / batch ))}"
    best_rate=0
    for config in "${configs[@]}"; do
      torch_run "$config" "$out/search-$batch.json" --epochs 1 --batch-size "$batch" --max-steps "$steps" > "$out/search-$batch.log"
      r="$(rate "$out/search-$batch.json")"
      echo "  batch $batch search: $(describe "$config"): $r samples/s ($steps steps)"
      if (( r > best_rate )); then best_rate="$r"; best="$config"; fi
    done
    echo "  batch $batch: PyTorch's best: $(describe "$best")"
  fi
  for ((r = 1; r <= rounds; ++r)); do
    "$vae" train --data data/mnist --out "$out/cuvae-$batch-r$r" --overwrite --epochs "$epochs" --batch-size "$batch" \
      --device "$device" "${model[@]}" > "$out/cuvae-$batch-r$r.log"
    torch_run "$best" "$out/torch-$batch-r$r.json" --epochs "$epochs" --batch-size "$batch" > "$out/torch-$batch-r$r.log"
  done
  "$python" - "$out" "$batch" "$rounds" "$(describe "$best")" <<'PY'
import csv, json, statistics, sys
out, batch, rounds, best = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ours_rates, ref_rates = [], []
for r in range(1, rounds + 1):
    ours = list(csv.DictReader(open(f"{out}/cuvae-{batch}-r{r}/metrics.csv")))
    ref = json.load(open(f"{out}/torch-{batch}-r{r}.json"))
    ours_rates.append(statistics.median(float(row["images_per_s"]) for row in ours))
    ref_rates.append(statistics.median(e["samples_per_s"] for e in ref["epochs"]))
    print(f"  batch {batch} round {r}: cuvae {ours_rates[-1]:,.0f} samples/s, PyTorch {ref_rates[-1]:,.0f}: "
          f"{ours_rates[-1] / ref_rates[-1]:.2f}x; bound after epoch {len(ours)}: cuvae {float(ours[-1]['bound']):.3f}, "
          f"PyTorch {ref['epochs'][-1]['bound']:.3f}")
device_line = next(l for l in open(f"{out}/cuvae-{batch}-r1.log") if l.startswith("device:")).strip()
print(f"  cuvae  {device_line}")
print(f"  torch  {ref['torch_version']}, BLAS {ref['blas']['kind']} ({ref['blas'].get('openblas_config', ', '.join(ref['blas']['libraries'][-1:]))}), {ref['config']['threads']} threads; {best}")
our, theirs = statistics.median(ours_rates), statistics.median(ref_rates)
print(f"  batch {batch}: cuvae {our:,.0f} samples/s, PyTorch at its best {theirs:,.0f} samples/s (medians over {rounds} round(s)): {our / theirs:.2f}x")
PY
done
