// SPDX-License-Identifier: MIT
// caldera-kernels.h: fused CPU kernels that multiply activations by a compressed matrix without
// expanding it (E8P 2/3/4-bit codes, uniform bit-packed codes, f16, f32), and the randomized
// Hadamard transform applied to activations. Exported by libcaldera for plugins that implement
// the optional fused-layer ops (caldera-plugin.h: linear_*, act_*). Variants (portable C, AVX2 +
// FMA + F16C, AVX-512) are chosen at run time from the CPU; see core/src/kernels/README.md.
#ifndef CALDERA_KERNELS_H
#define CALDERA_KERNELS_H

#include <stdint.h>

#include "caldera/caldera-plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/** Instruction-set variants of the kernels, in increasing order. */
enum caldera_kernel_isa {
    CALDERA_ISA_C      = 0,  ///< portable C (any CPU)
    CALDERA_ISA_AVX2   = 1,  ///< AVX2 + FMA + F16C
    CALDERA_ISA_AVX512 = 2,  ///< AVX-512 F, BW, VL, DQ (plus the AVX2 set)
    CALDERA_ISA_COUNT
};

/** Name of a variant: "c", "avx2", "avx512"; "?" for an invalid value. */
const char * caldera_kernel_isa_name(int isa);
/** 1 if this CPU can run @p isa. */
int caldera_kernel_isa_supported(int isa);
/**
 * The variant kernels use: the best the CPU supports, or the one the environment variable
 * CALDERA_KERNELS (c | avx2 | avx512) names, if the CPU supports it, or the one forced by
 * caldera_kernel_set_isa. Read once and cached.
 */
int caldera_kernel_isa(void);
/**
 * Force a variant (tests and benchmarks); -1 goes back to the automatic choice.
 * CALDERA_ERR_UNSUPPORTED if the CPU cannot run it. Process-wide: not for concurrent use.
 */
int caldera_kernel_set_isa(int isa);
/**
 * Int8 activations in the E8P products of one position (batch 1, 2- and 4-bit codes): the GEMV
 * (cols a multiple of 32) quantizes x with one step d = max|x|/127 and sums the codes' values
 * times xq in integers (error per output <= s_r Σ_c |v_rc| d/2); the transposed product (up to 256
 * rows, as CALDERA's Lᵀ) quantizes x_r s_r likewise. The same integer sums in every variant
 * (AVX512-VBMI/VNNI/BITALG, portable C). On by default where the variant has the SIMD kernel
 * (avx512 on a CPU with VBMI, VNNI and BITALG: 3x the f32 GEMV), off elsewhere;
 * CALDERA_KERNELS_Q8=0|1 or caldera_kernel_set_q8 overrides. Process-wide.
 */
int caldera_kernel_q8(void);
/** Turn the int8 activation path on (1) or off (0); -1: back to the environment's (or the variant's) choice. */
void caldera_kernel_set_q8(int on);

/** Storage of a compressed matrix as the kernels read it. */
enum caldera_kw_type {
    CALDERA_KW_F32     = 0,  ///< dense f32
    CALDERA_KW_F16     = 1,  ///< dense IEEE half
    CALDERA_KW_E8P     = 2,  ///< E8P codes (quantizers/e8): 2, 3 or 4 bits per weight
    CALDERA_KW_UNIFORM = 3,  ///< bit-packed scalar codes (quantizers/uniform)
};

/** Level rule of uniform codes: value of code k with step d (and integer zero point z). */
enum caldera_kw_uniform_rule {
    CALDERA_KW_UNI_MIDRISE   = 0,  ///< (k - (2^(b-1) - 1/2)) d       (symmetric, levels=full)
    CALDERA_KW_UNI_REFERENCE = 1,  ///< (k - (2^(b-1) - 1)) d         (symmetric, levels=reference)
    CALDERA_KW_UNI_ASYM      = 2,  ///< (k - z) d, z a u8 zero point  (asymmetric, GPTQ's)
};

/** Which weights one scale covers (uniform). */
enum caldera_kw_uniform_gran {
    CALDERA_KW_GRAN_TENSOR = 0, CALDERA_KW_GRAN_ROW = 1, CALDERA_KW_GRAN_COLUMN = 2,
    CALDERA_KW_GRAN_GROUP = 3,
};

/**
 * A matrix Ŵ (rows × cols) in compressed form. Every pointer is a view (e.g. into an mmapped
 * file); nothing is owned or copied. The kernels compute Y = X Ŵᵀ.
 */
struct caldera_kw {
    enum caldera_kw_type type;
    int64_t              rows, cols;
    // F32, F16: (rows, cols) row-major with row stride ld elements
    const void *         data;
    int64_t              ld;
    // E8P (cols % 8 == 0). Ŵ[r, 8b + i] = s_r · value_i(codes[r·cols/8 + b], codes2[...]).
    int                  bits;       ///< E8P: 2, 3 or 4; UNIFORM: 1..8
    const uint16_t *     codes;      ///< E8P (rows, cols/8) u16 codes
    const void *         codes2;     ///< E8P 4 bits: (rows, cols/8) u16; 3 bits: u8; else NULL
    const float *        e8_grid;    ///< (256, 8) stored patterns: (nibble_j − 8)/2, nibble order j
    const float *        e8_rvq1;    ///< (256, 8) "E8 1-bit" residual points, output order (3 bits)
    float                e8_rho;     ///< residual divisor (3.45 at 4 bits, 2.04 at 3 bits)
    // Scales (E8P, UNIFORM): f16 or f32, count given by the granularity
    const void *         scale;      ///< E8P: (1) or (rows); UNIFORM: see gran
    const uint8_t *      zero;       ///< UNIFORM ASYM: u8 zero points, one per scale; else NULL
    enum caldera_dtype   scale_dtype;///< F16 or F32
    int                  scale_per_row; ///< E8P: 1 = (rows) scales, 0 = one
    // UNIFORM: code of element e = r·cols + c at stream bits [e·bits, e·bits + bits), LSB first
    const uint8_t *      stream;
    int                  rule;       ///< enum caldera_kw_uniform_rule
    int                  gran;       ///< enum caldera_kw_uniform_gran
    int64_t              group_size; ///< GRAN_GROUP: weights per group along a row
};

/**
 * Check a descriptor's fields (shape, bits, pointers, dtypes); CALDERA_ERR_INVAL with a message
 * in the context (which may be NULL) naming the field and what is allowed.
 */
int caldera_kw_check(struct caldera_ctx * ctx, const struct caldera_kw * w);

/**
 * Y (batch × rows, row stride ldy) = X (batch × cols, row stride ldx) Ŵᵀ; flags
 * (CALDERA_LINEAR_*): ACCUMULATE adds to Y; TRANSPOSE computes Y (batch × cols) = X (batch ×
 * rows) Ŵ instead. Without TRANSPOSE, batch 1 runs a GEMV that decodes each codeword in
 * registers; larger batches (and TRANSPOSE) decode row tiles of Ŵ to f32 once and multiply them
 * with sgemm (sgemv for one row). Uses the context's threads.
 */
int caldera_kw_matmul(struct caldera_ctx * ctx, const struct caldera_kw * w, const float * x, int64_t batch,
                      int64_t ldx, float * y, int64_t ldy, unsigned flags);

/**
 * caldera_kw_matmul for a plugin's linear_apply: checks x (B × cols) and y (B × rows), or x (B ×
 * rows) and y (B × cols) with TRANSPOSE, 2-d f32 CPU views, with errors in the instance's name. CALDERA_ERR_INVAL when w is NULL.
 */
int caldera_kw_apply(struct caldera_inst * inst, const struct caldera_kw * w, const struct caldera_tensor * x,
                     struct caldera_tensor * y, unsigned flags);

/** The reference for tests: dst (rows × cols, row stride ld) = Ŵ, decoded to f32. */
int caldera_kw_decode(struct caldera_ctx * ctx, const struct caldera_kw * w, float * dst, int64_t ld);

/** Bytes of compressed storage the kernels read for Ŵ (codes, scales, zeros), for reports. */
uint64_t caldera_kw_bytes(const struct caldera_kw * w);

/**
 * One side of the randomized Hadamard transform acting on activations (transforms/rht):
 * size n' = k · p2 (p2 a power of two), U = (H_K ⊗ S_p2)/√n', signs s (n'), original size n ≤ n'.
 */
struct caldera_kw_rht {
    int64_t         n, np;   ///< original and padded size
    int64_t         k, p2;   ///< n' = k · p2
    const float *   hk;      ///< (k, k) ±1 core, row-major; NULL when k == 1
    const uint8_t * sign;    ///< (⌈n'/8⌉) bit i = 1 when s_i = −1 (LSB first)
};

/**
 * Input side: X̃ (batch × n', stride ldo) = (Uᵀ S pad(X)) row by row, X (batch × n, stride ldx);
 * out must not overlap x.
 * With the weight transformed as W̃ = U_mᵀ S_V W S_U U_n, W x = S_V U_m W̃ (U_nᵀ S_U x).
 */
int caldera_kw_rht_in(struct caldera_ctx * ctx, const struct caldera_kw_rht * t, const float * x, int64_t batch,
                      int64_t ldx, float * out, int64_t ldo);
/**
 * Output side: Y (batch × n, stride ldo) = crop(S U Ỹ) row by row, Ỹ (batch × n', stride ldy),
 * overwritten (used as scratch). Y += instead of = when @p accumulate.
 */
int caldera_kw_rht_out(struct caldera_ctx * ctx, const struct caldera_kw_rht * t, float * yt, int64_t batch,
                       int64_t ldy, float * out, int64_t ldo, int accumulate);

// ---------------------------------------------------------------------------------------------
// Fused layers through instances (what a wrapping plugin or a runtime calls).

/**
 * Quantizer @p q's linear_init (caldera-plugin.h) for Ŵ (rows × cols) from pack;
 * CALDERA_ERR_UNSUPPORTED with a message when q declares no fused form.
 */
int  caldera_quantizer_linear_init(struct caldera_inst * q, const struct caldera_pack * pack, int64_t rows,
                                   int64_t cols, void ** state);
/** q's linear_apply (flags: CALDERA_LINEAR_*). */
int  caldera_quantizer_linear_apply(struct caldera_inst * q, void * state, const struct caldera_tensor * x,
                                    struct caldera_tensor * y, unsigned flags);
/** q's linear_free; NULL state is a no-op. */
void caldera_quantizer_linear_free(struct caldera_inst * q, void * state);

// ---------------------------------------------------------------------------------------------
// Running a compressed file (caldera-pipe output) in a loaded model.

/** Stage instances, packs and the mapped file behind a model's compressed layers. */
struct caldera_compressed;

/** How caldera_model_load_compressed reads a file (ABI-like: grows at the end). */
struct caldera_compressed_params {
    uint32_t     struct_size;  ///< sizeof(struct caldera_compressed_params)
    const char * format;       ///< format plugin of the file, or NULL for "safetensors"
    int          dense;        ///< 1: reconstruct every layer to a dense f32 Ŵ (the reference path)
};

/** What was replaced. */
struct caldera_compressed_report {
    int64_t  n_fused;   ///< layers running fused kernels
    int64_t  n_dense;   ///< layers decoded to dense f32 (requested, or no fused form)
    uint64_t bytes;     ///< resident bytes of the replaced layers' weights (compressed tensors, dense copies)
    uint64_t params;    ///< their parameter count (rows × cols summed)
    uint64_t stored_bits; ///< their stored bits in the file (the packed tensors: codes, scales, factors; what a
                          ///< pipeline report's bits_per_param counts), whether they run fused or dense
};

/**
 * Replace every linear layer of the loaded @p model whose weight N is stored compressed in the
 * caldera-pipe output @p path (tensors "N.<section>.<suffix>") by its compressed form: the stages
 * the file records (caldera.config) are instantiated; each layer keeps views of the mapped file
 * (no dense copy) and runs the fused kernels, or is decoded to dense f32 when params->dense (or,
 * logged once, when its last stage declares no fused form). Free the model first, then *out with
 * caldera_compressed_free. On failure *out may still be set (some layers were replaced): free the
 * model, then *out.
 */
int  caldera_model_load_compressed(struct caldera_ctx * ctx, struct caldera_inst * model, const char * path,
                                   const struct caldera_compressed_params * params, struct caldera_compressed ** out,
                                   struct caldera_compressed_report * report);
void caldera_compressed_free(struct caldera_compressed * h);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif // CALDERA_KERNELS_H
