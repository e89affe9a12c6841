#!/usr/bin/env bash
# Reproduces the MNIST rows of the IWAE paper's Table 1 (Burda, Grosse &
# Salakhutdinov, ICLR 2016; one stochastic layer, 784-200-200-50, tanh,
# dynamic binarization): trains each configuration with the paper's model and
# schedule (Glorot init, the 8-stage iwae schedule, Adam eps 1e-4), evaluates
# each with k = 5000 importance samples on the whole test set, and writes a
# Markdown table beside the paper's and nbip/IWAE's numbers, with machine,
# date, commit and wall time per row.
#
# It resumes whatever was interrupted: a row whose run has a checkpoint goes
# on from it (vae train --resume), a trained row is only evaluated, and an
# evaluated row is kept.
#
# Usage: tools/reproduce_iwae.sh [--device cpu|cuda] [--epochs N] [--batch-size B]
#          [--rows elbo-1,elbo-5,iwae-5,iwae-50,dreg-50] [--out DIR] [--threads N]
#   rows: elbo-1, elbo-5, elbo-50, iwae-5, iwae-50, iwae-64, dreg-5, dreg-50, and the
#   objectives of Rainforth et al. 2018 ("Tighter variational bounds are not
#   necessarily better", same protocol): miwae-8x8, piwae-8x8 (M = 8 groups of
#   K = 8), ciwae-0.05 (beta 0.05, K = 64); their reference column is that paper's.
#   Any row prefixed 2l- (2l-elbo-1, 2l-iwae-50, ...) trains the paper's second
#   architecture instead: two stochastic layers, --latent-dim 100,50
#   --hidden 200,200/100,100 (the table's second half: 85.33 ... 82.90).
#   --epochs cuts the 3280-epoch schedule (the table then says so);
#   --threads sets OMP_NUM_THREADS for the CPU runs.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cpu epochs=3280 batch=20 out=runs/iwae rows="elbo-1,elbo-5,iwae-5,iwae-50,dreg-50" threads=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --batch-size) batch="$2"; shift 2 ;;
    --rows) rows="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "reproduce_iwae.sh: unknown argument '$1' (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
[[ "$epochs" =~ ^[1-9][0-9]*$ ]] || { echo "reproduce_iwae.sh: --epochs must be a positive integer, got '$epochs'" >&2; exit 2; }
[[ "$batch" =~ ^[1-9][0-9]*$ ]] || { echo "reproduce_iwae.sh: --batch-size must be a positive integer, got '$batch'" >&2; exit 2; }
[[ -n "$threads" ]] && export OMP_NUM_THREADS="$threads"

vae=${CUVAE_VAE:-build/vae}  # CUVAE_VAE: another binary (a copy, so rebuilding does not touch a long run)
[[ -x "$vae" ]] || { tools/install_deps.sh; cmake -S . -B build -DCMAKE_BUILD_TYPE=Release; cmake --build build -j "$(nproc)" --target vae; }
tools/fetch_mnist.sh data/mnist >/dev/null
mkdir -p "$out"

# row name -> objective and K (and, for 2l- rows, the two-layer model)
flags_of() {
  if [[ "$1" == 2l-* ]]; then
    local one_layer
    one_layer=$(flags_of "${1#2l-}" 2>/dev/null) || { echo "reproduce_iwae.sh: unknown row '$1' (a 2l- row is 2l- and a one-layer row)" >&2; exit 2; }
    echo "$one_layer --latent-dim 100,50 --hidden 200,200/100,100"
    return
  fi
  case "$1" in
    elbo-1) echo "--objective elbo --samples 1" ;;
    elbo-5) echo "--objective elbo --samples 5" ;;
    elbo-50) echo "--objective elbo --samples 50" ;;
    iwae-5) echo "--objective iwae --samples 5" ;;
    iwae-50) echo "--objective iwae --samples 50" ;;
    dreg-5) echo "--objective iwae-dreg --samples 5" ;;
    dreg-50) echo "--objective iwae-dreg --samples 50" ;;
    iwae-64) echo "--objective iwae --samples 64" ;;
    miwae-8x8) echo "--objective miwae --outer-samples 8 --samples 8" ;;
    piwae-8x8) echo "--objective piwae --outer-samples 8 --samples 8" ;;
    ciwae-0.05) echo "--objective ciwae --ciwae-beta 0.05 --samples 64" ;;
    *) echo "reproduce_iwae.sh: unknown row '$1' (elbo-1, elbo-5, elbo-50, iwae-5, iwae-50, iwae-64, dreg-5, dreg-50, miwae-8x8, piwae-8x8, ciwae-0.05, each also with 2l-)" >&2; exit 2 ;;
  esac
}
# The paper's numbers (Table 1; for miwae, piwae and ciwae: Rainforth et al.
# 2018's, dynamic MNIST, k = 5000) and nbip/IWAE's (TF2 reimplementation).
# Two stochastic layers: the paper's Table 1, second half.
paper_of() { case "$1" in 2l-elbo-1) echo 85.33 ;; 2l-elbo-5) echo 85.01 ;; 2l-elbo-50) echo 84.78 ;; 2l-iwae-5) echo 83.89 ;; 2l-iwae-50) echo 82.90 ;; elbo-1) echo 86.76 ;; elbo-5) echo 86.47 ;; elbo-50) echo 86.35 ;; iwae-5) echo 85.54 ;; iwae-50) echo 84.78 ;; miwae-8x8) echo 84.97 ;; piwae-8x8) echo 84.46 ;; ciwae-0.05) echo 84.57 ;; *) echo "-" ;; esac; }
nbip_of() { case "$1" in elbo-1) echo 86.35 ;; elbo-5) echo 86.10 ;; elbo-50) echo 86.06 ;; iwae-5) echo 85.18 ;; iwae-50) echo 84.59 ;; dreg-5) echo 84.90 ;; dreg-50) echo 84.32 ;; *) echo "-" ;; esac; }

IFS=, read -r -a row_names <<< "$rows"
for row in "${row_names[@]}"; do flags_of "$row" >/dev/null || exit 2; done  # every row known before any trains
for row in "${row_names[@]}"; do
  flags=$(flags_of "$row") || exit 2
  dir="$out/$row-b$batch-e$epochs"
  if [[ ! -f "$dir/eval.json" ]]; then
    start=$SECONDS
    if [[ -f "$dir/checkpoint.safetensors" ]]; then
      echo "== $row: resuming $dir"
      "$vae" train --resume "$dir" --data data/mnist --device "$device" --epochs "$epochs"
    else
      echo "== $row: training into $dir"
      # shellcheck disable=SC2086
      "$vae" train --data data/mnist --out "$dir" --device "$device" $flags --activation tanh \
        --init glorot --schedule iwae --adam-eps 1e-4 --batch-size "$batch" --epochs "$epochs" \
        --checkpoint-every 20000
    fi
    echo "$((SECONDS - start))" >> "$dir/train_seconds"
    start=$SECONDS
    "$vae" eval --model "$dir/model.safetensors" --data data/mnist --device "$device" --k 5000 \
      --bounds 1,5,50 --per-image "$dir/per_image.csv" | tee "$dir/eval.log"
    tail -n 1 "$dir/eval.log" > "$dir/eval.json.tmp" && mv "$dir/eval.json.tmp" "$dir/eval.json"
    echo "$((SECONDS - start))" > "$dir/eval_seconds"
  fi
done

# The table.
# The commit of the binary that ran (its --version), not of the checkout.
commit=$("$vae" --version | sed -n "s/.*commit \([0-9a-f]*\).*/\1/p")
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
table="$out/table-b$batch-e$epochs.md"
{
  echo "# IWAE paper, Table 1 (MNIST; rows prefixed 2l- have two stochastic layers): cuvae"
  echo
  echo "The paper column is Burda et al. 2016's Table 1; for miwae, piwae and ciwae Rainforth et al. 2018's."
  echo
  echo "$(date -u +%Y-%m-%d), commit $commit, device $device ($cpu, OMP_NUM_THREADS=${OMP_NUM_THREADS:-all}),"
  echo "batch $batch, $epochs of the schedule's 3280 epochs; test NLL with k = 5000 on all 10,000 test images."
  echo
  echo "| row | cuvae NLL | paper | nbip/IWAE | cuvae - paper | L_1 | L_5 | L_50 | active units | train s | eval s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  for row in "${row_names[@]}"; do
    dir="$out/$row-b$batch-e$epochs"
    [[ -f "$dir/eval.json" ]] || { echo "| $row | not run | $(paper_of "$row") | $(nbip_of "$row") | | | | | | | |"; continue; }
    python3 - "$dir" "$row" "$(paper_of "$row")" "$(nbip_of "$row")" <<'EOF'
import json, sys
d, row, paper, nbip = sys.argv[1:]
e = json.load(open(d + "/eval.json"))
train = sum(int(s) for s in open(d + "/train_seconds").read().split())
ev = int(open(d + "/eval_seconds").read())
diff = "%+.2f" % (e["nll"] - float(paper)) if paper != "-" else "-"
b = e.get("bounds", {})
# Two-layer rows: active units per stochastic layer, bottom first ("a/b").
active = "/".join(str(a) for a in e.get("active_units_per_layer", [e["active_units"]]))
print("| %s | %.2f | %s | %s | %s | %.2f | %.2f | %.2f | %s | %d | %d |" % (
    row, e["nll"], paper, nbip, diff, b.get("1", float("nan")), b.get("5", float("nan")),
    b.get("50", float("nan")), active, train, ev))
EOF
  done
} > "$table.tmp"
mv "$table.tmp" "$table"
cat "$table"
