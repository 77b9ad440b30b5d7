#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# pp512 / tg64 of the llama runtime beside llama-bench, 2 threads, same machine, one after the
# other, each repeated (the machine may be shared: compare best values).
#   usage: bench/bench-runtime.sh [BUILD_DIR] [MODEL.gguf] [COMPRESSED.safetensors]   (from the repository root)
# Without COMPRESSED: llama-bench and caldera on the same F32 GGUF (made from the Q4_1 file by
# llama-quantize --allow-requantize ... F32, the same dequantized weights both runtimes compute with).
# With COMPRESSED (a caldera-pipe output of MODEL): the issue-9 comparison in one run: llama-bench
# on the original Q4_1 GGUF, caldera's f32 runtime, and the compressed file through the fused
# kernels, with the f32 and the q8 output head (caldera rows best of 5).
set -euo pipefail
build=${1:-build}
model=${2:-$HOME/.cache/caldera/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
cmp=${3:-}
bin=${LLAMA_CPP_BIN:-$HOME/.cache/caldera/llama.cpp/build/bin}
echo "# $(date -u '+%F %T') UTC, load average: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs"
if [ -n "$cmp" ]; then
    echo "## llama-bench (llama.cpp, $(basename "$model"), 2 threads, 5 repetitions: mean ± sd)"
    "$bin/llama-bench" -m "$model" -t 2 -p 512 -n 64 -r 5 -o md
    echo
    echo "## llama-bench tg64 alone under /usr/bin/time (CPU seconds of 6 x 64 tokens: warm-up + 5 repetitions, and the load)"
    /usr/bin/time -f "llama-bench tg64: %U s user + %S s sys, %e s wall" "$bin/llama-bench" -m "$model" -t 2 -p 0 -n 64 -r 5 -o md 2>&1 | grep -E "tg64|llama-bench tg64"
    echo
    echo "## caldera bench-runtime (2 threads, best of 5)"
    "$build/bench/bench-runtime" "$model" -t 2 -r 5 -w f32
    "$build/bench/bench-runtime" "$model" -t 2 -r 5 -w f32 -c "$cmp" | tail -n 2
    "$build/bench/bench-runtime" "$model" -t 2 -r 5 -w f32 -c "$cmp" -H q8 | tail -n 2
    echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    exit 0
fi
work=${TMPDIR:-/tmp}/caldera-llama-fixtures
f32="$work/SmolLM2-135M-Instruct.F32.gguf"
mkdir -p "$work"
if [ ! -s "$f32" ]; then
    [ -x "$bin/llama-quantize" ] || { echo "bench-runtime.sh: $bin/llama-quantize missing (tools/build-llama-cpp.sh)" >&2; exit 1; }
    "$bin/llama-quantize" --allow-requantize "$model" "$f32" F32 >"$work/quantize.log" 2>&1
fi
echo "## llama-bench (llama.cpp, f32 GGUF, 2 threads, 3 repetitions: mean ± sd)"
"$bin/llama-bench" -m "$f32" -t 2 -p 512 -n 64 -r 3 -o md
echo
echo "## caldera bench-runtime (same file, 2 threads, best of 3)"
"$build/bench/bench-runtime" "$f32" -t 2 -r 3 -w f32,f16
