#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Integration test of one pipelines/*.ini: `dry` runs --dry-run and --print-config; `run` runs the
# whole pipeline with its outputs redirected to a temporary folder and checks that they exist,
# that the report lists every weight with finite numbers, and that nothing temporary is left.
# Pipelines that read the SmolLM2 GGUF skip (exit 77) when it has not been fetched.
#   usage: run-pipeline.sh CALDERA_PIPE INI dry|run
set -euo pipefail
pipe=$1 ini=$2 mode=$3
model="${CALDERA_CACHE:-$HOME/.cache/caldera}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if grep -q "SmolLM2-135M-Instruct.Q4_1.gguf" "$ini" && [ ! -f "$model" ]; then
    echo "skip: $model not fetched (scripts/fetch-model.sh)"
    exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sets=(--set "caldera.report=$tmp/report.json")
# Redirect every writer's path into the temporary folder.
for sec in $(awk -F'[][]' '/^\[/{s=$2} /^plugin *= *(safetensors|gguf)/{print s}' "$ini"); do
    if grep -qE "^(writer|dense_writer) *= *$sec\b" "$ini"; then sets+=(--set "$sec.path=$tmp/$sec.out"); fi
done
# Calibration and evaluation caches into the temporary folder too (the user's cache stays untouched).
for key in calibration eval; do
    sec=$(awk -v k="$key" -F' *= *' '/^\[/{s=$0} s=="[caldera]" && $1==k {sub(/ *;.*/, "", $2); print $2}' "$ini")
    if [ -n "$sec" ]; then sets+=(--set "$sec.cache=$tmp/cache-$key"); fi
done
case $mode in
dry)
    "$pipe" "$ini" "${sets[@]}" --dry-run
    "$pipe" "$ini" "${sets[@]}" --print-config > "$tmp/effective.ini"
    grep -q '^\[caldera\]' "$tmp/effective.ini"
    # the effective configuration is itself a valid pipeline
    "$pipe" "$tmp/effective.ini" --dry-run
    ;;
run)
    "$pipe" "$ini" "${sets[@]}" > "$tmp/stdout.txt"
    test -s "$tmp/report.json"
    grep -q '"bits_per_param"' "$tmp/report.json"
    if grep -qiE 'nan|inf' "$tmp/stdout.txt"; then echo "non-finite number in the report"; cat "$tmp/stdout.txt"; exit 1; fi
    grep '^summary:' "$tmp/stdout.txt"
    for f in "$tmp"/*.out; do [ -e "$f" ] || continue; test -s "$f"; done
    if ls "$tmp" | grep -q '\.tmp'; then echo "temporary files left behind"; ls -la "$tmp"; exit 1; fi
    ;;
*) echo "usage: run-pipeline.sh CALDERA_PIPE INI dry|run" >&2; exit 2 ;;
esac
