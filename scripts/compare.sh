#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Run several pipelines (same model, same data) and print one Markdown table: method, bits per
# parameter, mean and worst relative error, mean and worst data-aware error, wall time.
#   usage: scripts/compare.sh [--pipe PATH] [--set SECTION.KEY=VALUE]... PIPELINE.ini...
# Every pipeline's writers are redirected to a temporary folder; --set applies to all of them.
# (A tool, not part of the product: it uses python3 only to read the JSON reports.)
set -euo pipefail
cd "$(dirname "$0")/.."
pipe=build/core/cli/caldera-pipe
sets=()
inis=()
while [ $# -gt 0 ]; do
    case $1 in
    --pipe) pipe=$2; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    -*) echo "compare.sh: unknown option '$1'" >&2; exit 2 ;;
    *) inis+=("$1"); shift ;;
    esac
done
[ ${#inis[@]} -gt 0 ] || { echo "usage: compare.sh [--pipe PATH] [--set S.K=V]... PIPELINE.ini..." >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| pipeline | weights | bits/param | rel. error mean | worst | data-aware mean | worst | time (s) |"
echo "|---|---|---|---|---|---|---|---|"
for ini in "${inis[@]}"; do
    name=$(basename "$ini" .ini)
    redirect=()
    for sec in $(awk -F'[][]' '/^\[/{s=$2} /^plugin *= *(safetensors|gguf)/{print s}' "$ini"); do
        if grep -qE "^(writer|dense_writer) *= *$sec\b" "$ini"; then redirect+=(--set "$sec.path=$tmp/$name.$sec.out"); fi
    done
    start=$(date +%s.%N)
    "$pipe" "$ini" -q "${redirect[@]}" "${sets[@]}" --set "caldera.report=$tmp/$name.json" > /dev/null
    end=$(date +%s.%N)
    python3 - "$tmp/$name.json" "$name" "$start" "$end" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1])); s = rep["summary"]
f = lambda v: "-" if v is None else f"{v:.4f}"
print(f"| {sys.argv[2]} | {s['weights']} | {s['bits_per_param']:.4f} | {s['mean_rel_err']:.4f} | {s['worst_rel_err']:.4f} | "
      f"{f(s.get('mean_rel_err_h'))} | {f(s.get('worst_rel_err_h'))} | {float(sys.argv[4]) - float(sys.argv[3]):.1f} |")
PY
    rm -f "$tmp"/*.out
done
