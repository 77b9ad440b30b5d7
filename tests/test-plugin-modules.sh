#!/bin/sh
# SPDX-License-Identifier: MIT
# First-party plugins as shared objects, and plugin precedence.
#   usage: test-plugin-modules.sh CALDERA_PIPE LIBCALDERA PLUGIN_ALONE FIXTURE_DIR [MODULE_DIR]
# With MODULE_DIR (the default configuration, CALDERA_BUILTIN_PLUGINS=OFF):
#   - --list-plugins lists every module of MODULE_DIR with ORIGIN its .so path, and -v names the
#     directory searched;
#   - each module loads alone (dlopen RTLD_NOW in a process holding only libc), exports only
#     caldera_plugin_entry, needs no other plugin, and every symbol it leaves undefined is defined
#     by libcaldera or by libc/libm/libpthread/libdl/libgcc_s/ld.so/BLAS/LAPACKE/jansson (or the
#     CUDA runtime, cuBLAS/cuSOLVER, libgomp and PCRE2, for plugins that declare them in LIBS).
# In both configurations: a patched e8 (fixture) given with --plugin-path or CALDERA_PLUGIN_PATH
# overrides the first-party one with a notice, and a pipeline then runs it.
set -eu
pipe=$1
libcaldera=$2
alone=$3
fixtures=$4
modules=${5:-}

fail() { echo "test-plugin-modules: $*" >&2; exit 1; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/caldera-modules.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
unset CALDERA_PLUGIN_PATH CALDERA_LOG

"$pipe" --list-plugins > "$tmp/list.txt" 2> "$tmp/list.err" || { cat "$tmp/list.err" >&2; fail "--list-plugins failed"; }

if [ -n "$modules" ]; then
    n=0
    nm -D --defined-only "$libcaldera" | awk '{print $NF}' | sort -u > "$tmp/core.syms"
    for so in "$modules"/*.so; do
        [ -f "$so" ] || fail "no module in $modules"
        name=$(basename "$so" .so)
        n=$((n + 1))
        # Listed, with its path as ORIGIN.
        awk -v n="$name" -v o="$so" '$1 == n && $4 == o { found = 1 } END { exit !found }' "$tmp/list.txt" ||
            { cat "$tmp/list.txt" >&2; fail "$name is not listed with ORIGIN $so"; }
        # Loads alone; the descriptor inside has the file's name.
        out=$("$alone" "$so") || fail "$so does not load alone"
        [ "${out%% *}" = "$name" ] || fail "$so holds plugin '${out%% *}', not '$name'"
        # Exports one symbol.
        exports=$(nm -D --defined-only "$so" | awk '$2 != "A" {print $NF}' | tr '\n' ' ')
        [ "$exports" = "caldera_plugin_entry " ] || fail "$so exports '$exports'; only caldera_plugin_entry is allowed"
        # Needs no other plugin and only allowed libraries.
        for lib in $(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
            case $lib in
            libcaldera.so.*|libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|libgcc_s.so.*|ld-linux*|libopenblas*|libblas*|liblapack*|libjansson.so.*) ;;
            libcudart.so.*|libcublas*.so.*|libcusolver.so.*|libgomp.so.*) ;;   # the CUDA runtime and its BLAS/solver; OpenMP
            libpcre2-8.so.*) ;;   # PCRE2: the llama plugin's tokenizer (pre-tokenizer regular expressions)
            *) fail "$so needs $lib; allowed: libcaldera, libc, libm, BLAS/LAPACKE (CUDA's too), jansson (plugins reach each other through the core)" ;;
            esac
        done
        # Every undefined symbol: from libcaldera, or (not caldera_*) from those system libraries.
        ldd "$so" | awk '/=>/ {print $3}' > "$tmp/libs"
        : > "$tmp/sys.syms"
        while read -r lib; do
            b=$(basename "$lib")
            case $b in
            libcaldera.so.*) ;;
            *)  [ -f "$tmp/$b.syms" ] || nm -D --defined-only "$lib" 2>/dev/null | awk '{print $NF}' | sed 's/@.*//' > "$tmp/$b.syms"
                cat "$tmp/$b.syms" >> "$tmp/sys.syms" ;;
            esac
        done < "$tmp/libs"
        sort -u -o "$tmp/sys.syms" "$tmp/sys.syms"
        nm -D --undefined-only "$so" | awk '$1 == "U" {print $2}' | sed 's/@.*//' | sort -u > "$tmp/undef"
        bad=$(grep '^caldera_' "$tmp/undef" | comm -23 - "$tmp/core.syms" | tr '\n' ' ')
        [ -z "$bad" ] || fail "$so uses caldera symbols libcaldera does not export: $bad"
        bad=$(grep -v '^caldera_' "$tmp/undef" | comm -23 - "$tmp/sys.syms" | tr '\n' ' ')
        [ -z "$bad" ] || fail "$so has undefined symbols outside libcaldera and the system libraries: $bad"
    done
    [ "$n" -ge 1 ] || fail "no modules in $modules"
    "$pipe" -v --list-plugins > /dev/null 2> "$tmp/v.err"
    grep -q "plugin directory $modules (default): searching" "$tmp/v.err" ||
        { cat "$tmp/v.err" >&2; fail "-v does not name the directory searched"; }
    echo "test-plugin-modules: $n modules listed with their paths, each loads alone with no foreign symbols"
fi

# Precedence: --plugin-path over the first-party e8 (module or built-in), with a notice.
patched=$fixtures/fixture_patched_e8.so
grep -q '^e8 ' "$tmp/list.txt" || fail "no first-party e8 listed"
orig=$(awk '$1 == "e8" {print $4}' "$tmp/list.txt")
"$pipe" --plugin-path "$patched" --list-plugins > "$tmp/list2.txt" 2> "$tmp/list2.err" ||
    { cat "$tmp/list2.err" >&2; fail "--plugin-path $patched --list-plugins failed"; }
awk -v o="$patched" '$1 == "e8" && $3 == "9.8.7" && $4 == o { found = 1 } END { exit !found }' "$tmp/list2.txt" ||
    { cat "$tmp/list2.txt" >&2; fail "the patched e8 does not replace the first-party one"; }
[ "$(grep -c '^e8 ' "$tmp/list2.txt")" = 1 ] || fail "e8 is listed twice"
grep -q "plugin 'e8' from $patched overrides the one from $orig" "$tmp/list2.err" ||
    { cat "$tmp/list2.err" >&2; fail "no notice that the patched e8 overrides $orig"; }

# ... and through CALDERA_PLUGIN_PATH; --plugin-path wins over both.
mkdir "$tmp/env"
cp "$patched" "$tmp/env/e8.so"
CALDERA_PLUGIN_PATH=$tmp/env "$pipe" --list-plugins > "$tmp/list3.txt" 2> "$tmp/list3.err"
awk -v o="$tmp/env/e8.so" '$1 == "e8" && $4 == o { found = 1 } END { exit !found }' "$tmp/list3.txt" ||
    { cat "$tmp/list3.txt" "$tmp/list3.err" >&2; fail "CALDERA_PLUGIN_PATH's e8 does not override $orig"; }
CALDERA_PLUGIN_PATH=$tmp/env "$pipe" --plugin-path "$patched" --list-plugins > "$tmp/list4.txt" 2> "$tmp/list4.err"
awk -v o="$patched" '$1 == "e8" && $4 == o { found = 1 } END { exit !found }' "$tmp/list4.txt" ||
    { cat "$tmp/list4.txt" "$tmp/list4.err" >&2; fail "--plugin-path does not win over CALDERA_PLUGIN_PATH"; }
grep -q "plugin 'e8' from $patched overrides the one from $tmp/env/e8.so" "$tmp/list4.err" ||
    { cat "$tmp/list4.err" >&2; fail "no notice for CALDERA_PLUGIN_PATH's e8"; }

# A pipeline binds the patched e8: its version is in the report and it stored f16 codes.
cat > "$tmp/p.ini" <<INI
[caldera]
reader  = src
stages  = q
include = *.mlp.down_proj.weight
report  = $tmp/report.json
verify  = true

[src]
plugin = synthetic
layers = 1
hidden = 64
ffn    = 128
seed   = 1

[q]
plugin = e8
INI
"$pipe" "$tmp/p.ini" --plugin-path "$patched" > "$tmp/run.txt" 2>&1 || { cat "$tmp/run.txt" >&2; fail "the pipeline with the patched e8 failed"; }
grep -q '"version": "9.8.7"' "$tmp/report.json" || { cat "$tmp/report.json" >&2; fail "the report does not show the patched e8's version"; }
grep -Eq '"bits_per_param": 16(\.0+)?[,}]' "$tmp/report.json" || { cat "$tmp/report.json" >&2; fail "the patched e8 did not quantize (16 bits per weight expected)"; }
echo "test-plugin-modules: --plugin-path and CALDERA_PLUGIN_PATH override the first-party e8 with a notice; the pipeline ran the patched one"
