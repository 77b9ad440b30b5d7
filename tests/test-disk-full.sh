#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A checkpointed run whose output folder fills up (a 256 KiB tmpfs) or is read-only (a read-only
# tmpfs) must fail with a clear error naming the file and the cause, leave no file (final or
# temporary) in that folder, and keep its checkpoint usable: once the folder has room (remounted
# larger) or is writable, the same command resumes and writes the bytes of an uninterrupted run. Needs root and mount (CI runs
# as root); otherwise exits 77 (skipped) with the reason.
#   usage: test-disk-full.sh CALDERA_PIPE
set -euo pipefail
PIPE=$1
skip() { echo "test-disk-full: skipped: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to mount a small tmpfs"
W=$(mktemp -d "${TMPDIR:-/tmp}/caldera-disk-full.XXXXXX")
mkdir -p "$W/full" "$W/ro"
cleanup() { umount "$W/full" 2>/dev/null || true; umount "$W/ro" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
mount -t tmpfs -o size=256k tmpfs "$W/full" 2>/dev/null || skip "mount -t tmpfs failed (no CAP_SYS_ADMIN?)"
mount -t tmpfs -o size=16m tmpfs "$W/ro" || skip "mount -t tmpfs failed"
fail() { echo "test-disk-full: FAIL: $*" >&2; exit 1; }

cp "$(dirname "$0")/fixtures/synthetic-ldlq-u4.ini" "$W/p.ini"   # about 1.5 MB of output: does not fit in 256 KiB
run() {  # run DIR CHECKPOINT: output and report in DIR
    "$PIPE" "$W/p.ini" --threads 1 -q --set "out.path=$1/model.safetensors" --set "caldera.report=$1/report.json" \
        --set "caldera.checkpoint=$2" >"$W/out.txt" 2>"$W/err.txt"
}
expect_clean_failure() {  # DIR WHAT CAUSE: non-zero exit, message names the file and the cause, DIR empty
    local st=0
    run "$1" "$1.ckpt" || st=$?
    [ "$st" -ne 0 ] || fail "$2: the run succeeded"
    grep -q "$1/model.safetensors" "$W/err.txt" || fail "$2: the error does not name the file: $(cat "$W/err.txt")"
    grep -qi "$3" "$W/err.txt" || fail "$2: the error does not say '$3': $(cat "$W/err.txt")"
    [ -z "$(ls -A "$1")" ] || fail "$2: files left in the output folder: $(ls -A "$1")"
    echo "test-disk-full: $2: $(cat "$W/err.txt")"
}
resume() {  # DIR WHAT: the same command again succeeds with the reference bytes
    run "$1" "$1.ckpt" || { cat "$W/err.txt" >&2; fail "$2: the resumed run failed"; }
    cmp "$1/model.safetensors" "$1.ref" || fail "$2: the resumed output differs from an uninterrupted run"
    [ ! -e "$1.ckpt" ] || fail "$2: the finished run left its checkpoint"
}
reference() {  # DIR: an uninterrupted run of the same command (paths are part of the recorded
               # configuration) while DIR has room and is writable, moved out to DIR.ref
    run "$1" "$1.ckpt" || { cat "$W/err.txt" >&2; fail "the reference run failed"; }
    mv "$1/model.safetensors" "$1.ref"
    rm -f "$1/report.json"
}

mount -o remount,size=16m "$W/full"
reference "$W/full"
mount -o remount,size=256k "$W/full"
expect_clean_failure "$W/full" "disk full" "No space left on device"
n=$(find "$W/full.ckpt" -type f -name '*.ckpt' | wc -l)
[ "$n" -gt 0 ] || fail "disk full: no weight was checkpointed before the failure"
mount -o remount,size=16m "$W/full"
resume "$W/full" "disk full"
echo "test-disk-full: disk full: resumed from $n checkpointed weights once the folder had room: output identical"
reference "$W/ro"
mount -o remount,ro "$W/ro"
expect_clean_failure "$W/ro" "read-only folder" "Read-only file system"
mount -o remount,rw "$W/ro"
resume "$W/ro" "read-only folder"
echo "test-disk-full: read-only folder: the same command succeeds once the folder is writable: output identical"
