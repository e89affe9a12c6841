#!/usr/bin/env bash
# tools/sweep.py without Slurm: bad specs (one line naming the field, exit 2),
# the batch script it writes, a sweep run on this machine (two at a time),
# a task that finds its run finished (nothing done), a run whose first start
# was killed before its first checkpoint (started again), the collector's
# CSV and PNG, and the same sweep as packs (a configuration's seeds in one
# vae process: the same bits; resumed; started over). Skipped (exit 77)
# without MNIST.
# Usage: tests/slurm/sweep_test.sh VAE_BINARY   (CUVAE_MNIST_DIR: the data)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
sweep="$source_dir/tools/sweep.py"
# The system's Python where there is one: python3 on PATH may be a version
# manager's shim (pyenv's takes ~1 s to start), and this script starts it
# dozens of times. sweep.py needs only the standard library.
if [[ -x /usr/bin/python3 ]]; then python3() { /usr/bin/python3 "$@"; }; fi
vae=$(realpath "${1:?usage: sweep_test.sh VAE_BINARY}")
mnist=${CUVAE_MNIST_DIR:-$source_dir/data/mnist}
[[ -f "$mnist/train-images-idx3-ubyte" || -f "$mnist/train-images-idx3-ubyte.gz" ]] ||
  { echo "SKIPPED: MNIST not found in $mnist (set CUVAE_MNIST_DIR)"; exit 77; }
T=$(mktemp -d /tmp/cuvae-sweep.XXXXXX)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
failures=0
fail() { echo "FAILED: $*"; failures=$((failures + 1)); }

# A good spec; each bad case changes one thing in it.
good='{"name": "t", "out": "out", "data": "'"$mnist"'", "vae": "'"$vae"'", "threads": 1,
 "common": {"hidden": "32", "latent-dim": 4, "batch-size": 100, "max-steps": 300, "checkpoint-every": 100},
 "configs": {"a": {"lr": 0.001}, "b": {"lr": 0.0003, "shuffle": true}},
 "seeds": [0, 1], "eval": {"k": 5, "limit": 100},
 "slurm": {"time": "01:00:00", "signal_seconds": 120}}'
echo "$good" >good.json

# bad NAME PATTERN JSON: sweep.py check must exit 2 with one line, "sweep: error: ..." matching PATTERN.
bad() {
  echo "$3" >"bad-$1.json"
  local err rc
  err=$(python3 "$sweep" check "bad-$1.json" 2>&1 >/dev/null)
  rc=$?
  if [[ $rc != 2 ]]; then fail "$1: exit $rc, expected 2 ($err)"; return; fi
  if [[ $(printf '%s\n' "$err" | wc -l) != 1 || "$err" != "sweep: error: "* ]]; then
    fail "$1: not one 'sweep: error:' line: $err"; return
  fi
  [[ "$err" =~ $2 ]] || fail "$1: '$err' does not match '$2'"
  echo "ok: $1: $err"
}
edit() { python3 -c 'import json,sys; s=json.loads(sys.argv[1]); exec(sys.argv[2]); print(json.dumps(s))' "$good" "$1"; }
bad unknown-field "^sweep: error: sede: unknown field" "$(edit 's["sede"] = [1]')"
bad wrong-type-seeds "seeds: expected a list" "$(edit 's["seeds"] = {"a": 1}')"
bad wrong-type-threads "threads: expected an integer, got a string" "$(edit 's["threads"] = "2"')"
bad wrong-type-flag "configs.a.lr: expected a string or a number for --lr, got a list" "$(edit 's["configs"]["a"]["lr"] = [1]')"
bad flag-given-value "configs.b.shuffle: --shuffle takes no value" "$(edit 's["configs"]["b"]["shuffle"] = 1')"
bad empty-seeds "seeds: empty" "$(edit 's["seeds"] = []')"
bad negative-seed "seeds\[1\]: -1 is out of range" "$(edit 's["seeds"] = [0, -1]')"
bad unknown-flag "configs.a.learning-rate: vae train has no flag --learning-rate" "$(edit 's["configs"]["a"] = {"learning-rate": 0.1}')"
bad unknown-common-flag "common.epoch: vae train has no flag --epoch" "$(edit 's["common"]["epoch"] = 3')"
bad unknown-eval-flag "eval.samples: vae eval has no flag --samples" "$(edit 's["eval"]["samples"] = 3')"
bad reserved-flag "configs.a.seed: --seed is set by the sweep" "$(edit 's["configs"]["a"]["seed"] = 3')"
bad dashes "common.--epochs: write flags without their dashes" "$(edit 's["common"]["--epochs"] = 3')"
bad duplicate-seed "seeds: seed 1 is given twice" "$(edit 's["seeds"] = [1, 0, 1]')"
bad unknown-slurm-field "slurm.gpus: unknown field" "$(edit 's["slurm"]["gpus"] = 2')"
bad bad-device "device: 'gpu' is not cpu or cuda" "$(edit 's["device"] = "gpu"')"
bad missing-out "out: missing" "$(edit 'del s["out"]')"
bad bad-config-name "configs.a/b: 'a/b' cannot name a folder" "$(edit 's["configs"]["a/b"] = {}')"
bad no-vae "vae: .* is not an executable file" "$(edit 's["vae"] = "/nonexistent/vae"')"
bad pack-split "pack: 2 is fewer than the 3 seeds; .* a configuration's seeds cannot be split over packs" \
  "$(edit 's["pack"] = 2; s["seeds"] = [0, 1, 2]')"
bad pack-zero "pack: 0 is out of range" "$(edit 's["pack"] = 0')"
bad pack-string "pack: expected an integer, got a string" "$(edit 's["pack"] = "2"')"
bad pack-false "pack: expected an integer, got a boolean" "$(edit 's["pack"] = False')"
bad seeds-flag "configs.a.seeds: --seeds is set by the sweep" "$(edit 's["configs"]["a"]["seeds"] = "0-3"')"
bad lr-list "configs.a.lr: '0.001,0.0003' is a list" "$(edit 's["configs"]["a"]["lr"] = "0.001,0.0003"')"
bad adam-eps-list "common.adam-eps: '1e-8,1e-4' is a list" "$(edit 's["common"]["adam-eps"] = "1e-8,1e-4"')"
# Duplicate run names: a configuration named twice (JSON allows it; the sweep does not).
bad duplicate-config "duplicate key 'a'" "$(echo "$good" | sed 's/"configs": {"a": {"lr": 0.001}/"configs": {"a": {"lr": 0.001}, "a": {"lr": 0.01}/')"
bad not-json "not JSON: .* at line [0-9]+, column [0-9]+" "{\"out\": \"x\","
echo "$good" | python3 "$sweep" check /dev/stdin >/dev/null 2>&1 || fail "a good spec read from /dev/stdin was refused"
err=$(python3 "$sweep" frobnicate good.json 2>&1); [[ $? == 2 && "$err" == "sweep: error: unknown command 'frobnicate'"* ]] ||
  fail "an unknown command: $err"
err=$(python3 "$sweep" run good.json --jobs 0 2>&1); [[ $? == 2 && "$err" == "sweep: error: --jobs: "* ]] ||
  fail "--jobs 0: $err"

# The batch script.
python3 "$sweep" write good.json >/dev/null || fail "sweep.py write failed"
for line in "--array=0-3" "--cpus-per-task=1" "--time=01:00:00" "--requeue" "--signal=B:USR1@120" \
            "--open-mode=append" "--output=$T/out/logs/task-%a.log"; do
  grep -qx -- "#SBATCH $line" out/sweep.sbatch || fail "the batch script has no '#SBATCH $line'"
done
grep -q -- "--gres" out/sweep.sbatch && fail "a CPU sweep asks for a GPU"
# Packs: one task per configuration, CPUs for its members (min(pack, threads)).
edit 's["pack"] = True; s["threads"] = 4; s["out"] = "packs"' >packs.json
python3 "$sweep" write packs.json >/dev/null || fail "sweep.py write of a pack spec failed"
for line in "--array=0-1" "--cpus-per-task=2"; do
  grep -qx -- "#SBATCH $line" packs/sweep.sbatch || fail "the pack script has no '#SBATCH $line'"
done
grep -q '^exec python3 .*sweep.py task .*/out/sweep.json --index "$SLURM_ARRAY_TASK_ID"$' out/sweep.sbatch ||
  fail "the batch script does not exec the task: $(tail -n 1 out/sweep.sbatch)"
edit 's["device"] = "cuda"; s["out"] = "gpu"' >gpu.json
python3 "$sweep" write gpu.json >/dev/null && grep -qx "#SBATCH --gres=gpu:1" gpu/sweep.sbatch ||
  fail "a CUDA sweep's script has no --gres=gpu:1"
# The folder holds one sweep: another spec into it is refused.
edit 's["seeds"] = [5]' >other.json
err=$(python3 "$sweep" write other.json 2>&1); [[ $? == 2 && "$err" == *"out: $T/out holds another sweep"* ]] ||
  fail "another spec into the same out: $err"

# A first start killed before its first checkpoint leaves the folder with
# only the lock: the task starts it again (no --overwrite needed).
mkdir -p out/a/seed-1 && : >out/a/seed-1/.vae.lock

# The sweep on this machine, two at a time.
python3 "$sweep" run good.json --jobs 2 || fail "sweep.py run failed"
status=$(python3 "$sweep" status good.json)
[[ $(grep -c "finished	step 300 of 300" <<<"$status") == 4 ]] || fail "not every run finished: $status"
[[ -z "$(python3 "$sweep" status good.json --pending)" ]] || fail "status --pending lists finished runs"
for r in a/seed-0 a/seed-1 b/seed-0 b/seed-1; do
  [[ -f "out/$r/eval.json" && -f "out/$r/model.safetensors" && -f "out/$r/task_3_1.png" ]] ||
    fail "$r: no eval.json, model or task images"
done
# Again: every task finds its run finished and leaves it alone.
before=$(stat -c %Y out/*/seed-*/model.safetensors out/*/seed-*/eval.json | md5sum)
python3 "$sweep" task out/sweep.json --index 1 >again.log 2>&1 || fail "a task of a finished run failed"
grep -q "a/seed-1: finished (step 300 of 300), nothing to do" again.log || fail "task 1 again: $(cat again.log)"
python3 "$sweep" run good.json --jobs 2 >/dev/null || fail "sweep.py run of a finished sweep failed"
[[ "$(stat -c %Y out/*/seed-*/model.safetensors out/*/seed-*/eval.json | md5sum)" == "$before" ]] ||
  fail "a finished run was written again"
# A run with more steps in the spec is partial again and resumes.
edit 's["common"]["max-steps"] = 400' >longer.json
rm out/sweep.json
status=$(python3 "$sweep" status longer.json)
[[ $(grep -c "partial	step 300 of 400" <<<"$status") == 4 ]] || fail "a longer spec does not see the runs as partial: $status"
python3 "$sweep" write good.json >/dev/null

# The collector: one mean row and one row per run per configuration.
python3 "$sweep" collect good.json || fail "sweep.py collect failed"
python3 - out/results.csv <<'EOF' || fail "results.csv is not as expected"
import csv, math, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert [(r["config"], r["seed"]) for r in rows] == [("a", "mean"), ("a", "0"), ("a", "1"),
                                                     ("b", "mean"), ("b", "0"), ("b", "1")], rows
for config in ("a", "b"):
    mean, *runs = [r for r in rows if r["config"] == config]
    for col in ("train_bound", "test_elbo", "test_nll"):
        values = [float(r[col]) for r in runs]
        m = sum(values) / 2
        se = abs(values[0] - values[1]) / 2  # the standard error of two: |a - b| / 2
        assert abs(float(mean[col]) - m) < 1e-3, (config, col, mean[col], m)
        assert abs(float(mean[col + "_se"]) - se) < 1e-3, (config, col, mean[col + "_se"], se)
    assert mean["state"] == "2 of 2 finished" and mean["eval_k"] == "5", mean
    assert all(r["state"] == "finished" and r["step"] == "300" for r in runs), runs
    assert all(-550 < float(r["train_bound"]) < -100 and 100 < float(r["test_nll"]) < 550 for r in runs), runs
print("ok: results.csv: the means and standard errors of both configurations")
EOF
if python3 -c "import matplotlib" 2>/dev/null || /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
  [[ "$(head -c 8 out/results.png | od -An -tx1 | tr -d ' \n')" == 89504e470d0a1a0a ]] ||
    fail "results.png is not a PNG"
else
  echo "note: matplotlib is not installed: the chart is not checked"
fi

# Packs: the same sweep with each configuration's seeds in one vae process
# ("pack": true) gives the same bits as with one run per task. First a
# shorter one (max-steps 200), then the spec's 300: the packs resume (their
# pack.json and every member's checkpoint there) without --lr, which vae
# refuses with a pack's --resume; sweep.py checks it against the checkpoints.
same_bits() {  # same_bits DIR_A DIR_B: every run's model and checkpoint tensors
  python3 - "$1" "$2" <<'EOF'
import json, struct, sys
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}
for run in ("a/seed-0", "a/seed-1", "b/seed-0", "b/seed-1"):
    for name in ("model.safetensors", "checkpoint.safetensors"):
        a, b = tensors(f"{sys.argv[1]}/{run}/{name}"), tensors(f"{sys.argv[2]}/{run}/{name}")
        if not b or a != b:
            sys.exit(f"{run}/{name}: the tensors differ")
EOF
}
edit 's["pack"] = True; s["out"] = "packed"' >packed.json
edit 's["pack"] = True; s["out"] = "packed"; s["common"]["max-steps"] = 200' >packed-short.json
edit 's["pack"] = True; s["out"] = "packed"; s["configs"]["a"]["lr"] = 0.002' >packed-lr.json
python3 "$sweep" run packed-short.json --jobs 2 >/dev/null || fail "the shorter pack sweep failed"
[[ -f packed/a/pack.json && -f packed/b/pack.json ]] || fail "no OUT/CONFIG/pack.json"
grep -q "a (a pack of 2): starting: .* train .* --seeds 0,1 .* --out $T/packed/a\$" packed/logs/task-0.log ||
  fail "the pack's first start: $(grep 'pack of' packed/logs/task-0.log)"
rm packed/sweep.json
err=$(python3 "$sweep" task packed-lr.json --index 0 2>&1); rc=$?
[[ $rc == 2 && "$err" == *"a/seed-0: the spec's --lr 0.002 disagrees with 0.001 in"* ]] ||
  fail "a pack resumed with another --lr: exit $rc: $err"
python3 "$sweep" run packed.json --jobs 2 || fail "the pack sweep failed"
grep -q "a (a pack of 2): resuming at steps 200, 200: .* train --resume $T/packed/a --data .* --max-steps 300\$" \
  packed/logs/task-0.log || fail "the pack did not resume without --lr: $(grep 'pack of' packed/logs/task-0.log)"
same_bits packed out || fail "a pack's models differ from the same runs trained one per task"
status=$(python3 "$sweep" status packed.json)
[[ $(grep -c "finished	step 300 of 300" <<<"$status") == 4 ]] || fail "not every packed run finished: $status"
nll() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nll"])' "$1"; }
for r in a/seed-0 a/seed-1 b/seed-0 b/seed-1; do
  [[ "$(nll "packed/$r/eval.json")" == "$(nll "out/$r/eval.json")" ]] ||
    fail "$r: the pack's eval.json differs from the run's alone (or is the shorter run's)"
done
python3 "$sweep" task packed.json --index 1 >again.log 2>&1 || fail "a finished pack's task failed"
[[ $(grep -c "finished (step 300 of 300), nothing to do" again.log) == 2 ]] || fail "a finished pack again: $(cat again.log)"
# A pack stopped before every member had its first checkpoint (here: one
# member's is gone) starts over with --overwrite; without its pack.json, the
# members' checkpoints are runs trained alone, which the task refuses to start over.
rm packed/a/seed-1/checkpoint.safetensors
mv packed/a/pack.json pack.json.kept
err=$(python3 "$sweep" task packed.json --index 0 2>&1); rc=$?
[[ $rc == 2 && "$err" == *"packed/a/seed-0 holds a checkpoint but $T/packed/a no pack.json"* ]] ||
  fail "checkpoints without pack.json: exit $rc: $err"
mv pack.json.kept packed/a/pack.json
python3 "$sweep" task packed.json --index 0 >over.log 2>&1 || fail "the pack's start over failed: $(tail -n 5 over.log)"
grep -q "starting over (stopped before every member had a checkpoint: 1 of 2 had one): .* --out $T/packed/a --overwrite\$" \
  over.log || fail "the pack did not start over: $(grep 'pack of' over.log)"
same_bits packed out || fail "a pack started over differs from the same runs trained one per task"
echo "ok: packs: the same bits as one run per task; resumed without --lr; a changed --lr refused; started over"

if ((failures)); then echo "sweep_test: $failures failures"; exit 1; fi
echo "sweep_test: passed"
