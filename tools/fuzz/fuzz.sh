#!/usr/bin/env bash
# Fuzzes the file readers with libFuzzer: builds tests/fuzz/fuzz_idx.cpp and
# tests/fuzz/fuzz_safetensors.cpp with clang++ and ASan + UBSan into
# build-fuzz/, then runs each for SECONDS seconds (default 30), starting from
# a copy of the seed corpus tests/fuzz/corpus/ (the copy, build-fuzz/corpus/,
# keeps what the fuzzer finds between runs; the repository's seeds are never
# modified). Exits non-zero if either fuzzer finds anything (crash, sanitizer
# report, leak, timeout, out-of-memory, broken invariant) and says where the
# offending input is and how to replay it.
#
# Usage: tools/fuzz/fuzz.sh [SECONDS]      fuzz each target for SECONDS seconds
#        tools/fuzz/fuzz.sh --make-corpus  regenerate tests/fuzz/corpus/ (make_corpus.cpp)
# Environment: CXX_FUZZ (default clang++), FUZZ_DIR (default build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../.."

cxx="${CXX_FUZZ:-clang++}"
out="${FUZZ_DIR:-build-fuzz}"
mkdir -p "$out"

if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "fuzz: $cxx not found (tools/install_deps.sh installs clang)" >&2
  exit 1
fi

common=(-std=c++17 -g -Iinclude -Wall -Wextra)

if [[ "${1:-}" == "--make-corpus" ]]; then
  "$cxx" "${common[@]}" -O1 tests/fuzz/make_corpus.cpp src/io/safetensors.cpp src/io/atomic_file.cpp src/io/input_file.cpp \
    -lz -o "$out/make_corpus"
  "$out/make_corpus" tests/fuzz/corpus
  ls -l tests/fuzz/corpus/*
  exit 0
fi

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: tools/fuzz/fuzz.sh [SECONDS] | --make-corpus" >&2
  exit 2
fi

# UBSan findings must stop the run (by default UBSan reports and goes on,
# which libFuzzer would not count as a crash).
flags=("${common[@]}" -O1 "-fsanitize=fuzzer,address,undefined" -fno-sanitize-recover=all
       -fno-omit-frame-pointer)
declare -A sources=(
  [idx]="src/io/idx.cpp src/io/input_file.cpp"
  [safetensors]="src/io/safetensors.cpp src/io/atomic_file.cpp src/io/input_file.cpp"
)
targets=(idx safetensors)

# The two builds are independent: run them side by side (2 jobs).
pids=()
for t in "${targets[@]}"; do
  # shellcheck disable=SC2086  # the source lists split on purpose
  "$cxx" "${flags[@]}" "tests/fuzz/fuzz_$t.cpp" ${sources[$t]} -lz -o "$out/fuzz_$t" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "fuzz: built ${targets[*]/#/$out/fuzz_}"

# The harnesses write each input to a file in here (a RAM disk when there is
# one); removed at the end even when a crash kept them from cleaning up.
scratch="$(mktemp -d /dev/shm/cuvae-fuzz.XXXXXX 2>/dev/null || mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export CUVAE_FUZZ_TMPDIR="$scratch"

status=0
for t in "${targets[@]}"; do
  corpus="$out/corpus/$t"
  artifacts="$out/artifacts/$t"
  log="$out/fuzz_$t.log"
  mkdir -p "$corpus" "$artifacts"
  cp tests/fuzz/corpus/"$t"/* "$corpus"/
  echo "fuzz: $t for ${seconds}s (corpus $corpus, log $log)"
  # -timeout: one input taking 20 s is a hang. -rss_limit_mb: the default
  # 2 GB, stated. Leak detection is on by default with ASan.
  # The stack is cut to 256 KB (ulimit, in a subshell): code that recurses
  # once per level of input nesting overflows 8 MB only with inputs far
  # beyond -max_len, but 256 KB at a depth that fits in 4 KB (~800 levels of
  # nlohmann's dump() under ASan), so the fuzzer can find it. The readers
  # need far less.
  rc=0
  (ulimit -s 256
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}" UBSAN_OPTIONS="print_stacktrace=1" \
    "$out/fuzz_$t" "$corpus" -dict="tests/fuzz/$t.dict" -max_len=4096 \
      -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$artifacts/") >"$log" 2>&1 || rc=$?
  if ((rc != 0)); then
    status=1
    echo "fuzz: $t FOUND A PROBLEM (exit $rc); the end of $log:" >&2
    tail -n 60 "$log" >&2
    crash="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    if [[ -n "$crash" ]]; then
      echo "fuzz: the input is $crash; replay it with: (ulimit -s 256; $out/fuzz_$t $crash)" >&2
    fi
  else
    # The last status line (execs, coverage, corpus) and the final stats.
    grep -E '^#[0-9]+' "$log" | tail -n 1
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log"
  fi
done
if ((status != 0)); then
  echo "fuzz: FAILED" >&2
else
  echo "fuzz: no findings"
fi
exit "$status"
