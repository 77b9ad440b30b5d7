#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One command for the whole default test suite: install what is missing, fetch the real model
# (its tests skip if it cannot be had), build, and run every CTest test except those labelled
# `slow` — first in a Release build of the default configuration (each first-party plugin a
# loadable module), then in a Debug build of the built-in configuration (-DCALDERA_BUILTIN_PLUGINS=ON:
# one library, no dlopen) under AddressSanitizer and UndefinedBehaviorSanitizer, so both
# configurations are built and tested; then every libFuzzer harness for a short time budget (with
# clang; the seed corpora and regression inputs also run in both passes, as fuzz-replay:* tests).
# With nvcc, both passes compile and link the CUDA backend (all architectures in Release, one in
# the sanitizer pass); a CUDA build error fails the run.
#   usage: scripts/test.sh [--quick] [--slow] [--cuda] [-R REGEX]
#     --quick  Release build only (no sanitizer pass, no fuzzing)
#     --slow   also run the tests labelled `slow`
#     --cuda   on a machine with a GPU: Release build, then only the GPU tests (label `cuda`),
#              failing if no device can be used instead of skipping
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
CUDA=0
LABEL_ARGS=(-LE slow)
EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1; shift ;;
    --slow) LABEL_ARGS=(); shift ;;
    --cuda) CUDA=1; shift ;;
    -R) EXTRA+=(-R "$2"); shift 2 ;;
    *) echo "test.sh: unknown argument '$1'; allowed: --quick, --slow, --cuda, -R REGEX" >&2; exit 2 ;;
    esac
done
scripts/install-deps.sh
scripts/fetch-model.sh >/dev/null || echo "test.sh: the model could not be fetched; tests labelled 'model' will skip" >&2
JOBS=$(nproc)
run() {
    local dir=$1; shift
    cmake -S . -B "$dir" -DCALDERA_WERROR=ON "$@" >/dev/null
    cmake --build "$dir" -j "$JOBS"
    (cd "$dir" && ctest --output-on-failure -j "$JOBS" "${LABEL_ARGS[@]}" "${EXTRA[@]}")
}
if [ "$CUDA" = 1 ]; then
    cmake -S . -B build -DCALDERA_WERROR=ON -DCMAKE_BUILD_TYPE=Release -DCALDERA_BUILTIN_PLUGINS=OFF >/dev/null
    cmake --build build -j "$JOBS"
    # a skip here means no usable device: say so and fail rather than pass without running
    rc=0; build/tests/test-cuda || rc=$?
    if [ "$rc" = 77 ]; then echo "test.sh --cuda: no usable CUDA device; the GPU tests did not run" >&2; exit 1; fi
    [ "$rc" = 0 ] || exit "$rc"
    (cd build && ctest --output-on-failure -L cuda "${EXTRA[@]}")
    exit 0
fi
run build -DCMAKE_BUILD_TYPE=Release -DCALDERA_BUILTIN_PLUGINS=OFF
if [ "$QUICK" = 0 ]; then
    # the CUDA module for one architecture only: the Release pass compiled all of them
    ASAN_OPTIONS=detect_leaks=1 run build-asan -DCMAKE_BUILD_TYPE=Debug -DCALDERA_SANITIZE=ON -DCALDERA_BUILTIN_PLUGINS=ON -DCALDERA_CUDA_ARCHS=80-real
    # CALDERA_FUZZ_SECONDS per harness (issue 11: 60 s), two harnesses at a time (7 harnesses: 4 minutes,
    # plus about 40 s of clang build); without clang, fuzz.sh says so and skips
    scripts/fuzz.sh "${CALDERA_FUZZ_SECONDS:-60}" -j 2
fi
