#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# GPU end-to-end test (CTest label `cuda`): one pipeline run with device = cpu and again with
# device = cuda, every linalg op on the GPU (CALDERA_CUDA_MIN_FLOPS=0); both must finish, with the
# same bits per parameter and a mean relative error within CUDA_E2E_TOL of each other (FP32 sums in
# another order can flip a few roundings; the error statistic must not move). Exits 77 (skip)
# when `device = cuda` is refused for lack of a usable device.
#   usage: run-cuda-pipeline.sh CALDERA_PIPE INI [--set KEY=VALUE ...]   (extra overrides for both runs)
set -euo pipefail
pipe=$1 ini=$2
shift 2
extra=("$@")
CUDA_E2E_TOL=${CUDA_E2E_TOL:-0.01}   # relative difference of the mean relative error
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! out=$("$pipe" "$ini" "${extra[@]}" --dry-run --set caldera.device=cuda 2>&1); then
    if grep -q "no CUDA device can be used" <<<"$out"; then
        echo "skip: $out"
        exit 77
    fi
    echo "$out"
    exit 1
fi
summary() {   # bits/param and mean relative error of a run's summary line
    sed -n 's/^summary: .*, \([0-9.]*\) bits\/param, rel\. error mean \([0-9.]*\) .*/\1 \2/p' "$1"
}
for dev in cpu cuda; do
    CALDERA_CUDA_MIN_FLOPS=0 "$pipe" "$ini" "${extra[@]}" --set caldera.device=$dev --set "caldera.report=$tmp/$dev.json" \
        --set "out.path=$tmp/$dev.safetensors" > "$tmp/$dev.txt" 2> "$tmp/$dev.log" || { cat "$tmp/$dev.log"; exit 1; }
    grep '^summary:' "$tmp/$dev.txt"
done
read -r bits_cpu err_cpu <<<"$(summary "$tmp/cpu.txt")"
read -r bits_gpu err_gpu <<<"$(summary "$tmp/cuda.txt")"
[ "$bits_cpu" = "$bits_gpu" ] || { echo "bits/param differ: cpu $bits_cpu, cuda $bits_gpu"; exit 1; }
awk -v a="$err_cpu" -v b="$err_gpu" -v t="$CUDA_E2E_TOL" 'BEGIN {
    d = (a > b ? a - b : b - a) / a
    printf "mean relative error: cpu %s, cuda %s (relative difference %.2g, allowed %s)\n", a, b, d, t
    exit !(d <= t)
}'
