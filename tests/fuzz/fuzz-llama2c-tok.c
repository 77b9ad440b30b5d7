// SPDX-License-Identifier: MIT
// fuzz-llama2c-tok: the llama2.c tokenizer reader. The checkpoint is fixed and tiny (dim 8, 1 layer,
// 2 heads, vocabulary 32 + the input's first byte % 32, so vocabularies of 32..63 tokens are
// tried); the input after that byte is the tokenizer file (tok512.bin layout).
#include <string.h>

#include "fuzz-common.h"

// A valid checkpoint of the given vocabulary into buf (zero weights); returns its size.
static size_t tiny_checkpoint(uint8_t * buf, size_t cap, int32_t vocab) {
    const int32_t dim = 8, hidden = 4, layers = 1, heads = 2, kv = 2, seq = 2, hs = dim / heads;
    const int32_t h[7] = { dim, hidden, layers, heads, kv, vocab, seq };
    size_t floats = (size_t) vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * dim * kv * hs + 3 * dim * hidden) + dim +
                    (size_t) seq * hs;
    size_t n = 28 + 4 * floats;
    if (n > cap) return 0;
    memset(buf, 0, n);
    memcpy(buf, h, sizeof(h));
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static struct fz_memfile ck, tok;
    static uint8_t buf[1 << 14];
    if (!ck.path[0]) {
        fz_memfile_open(&ck, "fuzz-ckpt.bin");
        fz_memfile_open(&tok, "fuzz-tok.bin");
    }
    if (size < 1) return 0;
    size_t n = tiny_checkpoint(buf, sizeof(buf), 32 + data[0] % 32);
    fz_memfile_set(&ck, buf, n);
    fz_memfile_set(&tok, data + 1, size - 1);
    const char * const opts[] = { "tokenizer", tok.path, NULL };
    fz_drive_format("llama2c", ck.path, opts, n + size);
    return 0;
}
