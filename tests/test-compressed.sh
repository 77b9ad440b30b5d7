#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# End to end: compress stories260K (shared/data) with RHT + CALDERA (Q: ldlq over E8P 2-bit; Lᵀ,
# R: uniform 4-bit) and with RHT + E8P 3-bit, then `caldera-pipe eval --compressed` through the
# fused kernels and with --dense (every layer rebuilt to f32): the perplexities agree within 0.1%,
# every linear layer is fused, and the printed resident bits match the stored bits. Each output also
# opens alone (`eval --model FILE`, `generate --model FILE`: its metadata and tensors carry the rest)
# with the same perplexity and text. Errors of --compressed / --dense, and of an output that cannot
# open alone, are checked too.
#   usage: test-compressed.sh CALDERA_PIPE SHARED_DATA
set -uo pipefail
pipe=$1
data=$2
model=$data/stories260K/stories260K.bin
tok=$data/stories260K/tok512.bin
text=$data/wikitext-2-raw/wiki.test.raw
if [ ! -f "$model" ] || [ ! -f "$tok" ] || [ ! -f "$text" ]; then
    echo "skip: $model, $tok or $text is missing"; exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

compress() {   # compress NAME STAGES-SECTIONS...
    local name=$1; shift
    cat > "$tmp/$name.ini" <<INI
[caldera]
reader = model
writer = out
stages = $1
[model]
plugin = llama2c
path   = $model
tokenizer = $tok
[out]
plugin = safetensors
path   = $tmp/$name.safetensors
[rht]
plugin = rht
seed   = 7
$2
INI
    "$pipe" "$tmp/$name.ini" -q > "$tmp/$name.log" 2>&1 || { fail "compress $name"; cat "$tmp/$name.log"; return 1; }
}

evaluate() {   # evaluate NAME [--dense] -> prints the perplexity
    "$pipe" eval --model "$model" --tokenizer "$tok" --compressed "$tmp/$1.safetensors" $2 --text "$text" \
        --ctx 128 --windows 6 -q > "$tmp/$1$2.out" 2> "$tmp/$1$2.err" || { fail "eval $1 $2"; cat "$tmp/$1$2.err"; return 1; }
    sed -n 's/^perplexity: *\([0-9.]*\).*/\1/p' "$tmp/$1$2.out"
}

alone() {   # alone NAME [--dense] -> the perplexity of the compressed file opened by itself
    "$pipe" eval --model "$tmp/$1.safetensors" $2 --text "$text" --ctx 128 --windows 6 -q > "$tmp/$1$2.alone.out" \
        2> "$tmp/$1$2.alone.err" || { fail "eval --model $1.safetensors $2 (alone)"; cat "$tmp/$1$2.alone.err"; return 1; }
    sed -n 's/^perplexity: *\([0-9.]*\).*/\1/p' "$tmp/$1$2.alone.out"
}

check() {   # check NAME
    local f d a ad
    f=$(evaluate "$1" "") || return
    d=$(evaluate "$1" --dense) || return
    # the file alone (its metadata: description, tokenizer; its f32 copies of embeddings and norms)
    a=$(alone "$1" "") || return
    ad=$(alone "$1" --dense) || return
    [ "$a" = "$f" ] || fail "$1 alone: perplexity $a, with --model ORIGINAL --compressed: $f"
    [ "$ad" = "$d" ] || fail "$1 alone --dense: perplexity $ad, with --model ORIGINAL --compressed --dense: $d"
    grep -q "(35 fused, 0 dense f32" "$tmp/$1.alone.err" || fail "$1 alone: not every layer fused: $(cat "$tmp/$1.alone.err")"
    local g1 g2
    g1=$("$pipe" generate --model "$tmp/$1.safetensors" --prompt "Once upon a time" --tokens 24 -q 2> "$tmp/g1.err") ||
        fail "generate alone: $(cat "$tmp/g1.err")"
    g2=$("$pipe" generate --model "$model" --tokenizer "$tok" --compressed "$tmp/$1.safetensors" --prompt "Once upon a time" \
         --tokens 24 -q 2> "$tmp/g2.err") || fail "generate --compressed: $(cat "$tmp/g2.err")"
    [ "$g1" = "$g2" ] || fail "$1: generate alone gave '$g1', with --model ORIGINAL --compressed '$g2'"
    grep -q "(35 fused, 0 dense f32" "$tmp/$1.err" || fail "$1: not every layer fused: $(cat "$tmp/$1.err")"
    grep -q "(0 fused, 35 dense f32" "$tmp/$1--dense.err" || fail "$1 --dense: $(cat "$tmp/$1--dense.err")"
    awk -v f="$f" -v d="$d" 'BEGIN { r = (f - d) / d; if (r < 0) r = -r; exit !(f > 0 && r <= 1e-3) }' ||
        fail "$1: fused perplexity $f vs dense $d differ by more than 0.1%"
    echo "$1: perplexity fused $f, dense $d"
}

compress caldera "rht, cal" "[e8p]
plugin = e8
bits = 2
[q]
plugin = ldlq
codebook = e8p
[u4]
plugin = uniform
bits = 4
group_size = 32
[cal]
plugin = caldera
q = q
l_quant = u4
r_quant = u4
rank = 8
outer_iters = 2
inner_iters = 3" && check caldera
compress e8p3 "rht, q" "[q]
plugin = e8
bits = 3
scale_mode = row" && check e8p3

# errors: --dense on a model that is no caldera-pipe output, a file that is not a caldera-pipe output
"$pipe" eval --model "$model" --tokenizer "$tok" --dense --text "$text" > /dev/null 2> "$tmp/e1"
[ $? = 2 ] && grep -q -- "--dense needs a caldera-pipe output" "$tmp/e1" || fail "--dense without a compressed file: $(cat "$tmp/e1")"
"$pipe" eval --model "$model" --tokenizer "$tok" --compressed "$model" --text "$text" > /dev/null 2> "$tmp/e2"
[ $? = 1 ] || fail "--compressed on a llama2c file was accepted: $(cat "$tmp/e2")"

# an output written from a source that gives no model description (synthetic) cannot open alone:
# the error says so and names the remedy
cat > "$tmp/syn.ini" <<INI
[caldera]
reader = src
writer = out
stages = q
[src]
plugin = synthetic
layers = 1
hidden = 64
ffn = 128
[q]
plugin = uniform
bits = 4
[out]
plugin = safetensors
path = $tmp/syn.safetensors
INI
"$pipe" "$tmp/syn.ini" -q > /dev/null 2>&1 || fail "compress syn"
"$pipe" eval --model "$tmp/syn.safetensors" --text "$text" --ctx 64 --windows 1 -q > /dev/null 2> "$tmp/e3"
[ $? = 1 ] && grep -q "no general.architecture metadata; this caldera-pipe output does not carry what the model needs.*--model ORIGINAL --compressed $tmp/syn.safetensors" "$tmp/e3" ||
    fail "synthetic output alone: $(cat "$tmp/e3")"

[ $fails = 0 ] && echo "test-compressed: all passed" && exit 0
echo "test-compressed: $fails failed"; exit 1
