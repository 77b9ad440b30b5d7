#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Kept for the commands recorded in docs/results.md: `caldera-pipe compare` does the work (one
# table of every pipeline: bits per parameter, errors, perplexity, time, peak memory; see
# docs/user-guide.md). Paths are relative to the repository's root, as before.
#   usage: scripts/compare.sh [--pipe PATH] PIPELINE.ini... [caldera-pipe compare options]
set -euo pipefail
cd "$(dirname "$0")/.."
pipe=build/core/cli/caldera-pipe
if [ "${1:-}" = --pipe ]; then pipe=$2; shift 2; fi
exec "$pipe" compare "$@"
