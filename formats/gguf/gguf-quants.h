// SPDX-License-Identifier: MIT
// gguf-quants.h: the ggml tensor types the gguf plugin knows (id, name, block layout) and
// their dequantization to f32. Private to formats/gguf.
#ifndef CALDERA_GGUF_QUANTS_H
#define CALDERA_GGUF_QUANTS_H

#include <stddef.h>
#include <stdint.h>

#include "caldera/caldera-plugin.h"

/** One ggml tensor type as stored in GGUF. */
struct gguf_type {
    uint32_t           id;        ///< ggml_type value in the file
    const char *       name;      ///< ggml's name ("Q4_K")
    int                supported; ///< 1: we read (and dequantize) it; 0: known, not supported
    enum caldera_dtype dtype;     ///< caldera dtype (supported types only)
    int64_t            blck;      ///< elements per block
    size_t             bytes;     ///< bytes per block
    /** Dequantize one block (blck elements) of a block type; NULL for plain types. */
    void (*deq)(const uint8_t * blk, float * y);
};

/** The type with ggml id @p id, or NULL when the id is unknown to this plugin. */
const struct gguf_type * gguf_type_by_id(uint32_t id);
/** The GGUF type used to store caldera dtype @p dt, or NULL when GGUF has none. */
const struct gguf_type * gguf_type_by_dtype(enum caldera_dtype dt);
/** Comma-separated names of the supported types (for error messages). */
const char * gguf_supported_names(void);

/**
 * Convert n elements (n a multiple of t->blck) starting at @p src (any alignment) to f32.
 * Works for every supported type, plain or block. @p dt is the element type of plain data:
 * t->dtype, or an unsigned/bool type of the same width stored under the caldera convention.
 */
void gguf_to_f32(const struct gguf_type * t, enum caldera_dtype dt, const uint8_t * src, float * dst,
                 int64_t n);

#endif
