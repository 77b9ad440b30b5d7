#!/bin/sh
# SPDX-License-Identifier: MIT
# Install test and out-of-tree plugin building: install this build into a temporary prefix, build
# an example plugin (a standalone CMake project) with pkg-config only and install it into the
# plugin directory, then run the installed caldera-pipe with no environment variables set (it
# must start and find the plugin), also after moving the whole prefix, and run a pipeline with it.
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
tmp=$(cd "$tmp" && pwd -P)   # the CLI prints canonical plugin paths
trap 'rm -rf "$tmp"' EXIT INT TERM

# 1. Install to a temporary prefix, as a user would (no DESTDIR): the installed programs find
#    libcaldera through their relative RPATH, and the plugin directory next to it.
prefix=$tmp/prefix
"$cmake" --install "$build" --prefix "$prefix" > "$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; fail "cmake --install failed"; }
pc=$(find "$prefix" -name caldera.pc | head -n 1)
[ -n "$pc" ] || fail "caldera.pc was not installed under $prefix"
pcdir=$(dirname "$pc")
[ -f "$prefix/include/caldera/caldera-plugin.h" ] || fail "caldera-plugin.h was not installed under $prefix/include"
pipe=$prefix/bin/caldera-pipe
[ -x "$pipe" ] || fail "caldera-pipe was not installed (build the whole tree first)"

# 2. Configure, build and install the example as a third party would, with pkg-config only:
#    caldera.pc is relocatable (its prefix is found from its own folder).
plugindir=$(PKG_CONFIG_PATH=$pcdir pkg-config --variable=plugindir caldera)
[ -d "$plugindir" ] && plugindir=$(cd "$plugindir" && pwd -P) &&
    [ "$plugindir" = "$(cd "$(dirname "$pcdir")/caldera/plugins" && pwd -P)" ] ||
    fail "pkg-config --variable=plugindir caldera gave '$plugindir', not the installed plugin directory"
PKG_CONFIG_PATH=$pcdir "$cmake" -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release \
    > "$tmp/configure.log" 2>&1 || { cat "$tmp/configure.log" >&2; fail "configuring $src failed"; }
"$cmake" --build "$tmp/build" > "$tmp/build.log" 2>&1 ||
    { cat "$tmp/build.log" >&2; fail "building $src failed"; }
if grep -q "warning:" "$tmp/build.log"; then
    cat "$tmp/build.log" >&2
    fail "building $src produced warnings"
fi
so=$tmp/build/$name.so
[ -f "$so" ] || fail "$so was not produced"
"$cmake" --install "$tmp/build" > "$tmp/install2.log" 2>&1 || { cat "$tmp/install2.log" >&2; fail "installing $name.so failed"; }
[ -f "$plugindir/$name.so" ] || fail "$name.so was not installed into $plugindir"

# 3. Run the installed CLI with no environment variables at all: it starts (RPATH) and lists the
#    plugin installed into the plugin directory, and the first-party plugins.
run_pipe() { env -i "$pipe" "$@"; }
run_pipe --list-plugins > "$tmp/list.txt" 2> "$tmp/list.err" ||
    { cat "$tmp/list.txt" "$tmp/list.err" >&2; fail "the installed caldera-pipe does not start without environment variables"; }
grep -q "^$name .* $plugindir/$name.so " "$tmp/list.txt" ||
    { cat "$tmp/list.txt" >&2; fail "plugin '$name' is not listed from $plugindir"; }
grep -q '^e8 ' "$tmp/list.txt" || { cat "$tmp/list.txt" >&2; fail "the first-party plugins are not listed"; }
run_pipe --help-plugin "$name" > "$tmp/help.txt" 2>&1 ||
    { cat "$tmp/help.txt" >&2; fail "caldera-pipe --help-plugin $name failed"; }
# An install works where it is put: move the whole prefix and run again.
mv "$prefix" "$tmp/moved"
prefix=$tmp/moved
pipe=$prefix/bin/caldera-pipe
run_pipe -v --list-plugins > "$tmp/list.txt" 2> "$tmp/list.err" ||
    { cat "$tmp/list.txt" "$tmp/list.err" >&2; fail "the moved install does not start"; }
grep -q "^$name .* $prefix/.*/caldera/plugins/$name.so " "$tmp/list.txt" ||
    { cat "$tmp/list.txt" "$tmp/list.err" >&2; fail "the moved install does not find $name in its plugin directory"; }
grep -q "plugin directory $prefix/.*/caldera/plugins (default): searching" "$tmp/list.err" ||
    { cat "$tmp/list.err" >&2; fail "-v does not print the plugin directory searched"; }
# By file, from a directory and through CALDERA_PLUGIN_PATH as well.
mkdir "$tmp/plugins"
cp "$so" "$tmp/plugins/"
for path in "$so" "$tmp/plugins"; do
    run_pipe --plugin-path "$path" --list-plugins > "$tmp/list.txt" 2>&1 ||
        { cat "$tmp/list.txt" >&2; fail "caldera-pipe --plugin-path $path --list-plugins failed"; }
    grep -qw "$name" "$tmp/list.txt" ||
        { cat "$tmp/list.txt" >&2; fail "plugin '$name' is not listed with --plugin-path $path"; }
done
env -i CALDERA_PLUGIN_PATH="$tmp/plugins" "$pipe" --list-plugins > "$tmp/list.txt" 2>&1 ||
    { cat "$tmp/list.txt" >&2; fail "caldera-pipe --list-plugins with CALDERA_PLUGIN_PATH failed"; }
grep -q "^$name .* $tmp/plugins/$name.so " "$tmp/list.txt" ||
    { cat "$tmp/list.txt" >&2; fail "plugin '$name' is not taken from CALDERA_PLUGIN_PATH"; }

# 4. Run it in a pipeline: synthetic matrix -> this transform -> sign1, with verify = true.
#    Only the "scale" example is known to be a transform; other examples stop at listing.
run_pipe --list-plugins > "$tmp/builtins.txt" 2>&1 || true
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
    run_pipe "$tmp/pipeline.ini" -q > "$tmp/run.txt" 2>&1 ||
        { cat "$tmp/run.txt" >&2; fail "the pipeline with $name failed"; }
    grep -q '"plugin": "scale"' "$tmp/report.json" || { cat "$tmp/report.json" >&2; fail "the report does not name $name"; }
    echo "run-example-plugin: pipeline synthetic -> $name -> sign1 ran"
    # The pipeline file may name its plugins itself: plugin_path relative to its own folder, run
    # from another working directory so that nothing depends on the current directory.
    sed 's/^\[caldera\]$/[caldera]\nplugin_path = plugins/' "$tmp/pipeline.ini" > "$tmp/pipeline2.ini"
    (cd / && run_pipe "$tmp/pipeline2.ini" -q) > "$tmp/run2.txt" 2>&1 ||
        { cat "$tmp/run2.txt" >&2; fail "the pipeline with plugin_path = plugins failed"; }
    sed 's/^\[caldera\]$/[caldera]\nplugin_path = nosuch/' "$tmp/pipeline.ini" > "$tmp/pipeline3.ini"
    if run_pipe "$tmp/pipeline3.ini" --dry-run > "$tmp/run3.txt" 2>&1; then fail "a missing plugin_path was accepted"; fi
    grep -q "pipeline3.ini:2: \[caldera\] plugin_path: $tmp/nosuch: plugin file not found" "$tmp/run3.txt" ||
        { cat "$tmp/run3.txt" >&2; fail "no diagnostic for a missing plugin_path"; }
    echo "run-example-plugin: plugin_path in the pipeline file works, and a missing one is reported"
else
    echo "run-example-plugin: pipeline run skipped (needs the built-in synthetic and sign1 plugins)"
fi

grep -w "$name" "$tmp/list.txt"
cat "$tmp/help.txt"
echo "run-example-plugin: $name.so built out of tree and loaded"
