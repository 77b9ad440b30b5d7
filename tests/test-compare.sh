#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# caldera-pipe compare: the table's rows and columns; the Markdown, CSV and JSON outputs parse and
# agree with each other and with each pipeline's own report (run alone); on stories260K, one
# calibration cache (the second pipeline reads the Hessians the first computed), the original
# model's row and one evaluation protocol; errors (missing file, differing [eval] settings, unknown
# option) exit 2 with a message and write nothing. Peers (--peer): stories260K as Q8_0 and Q4_0 GGUFs
# made by caldera-convert, scored as `caldera-pipe eval` scores them alone, their bits against the
# closed form of their block types; an unreadable peer (a tensor type the runtime refuses) refused
# before anything runs; `eval --json` of a caldera-pipe output against the pipeline's own report.
#   usage: test-compare.sh CALDERA_PIPE SOURCE_DIR SHARED_DATA_DIR [CALDERA_CONVERT]
set -uo pipefail
pipe=$1 src=$2 data=$3 convert=${4:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export CALDERA_CACHE=$tmp/cache CALDERA_SHARED_DATA=$data
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
check() {    # check DESCRIPTION -- python3 checker args... (exit 0: pass)
    local what=$1; shift 2
    if "$@"; then passes=$((passes + 1)); else echo "FAIL: $what"; fails=$((fails + 1)); fi
}
ex=$src/pipelines/examples

# The three outputs against each other and against the pipelines' own reports. Independent of
# compare: each pipeline run alone by caldera-pipe, its JSON report read here.
cat > "$tmp/check.py" <<'PY'
import csv, json, math, sys
md, csvf, jsf, want_rows, *reports = sys.argv[1:]
want_rows = want_rows.split(",")
cols = ["bits_per_param", "file_bits_per_model_param", "mean_rel_err", "worst_rel_err", "mean_rel_err_h", "worst_rel_err_h",
        "ppl", "ppl_err", "compress_seconds", "wall_seconds", "peak_rss_mib"]
TOL_MD = {"bits_per_param": 5e-5, "mean_rel_err": 5e-6, "worst_rel_err": 5e-6, "mean_rel_err_h": 5e-6, "worst_rel_err_h": 5e-6,
          "ppl": 5e-5, "ppl_err": 5e-5}   # half a unit of the printed last digit
TOL_REP = 1e-6                            # relative: the JSON's 10 significant digits against the report's
ok = True
def fail(msg):
    global ok
    ok = False
    print("check:", msg)
rows = json.load(open(jsf))["rows"]
if [r["method"] for r in rows] != want_rows: fail(f"JSON rows {[r['method'] for r in rows]} != {want_rows}")
for r in rows:
    if set(r) != set(cols) | {"method", "calibration"}: fail(f"JSON columns {sorted(r)}")
c = list(csv.DictReader(open(csvf)))
if [r["method"] for r in c] != want_rows: fail("CSV rows")
lines = [l for l in open(md).read().splitlines() if l.startswith("|")]
head = [x.strip() for x in lines[0].strip("|").split("|")]
if len(head) != len(cols) + 2 or head[0] != "method" or head[-1] != "calibration": fail(f"Markdown header {head}")
body = [[x.strip() for x in l.strip("|").split("|")] for l in lines[2:]]
if [b[0] for b in body] != want_rows: fail("Markdown rows")
for j, m, b in zip(rows, c, body):
    for i, k in enumerate(cols):
        v = j[k]
        if v is None:
            if m[k] != "" or b[i + 1] != "-": fail(f"{j['method']} {k}: null in JSON, '{m[k]}' in CSV, '{b[i + 1]}' in Markdown")
            continue
        if abs(float(m[k]) - v) > 1e-4 * max(1, abs(v)): fail(f"{j['method']} {k}: CSV {m[k]} against JSON {v}")
        if k in TOL_MD and abs(float(b[i + 1]) - v) > TOL_MD[k] * max(1, abs(v)): fail(f"{j['method']} {k}: Markdown {b[i + 1]} against {v}")
for rep in reports:
    name, path = rep.split("=", 1)
    r = json.load(open(path)); s = r["summary"]
    row = next((x for x in rows if x["method"] == name), None)
    if row is None: fail(f"no row {name}"); continue
    for k in ["bits_per_param", "mean_rel_err", "worst_rel_err", "mean_rel_err_h", "worst_rel_err_h"]:
        if not math.isclose(row[k], s[k], rel_tol=TOL_REP): fail(f"{name} {k}: {row[k]} against its own run's {s[k]}")
    if "eval" in r:
        for k, src in (("ppl", r["eval"]["compressed"]), ):
            if not math.isclose(row["ppl"], src["ppl"], rel_tol=TOL_REP): fail(f"{name} ppl {row['ppl']} against {src['ppl']}")
        orig = next(x for x in rows if x["method"] == "original")
        if not math.isclose(orig["ppl"], r["eval"]["original"]["ppl"], rel_tol=TOL_REP): fail("original ppl")
    if not (row["peak_rss_mib"] > 1 and row["wall_seconds"] >= row["compress_seconds"] > 0): fail(f"{name}: memory or times {row}")
sys.exit(0 if ok else 1)
PY

# Synthetic: two single-matrix pipelines (no model file, no evaluation: perplexity '-').
for p in rtn gptq; do
    expect 0 "single_matrix_$p alone" -- "$pipe" "$ex/single_matrix_$p.ini" -q --set caldera.report="$tmp/alone-$p.json"
done
plot=()
command -v gnuplot > /dev/null && plot=(--plot "$tmp/s.png")
expect 0 "compare synthetic" -- "$pipe" compare "$ex/single_matrix_rtn.ini" "$ex/single_matrix_gptq.ini" \
    --md "$tmp/s.md" --csv "$tmp/s.csv" --json "$tmp/s.json" "${plot[@]}"
contains out "| method | bits/param (compressed weights) | bits/param (whole file, all params) | rel. err mean |"
contains out "| single_matrix_rtn | 2.0156 |"
cmp -s "$tmp/out" "$tmp/s.md" && { echo "FAIL: stdout is not only the Markdown table (it has notes)"; fails=$((fails + 1)); }
check "synthetic outputs" -- python3 "$tmp/check.py" "$tmp/s.md" "$tmp/s.csv" "$tmp/s.json" single_matrix_rtn,single_matrix_gptq \
    "single_matrix_rtn=$tmp/alone-rtn.json" "single_matrix_gptq=$tmp/alone-gptq.json"
# no eval anywhere: --plot has nothing to draw, says so, writes nothing
if [ ${#plot[@]} -gt 0 ]; then contains err "no pipeline evaluates perplexity"; [ ! -e "$tmp/s.png" ] || { echo "FAIL: empty plot written"; fails=$((fails + 1)); }; fi

# stories260K: one calibration cache, the original's row, one protocol.
if [ -r "$data/stories260K/stories260K.bin" ]; then
    expect 0 "compare stories260K" -- "$pipe" compare "$ex/stories260k_quip_sharp.ini" "$ex/stories260k_gptq.ini" \
        --md "$tmp/t.md" --csv "$tmp/t.csv" --json "$tmp/t.json" "${plot[@]/s.png/t.png}"
    contains out "ctx 128, 4 windows"
    check "one Hessian file in the cache" -- test "$(ls "$CALDERA_CACHE/hessians" | wc -l)" = 1
    check "calibration computed, then cached" -- python3 -c "
import json, sys; r = json.load(open(sys.argv[1]))['rows']
sys.exit(0 if [x['calibration'] for x in r] == ['-', 'computed', 'cached'] else 1)" "$tmp/t.json"
    # each alone (the cache now warm: same Hessians), for the independent figures
    expect 0 "stories260k_quip_sharp alone" -- "$pipe" "$ex/stories260k_quip_sharp.ini" -q \
        --set caldera.report="$tmp/alone-q.json" --set out.path="$tmp/q.safetensors"
    check "stories260K outputs" -- python3 "$tmp/check.py" "$tmp/t.md" "$tmp/t.csv" "$tmp/t.json" \
        original,stories260k_quip_sharp,stories260k_gptq "stories260k_quip_sharp=$tmp/alone-q.json"
    # The whole file's bits over ALL the model's parameters (embeddings, norms, compressed weights), the
    # count computed here from stories260K's header (dim 64, hidden 172, 5 layers, 8 heads, 4 KV heads,
    # vocab 512, shared classifier): 512*64 + 5*(2*64 + 2*64*64 + 2*64*32 + 3*64*172) + 64 = 260032.
    check "report: model_params = 260032" -- python3 -c "
import json, sys; s = json.load(open(sys.argv[1]))['summary']
sys.exit(0 if s.get('model_params') == 260032 and s['params'] < 260032 else 1)" "$tmp/alone-q.json"
    check "file bits/param = output size / all the model's params" -- python3 -c "
import json, os, sys
row = json.load(open(sys.argv[1]))['rows'][1]
want = os.path.getsize(sys.argv[2]) * 8 / 260032
TOL = 1e-3   # the file's metadata holds paths (the tokenizer's), so its size depends on the output folder by a few bytes
sys.exit(0 if abs(row['file_bits_per_model_param'] - want) < TOL * want else 1)" "$tmp/t.json" "$tmp/q.safetensors"
    if [ ${#plot[@]} -gt 0 ]; then
        check "plot is a PNG" -- python3 -c "import sys; sys.exit(0 if open(sys.argv[1], 'rb').read(8) == b'\x89PNG\r\n\x1a\n' else 1)" "$tmp/t.png"
    fi
    # differing evaluation settings: refused before anything runs, nothing written
    sed 's/^ctx *= *128/ctx = 64/' "$ex/stories260k_gptq.ini" > "$tmp/gptq_ctx64.ini"
    sed -i "s|\${CALDERA_SHARED_DATA:-../shared/data}|$data|" "$tmp/gptq_ctx64.ini"
    expect 2 "differing eval settings" -- "$pipe" compare "$ex/stories260k_quip_sharp.ini" "$tmp/gptq_ctx64.ini" --md "$tmp/bad.md"
    contains err "evaluate differently (ctx: '128' against '64'); one protocol for all"
    check "nothing written" -- test ! -e "$tmp/bad.md"
    check "nothing run" -- test "$(grep -c 'compare: \[' "$tmp/err")" = 0

    # eval --json of the pipeline's output (alone, and on top of the original): the compressed
    # layers' stored bits are the report's bits_per_param, the model's parameters its model_params.
    st=$data/stories260K/stories260K.bin
    for how in alone on-original; do
        args=(--model "$tmp/q.safetensors"); [ $how = on-original ] && args=(--model "$st" --compressed "$tmp/q.safetensors")
        expect 0 "eval --json of the output ($how)" -- "$pipe" eval "${args[@]}" --ctx 128 --windows 4 -q --json "$tmp/qe-$how.json"
        check "eval --json ($how) agrees with the pipeline's report" -- python3 -c "
import json, os, sys
e = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))['summary']; st = e['storage']
TOL_REPORT = 1e-8   # relative: the report's JSON keeps 9 significant digits
ok = (st['bits_over'] == 'compressed layers' and abs(st['bits_per_param'] - s['bits_per_param']) <= TOL_REPORT * s['bits_per_param'] and
      st['linear_bits'] / st['linear_params'] == st['bits_per_param'] and
      st['model_params'] == s['model_params'] == 260032 and st['linear_params'] == s['params'] and
      st['file_bytes'] == os.path.getsize(sys.argv[3]) and st['file_bits_per_model_param'] == st['file_bytes'] * 8 / 260032 and
      (e['ctx'], e['windows'], e['protocol'], e['layout']) == (128, 4, 'llamacpp', 'rows'))
sys.exit(0 if ok else print(e, s) or 1)" "$tmp/qe-$how.json" "$tmp/alone-q.json" "$tmp/q.safetensors"
    done
    contains out "storage:    2.0918 bits/param over 0.227 M params of the compressed layers"

    # Peers: stories260K in ggml block types by our own tools (caldera-convert --dtype).
    if [ -n "$convert" ]; then
        for t in q8_0 q4_0; do
            expect 0 "caldera-convert --dtype $t" -- "$convert" -q "$st" "$tmp/stories-$t.gguf" --dtype $t
        done
        expect 0 "compare with peers" -- "$pipe" compare "$ex/stories260k_quip_sharp.ini" --peer "$tmp/stories-q4_0.gguf" \
            --peer "q8=$tmp/stories-q8_0.gguf" --md "$tmp/p.md" --csv "$tmp/p.csv" --json "$tmp/p.json" "${plot[@]/s.png/p.png}"
        cp "$tmp/out" "$tmp/p.out"
        check "peer outputs" -- python3 "$tmp/check.py" "$tmp/p.md" "$tmp/p.csv" "$tmp/p.json" \
            original,stories260k_quip_sharp,stories-q4_0,q8 "stories260k_quip_sharp=$tmp/alone-q.json"
        contains p.out "types: stories-q4_0 f32:5 q4_0:30; q8 f32:5 q8_0:30)"
        # --from: the saved JSON renders the same table, CSV, JSON and notes again; nothing runs.
        expect 0 "compare --from" -- "$pipe" compare --from "$tmp/p.json" --md "$tmp/pf.md" --csv "$tmp/pf.csv" \
            --json "$tmp/pf.json" "${plot[@]/s.png/pf.png}"
        check "--from: the same Markdown, CSV and JSON" -- sh -c 'cmp "$1/p.md" "$1/pf.md" && cmp "$1/p.csv" "$1/pf.csv" &&
            cmp "$1/p.json" "$1/pf.json"' sh "$tmp"
        contains out "types: stories-q4_0 f32:5 q4_0:30; q8 f32:5 q8_0:30)"
        check "--from: nothing run" -- test "$(grep -c 'compare: \[' "$tmp/err")" = 0
        if [ ${#plot[@]} -gt 0 ]; then
            check "--from: plot is a PNG" -- python3 -c "import sys; sys.exit(0 if open(sys.argv[1], 'rb').read(8) == b'\x89PNG\r\n\x1a\n' else 1)" "$tmp/pf.png"
        fi
        expect 2 "--from with a pipeline" -- "$pipe" compare --from "$tmp/p.json" "$ex/stories260k_gptq.ini"
        contains err "renders a saved table again"
        echo '{"rows": [{"method": "x", "calibration": "-", "ppl": "high"}]}' > "$tmp/bad-from.json"
        expect 2 "--from a malformed row" -- "$pipe" compare --from "$tmp/bad-from.json" --md "$tmp/bad-from.md"
        contains err "bad-from.json: rows[0].ppl is not a number or null"
        check "--from: nothing written" -- test ! -e "$tmp/bad-from.md"
        # Each peer alone with eval's options for the pipelines' [ev] (ctx 128, 4 windows, WikiText-2, rows).
        for t in q4_0 q8_0; do
            label=$([ $t = q8_0 ] && echo q8 || echo stories-q4_0)
            expect 0 "eval of the $t peer alone" -- "$pipe" eval --model "$tmp/stories-$t.gguf" --ctx 128 --windows 4 -q \
                --json "$tmp/e-$t.json"
            ppl=$(sed -n 's/^perplexity: \([0-9.]*\) +\/- \([0-9.]*\)$/\1/p' "$tmp/out")
            check "the $t peer's row prints eval's perplexity ($ppl)" -- grep -qF "| $label | " "$tmp/p.md"
            check "the $t peer's row: $ppl" -- test "$(grep -F "| $label | " "$tmp/p.md" | cut -d'|' -f9 | tr -d ' ')" = "$ppl"
            # Bits: stories260K's linear weights per layer (dim 64, FFN 172, 8 heads of 8, 4 KV heads): q, o 64x64, k, v
            # 32x64, gate, up 172x64 in rows of 64 (whole 32-blocks: Q8_0 34 bytes = 8.5 bits, Q4_0 18 bytes = 4.5 bits
            # per weight), down 64x172 (rows of 172: no whole blocks, left f32 by caldera-convert); all 5 layers alike.
            check "the $t peer's row against eval alone and the closed form" -- python3 -c "
import json, os, sys
row = next(r for r in json.load(open(sys.argv[1]))['rows'] if r['method'] == sys.argv[3])
e = json.load(open(sys.argv[2])); st = e['storage']
blk = {'q4_0': 4.5, 'q8_0': 8.5}[sys.argv[4]]
blocks, plain = 2 * 64 * 64 + 2 * 32 * 64 + 2 * 172 * 64, 64 * 172
want = (blocks * blk + plain * 32) / (blocks + plain)
TOL_JSON = 1e-9   # compare's JSON keeps 10 significant digits
ok = (row['calibration'] == 'peer' and abs(row['ppl'] - e['ppl']) <= TOL_JSON * e['ppl'] and
      abs(row['ppl_err'] - e['ppl_err']) <= TOL_JSON * e['ppl_err'] and
      st['bits_per_param'] == want and abs(row['bits_per_param'] - want) <= TOL_JSON * want and
      st['linear_params'] == 5 * (blocks + plain) and st['model_params'] == 260032 and
      abs(row['file_bits_per_model_param'] - os.path.getsize(sys.argv[5]) * 8 / 260032) <= TOL_JSON * 32 and
      row['mean_rel_err'] is None and row['compress_seconds'] is None and row['peak_rss_mib'] > 1)
sys.exit(0 if ok else print(row, st, want) or 1)" "$tmp/p.json" "$tmp/e-$t.json" "$label" "$t" "$tmp/stories-$t.gguf"
        done
        # A peer the runtime cannot read (a tiny GGUF whose one tensor is IQ2_XXS) is refused before
        # anything runs, naming the file, the tensor and its type; nothing is written.
        python3 - "$tmp/iq.gguf" <<'PY'
import struct, sys
def s(b): return struct.pack('<Q', len(b)) + b
h = b'GGUF' + struct.pack('<IQQ', 3, 1, 1) + s(b'general.architecture') + struct.pack('<I', 8) + s(b'llama')
h += s(b'blk.0.attn_q.weight') + struct.pack('<IQQIQ', 2, 256, 1, 16, 0)   # 2 dims, ggml type 16 = IQ2_XXS, offset 0
h += b'\0' * (-len(h) % 32)
open(sys.argv[1], 'wb').write(h + b'\0' * 66)                              # one IQ2_XXS block: 66 bytes
PY
        expect 2 "unreadable peer" -- "$pipe" compare "$ex/stories260k_quip_sharp.ini" --peer "$tmp/stories-q8_0.gguf" \
            --peer "$tmp/iq.gguf" --md "$tmp/bad.md" --json "$tmp/bad.json"
        contains err "--peer $tmp/iq.gguf:"
        contains err "tensor 'blk.0.attn_q.weight' has ggml type 16 (IQ2_XXS), which this plugin does not read"
        check "nothing written" -- test ! -e "$tmp/bad.md" -a ! -e "$tmp/bad.json"
        check "nothing run" -- test "$(grep -c 'compare: \[' "$tmp/err")" = 0
        expect 2 "peer label taken" -- "$pipe" compare "$ex/stories260k_quip_sharp.ini" --peer "stories260k_quip_sharp=$tmp/stories-q8_0.gguf"
        contains err "the label 'stories260k_quip_sharp' is taken"
    else
        echo "no caldera-convert given: the peers part skipped"
    fi
else
    echo "stories260K absent from $data: its part skipped"
fi

# usage and configuration errors
expect 2 "missing pipeline file" -- "$pipe" compare "$ex/single_matrix_rtn.ini" "$tmp/nope.ini" --md "$tmp/bad.md"
contains err "$tmp/nope.ini: cannot read"
check "nothing written" -- test ! -e "$tmp/bad.md"
expect 2 "no pipelines" -- "$pipe" compare
contains err "usage: caldera-pipe compare"
expect 2 "unknown option" -- "$pipe" compare "$ex/single_matrix_rtn.ini" --frobnicate
contains err "unknown option '--frobnicate'"
expect 2 "bad --set" -- "$pipe" compare "$ex/single_matrix_rtn.ini" --set q.bits=99
contains err "configuration error"
expect 2 "--peer without a value" -- "$pipe" compare "$ex/single_matrix_rtn.ini" --peer
contains err "--peer needs a value"
expect 2 "missing peer file" -- "$pipe" compare "$ex/single_matrix_rtn.ini" --peer "$tmp/nope.gguf" --md "$tmp/bad.md"
contains err "--peer $tmp/nope.gguf: cannot read"
check "nothing written" -- test ! -e "$tmp/bad.md"
expect 2 "peer without an evaluating pipeline" -- "$pipe" compare "$ex/single_matrix_rtn.ini" --peer "$src/README.md"
contains err "--peer: no pipeline evaluates perplexity"
expect 2 "peer with an empty label" -- "$pipe" compare "$ex/single_matrix_rtn.ini" --peer "=$tmp/x.gguf"
contains err "invalid label"
expect 0 "help" -- "$pipe" compare --help
contains out "--plot FILE.png"
contains out "--peer [LABEL=]FILE"

echo "compare: $passes passed, $fails failed"
[ "$fails" = 0 ]
