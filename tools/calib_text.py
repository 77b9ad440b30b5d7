#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Calibration text for llama.cpp's llama-imatrix with the same make-up as caldera's default [calib]:
# the same sources (../shared/data/wiki-calib and ../shared/data/austen: every regular, non-hidden
# file of each folder in name order, CRLF -> LF), equal token shares, `sequences` windows of about
# `length` tokens (128 x 512 by default), each starting at a line start drawn uniformly over the
# source's bytes, sources interleaved window by window (wiki, austen, wiki, ...) and windows
# separated by a blank line. A reference tool for docs/results.md (tools/llama_peers.sh), never a
# build or test dependency.
#
# The windows are not caldera's own (its sampler tokenizes with the model and draws with
# xoshiro256**); they are drawn here with Python's random.Random(seed), so the file is reproducible
# byte for byte. A window is cut to a byte count: `length` tokens times the source's measured bytes
# per token (--bytes-per-token, one value per source, from `llama-tokenize --show-count` on the
# whole source; tools/llama_peers.sh measures it), times 1.02 so that every llama-imatrix chunk of
# `length` tokens is full, cut back to the last space.
#
# Usage: calib_text.py OUT.txt --bytes-per-token WIKI AUSTEN [--sequences 128] [--length 512]
#        [--seed 0] [--data DIR]
import argparse
import os
import random
import sys


def load(spec):
    paths = [spec] if os.path.isfile(spec) else sorted(
        os.path.join(spec, f) for f in os.listdir(spec)
        if not f.startswith('.') and os.path.isfile(os.path.join(spec, f)))
    if not paths:
        sys.exit(f"calib_text.py: {spec}: no file")
    return [open(p, 'rb').read().replace(b'\r\n', b'\n') for p in paths]


def window(rng, files, nbytes):
    total = sum(len(f) for f in files)
    for _ in range(1000):
        u = int(rng.random() * total)
        f = 0
        while u >= len(files[f]):
            u -= len(files[f])
            f += 1
        t = files[f]
        while 0 < u < len(t) and t[u - 1] != 0x0A:   # the next line start
            u += 1
        if u + nbytes > len(t):
            continue
        w = t[u:u + nbytes]
        cut = w.rfind(b' ')
        return w[:cut] if cut > nbytes // 2 else w
    sys.exit("calib_text.py: no window found in 1000 draws; allowed: a shorter length")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('out')
    ap.add_argument('--bytes-per-token', type=float, nargs=2, required=True, metavar=('WIKI', 'AUSTEN'))
    ap.add_argument('--sequences', type=int, default=128)
    ap.add_argument('--length', type=int, default=512)
    ap.add_argument('--seed', type=int, default=0)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument('--data', default=os.environ.get('CALDERA_SHARED_DATA', os.path.join(here, '..', '..', 'shared', 'data')))
    a = ap.parse_args()
    if a.sequences < 2 or a.length < 16 or min(a.bytes_per_token) <= 0:
        sys.exit("calib_text.py: allowed: --sequences >= 2, --length >= 16, --bytes-per-token > 0")
    srcs = [load(os.path.join(a.data, 'wiki-calib')), load(os.path.join(a.data, 'austen'))]
    per = [a.sequences // 2 + a.sequences % 2, a.sequences // 2]   # equal shares, the odd one to the first
    rngs = [random.Random(f"{a.seed}:calibration.{i}") for i in range(2)]
    out = []
    for k in range(max(per)):
        for i in range(2):
            if k < per[i]:
                nb = int(a.length * a.bytes_per_token[i] * 1.02)
                out.append(window(rngs[i], srcs[i], nb))
    tmp = a.out + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(b'\n\n'.join(out) + b'\n')
    os.replace(tmp, a.out)
    print(f"calib_text.py: {a.out}: {len(out)} windows ({per[0]} wiki-calib, {per[1]} austen), "
          f"{sum(len(w) for w in out)} bytes")


if __name__ == '__main__':
    main()
