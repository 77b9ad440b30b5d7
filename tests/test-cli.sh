#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Tests of the caldera-pipe command line: exit codes (0 ok, 1 runtime, 2 config/usage), every
# configuration error of a broken pipeline printed with file and line, help and listings.
#   usage: test-cli.sh CALDERA_PIPE
set -uo pipefail
pipe=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
expect() {   # expect CODE DESCRIPTION -- command...
    local want=$1 what=$2; shift 3
    "$@" > "$tmp/out" 2> "$tmp/err"
    local got=$?
    if [ "$got" = "$want" ]; then passes=$((passes + 1)); else
        echo "FAIL: $what: exit $got, expected $want"; cat "$tmp/out" "$tmp/err"; fails=$((fails + 1)); fi
}
contains() {  # contains FILE TEXT
    if grep -qF -- "$2" "$tmp/$1"; then passes=$((passes + 1)); else
        echo "FAIL: $1 lacks: $2"; echo "--- $1:"; cat "$tmp/$1"; fails=$((fails + 1)); fi
}

expect 0 "version" -- "$pipe" --version
contains out "caldera-pipe 0.1.0"
expect 0 "help" -- "$pipe" --help
contains out "usage: caldera-pipe PIPELINE.ini"
expect 2 "no arguments" -- "$pipe"
expect 2 "unknown flag" -- "$pipe" --frobnicate
contains err "unknown option '--frobnicate'"
expect 2 "bad threads" -- "$pipe" x.ini --threads -3
contains err "--threads '-3'; allowed: an integer in [0, 4096]"
expect 0 "list plugins" -- "$pipe" --list-plugins
for p in synthetic safetensors gguf llama2c uniform e8 ldlq rht; do contains out "$p"; done
expect 0 "help plugin" -- "$pipe" --help-plugin synthetic
contains out "hidden"
expect 0 "help ldlq" -- "$pipe" --help-plugin ldlq
contains out "expert options not shown: --help-plugin ldlq -v"
expect 0 "help ldlq full" -- "$pipe" --help-plugin ldlq -v
contains out "tune_guard"
expect 0 "help caldera" -- "$pipe" --help-plugin caldera
contains out "stages"
expect 2 "help unknown plugin" -- "$pipe" --help-plugin nosuch
contains err "no plugin named 'nosuch'"
expect 2 "missing pipeline file" -- "$pipe" "$tmp/none.ini"
contains err "none.ini: cannot open pipeline file"

cat > "$tmp/broken.ini" <<'INI'
[caldera]
reader = src
stages = q
threads = many

[src]
plugin = synthetic
layers = 0
hiden = 64

[q]
plugin = uniform
bits = 9
granularity = rows
INI
expect 2 "broken pipeline" -- "$pipe" "$tmp/broken.ini" --dry-run
contains err "broken.ini:4: [caldera] option 'threads' = 'many' is not an integer; allowed: an integer in [0, 4096]"
contains err "broken.ini:8: [src] synthetic: option 'layers' = 0 out of range [1, 512]"
contains err "broken.ini:9: [src] synthetic: unknown option 'hiden'; did you mean 'hidden'?"
contains err "broken.ini:13: [q] uniform: option 'bits' = 9 out of range [1, 8]"
contains err "broken.ini:14: [q] uniform: option 'granularity' = 'rows' is not a valid choice; allowed:"
contains err "caldera-pipe: 5 configuration error(s)"
expect 2 "bad override" -- "$pipe" "$tmp/broken.ini" --set "q.bits" --dry-run
contains err "--set:1: 'q.bits' is not an assignment; allowed: section.key=value"

cat > "$tmp/ok.ini" <<'INI'
[caldera]
reader = src
hessians = src
stages = q
include = *.q_proj.weight

[src]
plugin = synthetic
layers = 1
hidden = 64
ffn = 96

[q]
plugin = uniform
bits = 4
INI
expect 0 "dry run" -- "$pipe" "$tmp/ok.ini" --dry-run
contains err "configuration OK"
expect 0 "print config" -- "$pipe" "$tmp/ok.ini" --print-config --set q.bits=3
contains out "bits = 3"
expect 0 "run" -- "$pipe" "$tmp/ok.ini" -q
contains out "model.layers.0.self_attn.q_proj.weight"
contains out "summary: 1 weights, 4096 parameters"
# A runtime failure (NaN-free but unwritable report path) exits 1 and names the file.
expect 1 "runtime failure" -- "$pipe" "$tmp/ok.ini" -q --set "caldera.report=$tmp/no/such/dir/r.json"
contains err "r.json.tmp."

echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
