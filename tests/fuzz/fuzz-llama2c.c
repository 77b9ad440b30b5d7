// SPDX-License-Identifier: MIT
// fuzz-llama2c: the llama2.c checkpoint reader's full read path over one file in memory.
// The format has no magic and its size must equal what the 28-byte header implies, so random
// mutations almost never get past that check. The custom mutator (libFuzzer builds) therefore
// rewrites three of four mutants into a small consistent header (1..4 heads, a divisor of them as
// KV heads, even head size 2..8, 1..3 layers, a shared or separate classifier of 1..64 tokens)
// and resizes the file to exactly the size it implies; the fourth keeps the raw mutation so the
// header checks and their error paths stay covered.
#include <string.h>

#include "fuzz-common.h"

#define L2C_HEADER 28

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static struct fz_memfile f;
    if (!f.path[0]) fz_memfile_open(&f, "fuzz-ckpt.bin");
    fz_memfile_set(&f, data, size);
    fz_drive_format("llama2c", f.path, NULL, size);
    return 0;
}

#ifdef CALDERA_LIBFUZZER
size_t LLVMFuzzerMutate(uint8_t * data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t * data, size_t size, size_t max_size, unsigned int seed);

size_t LLVMFuzzerCustomMutator(uint8_t * data, size_t size, size_t max_size, unsigned int seed) {
    size = LLVMFuzzerMutate(data, size, max_size);
    if (size < L2C_HEADER || seed % 4 == 0) return size;
    uint32_t r[7];
    memcpy(r, data, sizeof(r));
    int64_t heads = 1 + r[3] % 4;
    int64_t kv    = heads % (1 + r[4] % heads) == 0 ? heads / (1 + r[4] % heads) : heads;
    int64_t hs    = 2 * (1 + r[0] % 4);
    int64_t dim = heads * hs, hidden = 1 + r[1] % 16, layers = 1 + r[2] % 3, seq = 1 + r[6] % 8;
    int64_t vocab = 1 + r[5] % 64;
    int     shared = (seed >> 2) % 4 != 0;
    int64_t floats = vocab * dim * (shared ? 1 : 2) + layers * (2 * dim + 2 * dim * dim + 2 * dim * kv * hs + 3 * dim * hidden) +
                     dim + seq * hs;
    size_t  want = L2C_HEADER + 4 * (size_t) floats;
    if (want > max_size) return size;
    if (want > size) memset(data + size, 0, want - size);
    int32_t h[7] = { (int32_t) dim, (int32_t) hidden, (int32_t) layers, (int32_t) heads, (int32_t) kv,
                     (int32_t) (shared ? vocab : -vocab), (int32_t) seq };
    memcpy(data, h, sizeof(h));
    return want;
}
#endif
