#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Build the libFuzzer harnesses of tests/fuzz (clang, ASan + UBSan) in build-fuzz/, replay every
# seed and regression input, then fuzz each harness for SECONDS (default 60). New inputs go to
# build-fuzz/corpus/NAME (the checked-in seeds are read, never written); a crash, leak or timeout
# leaves its input in build-fuzz/artifacts/NAME/ and makes the script fail.
#   usage: scripts/fuzz.sh [SECONDS] [-j JOBS] [-r RUNS] [HARNESS...]
#     SECONDS  time budget per harness (0: replay the seeds and regression inputs only)
#     -j JOBS  run JOBS harnesses at once (default 1; each harness is one process)
#     -r RUNS  also stop a harness after RUNS executions (libFuzzer -runs), whichever of the two
#              comes first: a campaign of a fixed size whatever the machine's load
#     HARNESS  gguf safetensors safetensors-dir llama2c llama2c-tok ini tokenizer (default: all)
# Without clang (or its libFuzzer runtime) it prints why and exits 0, so CI without clang skips.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=60
JOBS=1
RUNS=-1
HARNESSES=()
while [ $# -gt 0 ]; do
    case $1 in
    -j) JOBS=$2; shift 2 ;;
    -r) RUNS=$2; shift 2 ;;
    [0-9]*) SECONDS_EACH=$1; shift ;;
    gguf|safetensors|safetensors-dir|llama2c|llama2c-tok|ini|tokenizer) HARNESSES+=("$1"); shift ;;
    *) echo "fuzz.sh: unknown argument '$1'; allowed: SECONDS, -j JOBS, -r RUNS, harness names" >&2; exit 2 ;;
    esac
done
[ ${#HARNESSES[@]} -gt 0 ] || HARNESSES=(gguf safetensors safetensors-dir llama2c llama2c-tok ini tokenizer)

CC_FUZZ=${CC_FUZZ:-$(command -v clang || command -v clang-14 || true)}
if [ -z "$CC_FUZZ" ]; then
    echo "fuzz.sh: clang not found: fuzzing skipped (scripts/install-deps.sh installs clang and libclang-rt-14-dev)"
    exit 0
fi
if ! echo 'int LLVMFuzzerTestOneInput(const char *d, long n) { return 0; }' |
     "$CC_FUZZ" -x c -fsanitize=fuzzer,address,undefined -o /dev/null - 2>/dev/null; then
    echo "fuzz.sh: $CC_FUZZ cannot link -fsanitize=fuzzer (libclang-rt-*-dev missing?): fuzzing skipped"
    exit 0
fi

B=build-fuzz
CC="$CC_FUZZ" cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DCALDERA_FUZZ=ON -DCALDERA_TESTS=OFF -DCALDERA_BUILTIN_PLUGINS=ON \
    -DCALDERA_CUDA=OFF >/dev/null
cmake --build $B -j "$(nproc)" --target "${HARNESSES[@]/#/fuzz-}" >/dev/null

# Per harness: the largest input tried, and the largest single allocation allowed (MB). A reader
# must not allocate much more than its input (tensors are read only up to the harnesses' cap of
# 16 MB of f32), so anything above the limit is reported as a bug ("malloc limit").
declare -A MAXLEN=([gguf]=65536 [safetensors]=65536 [safetensors-dir]=65536 [llama2c]=65536 [llama2c-tok]=16384 [ini]=8192 [tokenizer]=32768)
MALLOC_MB=64
F=tests/fuzz
run_one() {
    local h=$1 bin=$B/tests/fuzz/fuzz-$1
    mkdir -p $B/corpus/$h $B/artifacts/$h
    # every seed and regression input once (a crash here is a regression)
    "$bin" -malloc_limit_mb=$MALLOC_MB -timeout=20 -runs=0 $F/corpus/$h $F/regress/$h >$B/$h.replay.log 2>&1 || {
        echo "fuzz.sh: $h: a seed or regression input fails; see $B/$h.replay.log" >&2; tail -30 $B/$h.replay.log >&2; return 1; }
    [ "$SECONDS_EACH" -gt 0 ] || { echo "fuzz.sh: $h: seeds and regression inputs pass"; return 0; }
    if ! "$bin" -max_total_time="$SECONDS_EACH" -runs="$RUNS" -max_len="${MAXLEN[$h]}" -timeout=10 -rss_limit_mb=2048 \
         -malloc_limit_mb=$MALLOC_MB -dict=$F/dict/$h.dict -artifact_prefix=$B/artifacts/$h/ -print_final_stats=1 \
         $B/corpus/$h $F/corpus/$h $F/regress/$h >$B/$h.log 2>&1; then
        echo "fuzz.sh: $h: FAILED; input in $B/artifacts/$h/, log $B/$h.log" >&2
        grep -E "ERROR|SUMMARY|runtime error|Test unit written" $B/$h.log | head -10 >&2
        return 1
    fi
    local runs cov
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' $B/$h.log | grep -o '[0-9]*$' || echo ?)
    cov=$(grep -oE '(DONE|pulse|NEW|REDUCE|INITED) +cov: [0-9]+ ft: [0-9]+' $B/$h.log | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+' || echo ?)
    echo "fuzz.sh: $h: ${SECONDS_EACH}s budget, $runs executions, $cov, corpus $(ls $B/corpus/$h | wc -l) inputs, no crash"
}
fail=0
if [ "$JOBS" -le 1 ]; then
    for h in "${HARNESSES[@]}"; do run_one "$h" || fail=1; done
else
    pids=()
    for h in "${HARNESSES[@]}"; do
        run_one "$h" & pids+=($!)
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    done
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
fi
exit $fail
