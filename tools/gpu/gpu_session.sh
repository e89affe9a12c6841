#!/usr/bin/env bash
# What one call on a lent GPU machine runs: the CUDA tests, compute-sanitizer,
# a 30-epoch training run on both backends, the benchmarks, the PyTorch
# reference on the same GPU, and an Nsight Compute profile of training steps.
#
#   tools/gpu/gpu_session.sh STEP...      STEP: full tests sanitize train bench kernels torch compare ncu
#
# `full` is issue 16's one-call plan (about 8 minutes, each part under its own
# timeout so the whole stays inside a 9-minute call): the whole test suite,
# compute-sanitizer memcheck and racecheck on the kernel tests, `vae bench` at
# batch 20, 200 and 4096 with and without --gemm-epilogues and
# --two-branch-graph, PyTorch eager and torch.compile at the same sizes, the
# IWAE K = 50 bench at batch 20, and a table of all of it last. The sm_90
# build is tools/gpu/gpu_prepare.sh's, made here before the call (the device
# machine has no Debian libraries to build against).
#
# Environment: SANITIZE_TOOLS, SANITIZE_FILTER, SANITIZE_TIMEOUT, TRAIN_DEVICES,
# TRAIN_SEEDS, TRAIN_FLAGS (extra `vae train` flags for train and ncu, e.g.
# --gemm-epilogues), TORCH_BATCHES, TORCH_MODES, BENCH_DEVICE, NCU_BATCHES,
# TESTS_TIMEOUT shape the steps to fit a call.
#
# The device machine has nvcc, cuBLAS, PyTorch and ncu but none of Debian's
# libraries, and reaches no network. So the binaries are built here (the
# machine with the libraries) for sm_90 and for any x86-64 processor, and
# travel with the libraries they load and gzipped MNIST:
#
#   tools/gpu/gpu_prepare.sh              builds build-gpu/, fills .devlibs/ and .devdata/
#   device run, carry [build-gpu/vae, build-gpu/cuvae_tests, build-gpu/vae-bench,
#                      .devlibs, .devdata]:  tools/gpu/gpu_session.sh tests sanitize ...
#
# Everything printed goes to $OUT/session.log; run outputs (metrics, images,
# JSON, profiles) to $OUT/results.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
OUT="${OUT:-$root/runs/gpu-session}"
mkdir -p "$OUT"
work=runs/gpu
mkdir -p "$work"
exec > >(tee -a "$OUT/session.log") 2>&1

# The tests were compiled with the absolute paths of the checkout that built
# them (CUVAE_SOURCE_DIR, CUVAE_VAE_BINARY); make that path lead here.
built_in="${CUVAE_BUILT_IN:-/work/main}"
if [[ "$built_in" != "$root" && ! -e "$built_in" ]]; then
  mkdir -p "$(dirname "$built_in")" && ln -s "$root" "$built_in"
fi
export LD_LIBRARY_PATH="$root/.devlibs:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
mkdir -p data/mnist
for f in .devdata/mnist/*.gz; do [[ -e "data/mnist/$(basename "$f")" ]] || cp "$f" data/mnist/; done
export CUVAE_MNIST_DIR="$root/data/mnist"
export PYTHONUNBUFFERED=1

step() { echo; echo "=== $* ($(date -u '+%H:%M:%S'))"; }
# "--tf32 --gemm-epilogues" -> vae_bench-tf32-gemm-epilogues ("" -> vae_bench)
bench_name() { local v="${1//--/}"; v="${v// /-}"; echo "vae_bench${v:+-$v}"; }
TORCH_BATCHES="${TORCH_BATCHES:-200 1000 4096}"
run_torch() {
  for b in $TORCH_BATCHES; do
    for mode in ${TORCH_MODES:-eager compile}; do
      step "PyTorch reference on the GPU: batch $b, $mode"
      timeout "${TORCH_TIMEOUT:-600}" python3 tools/torch/torch_reference.py --device cuda --data data/mnist --epochs "${TORCH_EPOCHS:-4}" --batch-size "$b" \
        $([[ $mode == compile ]] && echo --compile) --json "$work/torch-$b-$mode.json" 2>&1 \
        | tee "$work/torch-$b-$mode.log" | grep -v '^epoch  *[23] '
    done
  done
}
# full: the bench variants, and a bench of the IWAE objective where `vae bench` has it.
FULL_BATCHES="${FULL_BATCHES:-20 200 4096}"
FULL_VARIANTS=("" --gemm-epilogues --two-branch-graph "--gemm-epilogues --two-branch-graph")
run_full() {
  step "whole test suite (CUDA tests included)"
  timeout "${TESTS_TIMEOUT:-200}" build-gpu/cuvae_tests --gtest_brief=1 2>&1 | tee "$work/tests.log" | grep -v '^\[       OK \]'
  echo "tests exit: ${PIPESTATUS[0]}"
  # (Not the 4096 x 1024 two-branch test nor the bias and noise past one grid: minutes under the sanitizers.)
  local kernel_tests='*/BackendOps.*/cuda:CudaIwae*:K/CudaIwaeSamples.*:TwoBranchStep.*:StepGraph.*:Lockstep.OnTheGpu*-TwoBranchStep.InputsMadeInsideTheStepAreWaitedFor:*/BackendOps.BiasAndNoisePastOneGrid/cuda'
  for tool in memcheck racecheck; do
    step "compute-sanitizer --tool $tool over the kernel tests"
    timeout "${SANITIZE_TIMEOUT:-60}" compute-sanitizer --tool "$tool" --error-exitcode 99 \
      build-gpu/cuvae_tests --gtest_filter="$kernel_tests" --gtest_brief=1 2>&1 | tail -15
    echo "$tool exit: ${PIPESTATUS[0]}"
  done
  local variant flags batches
  for variant in "${FULL_VARIANTS[@]}"; do
    step "vae bench --device cuda $variant"
    read -ra flags <<< "$variant"
    timeout 60 build-gpu/vae bench --device cuda --data data/mnist --batch-sizes "${FULL_BATCHES// /,}" "${flags[@]}" \
      --json "$work/$(bench_name "$variant").json" | tee "$work/$(bench_name "$variant").txt"
  done
  step "vae bench --objective iwae --samples 50 --batch-sizes 20"
  if build-gpu/vae bench --help 2>&1 | grep -q -- --objective; then
    timeout 60 build-gpu/vae bench --device cuda --data data/mnist --batch-sizes 20 --objective iwae --samples 50 \
      --json "$work/vae_bench-iwae-50.json" | tee "$work/vae_bench-iwae-50.txt"
    timeout 60 build-gpu/vae bench --device cuda --data data/mnist --batch-sizes 20 --objective iwae --samples 50 \
      --two-branch-graph --json "$work/vae_bench-iwae-50-two-branch-graph.json" | tee "$work/vae_bench-iwae-50-two-branch-graph.txt"
  else
    echo "skipped: this build's vae bench has no --objective (issue 13's CLI not merged)"
  fi
  step "vae bench --models: packs one after another, side by side and in lock step"
  if build-gpu/vae bench --help 2>&1 | grep -q -- --models; then
    timeout "${PACKS_TIMEOUT:-120}" build-gpu/vae bench --device cuda --data data/mnist --batch-sizes 20,200 \
      --models 1,2,4,8,16 --steps 20 --repeats 3 --json "$work/vae_bench-models.json" | tee "$work/vae_bench-models.txt"
  else
    echo "skipped: this build's vae bench has no --models"
  fi
  TORCH_BATCHES="$FULL_BATCHES" TORCH_EPOCHS=3 TORCH_TIMEOUT=45 run_torch
  step "throughput, same GPU, same call (PyTorch: median of epochs 2-3; cuvae: median of its repeats)"
  read -ra batches <<< "$FULL_BATCHES"
  python3 - "$work" "${batches[@]}" <<'PY' | tee "$work/full.txt"
import json, os, statistics, sys
work, batches = sys.argv[1], sys.argv[2:]
def ours(variant, batch):
    path = f"{work}/vae_bench{variant}.json"
    if not os.path.exists(path):
        return float("nan")
    return next((r["samples_per_s"] for r in json.load(open(path))["results"] if r["batch"] == int(batch)), float("nan"))
def step_us(variant, batch):
    rate = ours(variant, batch)
    return int(batch) / rate * 1e6 if rate == rate and rate > 0 else float("nan")
def theirs(mode, batch):
    path = f"{work}/torch-{batch}-{mode}.json"
    if not os.path.exists(path):
        return float("nan")
    epochs = json.load(open(path))["epochs"]
    return statistics.median(e["samples_per_s"] for e in epochs[1:] or epochs)
variants = [("", "cuvae"), ("-gemm-epilogues", "epilogues"), ("-two-branch-graph", "2-branch"),
            ("-gemm-epilogues-two-branch-graph", "both")]
print("samples/s (step us in brackets)")
print(f"{'batch':>6} {'torch eager':>12} {'torch.compile':>14}" + "".join(f" {name:>18}" for _, name in variants))
for b in batches:
    row = f"{b:>6} {theirs('eager', b):12,.0f} {theirs('compile', b):14,.0f}"
    row += "".join(f" {ours(v, b):10,.0f} ({step_us(v, b):5.0f})" for v, _ in variants)
    print(row)
for name in ("vae_bench-iwae-50", "vae_bench-iwae-50-two-branch-graph"):
    path = f"{work}/{name}.json"
    if os.path.exists(path):
        r = json.load(open(path))["results"][0]
        print(f"{name}: batch {r['batch']}, {r['samples_per_s']:,.0f} images/s, step {r['step_ms'] * 1e3:.0f} us")
PY
}
echo "gpu_session: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short=12 HEAD 2>/dev/null)$(git diff --quiet HEAD -- src include kernels tests tools 2>/dev/null || echo -dirty); steps: $*"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(python3 -c 'import torch; print("torch", torch.__version__)' 2>/dev/null)"
build-gpu/vae info

for s in "$@"; do
  case "$s" in
    full) run_full ;;
    tests)
      step "whole test suite (CUDA tests included)"
      timeout "${TESTS_TIMEOUT:-300}" build-gpu/cuvae_tests --gtest_brief=1 2>&1 | tee "$work/tests.log" | grep -v '^\[       OK \]'
      echo "tests exit: ${PIPESTATUS[0]}"
      ;;
    sanitize)
      for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck initcheck}; do
        step "compute-sanitizer --tool $tool over the CUDA tests"
        timeout "${SANITIZE_TIMEOUT:-240}" compute-sanitizer --tool "$tool" --error-exitcode 99 \
          build-gpu/cuvae_tests --gtest_filter="${SANITIZE_FILTER:-CudaVsCpu.*:*/BackendOps.*/cuda-*/BackendOps.BiasAndNoisePastOneGrid/cuda:CudaVsCpu.EvaluateAtFiveThousandSamples}" --gtest_brief=1 2>&1 | tail -15
        echo "$tool exit: ${PIPESTATUS[0]}"
      done
      ;;
    train)
      for dev in ${TRAIN_DEVICES:-cuda}; do
        for seed in ${TRAIN_SEEDS:-0}; do
          step "30 epochs, seed $seed, --device $dev ${TRAIN_FLAGS:-}"
          build-gpu/vae train --device "$dev" --data data/mnist --out "$work/train-$dev-$seed" --epochs 30 --seed "$seed" ${TRAIN_FLAGS:-} \
            | tee "$work/train-$dev-$seed.log" | grep -v '^epoch  *\([2-9]\|1[0-9]\|2[0-4]\)/'
          build-gpu/vae eval --device "$dev" --model "$work/train-$dev-$seed/model.safetensors" --data data/mnist --k 100 \
            | tee "$work/eval-$dev-$seed.log"
        done
      done
      ;;
    bench)
      for variant in "" --no-cuda-graph --tf32 --gemm-epilogues "--tf32 --gemm-epilogues"; do
        step "vae bench --device ${BENCH_DEVICE:-all} $variant: end-to-end samples/s"
        build-gpu/vae bench --device "${BENCH_DEVICE:-all}" --data data/mnist --batch-sizes 200,1000,4096 $variant \
          --json "$work/$(bench_name "$variant").json" | tee "$work/$(bench_name "$variant").txt"
      done
      ;;
    kernels)
      step "vae-bench: fused CUDA kernels and GEMM shapes"
      build-gpu/vae-bench --benchmark_filter='^cuda/' --benchmark_min_time=0.2 \
        --benchmark_out="$work/vae-bench-cuda.json" --benchmark_out_format=json 2>&1 | tee "$work/vae-bench-cuda.txt"
      ;;
    torch) run_torch ;;
    compare)
      # PyTorch (eager and torch.compile) and cuvae on the same GPU in one
      # call: throughput ratios at each batch size.
      run_torch
      for variant in "" --no-cuda-graph --tf32 --gemm-epilogues; do
        step "vae bench --device cuda $variant"
        build-gpu/vae bench --device cuda --data data/mnist --batch-sizes "${TORCH_BATCHES// /,}" $variant \
          --json "$work/$(bench_name "$variant").json" | tee "$work/$(bench_name "$variant").txt"
      done
      step "throughput, same GPU, same call (PyTorch: median of epochs 2-4; cuvae: median of 5 x 30 steps)"
      python3 - "$work" ${TORCH_BATCHES} <<'PY' | tee "$work/compare.txt"
import json, statistics, sys
work, batches = sys.argv[1], sys.argv[2:]
def ours(variant, batch):
    path = f"{work}/vae_bench{variant}.json"
    return next(r["samples_per_s"] for r in json.load(open(path))["results"] if r["batch"] == int(batch))
def theirs(mode, batch):
    return statistics.median(e["samples_per_s"] for e in json.load(open(f"{work}/torch-{batch}-{mode}.json"))["epochs"][1:])
print(f"{'batch':>6} {'torch eager':>12} {'torch.compile':>14} {'cuvae':>12} {'no graph':>12} {'tf32':>12} {'epilogues':>12} {'vs eager':>9} {'vs compile':>11}")
for b in batches:
    e, c = theirs("eager", b), theirs("compile", b)
    g, n, t, l = ours("", b), ours("-no-cuda-graph", b), ours("-tf32", b), ours("-gemm-epilogues", b)
    print(f"{b:>6} {e:12,.0f} {c:14,.0f} {g:12,.0f} {n:12,.0f} {t:12,.0f} {l:12,.0f} {g / e:8.1f}x {g / c:10.1f}x")
PY
      ;;
    ncu)
      step "Nsight Compute: the kernels of two training steps at batch 200 and 4096"
      for b in ${NCU_BATCHES:-200 4096}; do
        timeout 240 ncu --clock-control none --launch-skip 400 --launch-count 80 --csv --page raw \
          --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed \
          --log-file "$work/ncu-$b.csv" \
          build-gpu/vae train --device cuda --data data/mnist --out "$work/ncu-train-$b" --max-steps 40 --batch-size "$b" ${TRAIN_FLAGS:-} \
          > "$work/ncu-$b.out" 2>&1
        echo "ncu batch $b exit: $?"
        python3 tools/gpu/ncu_summary.py "$work/ncu-$b.csv" || tail -5 "$work/ncu-$b.out"
      done
      ;;
    *) echo "gpu_session: unknown step '$s' (full tests sanitize train bench kernels torch compare ncu)"; exit 2 ;;
  esac
  # After every step (a later one may time out); models and checkpoints stay behind (size).
  tar czf "$OUT/results.tar.gz" --exclude="*.safetensors" -C runs gpu 2>/dev/null
done
step "done"
