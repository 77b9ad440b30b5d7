// SPDX-License-Identifier: MIT
// Calibration Hessians (internal): the [calibration] section's options, the f64 accumulation of
// H = Σ x xᵀ / tokens per linear input group, and the content hash that keys the Hessian cache.
#ifndef CALDERA_CALIBRATE_H
#define CALDERA_CALIBRATE_H

#include "internal.h"

enum { CALIB_BOS_MODEL = 0, CALIB_BOS_ON, CALIB_BOS_OFF };

// Options of a [calibration] section (named by [caldera] calibration = NAME).
struct calib_opts {
    char *                  text;        // comma-separated files or folders (sources)
    struct caldera_int_list shares;      // token share of each source (relative weights); empty: equal
    int64_t                 sequences;   // windows in all
    int64_t                 length;      // tokens per window (BOS included when added)
    int64_t                 seed;        // window sampling
    int                     bos;         // CALIB_BOS_*
    int64_t                 batch;       // windows per forward pass
    char *                  cache;       // folder of the Hessian cache ("" : no cache)
    int                     sequential;  // layer l's Hessians with layers < l already compressed
};


// Block of tokens whose x xᵀ is summed in f32 before it is added to the f64 accumulator.
// Error bound (Higham, Thm. 3.5, for each entry of one block's sum of b products, f32 unit
// roundoff u = 2^-24): |fl(S) − S| ≤ γ_b Σ_t |x_ti x_tj|, γ_b = b·u / (1 − b·u) ≈ 3.1e-5 for
// b = 512; the f64 additions of the blocks add at most (tokens / b)·2^-53 relative. So every
// entry of H is within 3.1e-5 · (Σ_t |x_ti x_tj|) / tokens of the exact mean, about
// 3.1e-5 · sqrt(H_ii H_jj) (Cauchy–Schwarz) — far below the 1% ridge that the quantizers add.
#define CALIB_BLOCK_TOKENS 512

// H accumulator of one input group (n = the group's in_features). Only the lower triangle is
// kept, packed row by row (n(n+1)/2 doubles): SmolLM2's 120 groups take 400 MB, not 800.
struct calib_acc {
    int64_t  n;
    int64_t  tokens;
    double * h;         // lower triangle of Σ x xᵀ, packed: (i, j ≤ i) at i(i+1)/2 + j, f64
};

int  calib_acc_init(struct caldera_ctx * ctx, int64_t n, struct calib_acc * acc);
void calib_acc_free(struct calib_acc * acc);
/**
 * Add the rows of x (tokens × n, f32, any ld): H += xᵀx in blocks of CALIB_BLOCK_TOKENS tokens,
 * each an f32 syrk into @p scratch (room for n × n floats, shared by all groups).
 */
int  calib_acc_add(struct caldera_ctx * ctx, struct calib_acc * acc, const struct caldera_tensor * x, float * scratch);
/** out (n × n f32, both triangles) = H / tokens; CALDERA_ERR_NUMERIC without tokens. */
int  calib_acc_mean(const struct calib_acc * acc, float * out);

// 64-bit content hash (word-wise multiply-rotate mixing; not cryptographic: a cache key).
struct calib_hash { uint64_t h; uint64_t len; };
void     calib_hash_init(struct calib_hash * s);
void     calib_hash_bytes(struct calib_hash * s, const void * data, size_t n);
void     calib_hash_str(struct calib_hash * s, const char * str);   // length-prefixed
void     calib_hash_i64(struct calib_hash * s, int64_t v);
uint64_t calib_hash_final(const struct calib_hash * s);
/** Hash a file's contents (CALDERA_ERR_IO with the path and reason). */
int      calib_hash_file(struct caldera_ctx * ctx, struct calib_hash * s, const char * path);

#endif
