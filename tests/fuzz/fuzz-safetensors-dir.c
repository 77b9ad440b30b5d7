// SPDX-License-Identifier: MIT
// fuzz-safetensors-dir: a Hugging Face folder read by the safetensors reader: the index JSON of a
// sharded model, config.json, tokenizer.json and one shard. The input is those four parts in this
// order, separated by the line "\n--\n" (FZ_SEP); an empty part is a missing file. Without an
// index the shard is model.safetensors, else it is shard.safetensors (what the seeds' index names).
#include <string.h>

#include "fuzz-common.h"

#define FZ_SEP "\n--\n"

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    const uint8_t * part[4] = { NULL, NULL, NULL, NULL };
    size_t          len[4]  = { 0, 0, 0, 0 };
    const uint8_t * p = data, * end = data + size;
    for (int k = 0; k < 4; k++) {
        const uint8_t * q = k < 3 ? memmem(p, (size_t) (end - p), FZ_SEP, 4) : NULL;
        const uint8_t * e = q ? q : end;
        part[k] = p;
        len[k]  = (size_t) (e - p);
        if (!q) break;
        p = q + 4;
    }
    const char * dir = fz_tmpdir();
    static const char * const names[3] = { "model.safetensors.index.json", "config.json", "tokenizer.json" };
    for (int k = 0; k < 3; k++) fz_write_file(dir, names[k], len[k] ? part[k] : NULL, len[k]);
    int sharded = len[0] > 0;
    fz_write_file(dir, sharded ? "model.safetensors" : "shard.safetensors", NULL, 0);
    fz_write_file(dir, sharded ? "shard.safetensors" : "model.safetensors", part[3] ? part[3] : (const uint8_t *) "",
                  len[3]);
    fz_drive_format("safetensors", dir, NULL, size);
    return 0;
}
