#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# ablate-caldera: the caldera plugin's iteration defaults on SmolLM2-135M-Instruct's real matrices
# and calibration Hessians. Runs pipelines/caldera_2bit.ini (eval off, the Hessian cache of its
# [calib]) on the seven projections of layers 0, 14 and 29 (21 weights) once per setting, each
# setting one override away from the main job, and prints a Markdown table: the mean data-aware
# error, the mean per-weight ratio to the main job's setting, on how many weights it is worse /
# better, and the process CPU seconds (user + sys, the whole run; model loading and the copied
# tensors included). Not a test.
#   usage: bench/ablate-caldera.sh [BUILD_DIR] [OUT_DIR] [NAME=--set a=b,--set c=d ...]
#   (no NAME arguments: the settings of docs/results.md)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-out/ablate-caldera}
shift $(( $# > 2 ? 2 : $# ))
model="${CALDERA_CACHE:-$HOME/.cache/caldera}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model" ] || { echo "ablate-caldera: $model not fetched (scripts/fetch-model.sh)" >&2; exit 77; }
command -v jq > /dev/null || { echo "ablate-caldera: needs jq (scripts/install-deps.sh)" >&2; exit 77; }
mkdir -p "$out"
inc='model.layers.0.*_proj.weight, model.layers.14.*_proj.weight, model.layers.29.*_proj.weight'
if [ $# -eq 0 ]; then
    set -- "main=" "outer1=--set,cal.outer_iters=1" "outer2=--set,cal.outer_iters=2" "outer3=--set,cal.outer_iters=3" \
        "outer5=--set,cal.outer_iters=5" "outer10=--set,cal.outer_iters=10" "inner5=--set,cal.inner_iters=5" \
        "inner10=--set,cal.inner_iters=10" "inner20=--set,cal.inner_iters=20" "tune0=--set,q.tune_iters=0" \
        "tune3=--set,q.tune_iters=3" "tune5=--set,q.tune_iters=5" "nowarm=--set,cal.warm_start=false" \
        "downdate=--set,cal.downdate=true"
fi
names=()
for spec in "$@"; do
    name=${spec%%=*}
    IFS=',' read -r -a sets <<< "${spec#*=}"
    names+=("$name")
    [ -s "$out/$name.json" ] && continue   # done in an earlier call
    /usr/bin/time -f "%U %S" -o "$out/$name.time" "$build/core/cli/caldera-pipe" pipelines/caldera_2bit.ini \
        --set caldera.eval= --set "caldera.include=$inc" --set "out.path=$out/$name.safetensors" \
        --set "caldera.report=$out/$name.json" "${sets[@]}" > "$out/$name.log" 2>&1
    rm -f "$out/$name.safetensors"
done
ref=${names[0]}
echo "| setting | mean data-aware error | mean ratio to $ref | worse / better than $ref (of 21) | sum of per-weight s | CPU s (run) |"
echo "|---|---|---|---|---|---|"
for name in "${names[@]}"; do
    cpu=$(awk '{printf "%.1f", $1 + $2}' "$out/$name.time")
    jq -r --slurpfile r "$out/$ref.json" --arg name "$name" --arg cpu "$cpu" '
        ([$r[0].tensors[] | {(.name): .rel_err_h}] | add) as $base
        | [.tensors[] | {e: .rel_err_h, q: (.rel_err_h / $base[.name]), s: .seconds}] as $t
        | "| \($name) | \(([$t[].e] | add / length * 100000 | round / 100000)) | "
          + "\(((([$t[].q] | add / length) - 1) * 10000 | round / 100) | tostring)% | "
          + "\([$t[] | select(.q > 1 + 1e-9)] | length) / \([$t[] | select(.q < 1 - 1e-9)] | length) | "
          + "\([$t[].s] | add | . * 10 | round / 10) | \($cpu) |"' "$out/$name.json"
done
