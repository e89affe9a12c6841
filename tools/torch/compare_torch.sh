#!/usr/bin/env bash
# cuvae against the PyTorch reference (tools/torch/torch_reference.py), back to back
# on the same machine, data and configuration: the ratio of training
# throughputs and the difference of the ELBO after the same number of epochs.
#
#   [ROUNDS=N] [TORCH_OPENBLAS_CORETYPE=CORE] tools/torch/compare_torch.sh [EPOCHS] [BATCH_SIZES]
#   e.g. ROUNDS=2 tools/torch/compare_torch.sh 2 20,200
#
# Needs build/vae (tools/test.sh or tools/quickstart.sh builds it), MNIST in
# data/mnist, and Debian's python3-torch (tools/install_deps.sh --torch).
# Throughput is the median over epochs of each epoch's samples/s, for both.
# Both run on the CPU with all cores; set DEVICE=cuda to compare on a GPU.
set -euo pipefail
cd "$(dirname "$0")/../.."

epochs="${1:-3}"
batches="${2:-200}"
device="${DEVICE:-cpu}"
python=/usr/bin/python3
out=runs/compare-torch
mkdir -p "$out"
[[ -x build/vae ]] || { echo "compare_torch: build/vae is missing; run tools/test.sh first" >&2; exit 1; }
"$python" -c "import torch" 2>/dev/null || { echo "compare_torch: $python has no torch; run tools/install_deps.sh --torch" >&2; exit 1; }

# PyTorch gets the best OpenBLAS kernel for this CPU, set by hand (the issue's
# protocol): the core cuvae itself runs (vae info), unless TORCH_OPENBLAS_CORETYPE says otherwise.
core="${TORCH_OPENBLAS_CORETYPE:-$(build/vae info 2>/dev/null | sed -n 's/^GEMM kernel: OpenBLAS \([A-Za-z0-9]*\) .*/\1/p')}"
rounds="${ROUNDS:-1}"  # cuvae then PyTorch, this many times per batch size; the ratio of the medians
echo "compare_torch: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- src include kernels || echo -dirty)"
echo "compare_torch: $epochs epochs of the seed's configuration, device $device, $rounds round(s); PyTorch's OPENBLAS_CORETYPE=${core:-unset}"
for batch in ${batches//,/ }; do
  for ((r = 1; r <= rounds; ++r)); do
    build/vae train --data data/mnist --out "$out/cuvae-$batch-r$r" --epochs "$epochs" --batch-size "$batch" \
      --device "$device" > "$out/cuvae-$batch-r$r.log"
    env ${core:+OPENBLAS_CORETYPE=$core} "$python" tools/torch/torch_reference.py --data data/mnist --epochs "$epochs" \
      --batch-size "$batch" --device "$device" --json "$out/torch-$batch-r$r.json" > "$out/torch-$batch-r$r.log"
  done
  "$python" - "$out" "$batch" "$rounds" <<'PY'
import csv, json, statistics, sys
out, batch, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
print(f"  torch  {ref['torch_version']}, BLAS {ref['blas']['kind']} ({ref['blas'].get('openblas_config', ', '.join(ref['blas']['libraries'][-1:]))}), {ref['config']['threads']} threads")
our, theirs = statistics.median(ours_rates), statistics.median(ref_rates)
print(f"  batch {batch}: cuvae {our:,.0f} samples/s, PyTorch {theirs:,.0f} samples/s (medians over {rounds} round(s)): {our / theirs:.2f}x")
PY
done
