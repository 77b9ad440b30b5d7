#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# llama.cpp's own low-bit types of SmolLM2-135M-Instruct as peers of caldera's pipelines
# (docs/results.md): one command that makes and measures the whole peer table. A reference tool,
# never a build or test dependency. Needs the llama.cpp tools that tools/build-llama-cpp.sh builds,
# caldera's build (caldera-convert, caldera-pipe) and python3.
#
#   1. the original model dense: the Q4_1 GGUF dequantized to f32 by caldera-convert (the weights
#      every caldera number is measured against), checked with llama-perplexity (same protocol);
#   2. calibration text with the make-up of caldera's default [calib] (tools/calib_text.py:
#      wiki-calib and Austen in equal token shares, 128 windows of about 512 tokens) and
#      llama-imatrix on it (-c 512, 128 chunks);
#   3. llama-quantize --imatrix from the f32 file to each type (never --allow-requantize from Q4_1);
#   4. per file: the real bits per weight over the 210 linear weights and over the whole file, and
#      the ggml types it really holds (tools/gguf_bits.py; llama.cpp falls back to other types
#      for rows that are not whole 256-blocks), and its perplexity on WikiText-2 test (rows layout),
#      ctx 2048, the first 20 windows: llama-perplexity always, `caldera-pipe eval` (same protocol)
#      when our GGUF reader takes every type in the file (CALDERA_EVAL=0 skips it).
# Every step is skipped when its output exists (delete a file to redo that step).
#
# usage: tools/llama_peers.sh [OUT_DIR]          (from the repository root; default out/peers)
# env:   LLAMA_CPP_BIN, BUILD (default build), THREADS (default 2), TYPES (default below),
#        CALDERA_EVAL (1; 0: only cached values), LLAMA_PPL (1; 0: only cached values), MODEL (the Q4_1 GGUF), CALDERA_SHARED_DATA
# out:   OUT_DIR/peers.csv and OUT_DIR/peers.md (one row per type, the original first), logs
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-out/peers}
bin=${LLAMA_CPP_BIN:-$HOME/.cache/caldera/llama.cpp/build/bin}
build=${BUILD:-build}
threads=${THREADS:-2}
types=${TYPES:-"Q2_K IQ2_XXS IQ2_XS IQ2_S IQ3_XXS Q3_K_S IQ4_XS Q4_0"}
model=${MODEL:-$HOME/.cache/caldera/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
shared=${CALDERA_SHARED_DATA:-$root/../shared/data}
for t in llama-imatrix llama-quantize llama-perplexity llama-tokenize; do
    [ -x "$bin/$t" ] || { echo "llama_peers.sh: $bin/$t is missing; run tools/build-llama-cpp.sh" >&2; exit 1; }
done
for t in tools/caldera-convert core/cli/caldera-pipe; do
    [ -x "$build/$t" ] || { echo "llama_peers.sh: $build/$t is missing; build caldera first (BUILD=...)" >&2; exit 1; }
done
[ -s "$model" ] || { echo "llama_peers.sh: $model is missing; run scripts/fetch-model.sh" >&2; exit 1; }
mkdir -p "$out"
f32="$out/smollm2-f32.gguf"
text="$out/wiki.test.rows.txt"
calib="$out/calib.txt"
imat="$out/imatrix.gguf"

# 1. the original, dense
[ -s "$f32" ] || "$build/tools/caldera-convert" -q "$model" "$f32"
# the evaluation text as `caldera-pipe eval --layout rows` reads it (CRLF -> LF, line breaks doubled)
[ -s "$text" ] || python3 - "$shared/wikitext-2-raw/wiki.test.raw" "$text" <<'PY'
import sys
data = open(sys.argv[1], 'rb').read()
open(sys.argv[2], 'wb').write(data.replace(b'\r\n', b'\n').replace(b'\n', b'\n\n'))
PY

# 2. calibration text (bytes per token of each source measured with the model's tokenizer) and imatrix
if [ ! -s "$calib" ]; then
    bpt=()
    for s in wiki-calib austen; do
        cat "$shared/$s"/* | tr -d '\r' >"$out/src-$s.txt"
        n=$("$bin/llama-tokenize" -m "$f32" -f "$out/src-$s.txt" --ids --show-count --log-disable 2>/dev/null |
            sed -n 's/^Total number of tokens: //p')
        [ -n "$n" ] || { echo "llama_peers.sh: llama-tokenize gave no count for $s" >&2; exit 1; }
        bpt+=("$(python3 -c "import os,sys; print(os.path.getsize(sys.argv[1]) / int(sys.argv[2]))" "$out/src-$s.txt" "$n")")
        rm -f "$out/src-$s.txt"
    done
    python3 "$root/tools/calib_text.py" "$calib" --bytes-per-token "${bpt[@]}" --sequences 128 --length 512 --seed 0 \
        --data "$shared"
fi
[ -s "$imat" ] || "$bin/llama-imatrix" -m "$f32" -f "$calib" -c 512 --chunks 128 -o "$imat" -t "$threads" --no-ppl \
    >"$out/imatrix.log" 2>&1

# perplexity of one file with llama-perplexity: "ppl err" (cached in FILE.ppl); LLAMA_PPL=0: the
# cached value or "- -" (a table of what is measured so far, nothing run)
llama_ppl() {
    local f=$1
    if [ ! -s "$f.ppl" ] && [ "${LLAMA_PPL:-1}" = 0 ]; then echo "- -"; return; fi
    if [ ! -s "$f.ppl" ]; then
        "$bin/llama-perplexity" -m "$f" -f "$text" -c 2048 -b 2048 --chunks 20 -t "$threads" >"$f.ppl.log" 2>&1
        grep -o 'Final estimate: PPL = [0-9.]* +/- [0-9.]*' "$f.ppl.log" | awk '{print $5, $7}' >"$f.ppl"
        [ -s "$f.ppl" ] || { echo "llama_peers.sh: no final estimate in $f.ppl.log" >&2; exit 1; }
    fi
    cat "$f.ppl"
}
# ... with caldera-pipe eval: "ppl err", or "- -" when our reader refuses a type (cached in FILE.cppl)
caldera_ppl() {
    local f=$1
    if [ ! -s "$f.cppl" ] && [ "${CALDERA_EVAL:-1}" = 0 ]; then echo "- -"; return; fi
    if [ ! -s "$f.cppl" ]; then
        if "$build/core/cli/caldera-pipe" eval --model "$f" --text "$shared/wikitext-2-raw/wiki.test.raw" --layout rows \
            --ctx 2048 --windows 20 --protocol llamacpp --threads "$threads" -q >"$f.cppl.log" 2>&1; then
            sed -n 's/^perplexity: \([0-9.]*\) +\/- \([0-9.]*\)$/\1 \2/p' "$f.cppl.log" >"$f.cppl"
        else
            echo "- -" >"$f.cppl"
        fi
    fi
    cat "$f.cppl"
}

# 3. and 4.
csv="$out/peers.csv"
md="$out/peers.md"
echo "type,linear_bits,file_bits,linear_types,other_types,ppl_llama,ppl_llama_err,ppl_caldera,ppl_caldera_err" >"$csv.tmp"
row() {   # type file
    local b l c
    b=$(python3 "$root/tools/gguf_bits.py" "$2")
    l=$(llama_ppl "$2")
    c=$(caldera_ppl "$2")
    python3 - "$1" "$b" "$l" "$c" >>"$csv.tmp" <<'PY'
import json, sys
t, b, l, c = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
ty = lambda d: " ".join(f"{k}:{v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))
print(f"{t},{b['linear_bits']:.4f},{b['file_bits']:.4f},{ty(b['linear_types'])},{ty(b['other_types'])},"
      f"{l[0]},{l[1]},{c[0]},{c[1]}")
PY
}
for t in $types; do   # every file first (bits and types are cheap), then the perplexities
    q="$out/smollm2-$t.gguf"
    [ -s "$q" ] || "$bin/llama-quantize" --imatrix "$imat" "$f32" "$q" "$t" "$threads" >"$q.log" 2>&1
done
for t in $types; do row "$t" "$out/smollm2-$t.gguf"; done
row original-f32 "$f32"   # last: the costliest evaluation, and a check (caldera-pipe eval gives 18.6725)
mv "$csv.tmp" "$csv"
python3 - "$csv" >"$md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print("| llama.cpp type | bits/weight (210 linear) | bits/weight (file) | linear weights' ggml types | "
      "ppl (llama-perplexity) | ppl (caldera-pipe eval) |")
print("|---|---:|---:|---|---:|---:|")
for r in rows:
    c = "-" if r["ppl_caldera"] == "-" else f"{float(r['ppl_caldera']):.4f} ± {float(r['ppl_caldera_err']):.4f}"
    l = "-" if r["ppl_llama"] == "-" else f"{float(r['ppl_llama']):.4f} ± {float(r['ppl_llama_err']):.4f}"
    print(f"| {r['type']} | {float(r['linear_bits']):.4f} | {float(r['file_bits']):.4f} | {r['linear_types']} | "
          f"{l} | {c} |")
PY
cat "$md"
