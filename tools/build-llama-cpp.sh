#!/usr/bin/env bash
# Builds llama.cpp's command-line tools (reference for cross-checks only; never a build or test
# dependency of caldera) from the llama-cpp-python source distribution, pinned by version and
# SHA-256, into ${CALDERA_CACHE_DIR:-~/.cache/caldera}/llama.cpp.
#
#   tools/build-llama-cpp.sh [-j N]
#
# Binaries end up in <dir>/build/bin (llama-tokenize, llama-perplexity, llama-imatrix,
# llama-quantize, llama-bench, llama-completion); the script prints that folder on its last line.
# Idempotent: the download is skipped when the checked archive is cached, the unpack when the
# source is there, and CMake only rebuilds what changed.
set -euo pipefail

VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# llama.cpp's tool target names (vendor/llama.cpp/tools/*/CMakeLists.txt). In this version
# llama-cli is the chat client built on the server library (tools/cli is only added with
# LLAMA_BUILD_SERVER); the one-shot text-generation tool formerly called llama-cli is
# llama-completion, which is what we build.
TARGETS=(llama-tokenize llama-perplexity llama-imatrix llama-quantize llama-bench llama-completion)

JOBS=2
while [ $# -gt 0 ]; do
    case "$1" in
        -j) JOBS="$2"; shift 2 ;;
        -j*) JOBS="${1#-j}"; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-llama-cpp.sh: unknown argument '$1' (allowed: -j N)" >&2; exit 2 ;;
    esac
done

CACHE="${CALDERA_CACHE_DIR:-$HOME/.cache/caldera}"
ROOT="$CACHE/llama.cpp"
DL="$ROOT/download"
SRC="$ROOT/src"
BUILD="$ROOT/build"
TARBALL="$DL/llama_cpp_python-$VERSION.tar.gz"
mkdir -p "$DL"

check_sha() {
    echo "$SHA256  $1" | sha256sum --check --status
}

if [ ! -f "$TARBALL" ] || ! check_sha "$TARBALL"; then
    rm -f "$TARBALL"
    echo "build-llama-cpp.sh: downloading llama-cpp-python==$VERSION (source distribution)" >&2
    python3 -m pip download --no-deps --no-binary :all: \
        -d "$DL" "llama-cpp-python==$VERSION" >&2
fi
if ! check_sha "$TARBALL"; then
    echo "build-llama-cpp.sh: $TARBALL: SHA-256 $(sha256sum "$TARBALL" | cut -d' ' -f1)," \
         "expected $SHA256; refusing to build" >&2
    exit 1
fi
echo "build-llama-cpp.sh: $TARBALL SHA-256 $SHA256 ok" >&2

if [ ! -f "$SRC/.unpacked-$SHA256" ]; then
    rm -rf "$SRC" "$SRC.tmp"
    mkdir -p "$SRC.tmp"
    tar -xzf "$TARBALL" -C "$SRC.tmp" --strip-components=1
    touch "$SRC.tmp/.unpacked-$SHA256"
    mv "$SRC.tmp" "$SRC"
fi
LLAMA_SRC="$SRC/vendor/llama.cpp"
[ -f "$LLAMA_SRC/CMakeLists.txt" ] || { echo "build-llama-cpp.sh: $LLAMA_SRC/CMakeLists.txt missing" >&2; exit 1; }

cmake -S "$LLAMA_SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF >&2
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" >&2

for t in "${TARGETS[@]}"; do
    [ -x "$BUILD/bin/$t" ] || { echo "build-llama-cpp.sh: $BUILD/bin/$t was not built" >&2; exit 1; }
done
echo "$BUILD/bin"
