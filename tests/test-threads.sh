#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The compress phase runs one weight per thread and commits in the reader's order: the output file
# and every reported number must not depend on the thread count. Compresses stories260K (shared/data)
# with calibration Hessians, RHT and CALDERA (Q: ldlq over E8P 2-bit with tune passes; L, R: E8P
# 4-bit) with threads = 1, 2 and 3, and compares the files byte for byte and the reports' numbers.
#   usage: test-threads.sh CALDERA_PIPE SHARED_DATA
set -euo pipefail
pipe=$1
data=$2
model=$data/stories260K/stories260K.bin
calib=$data/wiki-calib
if [ ! -f "$model" ] || [ ! -e "$calib" ]; then
    echo "skip: $model or $calib is missing"; exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/t.ini" <<INI
[caldera]
reader = model
writer = out
stages = rht, cal
calibration = calib
[model]
plugin = llama2c
path   = $model
[calib]
text      = $calib
sequences = 8
length    = 64
cache     = $tmp/hcache
[rht]
plugin = rht
seed   = 3
[e8p]
plugin = e8
bits   = 2
[q]
plugin     = ldlq
codebook   = e8p
tune_iters = 4
[lr4]
plugin     = e8
bits       = 4
scale_mode = row
[cal]
plugin      = caldera
q           = q
l_quant     = lr4
r_quant     = lr4
rank        = 8
outer_iters = 3
inner_iters = 5
[out]
plugin = safetensors
path   = $tmp/out.safetensors
INI
for t in 1 2 3; do
    # --threads, not caldera.threads, and one output name: the effective configuration is in the file
    "$pipe" "$tmp/t.ini" --threads $t --set "caldera.report=$tmp/report.json" > "$tmp/stdout-$t.txt" 2> "$tmp/stderr-$t.txt"
    mv "$tmp/out.safetensors" "$tmp/out-$t.safetensors"
    mv "$tmp/report.json" "$tmp/report-$t.json"
    # the report without the timings
    grep -v '"seconds"\|"calibrate"\|"compress"\|"evaluate"\|"cache_hit"' "$tmp/report-$t.json" > "$tmp/numbers-$t.json"
done
for t in 2 3; do
    cmp "$tmp/out-1.safetensors" "$tmp/out-$t.safetensors" || { echo "FAIL: threads = $t wrote other bytes than threads = 1"; exit 1; }
    diff -q "$tmp/numbers-1.json" "$tmp/numbers-$t.json" || { echo "FAIL: threads = $t reported other numbers"; diff "$tmp/numbers-1.json" "$tmp/numbers-$t.json" | head; exit 1; }
done
n=$(grep -c '"name": "model.layers' "$tmp/report-1.json")
[ "$n" -eq 35 ] || { echo "FAIL: $n weights in the report; expected 35"; exit 1; }
echo "threads 1, 2, 3: identical files and reports ($n weights)"
