#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Crash safety of a checkpointed run: caldera-pipe is killed with SIGKILL at random points KILLS
# times, then allowed to finish; the output must be byte-identical to an uninterrupted run of the
# same configuration, and no file may ever exist under the output's or the report's final name
# unless it is complete (polled every 10 ms while each run is alive, and after every kill); the
# final run removes the temporaries ("<name>.tmp.<pid>") of the killed runs and no other.
# A run that finishes before its kill time starts over from nothing (that is not counted as a kill).
#   usage: test-crash-kill.sh CALDERA_PIPE KILLS [SEED]
set -euo pipefail
PIPE=$1
KILLS=$2
RANDOM=${3:-11}
W=$(mktemp -d "${TMPDIR:-/tmp}/caldera-crash-kill.XXXXXX")
trap 'rm -rf "$W"' EXIT
fail() { echo "test-crash-kill: FAIL: $*" >&2; exit 1; }

cp "$(dirname "$0")/fixtures/synthetic-ldlq-u4.ini" "$W/p.ini"   # 14 weights, RHT + LDLQ over uniform 4-bit
OUT=$W/out/model.safetensors
REP=$W/out/report.json
CK=$W/ckpt
mkdir -p "$W/out"
run() {  # run in the background; its pid in $PID
    "$PIPE" "$W/p.ini" --threads 1 -q --set "out.path=$OUT" --set "caldera.report=$REP" \
        --set "caldera.checkpoint=$CK" >"$W/log" 2>&1 &
    PID=$!
}
check_final_names() {  # a file under a final name is complete
    if [ -e "$OUT" ] && ! cmp -s "$OUT" "$W/ref.safetensors"; then
        fail "a partial or different file exists under the final name $OUT"
    fi
    if [ -e "$REP" ] && [ "$(tail -c 2 "$REP" | tr -d '\n')" != "}" ]; then
        fail "a partial report exists under the final name $REP"
    fi
}

# the reference: one uninterrupted run of the same configuration (checkpoint on)
t0=$(date +%s%N)
run
wait "$PID" || { cat "$W/log" >&2; fail "the uninterrupted run failed"; }
t_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
[ -e "$CK" ] && fail "a finished run left its checkpoint folder"
mv "$OUT" "$W/ref.safetensors"
rm -f "$REP"

kills=0 restarts=0 tries=0
while [ "$kills" -lt "$KILLS" ]; do
    tries=$((tries + 1))
    [ "$tries" -le $((KILLS * 10)) ] || fail "only $kills of $KILLS kills hit a running process in $tries tries"
    delay_ms=$((RANDOM % (t_ms + 1)))
    t0=$(date +%s%N)
    run
    while kill -0 "$PID" 2>/dev/null && [ $((($(date +%s%N) - t0) / 1000000)) -lt "$delay_ms" ]; do
        check_final_names
        sleep 0.01
    done
    if kill -KILL "$PID" 2>/dev/null; then
        st=0
        { wait "$PID"; } 2>/dev/null || st=$?
        if [ "$st" -eq 137 ]; then
            kills=$((kills + 1))
            check_final_names
            if [ -e "$OUT" ]; then  # killed after the rename: complete, and the next run starts over
                rm -rf "$OUT" "$REP" "$CK"
            fi
            continue
        fi
    else
        st=0
        { wait "$PID"; } 2>/dev/null || st=$?
    fi
    # the run ended by itself before the kill: it must have succeeded with the reference bytes
    [ "$st" -eq 0 ] || { cat "$W/log" >&2; fail "a resumed run failed (status $st)"; }
    check_final_names
    [ -e "$OUT" ] || fail "a finished run has no output"
    restarts=$((restarts + 1))
    rm -rf "$OUT" "$REP" "$CK"
done

# finish: the last interrupted state is resumed to the end. Beside the killed runs' temporaries:
# one of a live process (this shell) and one of another output, which the run must leave alone.
touch "$OUT.tmp.$$" "$W/out/other.safetensors.tmp.999999999"
run
while kill -0 "$PID" 2>/dev/null; do check_final_names; sleep 0.01; done
wait "$PID" || { cat "$W/log" >&2; fail "the final resumed run failed"; }
cmp "$OUT" "$W/ref.safetensors" || fail "the output after $kills kills differs from the uninterrupted run"
[ -e "$CK" ] && fail "the finished run left its checkpoint folder: $(ls -la "$CK")"
[ -e "$OUT.tmp.$$" ] || fail "the run removed $OUT.tmp.$$, a temporary of a live process"
[ -e "$W/out/other.safetensors.tmp.999999999" ] || fail "the run removed the temporary of another output"
rm -f "$OUT.tmp.$$" "$W/out/other.safetensors.tmp.999999999"
left=$(find "$W/out" -name '*.tmp.*')
[ -z "$left" ] || fail "temporaries of killed runs remain after the final run: $left"
echo "test-crash-kill: $kills SIGKILLs at random points (uninterrupted run ${t_ms} ms; $restarts runs finished" \
     "before their kill and started over), output identical, no temporary of a killed run left"
