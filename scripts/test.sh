#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One command for the whole default test suite: install what is missing, fetch the real model
# (its tests skip if it cannot be had), build, and run every CTest test except those labelled
# `slow` — first in a Release build of the default configuration (each first-party plugin a
# loadable module), then in a Debug build of the built-in configuration (-DCALDERA_BUILTIN_PLUGINS=ON:
# one library, no dlopen) under AddressSanitizer and UndefinedBehaviorSanitizer, so both
# configurations are built and tested; then every libFuzzer harness for a short time budget (with
# clang; the seed corpora and regression inputs also run in both passes, as fuzz-replay:* tests).
#   usage: scripts/test.sh [--quick] [--slow] [-R REGEX]
#     --quick  Release build only (no sanitizer pass, no fuzzing)
#     --slow   also run the tests labelled `slow`
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
LABEL_ARGS=(-LE slow)
EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
    --quick) QUICK=1; shift ;;
    --slow) LABEL_ARGS=(); shift ;;
    -R) EXTRA+=(-R "$2"); shift 2 ;;
    *) echo "test.sh: unknown argument '$1'; allowed: --quick, --slow, -R REGEX" >&2; exit 2 ;;
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
run build -DCMAKE_BUILD_TYPE=Release -DCALDERA_BUILTIN_PLUGINS=OFF
if [ "$QUICK" = 0 ]; then
    ASAN_OPTIONS=detect_leaks=1 run build-asan -DCMAKE_BUILD_TYPE=Debug -DCALDERA_SANITIZE=ON -DCALDERA_BUILTIN_PLUGINS=ON
    # CALDERA_FUZZ_SECONDS per harness (7 harnesses; 25 s: 3 minutes, plus about 40 s of clang build);
    # without clang, fuzz.sh says so and skips
    scripts/fuzz.sh "${CALDERA_FUZZ_SECONDS:-25}"
fi
