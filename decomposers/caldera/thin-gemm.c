// SPDX-License-Identifier: MIT
// thin-gemm.c: C = Xᵀ·B for a thin X (thin-gemm.h): B read in place, X packed once, fused
// multiply-adds in the same order in every kernel. Compiled without -m flags: the AVX2 and
// AVX-512 kernels carry target attributes and run only where the CPU has them.
#include "thin-gemm.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "caldera/caldera-plugin.h"

// Length of the inner-dimension block starting with rem items left (thin-gemm.h "Arithmetic").
static int64_t block_len(int64_t rem) {
    if (rem >= 2 * 320) {
        return 320;
    }
    if (rem > 320) {
        return (rem / 2 + 15) / 16 * 16;
    }
    return rem;
}

void thin_gemm_pack(int trans, int64_t k_dim, int64_t r, const float * x, int64_t ldx, float * xp) {
    const int64_t r8 = thin_gemm_r8(r);
    if (!trans) {
        for (int64_t p = 0; p < k_dim; p++) {
            memcpy(xp + p * r8, x + p * ldx, (size_t) r * sizeof(float));
            for (int64_t i = r; i < r8; i++) {
                xp[p * r8 + i] = 0.0f;
            }
        }
        return;
    }
    // x is (r, K): transpose in tiles of 8 rows × 64 columns
    for (int64_t p0 = 0; p0 < k_dim; p0 += 64) {
        const int64_t p1 = p0 + 64 < k_dim ? p0 + 64 : k_dim;
        for (int64_t i0 = 0; i0 < r8; i0 += 8) {
            for (int64_t p = p0; p < p1; p++) {
                for (int64_t i = i0; i < i0 + 8; i++) {
                    xp[p * r8 + i] = i < r ? x[i * ldx + p] : 0.0f;
                }
            }
        }
    }
}

struct thin_job {
    int64_t       k, r, r8, n;
    const float * xp;    // (k, r8)
    const float * b;     // (k, n), leading dimension ldb
    int64_t       ldb;
    float *       c;     // (r, n), leading dimension ldc
    int64_t       ldc;
    int64_t       pw;    // panel width (columns) of the kernel
    void (*panels)(const struct thin_job * j, int64_t q0, int64_t q1);
};

// Scalar: column panels [q0, q1) of width pw, each element's blocks of fmaf in increasing p.
static void panels_scalar(const struct thin_job * j, int64_t q0, int64_t q1) {
    const int64_t j0 = q0 * j->pw, j1 = q1 * j->pw < j->n ? q1 * j->pw : j->n;
    for (int64_t i = 0; i < j->r; i++) {
        for (int64_t col = j0; col < j1; col++) {
            float tot = 0.0f;
            for (int64_t s = 0; s < j->k;) {
                const int64_t e = s + block_len(j->k - s);
                float acc = 0.0f;
                for (int64_t p = s; p < e; p++) {
                    acc = fmaf(j->xp[p * j->r8 + i], j->b[p * j->ldb + col], acc);
                }
                tot = tot + acc;
                s = e;
            }
            j->c[i * j->ldc + col] = tot;
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#define T_AVX512 __attribute__((target("avx512f")))
#define T_AVX2   __attribute__((target("avx2,fma")))

// Rows of B ahead that the kernels prefetch (a hint: past the end of B it is harmless; the address
// is formed as an integer)
#define THIN_PREFETCH_ROWS 12

// AVX-512: panels of 48 columns (3 vectors), tiles of 8 rows: 24 accumulators.
T_AVX512 static void panels_avx512(const struct thin_job * j, int64_t q0, int64_t q1) {
    const int64_t r8 = j->r8, ldb = j->ldb, ldc = j->ldc;
    for (int64_t q = q0; q < q1; q++) {
        const int64_t j0 = q * 48, w = j->n - j0 < 48 ? j->n - j0 : 48;
        __mmask16 mk[3];
        for (int v = 0; v < 3; v++) {
            const int64_t cols = w - 16 * v;
            mk[v] = cols >= 16 ? (__mmask16) 0xFFFF : cols > 0 ? (__mmask16) ((1u << cols) - 1u) : (__mmask16) 0;
        }
        for (int64_t i0 = 0; i0 < j->r; i0 += 8) {
            const int64_t rows = j->r - i0 < 8 ? j->r - i0 : 8;
            for (int64_t s = 0; s < j->k;) {
                const int64_t e = s + block_len(j->k - s);
                // 24 named accumulators (an array indexed in loops would live in memory)
                __m512 a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32;
                __m512 a40, a41, a42, a50, a51, a52, a60, a61, a62, a70, a71, a72;
                a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = a30 = a31 = a32 = _mm512_setzero_ps();
                a40 = a41 = a42 = a50 = a51 = a52 = a60 = a61 = a62 = a70 = a71 = a72 = _mm512_setzero_ps();
                const float * bp = j->b + s * ldb + j0;
                const float * xq = j->xp + s * r8 + i0;
                for (int64_t p = s; p < e; p++, bp += ldb, xq += r8) {
                    // B's rows are 192 bytes of a long row each: the prefetchers need help
                    const char * pf = (const char *) ((uintptr_t) bp + (uintptr_t) (THIN_PREFETCH_ROWS * ldb * 4));
                    _mm_prefetch(pf, _MM_HINT_T0);
                    _mm_prefetch(pf + 64, _MM_HINT_T0);
                    _mm_prefetch(pf + 128, _MM_HINT_T0);
                    _mm_prefetch(pf + 188, _MM_HINT_T0);
                    const __m512 b0 = _mm512_maskz_loadu_ps(mk[0], bp);
                    const __m512 b1 = _mm512_maskz_loadu_ps(mk[1], bp + 16);
                    const __m512 b2 = _mm512_maskz_loadu_ps(mk[2], bp + 32);
#define THIN_ROW(i)                                           \
                    do {                                      \
                        const __m512 x_ = _mm512_set1_ps(xq[i]); \
                        a##i##0 = _mm512_fmadd_ps(x_, b0, a##i##0); \
                        a##i##1 = _mm512_fmadd_ps(x_, b1, a##i##1); \
                        a##i##2 = _mm512_fmadd_ps(x_, b2, a##i##2); \
                    } while (0)
                    THIN_ROW(0); THIN_ROW(1); THIN_ROW(2); THIN_ROW(3);
                    THIN_ROW(4); THIN_ROW(5); THIN_ROW(6); THIN_ROW(7);
#undef THIN_ROW
                }
                const __m512 acc[8][3] = { { a00, a01, a02 }, { a10, a11, a12 }, { a20, a21, a22 }, { a30, a31, a32 },
                                           { a40, a41, a42 }, { a50, a51, a52 }, { a60, a61, a62 }, { a70, a71, a72 } };
                for (int64_t i = 0; i < rows; i++) {
                    float * cr = j->c + (i0 + i) * ldc + j0;
                    for (int v = 0; v < 3; v++) {
                        const __m512 prev = s == 0 ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mk[v], cr + 16 * v);
                        _mm512_mask_storeu_ps(cr + 16 * v, mk[v], _mm512_add_ps(prev, acc[i][v]));
                    }
                }
                s = e;
            }
        }
    }
}

// AVX2: panels of 24 columns (3 vectors), tiles of 4 rows: 12 accumulators.
T_AVX2 static void panels_avx2(const struct thin_job * j, int64_t q0, int64_t q1) {
    const int64_t r8 = j->r8, ldb = j->ldb, ldc = j->ldc;
    for (int64_t q = q0; q < q1; q++) {
        const int64_t j0 = q * 24, w = j->n - j0 < 24 ? j->n - j0 : 24;
        __m256i mk[3];
        for (int v = 0; v < 3; v++) {
            const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            mk[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32((int) (w - 8 * v)), lane);
        }
        for (int64_t i0 = 0; i0 < j->r; i0 += 4) {
            const int64_t rows = j->r - i0 < 4 ? j->r - i0 : 4;
            for (int64_t s = 0; s < j->k;) {
                const int64_t e = s + block_len(j->k - s);
                __m256 a00, a01, a02, a10, a11, a12, a20, a21, a22, a30, a31, a32;
                a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = a30 = a31 = a32 = _mm256_setzero_ps();
                const float * bp = j->b + s * ldb + j0;
                const float * xq = j->xp + s * r8 + i0;
                for (int64_t p = s; p < e; p++, bp += ldb, xq += r8) {
                    const char * pf = (const char *) ((uintptr_t) bp + (uintptr_t) (THIN_PREFETCH_ROWS * ldb * 4));
                    _mm_prefetch(pf, _MM_HINT_T0);
                    _mm_prefetch(pf + 92, _MM_HINT_T0);
                    const __m256 b0 = _mm256_maskload_ps(bp, mk[0]);
                    const __m256 b1 = _mm256_maskload_ps(bp + 8, mk[1]);
                    const __m256 b2 = _mm256_maskload_ps(bp + 16, mk[2]);
#define THIN_ROW(i)                                           \
                    do {                                      \
                        const __m256 x_ = _mm256_broadcast_ss(xq + i); \
                        a##i##0 = _mm256_fmadd_ps(x_, b0, a##i##0); \
                        a##i##1 = _mm256_fmadd_ps(x_, b1, a##i##1); \
                        a##i##2 = _mm256_fmadd_ps(x_, b2, a##i##2); \
                    } while (0)
                    THIN_ROW(0); THIN_ROW(1); THIN_ROW(2); THIN_ROW(3);
#undef THIN_ROW
                }
                const __m256 acc[4][3] = { { a00, a01, a02 }, { a10, a11, a12 }, { a20, a21, a22 }, { a30, a31, a32 } };
                for (int64_t i = 0; i < rows; i++) {
                    float * cr = j->c + (i0 + i) * ldc + j0;
                    for (int v = 0; v < 3; v++) {
                        const __m256 prev = s == 0 ? _mm256_setzero_ps() : _mm256_maskload_ps(cr + 8 * v, mk[v]);
                        _mm256_maskstore_ps(cr + 8 * v, mk[v], _mm256_add_ps(prev, acc[i][v]));
                    }
                }
                s = e;
            }
        }
    }
}

enum thin_gemm_kernel thin_gemm_best(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        return THIN_GEMM_AVX512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return THIN_GEMM_AVX2;
    }
    return THIN_GEMM_SCALAR;
}
#else
enum thin_gemm_kernel thin_gemm_best(void) {
    return THIN_GEMM_SCALAR;
}
#endif

static void thin_fn(void * arg, int64_t q0, int64_t q1) {
    const struct thin_job * j = arg;
    j->panels(j, q0, q1);
}

void thin_gemm(struct caldera_ctx * ctx, enum thin_gemm_kernel kernel, int64_t k_dim, int64_t r, int64_t n,
               const float * xp, const float * b, int64_t ldb, float * c, int64_t ldc) {
    struct thin_job j = { .k = k_dim, .r = r, .r8 = thin_gemm_r8(r), .n = n, .xp = xp, .b = b, .ldb = ldb,
                          .c = c, .ldc = ldc, .pw = 16, .panels = panels_scalar };
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (kernel == THIN_GEMM_AVX512) {
        j.pw = 48;
        j.panels = panels_avx512;
    } else if (kernel == THIN_GEMM_AVX2) {
        j.pw = 24;
        j.panels = panels_avx2;
    }
#else
    (void) kernel;
#endif
    if (r <= 0 || n <= 0) {
        return;
    }
    if (k_dim <= 0) {
        for (int64_t i = 0; i < r; i++) {
            memset(c + i * ldc, 0, (size_t) n * sizeof(float));
        }
        return;
    }
    const int64_t np = (n + j.pw - 1) / j.pw;
    if (!ctx) {
        thin_fn(&j, 0, np);
        return;
    }
    caldera_parallel_for(ctx, np, 2, thin_fn, &j);
}

// ---------------------------------------------------------------------------------------------
// thin_chol_solve: the blocks of the two substitutions (thin-gemm.h), the same for every kernel.

struct solve_blocks {
    int64_t n;
    int64_t s[32], e[32];   // block b is rows [s[b], e[b]), in the order they are solved
};

static void solve_blocks_fwd(int64_t k, struct solve_blocks * sb) {
    int64_t pos = 0;
    sb->n = 0;
    for (int64_t t = 0; t < k / 16; t++, pos += 16) {
        sb->s[sb->n] = pos;
        sb->e[sb->n++] = pos + 16;
    }
    for (int64_t i = 8; i > 0; i >>= 1) {
        if (k & i) {
            sb->s[sb->n] = pos;
            sb->e[sb->n++] = pos + i;
            pos += i;
        }
    }
}

static void solve_blocks_bwd(int64_t k, struct solve_blocks * sb) {
    sb->n = 0;
    for (int64_t i = 1; i < 16; i *= 2) {
        if (k & i) {
            sb->s[sb->n] = (k & ~(i - 1)) - i;
            sb->e[sb->n] = sb->s[sb->n] + i;
            sb->n++;
        }
    }
    for (int64_t s = (k & ~(int64_t) 15) - 16; s >= 0; s -= 16) {
        sb->s[sb->n] = s;
        sb->e[sb->n++] = s + 16;
    }
}

// One column c (k values, stride ld), scalar.
static void solve_col_scalar(int64_t k, const float * l, const float * inv, const struct solve_blocks * fw,
                             const struct solve_blocks * bw, float * c, int64_t ld) {
    for (int64_t bi = 0; bi < fw->n; bi++) {
        const int64_t s = fw->s[bi], e = fw->e[bi];
        for (int64_t i = s; s > 0 && i < e; i++) {
            float acc = 0.0f;
            for (int64_t p = 0; p < s; p++) {
                acc = fmaf(l[i * k + p], c[p * ld], acc);
            }
            c[i * ld] = c[i * ld] - acc;
        }
        for (int64_t i = s; i < e; i++) {
            const float y = c[i * ld] * inv[i];
            c[i * ld] = y;
            for (int64_t q = i + 1; q < e; q++) {
                c[q * ld] = fmaf(-y, l[q * k + i], c[q * ld]);
            }
        }
    }
    for (int64_t bi = 0; bi < bw->n; bi++) {
        const int64_t s = bw->s[bi], e = bw->e[bi];
        for (int64_t i = s; e < k && i < e; i++) {
            float acc = 0.0f;
            for (int64_t p = e; p < k; p++) {
                acc = fmaf(l[p * k + i], c[p * ld], acc);
            }
            c[i * ld] = c[i * ld] - acc;
        }
        for (int64_t i = e - 1; i >= s; i--) {
            const float x = c[i * ld] * inv[i];
            c[i * ld] = x;
            for (int64_t q = s; q < i; q++) {
                c[q * ld] = fmaf(-x, l[i * k + q], c[q * ld]);
            }
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// The same steps on W columns at once (one vector per row of the block of columns, in cv).
#define THIN_SOLVE_VEC(NAME, ATTR, VT, W, LOADU, STOREU, SET1, FMADD, FNMADD, MUL, SUB, ZERO)                      \
    ATTR static void NAME(int64_t k, const float * l, const float * inv, const struct solve_blocks * fw,              \
                          const struct solve_blocks * bw, float * b, int64_t ldb, int64_t cols) {                     \
        VT cv[THIN_SOLVE_MAX_K];                                                                                     \
        for (int64_t j0 = 0; j0 + W <= cols; j0 += W) {                                                              \
            for (int64_t i = 0; i < k; i++) {                                                                        \
                cv[i] = LOADU(b + i * ldb + j0);                                                                     \
            }                                                                                                        \
            for (int64_t bi = 0; bi < fw->n; bi++) {                                                                 \
                const int64_t s = fw->s[bi], e = fw->e[bi];                                                          \
                for (int64_t i = s; s > 0 && i < e; i++) {                                                           \
                    VT acc = ZERO;                                                                                   \
                    for (int64_t p = 0; p < s; p++) {                                                                \
                        acc = FMADD(SET1(l[i * k + p]), cv[p], acc);                                                 \
                    }                                                                                                \
                    cv[i] = SUB(cv[i], acc);                                                                         \
                }                                                                                                    \
                for (int64_t i = s; i < e; i++) {                                                                    \
                    const VT y = MUL(cv[i], SET1(inv[i]));                                                           \
                    cv[i] = y;                                                                                       \
                    for (int64_t q = i + 1; q < e; q++) {                                                            \
                        cv[q] = FNMADD(y, SET1(l[q * k + i]), cv[q]);                                                \
                    }                                                                                                \
                }                                                                                                    \
            }                                                                                                        \
            for (int64_t bi = 0; bi < bw->n; bi++) {                                                                 \
                const int64_t s = bw->s[bi], e = bw->e[bi];                                                          \
                for (int64_t i = s; e < k && i < e; i++) {                                                           \
                    VT acc = ZERO;                                                                                   \
                    for (int64_t p = e; p < k; p++) {                                                                \
                        acc = FMADD(SET1(l[p * k + i]), cv[p], acc);                                                 \
                    }                                                                                                \
                    cv[i] = SUB(cv[i], acc);                                                                         \
                }                                                                                                    \
                for (int64_t i = e - 1; i >= s; i--) {                                                               \
                    const VT x = MUL(cv[i], SET1(inv[i]));                                                           \
                    cv[i] = x;                                                                                       \
                    for (int64_t q = s; q < i; q++) {                                                                \
                        cv[q] = FNMADD(x, SET1(l[i * k + q]), cv[q]);                                                \
                    }                                                                                                \
                }                                                                                                    \
            }                                                                                                        \
            for (int64_t i = 0; i < k; i++) {                                                                        \
                STOREU(b + i * ldb + j0, cv[i]);                                                                     \
            }                                                                                                        \
        }                                                                                                            \
    }

THIN_SOLVE_VEC(solve_avx512, T_AVX512, __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps,
               _mm512_fnmadd_ps, _mm512_mul_ps, _mm512_sub_ps, _mm512_setzero_ps())
THIN_SOLVE_VEC(solve_avx2, T_AVX2, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps,
               _mm256_fnmadd_ps, _mm256_mul_ps, _mm256_sub_ps, _mm256_setzero_ps())
#undef THIN_SOLVE_VEC
#endif

void thin_chol_solve(enum thin_gemm_kernel kernel, int64_t k, const float * l, float * b, int64_t ldb, int64_t cols) {
    struct solve_blocks fw, bw;
    float inv[THIN_SOLVE_MAX_K];
    int64_t done = 0;   // columns solved by a vector kernel
    solve_blocks_fwd(k, &fw);
    solve_blocks_bwd(k, &bw);
    for (int64_t i = 0; i < k; i++) {
        inv[i] = 1.0f / l[i * k + i];   // the trsm kernels multiply by the packed reciprocal
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (kernel == THIN_GEMM_AVX512) {
        solve_avx512(k, l, inv, &fw, &bw, b, ldb, cols);
        done = cols / 16 * 16;
    } else if (kernel == THIN_GEMM_AVX2) {
        solve_avx2(k, l, inv, &fw, &bw, b, ldb, cols);
        done = cols / 8 * 8;
    }
#else
    (void) kernel;
#endif
    for (int64_t j = done; j < cols; j++) {
        solve_col_scalar(k, l, inv, &fw, &bw, b + j, ldb);
    }
}
