// SPDX-License-Identifier: MIT
// tokenizer.h: the text <-> token ids interface of the llama model plugin. One tokenizer is
// built from the GGUF-named keys `tokenizer.ggml.*` that every format reader exposes in its
// metadata (GGUF natively; llama2.c's tok512.bin and HF tokenizer.json are mapped to the same
// keys by their readers). Two families, chosen by `tokenizer.ggml.model`:
//   "llama" - SentencePiece-style score vocabulary (merges by score, byte fallback <0xAB>);
//   "gpt2"  - byte-level BPE with `tokenizer.ggml.merges` (merged by rank) and the
//             pre-tokenizer named by `tokenizer.ggml.pre` (e.g. "smollm", "gpt2", "llama-bpe"),
//             whose regular expressions run on PCRE2.
// Reference behaviour: llama.cpp's `llama-tokenize` on the same GGUF (fixtures in tests).
#ifndef CALDERA_LLAMA_TOKENIZER_H
#define CALDERA_LLAMA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "caldera/caldera-plugin.h"

struct llm_tokenizer;

/**
 * Build a tokenizer from metadata (tokenizer.ggml.model, .tokens, .scores, .token_type,
 * .merges, .pre, .bos_token_id, .eos_token_id, .add_bos_token, ...).
 * @return 0, or CALDERA_ERR_NOT_FOUND (no tokenizer keys), CALDERA_ERR_UNSUPPORTED (a model or
 *         pre-tokenizer that is not implemented: the message names it), CALDERA_ERR_FORMAT
 *         (inconsistent keys), CALDERA_ERR_NOMEM; the message is in ctx.
 */
int  llm_tokenizer_init(struct caldera_ctx * ctx, const struct caldera_meta * meta,
                        struct llm_tokenizer ** out);
/** NULL is a no-op. */
void llm_tokenizer_free(struct llm_tokenizer * tok);

int64_t llm_tokenizer_n_vocab(const struct llm_tokenizer * tok);
int32_t llm_tokenizer_bos(const struct llm_tokenizer * tok);     ///< -1 if none
int32_t llm_tokenizer_eos(const struct llm_tokenizer * tok);     ///< -1 if none
/** Token that ends a chat turn (e.g. <|im_end|>), or the EOS; -1 if none. */
int32_t llm_tokenizer_eot(const struct llm_tokenizer * tok);
/** Whether a BOS is added by default (tokenizer.ggml.add_bos_token, else the family's default). */
int     llm_tokenizer_add_bos(const struct llm_tokenizer * tok);
/** 1 for control / special tokens (token_type CONTROL), which decoding normally hides. */
int     llm_tokenizer_is_control(const struct llm_tokenizer * tok, int32_t id);

/**
 * Encode UTF-8 text of @p len bytes. @p add_bos prepends the BOS; @p parse_special makes added
 * special tokens written in the text (e.g. "<|im_start|>") into their ids instead of plain text.
 * *ids is allocated with caldera_malloc (free with caldera_free); *n its length.
 */
int  llm_tokenizer_encode(const struct llm_tokenizer * tok, const char * text, size_t len,
                          int add_bos, int parse_special, int32_t ** ids, int64_t * n);
/**
 * The bytes token @p id stands for, as text (SentencePiece "▁" as a space, <0xAB> byte tokens as
 * that byte, GPT-2 byte-level symbols mapped back to bytes). The pointer stays valid while the
 * tokenizer lives. Concatenating the pieces of a sequence gives its text (a leading space that
 * SentencePiece adds is the caller's to strip).
 */
int  llm_tokenizer_piece(const struct llm_tokenizer * tok, int32_t id, const char ** piece,
                         size_t * len);

#endif // CALDERA_LLAMA_TOKENIZER_H
