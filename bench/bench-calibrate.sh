#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bench-calibrate: time and peak memory of calibration Hessians on SmolLM2-135M-Instruct
# (128 windows x 512 tokens, the forward pass without logits, H = Σ x xᵀ per input group, no
# cache), N runs. The machine is shared: report the best, with the CPU time and the load average.
#   usage: bench/bench-calibrate.sh [BUILD_DIR] [RUNS] [--set KEY=VALUE]...
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
runs=${2:-2}
shift $(( $# > 2 ? 2 : $# ))
model="${CALDERA_CACHE:-$HOME/.cache/caldera}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model" ] || { echo "bench-calibrate: $model not fetched (scripts/fetch-model.sh)" >&2; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| run | calibrate s (wall) | calibrate CPU s | whole run (wall) | user + sys CPU s | peak RSS MB | load average |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq 1 "$runs"); do
    /usr/bin/time -v "$build/core/cli/caldera-pipe" bench/calibrate_smollm2.ini --set "caldera.report=$tmp/r.json" "$@" \
        > "$tmp/out.txt" 2> "$tmp/time.txt"
    cal=$(sed -n '/"phase_seconds"/,/}/p' "$tmp/r.json" | grep -o '"calibrate": [0-9.e+-]*' | awk '{printf "%.1f", $2}')
    calcpu=$(sed -n '/"phase_cpu_seconds"/,/}/p' "$tmp/r.json" | grep -o '"calibrate": [0-9.e+-]*' | awk '{printf "%.1f", $2}')
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/{print $2}' "$tmp/time.txt")
    rss=$(awk -F': ' '/Maximum resident set size/{printf "%.0f", $2/1024}' "$tmp/time.txt")
    cpu=$(awk -F': ' '/User time|System time/{s += $2} END {printf "%.1f", s}' "$tmp/time.txt")
    echo "| $r | $cal | ${calcpu:--} | $wall | $cpu | $rss | $(cut -d' ' -f1 /proc/loadavg) |"
done
