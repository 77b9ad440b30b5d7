// SPDX-License-Identifier: MIT
// fuzz-tokenizer: the llama model's tokenizer (models/llama/tokenizer.c) built from the
// tokenizer.ggml.* metadata of a GGUF file, then encoding text and mapping every id back to its
// piece. Input: FLAGS TEXT "\n--\n" GGUF, where FLAGS is one byte (bit 0: add BOS, bit 1: parse
// special tokens) and GGUF a (vocabulary-only) GGUF file read by the gguf plugin. Both the
// metadata (hostile vocabularies, scores, merges, types, ids) and the text are fuzzed.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "tokenizer.h"

#define FZ_SEP "\n--\n"

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static struct fz_memfile f;
    if (!f.path[0]) fz_memfile_open(&f, "fuzz-vocab.gguf");
    const uint8_t * sep = size > 1 ? memmem(data + 1, size - 1, FZ_SEP, 4) : NULL;
    if (!sep) return 0;
    const int     flags = data[0];
    const char *  text  = (const char *) data + 1;
    const size_t  tlen  = (size_t) (sep - data) - 1;
    fz_memfile_set(&f, sep + 4, size - (size_t) (sep + 4 - data));

    struct caldera_ctx *  ctx  = fz_ctx();
    struct caldera_inst * inst = NULL;
    struct llm_tokenizer * tok = NULL;
    int32_t * ids = NULL;
    int64_t   n   = 0;
    if (caldera_inst_create(ctx, "gguf", "fuzz", &inst) < 0 || caldera_inst_start(inst) < 0) abort();
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    if (ops->open(inst, f.path) < 0) goto done;
    if (llm_tokenizer_init(ctx, ops->meta(inst), &tok) < 0) {
        if (!caldera_ctx_errmsg(ctx)[0]) abort();   // every failure has a message
        if (getenv("CALDERA_FUZZ_VERBOSE")) fprintf(stderr, "llm_tokenizer_init: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    int64_t nv = llm_tokenizer_n_vocab(tok);
    if (nv < 0 || llm_tokenizer_bos(tok) >= nv || llm_tokenizer_eos(tok) >= nv || llm_tokenizer_eot(tok) >= nv) abort();
    if (llm_tokenizer_encode(tok, text, tlen, flags & 1, (flags >> 1) & 1, &ids, &n) == 0) {
        if (getenv("CALDERA_FUZZ_VERBOSE")) fprintf(stderr, "encoded %zu bytes to %lld ids\n", tlen, (long long) n);
        for (int64_t i = 0; i < n; i++) {
            const char * piece;
            size_t       len;
            if (ids[i] < 0 || ids[i] >= nv) abort();   // encode returns ids of the vocabulary
            if (llm_tokenizer_piece(tok, ids[i], &piece, &len) == 0 && len > 0) {
                volatile char c = piece[len - 1];
                (void) c;
            }
            (void) llm_tokenizer_is_control(tok, ids[i]);
        }
    }
    caldera_free(ids);
done:
    llm_tokenizer_free(tok);
    ops->close(inst);
    caldera_inst_free(inst);
    return 0;
}
