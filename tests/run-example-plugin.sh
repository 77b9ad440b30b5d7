#!/bin/sh
# SPDX-License-Identifier: MIT
# Integration test of out-of-tree plugin building: install this build into a temporary prefix,
# build an example plugin (a standalone CMake project) against the installed header and
# caldera.pc, then load it with the installed caldera-pipe and check that it is listed.
#   usage: run-example-plugin.sh BUILD_DIR EXAMPLE_SRC_DIR PLUGIN_NAME
set -eu

build=$1
src=$2
name=$3
cmake=${CMAKE:-cmake}

fail() { echo "run-example-plugin: $*" >&2; exit 1; }

[ -f "$build/CMakeCache.txt" ] || fail "$build is not a CMake build directory"
[ -f "$src/CMakeLists.txt" ] || fail "$src has no CMakeLists.txt"
command -v pkg-config > /dev/null || fail "pkg-config is not installed"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/caldera-example.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM

# 1. Install. DESTDIR keeps any absolute install destination inside the temporary directory
#    too, so the test never writes outside it.
prefix=/caldera
root=$tmp/stage
DESTDIR=$root "$cmake" --install "$build" --prefix "$prefix" > "$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; fail "cmake --install failed"; }
pc=$(find "$root$prefix" -name caldera.pc | head -n 1)
[ -n "$pc" ] || fail "caldera.pc was not installed under $root$prefix"
pcdir=$(dirname "$pc")
libdir=$(dirname "$pcdir")
incdir=$root$prefix/include
[ -f "$incdir/caldera/caldera-plugin.h" ] || fail "caldera-plugin.h was not installed under $incdir"
pipe=$root$prefix/bin/caldera-pipe
[ -x "$pipe" ] || fail "caldera-pipe was not installed (build the whole tree first)"

# caldera.pc records the configured prefix; the files moved, so point pkg-config at them
# (--define-variable wins over the values in the .pc file).
PKG_CONFIG_PATH=$pcdir
export PKG_CONFIG_PATH
pcargs="--define-variable=prefix=$root$prefix;--define-variable=libdir=$libdir;--define-variable=includedir=$incdir"
cflags=$(pkg-config --define-variable=prefix="$root$prefix" --define-variable=libdir="$libdir" \
                    --define-variable=includedir="$incdir" --cflags caldera)
case "$cflags" in
    *"$incdir"*) ;;
    *) fail "pkg-config --cflags caldera gave '$cflags', not $incdir" ;;
esac

# 2. Configure and build the example as a third party would.
"$cmake" -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release "-DPKG_CONFIG_ARGN=$pcargs" \
    > "$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log" >&2; fail "configuring $src failed"; }
"$cmake" --build "$tmp/build" > "$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log" >&2; fail "building $src failed"; }
if grep -q "warning:" "$tmp/build.log"; then
    cat "$tmp/build.log" >&2
    fail "building $src produced warnings"
fi
so=$tmp/build/$name.so
[ -f "$so" ] || fail "$so was not produced"

# 3. Load it: by file, and from a directory, with the installed CLI.
mkdir "$tmp/plugins"
cp "$so" "$tmp/plugins/"
LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
unset CALDERA_PLUGIN_PATH
for path in "$so" "$tmp/plugins"; do
    "$pipe" --plugin-path "$path" --list-plugins > "$tmp/list.txt" 2>&1 ||
        { cat "$tmp/list.txt" >&2; fail "caldera-pipe --plugin-path $path --list-plugins failed"; }
    grep -qw "$name" "$tmp/list.txt" ||
        { cat "$tmp/list.txt" >&2; fail "plugin '$name' is not listed with --plugin-path $path"; }
done
"$pipe" --plugin-path "$so" --help-plugin "$name" > "$tmp/help.txt" 2>&1 ||
    { cat "$tmp/help.txt" >&2; fail "caldera-pipe --help-plugin $name failed"; }
# Through CALDERA_PLUGIN_PATH as well.
CALDERA_PLUGIN_PATH=$tmp/plugins "$pipe" --list-plugins > "$tmp/list.txt" 2>&1 ||
    { cat "$tmp/list.txt" >&2; fail "caldera-pipe --list-plugins with CALDERA_PLUGIN_PATH failed"; }
grep -qw "$name" "$tmp/list.txt" || { cat "$tmp/list.txt" >&2; fail "plugin '$name' is not listed via CALDERA_PLUGIN_PATH"; }

# 4. Run it in a pipeline: synthetic matrix -> this transform -> sign1, with verify = true.
#    Only the "scale" example is known to be a transform; other examples stop at listing.
"$pipe" --list-plugins > "$tmp/builtins.txt" 2>&1 || true
if [ "$name" = scale ] && grep -qw synthetic "$tmp/builtins.txt" && grep -qw sign1 "$tmp/builtins.txt"; then
    cat > "$tmp/pipeline.ini" <<INI
[caldera]
reader   = src
hessians = src
stages   = pre, q
include  = *.mlp.down_proj.weight
report   = $tmp/report.json
verify   = true

[src]
plugin = synthetic
layers = 1
hidden = 64
ffn    = 128
seed   = 1

[pre]
plugin = scale
factor = 4

[q]
plugin     = sign1
group_size = 32
INI
    "$pipe" "$tmp/pipeline.ini" --plugin-path "$so" -q > "$tmp/run.txt" 2>&1 ||
        { cat "$tmp/run.txt" >&2; fail "the pipeline with $name failed"; }
    grep -q '"plugin": "scale"' "$tmp/report.json" || { cat "$tmp/report.json" >&2; fail "the report does not name $name"; }
    echo "run-example-plugin: pipeline synthetic -> $name -> sign1 ran"
    # The pipeline file may name its plugins itself: plugin_path relative to its own folder, run
    # from another working directory so that nothing depends on the current directory.
    sed 's/^\[caldera\]$/[caldera]\nplugin_path = plugins/' "$tmp/pipeline.ini" > "$tmp/pipeline2.ini"
    (cd / && "$pipe" "$tmp/pipeline2.ini" -q) > "$tmp/run2.txt" 2>&1 ||
        { cat "$tmp/run2.txt" >&2; fail "the pipeline with plugin_path = plugins failed"; }
    sed 's/^\[caldera\]$/[caldera]\nplugin_path = nosuch/' "$tmp/pipeline.ini" > "$tmp/pipeline3.ini"
    if "$pipe" "$tmp/pipeline3.ini" --dry-run > "$tmp/run3.txt" 2>&1; then fail "a missing plugin_path was accepted"; fi
    grep -q "pipeline3.ini:2: \[caldera\] plugin_path: $tmp/nosuch: plugin file not found" "$tmp/run3.txt" ||
        { cat "$tmp/run3.txt" >&2; fail "no diagnostic for a missing plugin_path"; }
    echo "run-example-plugin: plugin_path in the pipeline file works, and a missing one is reported"
else
    echo "run-example-plugin: pipeline run skipped (needs the built-in synthetic and sign1 plugins)"
fi

grep -w "$name" "$tmp/list.txt"
cat "$tmp/help.txt"
echo "run-example-plugin: $name.so built out of tree and loaded"
