// SPDX-License-Identifier: MIT
// Shared helpers for the Check test programs: contexts with captured logs, random matrices,
// temporary files, and a main() that runs a suite and maps the result to an exit code.
#ifndef CALDERA_TESTUTIL_H
#define CALDERA_TESTUTIL_H

#include <check.h>
#include <stdint.h>

#include "caldera/caldera.h"

/** A context whose log goes to an internal buffer (quiet tests); threads = 2 (CALDERA_TEST_THREADS=N: N). */
struct caldera_ctx * tu_ctx(void);
/** The captured log text of contexts made by tu_ctx (since the last tu_log_clear). */
const char * tu_log(void);
void         tu_log_clear(void);

/** Fill n floats with N(0, sigma²) from seed. */
void tu_fill_normal(float * x, int64_t n, float sigma, uint64_t seed);
/** A random (rows, cols) f32 tensor with N(0,1) entries (free with caldera_tensor_free). */
struct caldera_tensor tu_randn(struct caldera_ctx * ctx, int64_t rows, int64_t cols, uint64_t seed);
/**
 * A "real-like" n×n calibration Hessian: X Xᵀ / samples for X with a decaying spectrum plus a
 * ridge, normalised to mean diagonal 1 (low rank plus ridge, like LLM activations).
 */
struct caldera_tensor tu_hessian(struct caldera_ctx * ctx, int64_t n, int64_t rank, double ridge,
                                 uint64_t seed);
/** Max |a - b| over two same-shape f32 tensors. */
double tu_max_abs_diff(const struct caldera_tensor * a, const struct caldera_tensor * b);
/** Frobenius norm of a 2-d f32 tensor (double accumulation). */
double tu_fro(const struct caldera_tensor * a);

/**
 * Out-of-memory sweep of a quantizer: make allocation k = 1, 2, ... fail inside quantize(w) until
 * it succeeds, then the same for dequantize of the resulting pack. Every failure must return
 * CALDERA_ERR_NOMEM with a message containing @p msg_prefix (quantize) or "out of memory"
 * (dequantize). Asserts that quantize eventually succeeds; returns the number of failing
 * quantize calls and stores the number of failing dequantize calls in *dequant_fails.
 */
int tu_quantizer_oom_sweep(struct caldera_ctx * ctx, struct caldera_inst * q, const struct caldera_tensor * w,
                           struct caldera_tensor * w_hat, const char * msg_prefix, int * dequant_fails);

/**
 * Cyclic Jacobi eigen-decomposition of a symmetric s×s double matrix a (destroyed): eigenvalues in
 * w (unsorted), eigenvectors in the columns of v (s×s). An independent reference for LAPACK results.
 */
void tu_jacobi(double * a, int64_t s, double * w, double * v);

/** A fresh temporary directory under the build tree (removed by the OS/CI, not by us). */
const char * tu_tmpdir(void);
/** Path join into a static buffer ring (valid for a few calls). */
const char * tu_path(const char * dir, const char * name);
/** Write text to a file; returns 0 on success. */
int tu_write_file(const char * path, const char * text);
/** Read a whole file into a caldera_malloc buffer (NUL-terminated); NULL on failure. */
char * tu_read_file(const char * path, size_t * len);

/** Run a suite (fork mode unless CK_FORK=no) and return the exit code for main(). */
int tu_run(Suite * s);

#define TU_MAIN(suite_fn) \
    int main(void) { return tu_run(suite_fn()); }

#endif
