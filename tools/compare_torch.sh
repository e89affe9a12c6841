#!/usr/bin/env bash
# cuvae against the PyTorch reference (tools/torch_reference.py), back to back
# on the same machine, data and configuration: the ratio of training
# throughputs and the difference of the ELBO after the same number of epochs.
#
#   tools/compare_torch.sh [EPOCHS] [BATCH_SIZES]     e.g. tools/compare_torch.sh 3 200,1000
#
# Needs build/vae (tools/test.sh or tools/quickstart.sh builds it), MNIST in
# data/mnist, and Debian's python3-torch (tools/install_deps.sh --torch).
# Throughput is the median over epochs of each epoch's samples/s, for both.
# Both run on the CPU with all cores; set DEVICE=cuda to compare on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

epochs="${1:-3}"
batches="${2:-200}"
device="${DEVICE:-cpu}"
python=/usr/bin/python3
out=runs/compare-torch
mkdir -p "$out"
[[ -x build/vae ]] || { echo "compare_torch: build/vae is missing; run tools/test.sh first" >&2; exit 1; }
"$python" -c "import torch" 2>/dev/null || { echo "compare_torch: $python has no torch; run tools/install_deps.sh --torch" >&2; exit 1; }

echo "compare_torch: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short=12 HEAD)$(git diff --quiet HEAD -- src include kernels || echo -dirty)"
echo "compare_torch: $epochs epochs of the seed's configuration, device $device"
for batch in ${batches//,/ }; do
  build/vae train --data data/mnist --out "$out/cuvae-$batch" --epochs "$epochs" --batch-size "$batch" \
    --device "$device" > "$out/cuvae-$batch.log"
  "$python" tools/torch_reference.py --data data/mnist --epochs "$epochs" --batch-size "$batch" \
    --device "$device" --json "$out/torch-$batch.json" > "$out/torch-$batch.log"
  "$python" - "$out/cuvae-$batch.log" "$out/cuvae-$batch/metrics.csv" "$out/torch-$batch.json" "$batch" <<'PY'
import csv, json, statistics, sys
log, metrics, torch_json, batch = sys.argv[1:]
ours = list(csv.DictReader(open(metrics)))
ref = json.load(open(torch_json))
our_rate = statistics.median(float(r["samples_per_s"]) for r in ours)
ref_rate = statistics.median(e["samples_per_s"] for e in ref["epochs"])
our_elbo, ref_elbo = float(ours[-1]["elbo"]), ref["epochs"][-1]["elbo"]
device_line = next(l for l in open(log) if l.startswith("device:")).strip()
print(f"  cuvae  {device_line}")
print(f"  torch  {ref['torch_version']}, BLAS {ref['blas']['kind']} ({', '.join(ref['blas']['libraries'][-1:])}), {ref['config']['threads']} threads")
print(f"  batch {batch}: cuvae {our_rate:,.0f} samples/s, PyTorch {ref_rate:,.0f} samples/s: "
      f"{our_rate / ref_rate:.2f}x; ELBO after epoch {len(ours)}: cuvae {our_elbo:.3f}, "
      f"PyTorch {ref_elbo:.3f}, difference {our_elbo - ref_elbo:+.3f} nats")
PY
done
