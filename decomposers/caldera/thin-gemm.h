// SPDX-License-Identifier: MIT
// thin-gemm.h: C (r×N) = Xᵀ·B for a thin X (K×r, r = the rank, a few dozen) and a large B (K×N),
// the products of CALDERA's inner iteration (R·H, R·Pᵀ, Lᵀ·Res) without BLAS's repacking of B.
//
// A BLAS GEMM copies ("packs") both operands into its blocked layout on every call; with one
// dimension r = 32 that copy of the large operand costs as much time as the 2r FLOPs per element
// it feeds (about a third of a CALDERA decomposition on 576 × 576 was OpenBLAS's packing and
// kernel for these products). Here only the thin X is repacked (K × r8, r8 = r rounded up to 8,
// zero-padded), once per X and shared by every B it multiplies; B is read in place, row by row.
//
// Arithmetic (the same in the AVX-512, AVX2 and scalar paths, so all give the same bits): each
// C[i][j] is a sum over p of X[p][i]·B[p][j] as fused multiply-adds in increasing p, restarted
// from 0 at the block boundaries of the inner dimension K (blocks of 320; a remainder of 321..639
// split in two halves rounded up to 16), and the block sums are added to C in order, starting
// from 0. These are the blocks of OpenBLAS's sgemm on AVX-512 CPUs (its GEMM_Q = 320 and unroll
// 16), so on those the results equal OpenBLAS's bit for bit when OpenBLAS takes its blocked path
// (r·N·K >= THIN_GEMM_MIN_MNK; below it OpenBLAS has other kernels, so callers keep cblas there).
#ifndef CALDERA_DECOMPOSERS_THIN_GEMM_H
#define CALDERA_DECOMPOSERS_THIN_GEMM_H

#include <stdint.h>

struct caldera_ctx;

/** Smallest r·N·K for which the callers use the thin product (OpenBLAS's blocked path above it). */
#define THIN_GEMM_MIN_MNK (28.0 * 512.0 * 512.0)

/** Rows of the packed X: r rounded up to the row tile (8). */
static inline int64_t thin_gemm_r8(int64_t r) {
    return (r + 7) / 8 * 8;
}

/**
 * Pack the thin operand: xp (K × r8) = X zero-padded, X given as (K × r) with leading dimension
 * ldx (trans = 0, e.g. L of m × k) or as Xᵀ (r × K) with leading dimension ldx (trans = 1, e.g. R
 * of k × n).
 */
void thin_gemm_pack(int trans, int64_t k_dim, int64_t r, const float * x, int64_t ldx, float * xp);

/** Kernels: the scalar loop (fmaf), AVX2 with FMA, AVX-512F. The same bits from each. */
enum thin_gemm_kernel { THIN_GEMM_SCALAR = 0, THIN_GEMM_AVX2 = 1, THIN_GEMM_AVX512 = 2 };

/** The fastest kernel this CPU runs. */
enum thin_gemm_kernel thin_gemm_best(void);

/**
 * c (r × N, leading dimension ldc) = xpᵀ · b, xp from thin_gemm_pack (K × r8), b (K × N) with
 * leading dimension ldb, by the given kernel (one the CPU runs: at most thin_gemm_best()). Column
 * panels run on the context's threads (ctx NULL: serially).
 */
void thin_gemm(struct caldera_ctx * ctx, enum thin_gemm_kernel kernel, int64_t k_dim, int64_t r, int64_t n,
               const float * xp, const float * b, int64_t ldb, float * c, int64_t ldc);

/** Largest k that thin_chol_solve takes (one block of OpenBLAS's trsm: its GEMM_Q). */
#define THIN_SOLVE_MAX_K 320

/**
 * Solve L·Lᵀ·X = B in place: l (k × k, row-major lower triangle, the Cholesky factor of the k × k
 * normal matrix; k <= THIN_SOLVE_MAX_K), b (k × cols, leading dimension ldb), the columns of B
 * independent. The arithmetic of LAPACK's spotrs over OpenBLAS's generic strsm kernels: forward
 * then backward substitution in blocks of 16 rows (then 8, 4, 2, 1 for the rest: forward from the
 * top, backward the rest first from the bottom), each block first less the earlier blocks' part
 * as one FMA chain per element, then solved row by row with the reciprocal of the diagonal and
 * fused updates of the rows after it. Bit-identical to LAPACKE_spotrs on OpenBLAS with those
 * kernels (tested in test-caldera where the core is AVX-512 OpenBLAS); here vectorised across
 * columns of B, which are independent, and without LAPACKE's two transposes per call.
 */
void thin_chol_solve(enum thin_gemm_kernel kernel, int64_t k, const float * l, float * b, int64_t ldb, int64_t cols);

#endif
