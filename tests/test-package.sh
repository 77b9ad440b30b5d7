#!/bin/sh
# SPDX-License-Identifier: MIT
# The Debian package: build it with CPack, check what it holds, unpack it into a temporary root
# (no dpkg -i: the test never writes outside its own directory) and run the packaged caldera-pipe
# from there with no environment variables: it starts and finds its plugins.
#   usage: test-package.sh BUILD_DIR
set -eu
build=$1
fail() { echo "test-package: $*" >&2; exit 1; }
command -v dpkg-deb > /dev/null || { echo "test-package: dpkg-deb is not installed; skipped"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/caldera-deb.XXXXXX")
tmp=$(cd "$tmp" && pwd -P)
trap 'rm -rf "$tmp"' EXIT INT TERM

(cd "$build" && cpack -G DEB -B "$tmp/out") > "$tmp/cpack.log" 2>&1 || { cat "$tmp/cpack.log" >&2; fail "cpack -G DEB failed"; }
deb=$(find "$tmp/out" -maxdepth 1 -name 'caldera_*.deb' | head -n 1)
[ -n "$deb" ] || { cat "$tmp/cpack.log" >&2; fail "no caldera_*.deb produced"; }
dpkg-deb -f "$deb" Package Version Depends > "$tmp/fields"
grep -q '^Package: caldera$' "$tmp/fields" || fail "package name: $(cat "$tmp/fields")"
grep -q '^Depends: .*libopenblas' "$tmp/fields" || { cat "$tmp/fields" >&2; fail "Depends does not name OpenBLAS"; }
dpkg-deb -c "$deb" > "$tmp/contents"
for f in ./usr/bin/caldera-pipe ./usr/include/caldera/caldera-plugin.h ./usr/lib/pkgconfig/caldera.pc; do
    grep -q " $f\$" "$tmp/contents" || { cat "$tmp/contents" >&2; fail "$f is not in the package"; }
done
grep -q ' ./usr/lib/libcaldera.so' "$tmp/contents" || fail "libcaldera is not in the package"
grep -q ' ./usr/lib/caldera/plugins/$' "$tmp/contents" || fail "the plugin directory is not in the package"

dpkg-deb -x "$deb" "$tmp/root"
env -i "$tmp/root/usr/bin/caldera-pipe" --list-plugins > "$tmp/list.txt" 2>&1 ||
    { cat "$tmp/list.txt" >&2; fail "the packaged caldera-pipe does not start"; }
if grep -q ' ./usr/lib/caldera/plugins/e8.so$' "$tmp/contents"; then
    grep -q "^e8 .* $tmp/root/usr/lib/caldera/plugins/e8.so " "$tmp/list.txt" ||
        { cat "$tmp/list.txt" >&2; fail "the packaged e8.so is not found"; }
else
    grep -q '^e8 .* built-in ' "$tmp/list.txt" || { cat "$tmp/list.txt" >&2; fail "no e8 plugin"; }
fi
echo "test-package: $(basename "$deb") ($(wc -l < "$tmp/contents") entries) unpacks and runs"
