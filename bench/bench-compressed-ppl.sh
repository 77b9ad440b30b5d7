#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A caldera-pipe output run through the fused kernels against its dense f32 rebuild, on SmolLM2:
#  1. caldera-pipe eval (batched forward: decoded tiles + sgemm), WikiText-2, ctx 512, 8 windows,
#     fused vs --dense (issue 9: within 0.1%), and fused with the q8 output head;
#  2. bench-runtime -P: perplexity of the first 256 tokens through single-token decode steps (the
#     batch-1 path: int8 activations in the E8P GEMV and the transposed Lᵀ product where the CPU
#     has AVX512-VBMI/VNNI/BITALG, the compact head), fused with int8 activations (the default
#     there) and with f32 ones (CALDERA_KERNELS_Q8=0), dense, and the f32 / f16 / q8 heads.
# Not a test (a CALDERA compression of SmolLM2 takes minutes): prints the rows to compare.
#   usage: bench/bench-compressed-ppl.sh COMPRESSED.safetensors [BUILD_DIR] [MODEL.gguf]
set -euo pipefail
cmp=${1:?usage: bench/bench-compressed-ppl.sh COMPRESSED.safetensors [BUILD_DIR] [MODEL.gguf]}
build=${2:-build}
model=${3:-$HOME/.cache/caldera/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
text=${CALDERA_SHARED_DATA:-../shared/data}/wikitext-2-raw/wiki.test.raw
export CALDERA_SHARED_DATA=${CALDERA_SHARED_DATA:-../shared/data}
echo "# $(date -u '+%F %T') UTC, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## caldera-pipe eval, ctx 512, 8 windows"
for flags in "" "--dense" "--head q8" "--dense --head q8"; do
    printf '%-20s ' "${flags:-fused}"
    "$build/core/cli/caldera-pipe" eval --model "$model" --compressed "$cmp" $flags --ctx 512 --windows 8 -q 2>/dev/null | grep -i perplexity
done
echo "## decode steps (bench-runtime -P), 256 tokens"
for flags in "-H f32" "-H q8" "-H f16" "-d -H f32" "-d -H q8"; do
    "$build/bench/bench-runtime" "$model" -t 2 -w f32 -c "$cmp" $flags -P "$text" -N 256 | tail -n 1
done
for flags in "-H f32" "-H q8"; do
    printf 'CALDERA_KERNELS_Q8=0 '
    CALDERA_KERNELS_Q8=0 "$build/bench/bench-runtime" "$model" -t 2 -w f32 -c "$cmp" $flags -P "$text" -N 256 | tail -n 1
done
