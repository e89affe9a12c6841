#!/usr/bin/env bash
# Sweeps (tools/sweep.py) under a real single-node Slurm on localhost, with
# the faults of a cluster, against the same runs without Slurm:
#   - a pack (one configuration's two seeds in one vae process, "pack": true)
#     is requeued mid-run, once both members have a checkpoint past step 300
#     (scontrol requeue: SIGTERM, vae checkpoints every member, the job goes
#     back into the queue and the pack resumes);
#   - task 0 of a one-run-per-task sweep gets the time-limit warning mid-run
#     (scancel --signal=USR1 --batch: what --signal=B:USR1@S sends; the task
#     has vae checkpoint and requeues itself);
#   - its task 1's vae is killed with SIGKILL mid-run (the task fails; the
#     array task is submitted again and resumes from the last checkpoint).
# Each fault is checked to have struck mid-run (the log's "resuming at step
# N" with 0 < N < the run's steps), and every run must end with the same
# parameter and Adam tensors, bit for bit, as the same run never interrupted
# and trained alone (one run per task).
#
# It starts munged, slurmctld and slurmd as root with a generated slurm.conf
# in a temporary folder (proctrack/linuxproc, task/none: no cgroups) and
# stops them at the end, whatever happens. Where it cannot (not root, the
# packages missing, a daemon that does not come up, no MNIST), it prints
# "SKIPPED: reason" and exits 77 (CTest's SKIP_RETURN_CODE).
#
# Usage: tests/slurm/slurm_test.sh VAE_BINARY
# Environment: CUVAE_MNIST_DIR (default data/mnist), CUVAE_SLURM_KEEP=1
# keeps the temporary folder, CUVAE_SLURM_RESULT=FILE gets one line: "ran and
# passed ...", "ran and FAILED ..." or "skipped: reason" (tools/test.sh prints it).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
sweep="$source_dir/tools/sweep.py"
# The system's Python where there is one: python3 on PATH may be a version
# manager's shim (pyenv's takes ~1 s to start), and this script starts it
# dozens of times. sweep.py needs only the standard library.
if [[ -x /usr/bin/python3 ]]; then python3() { /usr/bin/python3 "$@"; }; fi
vae=$(realpath "${1:?usage: slurm_test.sh VAE_BINARY}")
mnist=${CUVAE_MNIST_DIR:-$source_dir/data/mnist}
start_time=$SECONDS
# One line for tools/test.sh to print: whether the test ran, and how it ended.
result_file=${CUVAE_SLURM_RESULT:-}
result() { [[ -n "$result_file" ]] && echo "$*" >"$result_file"; return 0; }

skip() { echo "SKIPPED: $*"; result "skipped: $*"; exit 77; }
die() { echo "FAILED: $*"; result "ran and FAILED ($((SECONDS - start_time)) s): $*"; exit 1; }
say() { echo "slurm_test: $* ($((SECONDS - start_time)) s)"; }

[[ "$(id -u)" == 0 ]] || skip "the Slurm test starts slurmctld, slurmd and munged as root; not root here"
for c in munged slurmctld slurmd sbatch scontrol squeue scancel sinfo python3; do
  command -v "$c" >/dev/null 2>&1 || skip "$c not found (Debian: apt-get install slurm-wlm munge; tools/install_deps.sh installs them)"
done
[[ -x "$vae" ]] || skip "no vae binary at $vae"
[[ -f "$mnist/train-images-idx3-ubyte" || -f "$mnist/train-images-idx3-ubyte.gz" ]] ||
  skip "MNIST not found in $mnist (set CUVAE_MNIST_DIR)"

T=$(mktemp -d /tmp/cuvae-slurm.XXXXXX)
chmod 755 "$T"
export SLURM_CONF="$T/slurm.conf"
daemons_up=0
stop_all() {
  if ((daemons_up)); then
    # Jobs first (their slurmstepd outlives slurmd), then the daemons.
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
    if [[ -n "$jobs" ]]; then
      # shellcheck disable=SC2086
      scancel --quiet $jobs 2>/dev/null || true
      for _ in $(seq 100); do [[ -z "$(squeue -h -o %A 2>/dev/null)" ]] && break; sleep 0.1; done
    fi
    for pidfile in "$T/slurmd.pid" "$T/slurmctld.pid" "$T/munged.pid"; do
      [[ -s "$pidfile" ]] || continue
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || continue
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    done
  fi
  # Whatever of ours outlived its job (nothing should): by the temporary
  # folder in its command line, killed by process id.
  for pid in $(pgrep -f "$T/" || true); do kill -9 "$pid" 2>/dev/null || true; done
  if [[ "${CUVAE_SLURM_KEEP:-0}" == 1 ]]; then echo "slurm_test: kept $T"; else rm -rf "$T"; fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

show_logs() {
  for f in "$T"/slurmctld.log "$T"/slurmd.log "$T"/sweep/logs/*.log; do
    [[ -f "$f" ]] && { echo "---- $f (last 40 lines)"; tail -n 40 "$f"; }
  done
}
fail() { show_logs; die "$*"; }

# ---------------------------------------------------------------------------
# munge and Slurm, private to this test: own socket, ports, state and logs.
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512))
port=$((20000 + RANDOM % 20000))
mkdir -p "$T/state" "$T/spool" "$T/munge"
chmod 700 "$T/munge"
key=/etc/munge/munge.key
if [[ ! -r "$key" ]]; then
  key="$T/munge/munge.key"
  dd if=/dev/urandom of="$key" bs=1024 count=1 status=none && chmod 400 "$key"
fi
munged --force --socket="$T/munge/munge.socket" --key-file="$key" --pid-file="$T/munged.pid" \
  --log-file="$T/munged.log" --seed-file="$T/munge/munged.seed" >"$T/munged.out" 2>&1 ||
  skip "munged did not start: $(tail -n 2 "$T/munged.out" "$T/munged.log" 2>/dev/null | tr '\n' ' ')"
daemons_up=1

cat >"$SLURM_CONF" <<EOF
ClusterName=cuvaetest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge/munge.socket
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
MessageTimeout=20
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld -f "$SLURM_CONF" -i >"$T/slurmctld.out" 2>&1 ||
  skip "slurmctld did not start: $(tail -n 3 "$T/slurmctld.out" "$T/slurmctld.log" 2>/dev/null | tr '\n' ' ')"
slurmd -f "$SLURM_CONF" >"$T/slurmd.out" 2>&1 ||
  skip "slurmd did not start: $(tail -n 3 "$T/slurmd.out" "$T/slurmd.log" 2>/dev/null | tr '\n' ' ')"
for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n 1)
  [[ "$state" == idle ]] && break
  sleep 0.5
done
[[ "$state" == idle ]] ||
  skip "the Slurm node did not come up (state '$state'): $(tail -n 3 "$T/slurmctld.log" "$T/slurmd.log" 2>/dev/null | tr '\n' ' ')"
say "Slurm $(sinfo --version | cut -d' ' -f2) is up on $host ($cpus CPUs), logs in $T"

# ---------------------------------------------------------------------------
# The sweeps: a small model, one thread each, checkpoints every 100 steps,
# long enough (a few seconds per run, more under load) to be struck mid-run. Configuration
# lr-1e-3 runs one seed per task ($T/sweep: tasks 0 and 1), lr-3e-4 as one
# pack of both seeds in one task ($T/pack: task 0, "pack": true); the
# reference, without Slurm, runs both configurations one run per task: a
# pack's models have the bits they have alone.
steps=4000
spec() {  # spec OUT FILE CONFIGS PACK
  cat >"$2" <<EOF
{"name": "$(basename "$1")", "out": "$1", "data": "$mnist", "vae": "$vae", "device": "cpu", "threads": 1,
 "common": {"hidden": "128", "latent-dim": 8, "batch-size": 100, "max-steps": $steps,
            "checkpoint-every": 100},
 "configs": {$3},
 "seeds": [0, 1], "pack": $4,
 "slurm": {"time": "00:30:00", "signal_seconds": 60}}
EOF
}
single='"lr-1e-3": {"lr": 0.001}'
packed='"lr-3e-4": {"lr": 0.0003, "shuffle": true}'
spec "$T/sweep" "$T/sweep.json" "$single" 1
spec "$T/pack" "$T/pack.json" "$packed" true
spec "$T/reference" "$T/reference.json" "$single, $packed" 1
(cd "$T" && python3 "$sweep" write sweep.json && python3 "$sweep" write pack.json) || fail "sweep.py write failed"
script="$T/sweep/sweep.sbatch"
pack_script="$T/pack/sweep.sbatch"
grep -q -- "--requeue" "$script" && grep -q -- "--signal=B:USR1@60" "$script" &&
  grep -q -- "--array=0-1" "$script" && grep -q -- "--open-mode=append" "$script" ||
  fail "the batch script lacks --requeue, --signal, --array or --open-mode: $(cat "$script")"
grep -qx -- "#SBATCH --array=0-0" "$pack_script" && grep -qx -- "#SBATCH --cpus-per-task=1" "$pack_script" ||
  fail "the pack's batch script is not one task of one CPU (threads 1): $(cat "$pack_script")"

# The pack first: it and task 0 take the node's two CPUs (task 1 waits for one).
pack_job=$(cd "$T" && sbatch --parsable "$pack_script") || fail "sbatch of the pack failed"
pack_job=${pack_job%%;*}
job=$(cd "$T" && sbatch --parsable "$script") || fail "sbatch failed"
job=${job%%;*}
say "submitted array jobs $pack_job (a pack of 2) and $job (2 runs)"

run_dir() { echo "$T/$1/seed-$2"; }  # run_dir sweep/lr-1e-3 SEED
# The steps of runs' checkpoints (0 when none yet), one line.
ckpt_steps() {
  python3 - "$@" <<'EOF'
import json, struct, sys
steps = []
for d in sys.argv[1:]:
    try:
        with open(d + "/checkpoint.safetensors", "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            steps.append(int(json.loads(f.read(n))["__metadata__"]["step"]))
    except (OSError, ValueError, KeyError, struct.error):
        steps.append(0)
print(*steps)
EOF
}
# Waits until every run DIR has a checkpoint at step >= MIN (and is still short of the end).
wait_for_step() {  # wait_for_step NAME MIN DIR...
  local name=$1 min=$2 step ok all
  shift 2
  for _ in $(seq 600); do
    all=$(ckpt_steps "$@")
    ok=1
    for step in $all; do ((step >= min)) || ok=0; done
    if ((ok)); then
      for step in $all; do
        ((step < steps)) || fail "$name finished before it could be interrupted (make the runs longer)"
      done
      say "$name is at step $all"
      return 0
    fi
    sleep 0.1
  done
  fail "$name reached no step $min in 60 s"
}
task_state() { squeue -h -j "$1" -o %T 2>/dev/null | head -n 1; }

# Fault 1: the time-limit warning (--signal=B:USR1@S) to task 0 mid-run.
for _ in $(seq 600); do [[ "$(task_state "${job}_0")" == RUNNING ]] && break; sleep 0.1; done
wait_for_step "task 0" 300 "$(run_dir sweep/lr-1e-3 0)"
scancel --signal=USR1 --batch "${job}_0" || fail "scancel --signal=USR1 --batch ${job}_0 failed"
say "sent ${job}_0 the time-limit warning (USR1 to its batch shell)"
# Fault 2: requeue the pack's task mid-run, once both members have a checkpoint past step 300.
wait_for_step "the pack" 300 "$(run_dir pack/lr-3e-4 0)" "$(run_dir pack/lr-3e-4 1)"
scontrol requeue "${pack_job}_0" || fail "scontrol requeue ${pack_job}_0 failed"
say "requeued ${pack_job}_0 (the pack)"
# Fault 3: SIGKILL task 1's vae mid-run.
wait_for_step "task 1" 300 "$(run_dir sweep/lr-1e-3 1)"
dir1=$(run_dir sweep/lr-1e-3 1)
pid=$(pgrep -f -- "--out $dir1\$" | head -n 1)
[[ -n "$pid" ]] || pid=$(pgrep -f -- "--resume $dir1\$" | head -n 1)
[[ -n "$pid" ]] || fail "no vae process of task 1 found"
kill -9 "$pid"
say "killed task 1's vae (process $pid) with SIGKILL"

# A requeued task waits for its begin time (slurmctld holds it back a while);
# let it start now. Task 1 is resubmitted once its first attempt has ended.
resubmitted=0
for _ in $(seq 1800); do
  for t in "${pack_job}_0" "${job}_0"; do
    if [[ "$(task_state "$t")" == PENDING ]]; then
      scontrol update jobid="$t" StartTime=now >/dev/null 2>&1 || true
    fi
  done
  if ((!resubmitted)) && [[ -z "$(task_state "${job}_1")" ]]; then
    grep -q "killed by signal 9" "$T/sweep/logs/task-1.log" ||
      fail "task 1 ended without reporting its vae's SIGKILL"
    job2=$(cd "$T" && sbatch --parsable --array=1 "$script") || fail "sbatch --array=1 failed"
    job2=${job2%%;*}
    resubmitted=1
    say "task 1's first attempt ended; resubmitted it as ${job2}_1"
  fi
  if ((resubmitted)) && [[ -z "$(squeue -h -o %i 2>/dev/null)" ]]; then break; fi
  sleep 0.1
done
[[ -z "$(squeue -h -o %i 2>/dev/null)" ]] || fail "the jobs did not end in 180 s: $(squeue)"
say "every job has ended"

# Each fault struck mid-run and was recovered from there.
for t in 0 1; do
  log="$T/sweep/logs/task-$t.log"
  line=$(grep -m1 -o "resuming at step [0-9]*" "$log") || fail "task $t never resumed (its log: $log)"
  n=${line##* }
  ((n > 0 && n < steps)) || fail "task $t resumed at step $n, not mid-run"
  say "task $t resumed at step $n of $steps"
done
log="$T/pack/logs/task-0.log"
line=$(grep -m1 -o "lr-3e-4 (a pack of 2): resuming at steps [0-9]*, [0-9]*: .* train --resume $T/pack/lr-3e-4 " "$log") ||
  fail "the pack never resumed (its log: $log)"
for n in $(grep -o "steps [0-9]*, [0-9]*" <<<"$line" | tr -dc '0-9 '); do
  ((n > 0 && n < steps)) || fail "the pack resumed a member at step $n, not mid-run"
done
say "the pack resumed at $(grep -o "steps [0-9]*, [0-9]*" <<<"$line") of $steps"
grep -q "time limit is near: requeueing" "$T/sweep/logs/task-0.log" || fail "task 0 did not requeue itself"
grep -q "scontrol requeue ${job}_0: done" "$T/sweep/logs/task-0.log" || fail "task 0's scontrol requeue failed"
for s in sweep pack; do
  pending=$(cd "$T" && python3 "$sweep" status $s.json --pending) || fail "sweep.py status failed"
  [[ -z "$pending" ]] || fail "unfinished runs after the jobs: $s tasks $pending; $(cd "$T" && python3 "$sweep" status $s.json)"
done

# The same runs without Slurm, never interrupted, one per task: the reference bits.
(cd "$T" && python3 "$sweep" run reference.json --jobs 2) || fail "sweep.py run (no Slurm) failed"
say "the same runs ran without Slurm"
python3 - "$T" "$T/reference" <<'EOF' || fail "a run under Slurm differs from the same run uninterrupted"
import json, os, struct, sys
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}
root, b_root = sys.argv[1:]
runs = 0
for sweep, config in (("sweep", "lr-1e-3"), ("pack", "lr-3e-4")):
    for seed in (0, 1):
        for name in ("model.safetensors", "checkpoint.safetensors"):
            a = tensors(os.path.join(root, sweep, config, f"seed-{seed}", name))
            b = tensors(os.path.join(b_root, config, f"seed-{seed}", name))
            if a.keys() != b.keys() or not b:
                sys.exit(f"{config}/seed-{seed}/{name}: tensors {sorted(a)} vs {sorted(b)}")
            for k in b:
                if a[k] != b[k]:
                    sys.exit(f"{config}/seed-{seed}/{name}: tensor {k} differs")
        runs += 1
if runs != 4:
    sys.exit(f"compared {runs} runs, expected 4")
print(f"slurm_test: 4 runs (2 of them one pack), model and checkpoint tensors (parameters, Adam moments) bit-identical to the uninterrupted runs alone")
EOF
say "PASSED"
result "ran and passed in $((SECONDS - start_time)) s (Slurm $(sinfo --version | cut -d' ' -f2): a requeue of a pack of 2, a SIGKILL and a time-limit warning mid-run; every run bit-identical to the uninterrupted one alone)"
