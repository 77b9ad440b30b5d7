// SPDX-License-Identifier: MIT
// kernels.c: run-time choice of the kernel variant (CPU features, CALDERA_KERNELS override), the
// argument checks, and the drivers: GEMV (batch 1: codewords decoded in registers, rows split
// over the context's threads), batched GEMM (row tiles of Ŵ decoded to f32 once, then sgemm over
// all positions), and the randomized Hadamard transform on activations.
#include <cblas.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../internal.h"
#include "../linalg_cuda.h"
#include "kernels-impl.h"

#ifdef CALDERA_KW_X86
#include <cpuid.h>
#endif

// ---------------------------------------------------------------------------------------------
// Variant choice

static atomic_int kw_isa_cached = -1;  // -1: not chosen yet
static atomic_int kw_isa_forced = -1;

const char * caldera_kernel_isa_name(int isa) {
    switch (isa) {
    case CALDERA_ISA_C:      return "c";
    case CALDERA_ISA_AVX2:   return "avx2";
    case CALDERA_ISA_AVX512: return "avx512";
    default:                 return "?";
    }
}

#ifdef CALDERA_KW_X86
// F16C from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports does not know "f16c".
static int kw_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#endif

int caldera_kernel_isa_supported(int isa) {
    switch (isa) {
    case CALDERA_ISA_C:
        return 1;
#ifdef CALDERA_KW_X86
    case CALDERA_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt") &&
               kw_has_f16c();
    case CALDERA_ISA_AVX512:
        return caldera_kernel_isa_supported(CALDERA_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq");
#endif
    default:
        return 0;
    }
}

int caldera_kernel_isa(void) {
    int f = atomic_load(&kw_isa_forced);
    if (f >= 0) {
        return f;
    }
    int c = atomic_load(&kw_isa_cached);
    if (c >= 0) {
        return c;
    }
    int best = CALDERA_ISA_C;
    for (int i = CALDERA_ISA_COUNT - 1; i > CALDERA_ISA_C; i--) {
        if (caldera_kernel_isa_supported(i)) {
            best = i;
            break;
        }
    }
    // CALDERA_KERNELS=c|avx2|avx512 asks for a variant; one the CPU lacks is ignored
    const char * env = getenv("CALDERA_KERNELS");
    for (int i = 0; env && i < CALDERA_ISA_COUNT; i++) {
        if (strcasecmp(env, caldera_kernel_isa_name(i)) == 0 && caldera_kernel_isa_supported(i)) {
            best = i;
        }
    }
    atomic_store(&kw_isa_cached, best);
    return best;
}

int caldera_kernel_set_isa(int isa) {
    if (isa < 0) {
        atomic_store(&kw_isa_forced, -1);
        return 0;
    }
    if (isa >= CALDERA_ISA_COUNT || !caldera_kernel_isa_supported(isa)) {
        return CALDERA_ERR_UNSUPPORTED;
    }
    atomic_store(&kw_isa_forced, isa);
    return 0;
}

#ifdef CALDERA_KW_X86
// AVX512-VNNI, -VBMI and -BITALG: the int8 E8P kernel (kern-avx512.c).
static int kw_has_vbmi(void) {
    static atomic_int cached = -1;
    int v = atomic_load(&cached);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
            __builtin_cpu_supports("avx512bitalg") ? 1 : 0;
        atomic_store(&cached, v);
    }
    return v;
}
#endif

const struct kw_variant * caldera_kw_variant(void) {
    switch (caldera_kernel_isa()) {
#ifdef CALDERA_KW_X86
    case CALDERA_ISA_AVX2:   return &caldera_kw_variant_avx2;
    case CALDERA_ISA_AVX512: return kw_has_vbmi() ? &caldera_kw_variant_avx512 : &caldera_kw_variant_avx512_novnni;
#endif
    default:                 return &caldera_kw_variant_c;
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors

static int64_t kw_nscale(const struct caldera_kw * w) {
    if (w->type == CALDERA_KW_E8P) {
        return w->scale_per_row ? w->rows : 1;
    }
    switch (w->gran) {
    case CALDERA_KW_GRAN_TENSOR: return 1;
    case CALDERA_KW_GRAN_ROW:    return w->rows;
    case CALDERA_KW_GRAN_COLUMN: return w->cols;
    default:                     return w->rows * ((w->cols + w->group_size - 1) / w->group_size);
    }
}

static uint64_t kw_stream_bytes(const struct caldera_kw * w) {
    return ((uint64_t) w->rows * (uint64_t) w->cols * (uint64_t) w->bits + 7) / 8;
}

uint64_t caldera_kw_bytes(const struct caldera_kw * w) {
    const uint64_t rc = (uint64_t) w->rows * (uint64_t) w->cols;
    const uint64_t sb = w->scale_dtype == CALDERA_DTYPE_F16 ? 2 : 4;
    switch (w->type) {
    case CALDERA_KW_F32: return 4 * rc;
    case CALDERA_KW_F16: return 2 * rc;
    case CALDERA_KW_E8P:
        return rc / 8 * (2 + (w->bits == 4 ? 2 : w->bits == 3 ? 1 : 0)) + (uint64_t) kw_nscale(w) * sb;
    case CALDERA_KW_UNIFORM:
        return kw_stream_bytes(w) + (uint64_t) kw_nscale(w) * (sb + (w->zero ? 1 : 0));
    }
    return 0;
}

int caldera_kw_check(struct caldera_ctx * ctx, const struct caldera_kw * w) {
    if (!w) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: the matrix descriptor is NULL");
    }
    if (w->rows < 1 || w->cols < 1) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: shape %" PRId64 "x%" PRId64 "; allowed: rows, cols >= 1",
                                 w->rows, w->cols);
    }
    const int scaled = w->type == CALDERA_KW_E8P || w->type == CALDERA_KW_UNIFORM;
    if (scaled && (!w->scale || (w->scale_dtype != CALDERA_DTYPE_F16 && w->scale_dtype != CALDERA_DTYPE_F32))) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: scale is %s %s; allowed: f16 or f32 data",
                                 w->scale ? "set," : "NULL,", caldera_dtype_name(w->scale_dtype));
    }
    switch (w->type) {
    case CALDERA_KW_F32:
    case CALDERA_KW_F16:
        if (!w->data || w->ld < w->cols) {
            return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: dense data %s with ld %" PRId64
                                     "; allowed: data set, ld >= cols (%" PRId64 ")", w->data ? "set" : "NULL", w->ld,
                                     w->cols);
        }
        return 0;
    case CALDERA_KW_E8P:
        if (w->cols % 8 != 0 || w->bits < 2 || w->bits > 4) {
            return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: E8P with cols=%" PRId64 ", bits=%d; allowed: "
                                     "cols a multiple of 8, bits 2..4", w->cols, w->bits);
        }
        if (!w->codes || !w->e8_grid || (w->bits > 2 && !w->codes2) || (w->bits == 3 && !w->e8_rvq1) ||
            (w->bits > 2 && !(w->e8_rho > 0.0f))) {
            return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: E8P %d-bit needs codes, e8_grid%s",
                                     w->bits, w->bits == 4 ? ", codes2, e8_rho" : w->bits == 3 ? ", codes2, e8_rvq1, e8_rho" : "");
        }
        return 0;
    case CALDERA_KW_UNIFORM:
        if (w->bits < 1 || w->bits > 8 || !w->stream || w->rule < 0 || w->rule > 2 || w->gran < 0 || w->gran > 3 ||
            (w->gran == CALDERA_KW_GRAN_GROUP && w->group_size < 1) || ((w->rule == CALDERA_KW_UNI_ASYM) != (w->zero != NULL)) ||
            (w->rule == CALDERA_KW_UNI_REFERENCE && w->bits < 2)) {
            return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: uniform with bits=%d rule=%d gran=%d group_size=%"
                                     PRId64 "%s; allowed: bits 1..8 (2..8 for the reference rule), a code stream, "
                                     "a zero tensor exactly for the asymmetric rule, group_size >= 1",
                                     w->bits, w->rule, w->gran, w->group_size, w->stream ? "" : ", no stream");
        }
        return 0;
    }
    return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: unknown matrix type %d", (int) w->type);
}

// ---------------------------------------------------------------------------------------------
// Decoding rows to f32

#define KW_SEG 1024  // columns of a uniform row decoded at a time (a 4 KiB stack buffer)

static void kw_decode_rows(const struct kw_variant * v, const struct caldera_kw * w, int64_t r0, int64_t r1,
                           float * dst, int64_t ld) {
    switch (w->type) {
    case CALDERA_KW_F32:
        for (int64_t r = r0; r < r1; r++) {
            memcpy(dst + (r - r0) * ld, (const float *) w->data + r * w->ld, (size_t) w->cols * sizeof(float));
        }
        break;
    case CALDERA_KW_F16:
        v->f16_decode(w, r0, r1, dst, ld);
        break;
    case CALDERA_KW_E8P:
        v->e8p_decode(w, r0, r1, dst, ld);
        break;
    case CALDERA_KW_UNIFORM:
        for (int64_t r = r0; r < r1; r++) {
            v->uni_decode_row(w, r, 0, w->cols, dst + (r - r0) * ld);
        }
        break;
    }
}

struct kw_decode_job {
    const struct kw_variant * v;
    const struct caldera_kw * w;
    int64_t                   r0;   // first row of the tile
    float *                   dst;  // (rows of the tile, cols), row stride ld
    int64_t                   ld;
};

static void kw_decode_job_run(void * arg, int64_t i0, int64_t i1) {
    const struct kw_decode_job * j = arg;
    kw_decode_rows(j->v, j->w, j->r0 + i0, j->r0 + i1, j->dst + i0 * j->ld, j->ld);
}

int caldera_kw_decode(struct caldera_ctx * ctx, const struct caldera_kw * w, float * dst, int64_t ld) {
    int rc = caldera_kw_check(ctx, w);
    if (rc < 0) {
        return rc;
    }
    if (!dst || ld < w->cols) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: decode destination %s, ld %" PRId64
                                 "; allowed: set, ld >= cols (%" PRId64 ")", dst ? "set" : "NULL", ld, w->cols);
    }
    struct kw_decode_job job = { caldera_kw_variant(), w, 0, dst, ld };
    caldera_parallel_for(ctx, w->rows, 1 + 16384 / w->cols, kw_decode_job_run, &job);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// GEMV (batch 1)

struct kw_gemv_job {
    const struct kw_variant * v;
    const struct caldera_kw * w;
    const float *             x;   // (cols)
    const float *             xp;  // E8P: x permuted to nibble order (cols)
    const float *             xs;  // E8P: block sums (cols/8)
    float *                   y;   // (rows)
    int                       acc;
    struct kw_q8s             q8;  // E8P with int8 activations (xpl set), else unused
    const float *             q8dl;    // int8: the steps of x's 32-column blocks
    float                     q8corr;  // int8: 17 Σ_k d_k Σ xq_k
};

static void kw_q8_rows(const struct kw_gemv_job * j, int64_t r0, int64_t r1);

static void kw_gemv_run(void * arg, int64_t r0, int64_t r1) {
    const struct kw_gemv_job * j = arg;
    const struct caldera_kw *  w = j->w;
    switch (w->type) {
    case CALDERA_KW_F32:
        for (int64_t r = r0; r < r1; r++) {
            float d = j->v->dot((const float *) w->data + r * w->ld, j->x, w->cols);
            j->y[r] = j->acc ? j->y[r] + d : d;
        }
        break;
    case CALDERA_KW_F16:
        j->v->f16_gemv(w, j->x, r0, r1, j->y + r0, j->acc);
        break;
    case CALDERA_KW_E8P:
        if (j->q8.xpl) {
            kw_q8_rows(j, r0, r1);
        } else {
            j->v->e8p_gemv(w, j->xp, j->xs, r0, r1, j->y + r0, j->acc);
        }
        break;
    case CALDERA_KW_UNIFORM: {
        float buf[KW_SEG];
        for (int64_t r = r0; r < r1; r++) {
            float d = 0.0f;
            for (int64_t c0 = 0; c0 < w->cols; c0 += KW_SEG) {
                int64_t c1 = c0 + KW_SEG < w->cols ? c0 + KW_SEG : w->cols;
                j->v->uni_decode_row(w, r, c0, c1, buf);
                d += j->v->dot(buf, j->x + c0, c1 - c0);
            }
            j->y[r] = j->acc ? j->y[r] + d : d;
        }
        break;
    }
    }
}

// ---------------------------------------------------------------------------------------------
// Int8 activations for the E8P GEMV (kernels-impl.h: struct kw_q8s)

static atomic_int kw_q8_forced = -1;

int caldera_kernel_q8(void) {
    int f = atomic_load(&kw_q8_forced);
    if (f >= 0) {
        return f;
    }
    const char * env = getenv("CALDERA_KERNELS_Q8");   // README.md, "Int8 activations"
    if (env && (!strcmp(env, "0") || !strcmp(env, "1"))) {
        return env[0] == '1';
    }
    return caldera_kw_variant()->q8_default;
}

void caldera_kernel_set_q8(int on) {
    atomic_store(&kw_q8_forced, on < 0 ? -1 : on != 0);
}

// The planes' tables g = 4·grid[a][e] of the first grid seen; other grids are compared with that
// one once (a grid not on the 1/4 lattice with |4 grid| <= 16 gets no int8 path).
#define KW_Q8_GRIDS 16
static int8_t          kw_q8_tabs[8 * 256] __attribute__((aligned(64)));
static int8_t          kw_q8_mags[2 * 256] __attribute__((aligned(64)));   // struct kw_q8s, mags
static int             kw_q8_mags_ok;
static float           kw_q8_grid[256 * 8];
static int             kw_q8_state;            // 0: not built, 1: built, -1: the grid does not fit
static const float *   kw_q8_ok[KW_Q8_GRIDS];  // grid pointers known equal to kw_q8_grid
static atomic_int      kw_q8_nok;
static pthread_mutex_t kw_q8_mu = PTHREAD_MUTEX_INITIALIZER;

static int kw_q8_build(const float * grid) {
    for (int a = 0; a < 256; a++) {
        for (int e = 0; e < 8; e++) {
            float g = 4.0f * grid[a * 8 + e];
            if (!(g >= -(KW_Q8_OFFSET - 1) && g <= KW_Q8_OFFSET - 1) || g != nearbyintf(g)) {
                return -1;
            }
            kw_q8_tabs[e * 256 + a] = (int8_t) (int) g;
        }
    }
    kw_q8_mags_ok = 1;
    for (int a = 0; a < 256; a++) {
        int f[2] = { 0, 0 }, sum = 0;
        for (int e = 0; e < 8; e++) {
            const int g = kw_q8_tabs[e * 256 + a], m = ((g < 0 ? -g : g) - 2) / 4;
            sum += m;
            f[e / 4] |= m << (2 * (e % 4));
            kw_q8_mags_ok &= (g < 0 ? -g : g) == 2 + 4 * m && m >= 0 && m <= 2 && (g >= 0 || e == 7);
        }
        kw_q8_mags_ok &= (kw_q8_tabs[7 * 256 + a] < 0) == (sum & 1);
        kw_q8_mags[a]       = (int8_t) f[0];
        kw_q8_mags[256 + a] = (int8_t) f[1];
    }
    memcpy(kw_q8_grid, grid, sizeof(kw_q8_grid));
    return 1;
}

// The tables for w's grid, or NULL.
static const int8_t * kw_q8_table(const struct caldera_kw * w) {
    int n = atomic_load(&kw_q8_nok);
    for (int i = 0; i < n; i++) {
        if (kw_q8_ok[i] == w->e8_grid) {
            return kw_q8_tabs;
        }
    }
    const int8_t * t = NULL;
    pthread_mutex_lock(&kw_q8_mu);
    if (kw_q8_state == 0) {
        kw_q8_state = kw_q8_build(w->e8_grid);
    }
    if (kw_q8_state > 0 && !memcmp(kw_q8_grid, w->e8_grid, sizeof(kw_q8_grid))) {
        t = kw_q8_tabs;
        n = atomic_load(&kw_q8_nok);
        if (n < KW_Q8_GRIDS) {
            kw_q8_ok[n] = w->e8_grid;
            atomic_store(&kw_q8_nok, n + 1);
        }
    }
    pthread_mutex_unlock(&kw_q8_mu);
    return t;
}

static int64_t kw_gcd64(int64_t nb) {
    int64_t a = 64, b = nb;
    while (b) {
        int64_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

// Rows per block of lanes (a multiple of the row alignment ra; KW_Q8_LANES int32 on the stack).
#define KW_Q8_LANES 4096

// Rows [r0, r1) (r0 a multiple of ra = 64 / gcd(nb, 64), so row r0 starts a period) of the int8
// GEMV: lanes of each block of rows, then the rows' integer sums, scaled.
static void kw_q8_rows(const struct kw_gemv_job * j, int64_t r0, int64_t r1) {
    const struct caldera_kw * w  = j->w;
    const int64_t             nb = w->cols / 8, ra = 64 / kw_gcd64(nb), nl = nb / 4;
    const float               irho = w->bits == 4 ? 1.0f / w->e8_rho : 0.0f;
    int64_t                   kb = (KW_Q8_LANES * 4 / nb) / ra * ra;
    int32_t                   lanes[KW_Q8_LANES + 16] __attribute__((aligned(64)));
    kb = kb < ra ? ra : kb;
    for (int64_t rb = r0; rb < r1; rb += kb) {
        const int64_t re = rb + kb < r1 ? rb + kb : r1;
        float         d1[KW_Q8_LANES], d2[KW_Q8_LANES];   // kb <= 4 KW_Q8_LANES / nb rows, nb >= 4
        for (int pass = 0; pass < (w->bits == 4 ? 2 : 1); pass++) {
            const uint16_t * codes = pass ? (const uint16_t *) w->codes2 : w->codes;
            j->v->e8p_q8_lanes(&j->q8, codes + rb * nb, (re - rb) * nb, lanes);
            j->v->q8_rowdots(lanes, re - rb, nl, j->q8dl + w->cols / 32, pass ? d2 : d1);   // steps d_k/254
        }
        float sc[KW_Q8_LANES];   // the rows' scales (f16 ones converted by the variant, 8 or 16 at a time)
        if (!w->scale_per_row) {
            for (int64_t r = rb; r < re; r++) {
                sc[r - rb] = kw_e8p_scale(w, 0);
            }
        } else if (w->scale_dtype == CALDERA_DTYPE_F16) {
            const struct caldera_kw s16 = { .type = CALDERA_KW_F16, .rows = 1, .cols = re - rb, .ld = re - rb,
                                            .data = (const uint16_t *) w->scale + rb };
            j->v->f16_decode(&s16, 0, 1, sc, re - rb);
        } else {
            memcpy(sc, (const float *) w->scale + rb, (size_t) (re - rb) * sizeof(float));
        }
        for (int64_t r = rb; r < re; r++) {
            const float d = (d1[r - rb] - j->q8corr) + (w->bits == 4 ? irho * (d2[r - rb] - j->q8corr) : 0.0f);
            const float v = 0.25f * sc[r - rb] * d;
            j->y[r] = j->acc ? j->y[r] + v : v;
        }
    }
}

// Rows per GEMV chunk: at least this many weights, so that small layers stay on one thread
// (waking the pool costs more than a 64k-weight GEMV).
#define KW_GEMV_GRAIN 131072
// Inside a task of caldera_parallel_tasks the other threads are awake (running tasks, then helping):
// finer chunks let one that runs out of tasks take over part of the rows.
#define KW_GEMV_GRAIN_NESTED 16384

// The int8 path in units of ra rows (the pool splits units, not rows).
static void kw_q8_units(void * arg, int64_t u0, int64_t u1) {
    const struct kw_gemv_job * j  = arg;
    const int64_t              ra = 64 / kw_gcd64(j->w->cols / 8);
    const int64_t              r1 = u1 * ra < j->w->rows ? u1 * ra : j->w->rows;
    kw_q8_rows(j, u0 * ra, r1);
}

static int64_t kw_gemv_grain(void) { return caldera_parallel_nested() ? KW_GEMV_GRAIN_NESTED : KW_GEMV_GRAIN; }

static int kw_gemv(struct caldera_ctx * ctx, const struct caldera_kw * w, const float * x, float * y, int acc) {
    struct kw_gemv_job job = { caldera_kw_variant(), w, x, NULL, NULL, y, acc, { 0 }, NULL, 0.0f };
    float * xp = NULL;
    if (w->type == CALDERA_KW_E8P) {
        const int64_t nb = w->cols / 8, period = nb / kw_gcd64(nb);
        const int     q8 = w->bits != 3 && nb % 4 == 0 && period <= KW_Q8_MAXP && 64 / kw_gcd64(nb) * nb <= 4 * KW_Q8_LANES &&
                           caldera_kernel_q8() && (job.q8.tabs = kw_q8_table(w)) != NULL;
        // f32: cols floats of permuted x and nb block sums; int8: the planes of xq and xq2 (64-aligned),
        // 2 cols/32 block steps, 2 (cols + 512) bytes of xq and xq2
        const size_t bytes = q8 ? (size_t) period * 1024 + (size_t) w->cols / 4 + 2 * ((size_t) w->cols + 512)
                                : (size_t) (w->cols + nb) * sizeof(float);
        if (!(xp = caldera_malloc(bytes))) {
            return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "kernels: out of memory for a %" PRId64 "-vector", w->cols);
        }
        if (q8) {
            int8_t * xpl = (int8_t *) xp;   // caldera_malloc: 64-byte aligned
            float *  dl  = (float *) (xpl + period * 1024);
            int8_t * xq  = (int8_t *) (dl + w->cols / 16);
            job.q8corr     = job.v->q8_prepare(x, w->cols, period, xq, xpl, dl);
            job.q8dl       = dl;
            job.q8.xpl     = xpl;
            job.q8.xpl2    = xpl + period * 512;
            job.q8.period  = period;
            job.q8.mags    = kw_q8_mags_ok ? kw_q8_mags : NULL;
            const int64_t ra = 64 / kw_gcd64(nb), units = (w->rows + ra - 1) / ra;
            caldera_parallel_for(ctx, units, 1 + kw_gemv_grain() / (ra * w->cols), kw_q8_units, &job);
            caldera_free(xp);
            return 0;
        }
        float * xs = xp + w->cols;
        for (int64_t b = 0; b < nb; b++) {
            float s = 0.0f;
            for (int j = 0; j < 8; j++) {
                xp[8 * b + j] = x[8 * b + KW_E8P_PERM(j)];
                s += x[8 * b + j];
            }
            xs[b] = s;
        }
        job.xp = xp;
        job.xs = xs;
    }
    caldera_parallel_for(ctx, w->rows, 1 + kw_gemv_grain() / w->cols, kw_gemv_run, &job);
    caldera_free(xp);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Batched: row tiles of Ŵ decoded once (threads over rows), then one sgemm over every position.

#define KW_TILE_FLOATS 65536  // 256 KiB of decoded weights per tile (L2-resident) for small batches
// From this batch on, the whole matrix (up to KW_FULL_FLOATS) is decoded once and multiplied in
// one sgemm: every extra call would make OpenBLAS pack all of X again.
#define KW_FULL_BATCH  32
#define KW_FULL_FLOATS (1 << 22)

// Rows per decoded tile for a batch.
static int64_t kw_tile_rows(const struct caldera_kw * w, int64_t batch) {
    int64_t rt = (batch >= KW_FULL_BATCH ? KW_FULL_FLOATS : KW_TILE_FLOATS) / w->cols;
    rt = rt < 16 ? 16 : rt;
    return rt > w->rows ? w->rows : rt;
}

// Int8 transposed GEMV (E8P 2/4-bit; rows <= KW_Q8T_ROWS, cols <= 2 KW_SEG): x_r s_r quantized
// with one step dt = max|x_r s_r|/127 and its residual with dt/254 (tq, tq2), then y[8b + PERM(e)]
// += dt/4 (Σ_r tq_r u(r, b, e) − 17 Σ_r tq_r) + the same for tq2 with dt/254 (/ρ for the residual
// codes). -1: the grid has no int8 tables (the caller uses f32).
static int kw_q8_gemv_t(const struct kw_variant * v, const struct caldera_kw * w, const float * x, float * y) {
    const int8_t * tabs = kw_q8_table(w);
    if (!tabs) {
        return -1;
    }
    const int64_t m = w->rows, nb = w->cols / 8;
    float         xs[KW_Q8T_ROWS], amax = 0.0f;
    int8_t        tq[KW_Q8T_ROWS], tq2[KW_Q8T_ROWS];
    int32_t       out[2 * KW_SEG], out2[2 * KW_SEG];
    for (int64_t r = 0; r < m; r++) {
        xs[r] = x[r] * kw_e8p_scale(w, r);
        amax  = fabsf(xs[r]) > amax ? fabsf(xs[r]) : amax;
    }
    const float dt = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f, id2 = 254.0f * id;
    int32_t     st = 0, st2 = 0;
    for (int64_t r = 0; r < m; r++) {
        int32_t q = (int32_t) lrintf(xs[r] * id);
        q = q > 127 ? 127 : q < -127 ? -127 : q;
        int32_t q2 = (int32_t) lrintf((xs[r] - (float) q * dt) * id2);
        q2 = q2 > 127 ? 127 : q2 < -127 ? -127 : q2;
        tq[r]  = (int8_t) q;
        tq2[r] = (int8_t) q2;
        st += q;
        st2 += q2;
    }
    const int32_t corr = KW_Q8_OFFSET * st, corr2 = KW_Q8_OFFSET * st2;
    for (int pass = 0; pass < (w->bits == 4 ? 2 : 1); pass++) {
        const float sc = 0.25f * dt * (pass ? 1.0f / w->e8_rho : 1.0f), sc2 = sc / 254.0f;
        v->e8p_q8t_cols(tabs, kw_q8_mags_ok ? kw_q8_mags : NULL, pass ? (const uint16_t *) w->codes2 : w->codes, m, nb, tq,
                        tq2, out, out2);
        for (int64_t b = 0; b < nb; b++) {
            for (int e = 0; e < 8; e++) {
                y[8 * b + KW_E8P_PERM(e)] += sc * (float) (out[8 * b + e] - corr) + sc2 * (float) (out2[8 * b + e] - corr2);
            }
        }
    }
    return 0;
}

// y (cols) (+)= Ŵᵀ x (rows), one thread: each row decoded to f32 (a stack segment) and added with
// weight x[r]. For the low-rank factor Lᵀ (rank × m, a few thousand codewords): no BLAS call (its
// threads would spin beside the pool's) and no tile allocation per token.
static int kw_gemv_t(struct caldera_ctx * ctx, const struct caldera_kw * w, const float * x, float * y, int acc) {
    const struct kw_variant * v = caldera_kw_variant();
    const int     fused = w->type == CALDERA_KW_E8P && v->e8p_gemv_t;   // scratch: 2 rows floats
    const int64_t need  = fused ? 2 * w->rows : w->cols;
    float   seg[2 * KW_SEG];
    float * row = need <= 2 * KW_SEG ? seg : caldera_malloc((size_t) need * sizeof(float));
    if (!row) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "kernels: out of memory for a %" PRId64 "-vector", need);
    }
    if (!acc) {
        memset(y, 0, (size_t) w->cols * sizeof(float));
    }
    if (w->type == CALDERA_KW_E8P && v->e8p_q8t_cols && w->bits != 3 && w->rows <= KW_Q8T_ROWS && w->cols <= 2 * KW_SEG && caldera_kernel_q8() &&
        kw_q8_gemv_t(v, w, x, y) == 0) {
        if (row != seg) {
            caldera_free(row);
        }
        return 0;
    }
    if (fused) {
        v->e8p_gemv_t(w, x, y, row);
        if (row != seg) {
            caldera_free(row);
        }
        return 0;
    }
    for (int64_t r = 0; r < w->rows; r++) {
        const float * src = row;
        if (w->type == CALDERA_KW_F32) {
            src = (const float *) w->data + r * w->ld;
        } else {
            kw_decode_rows(v, w, r, r + 1, row, w->cols);
        }
        v->axpy(x[r], src, y, w->cols);
    }
    if (row != seg) {
        caldera_free(row);
    }
    return 0;
}

// Y (batch × cols) (+)= X (batch × rows) Ŵ: row tiles of Ŵ decoded, then sgemv / sgemm.
static int kw_matmul_t(struct caldera_ctx * ctx, const struct caldera_kw * w, const float * x, int64_t batch,
                       int64_t ldx, float * y, int64_t ldy, int acc) {
    if (batch == 1) {
        return kw_gemv_t(ctx, w, x, y, acc);
    }
    if (w->type == CALDERA_KW_F32) {
        if (batch == 1) {
            cblas_sgemv(CblasRowMajor, CblasTrans, (blasint) w->rows, (blasint) w->cols, 1.0f, w->data, (blasint) w->ld,
                        x, 1, acc ? 1.0f : 0.0f, y, 1);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint) batch, (blasint) w->cols, (blasint) w->rows,
                        1.0f, x, (blasint) ldx, w->data, (blasint) w->ld, acc ? 1.0f : 0.0f, y, (blasint) ldy);
        }
        return 0;
    }
    const int64_t rt = kw_tile_rows(w, batch);
    float * tile = caldera_malloc((size_t) rt * (size_t) w->cols * sizeof(float));
    if (!tile) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "kernels: out of memory for a %" PRId64 "x%" PRId64 " tile",
                                 rt, w->cols);
    }
    struct kw_decode_job job = { caldera_kw_variant(), w, 0, tile, w->cols };
    for (int64_t r0 = 0; r0 < w->rows; r0 += rt) {
        const int64_t nr   = w->rows - r0 < rt ? w->rows - r0 : rt;
        const float   beta = (acc || r0 > 0) ? 1.0f : 0.0f;
        job.r0 = r0;
        caldera_parallel_for(ctx, nr, 1 + 16384 / w->cols, kw_decode_job_run, &job);
        if (batch == 1) {
            cblas_sgemv(CblasRowMajor, CblasTrans, (blasint) nr, (blasint) w->cols, 1.0f, tile, (blasint) w->cols,
                        x + r0, 1, beta, y, 1);
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint) batch, (blasint) w->cols, (blasint) nr, 1.0f,
                        x + r0, (blasint) ldx, tile, (blasint) w->cols, beta, y, (blasint) ldy);
        }
    }
    caldera_free(tile);
    return 0;
}

int caldera_kw_matmul(struct caldera_ctx * ctx, const struct caldera_kw * w, const float * x, int64_t batch,
                      int64_t ldx, float * y, int64_t ldy, unsigned flags) {
    int rc = caldera_kw_check(ctx, w);
    if (rc < 0) {
        return rc;
    }
    const int     trans = (flags & CALDERA_LINEAR_TRANSPOSE) != 0, acc = (flags & CALDERA_LINEAR_ACCUMULATE) != 0;
    const int64_t xin = trans ? w->rows : w->cols, yout = trans ? w->cols : w->rows;
    if (batch < 0 || (batch > 0 && (!x || !y || ldx < xin || ldy < yout))) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: matmul%s with batch %" PRId64 ", ldx %" PRId64
                                 ", ldy %" PRId64 "; allowed: x, y set, ldx >= %" PRId64 ", ldy >= %" PRId64,
                                 trans ? " (transposed)" : "", batch, ldx, ldy, xin, yout);
    }
    if (batch == 0) {
        return 0;
    }
    // device = cuda: the CUDA variant (core/src/cuda) when the product pays for the copies
    if (ctx && caldera_cuda_route(ctx, 2.0 * (double) batch * (double) w->rows * (double) w->cols,
                           (const struct caldera_tensor * const[]) { NULL })) {
        return caldera_cuda_kw_matmul(ctx, w, x, batch, ldx, y, ldy, trans, acc);
    }
    if (trans) {
        return kw_matmul_t(ctx, w, x, batch, ldx, y, ldy, acc);
    }
    if (batch == 1) {
        return kw_gemv(ctx, w, x, y, acc);
    }
    const float beta = acc ? 1.0f : 0.0f;
    if (w->type == CALDERA_KW_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint) batch, (blasint) w->rows, (blasint) w->cols, 1.0f,
                    x, (blasint) ldx, w->data, (blasint) w->ld, beta, y, (blasint) ldy);
        return 0;
    }
    const int64_t rt = kw_tile_rows(w, batch);
    float * tile = caldera_malloc((size_t) rt * (size_t) w->cols * sizeof(float));
    if (!tile) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "kernels: out of memory for a %" PRId64 "x%" PRId64 " tile",
                                 rt, w->cols);
    }
    struct kw_decode_job job = { caldera_kw_variant(), w, 0, tile, w->cols };
    for (int64_t r0 = 0; r0 < w->rows; r0 += rt) {
        int64_t nr = w->rows - r0 < rt ? w->rows - r0 : rt;
        job.r0 = r0;
        caldera_parallel_for(ctx, nr, 1 + 16384 / w->cols, kw_decode_job_run, &job);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint) batch, (blasint) nr, (blasint) w->cols, 1.0f,
                    x, (blasint) ldx, tile, (blasint) w->cols, beta, y + r0, (blasint) ldy);
    }
    caldera_free(tile);
    return 0;
}

int caldera_kw_apply(struct caldera_inst * inst, const struct caldera_kw * w, const struct caldera_tensor * x,
                     struct caldera_tensor * y, unsigned flags) {
    int rc;
    if (!w) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "linear_apply: no state; call linear_init first");
    }
    const int trans = (flags & CALDERA_LINEAR_TRANSPOSE) != 0;
    if ((rc = caldera_check_matrix(inst, "linear_apply", "x", x, -1, trans ? w->rows : w->cols)) < 0 ||
        (rc = caldera_check_matrix(inst, "linear_apply", "y", y, x->ne[0], trans ? w->cols : w->rows)) < 0) {
        return rc;
    }
    if ((rc = caldera_kw_matmul(caldera_inst_ctx(inst), w, x->data, x->ne[0], x->ld ? x->ld : x->ne[1], y->data,
                                y->ld ? y->ld : y->ne[1], flags)) < 0) {
        return caldera_error(inst, rc, "linear_apply: %s", caldera_ctx_errmsg(caldera_inst_ctx(inst)));
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Randomized Hadamard transform on activations

static int kw_rht_check(struct caldera_ctx * ctx, const struct caldera_kw_rht * t) {
    if (!t || t->n < 1 || t->np < t->n || t->k < 1 || t->p2 < 1 || (t->p2 & (t->p2 - 1)) != 0 ||
        t->k * t->p2 != t->np || (t->k > 1 && !t->hk) || !t->sign) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: rht side n=%" PRId64 " n'=%" PRId64 " k=%" PRId64
                                 " p2=%" PRId64 "; allowed: n <= n' = k p2, p2 a power of two, signs set, H_K set if k > 1",
                                 t ? t->n : 0, t ? t->np : 0, t ? t->k : 0, t ? t->p2 : 0);
    }
    return 0;
}

struct kw_rht_job {
    const struct kw_variant *    v;
    const struct caldera_kw_rht * t;
    const float *                x;     // in: (batch, n) stride ldx; out: (batch, n') stride ldx (scratch)
    int64_t                      ldx;
    float *                      o;     // in: (batch, n') stride ldo; out: (batch, n) stride ldo
    int64_t                      ldo;
    int                          out_side, acc;
    int                          phase; // 0: whole rows; 1: up to the K×K core; 2: after it (outputs)
    atomic_int                   nomem;
};

static void kw_rht_run(void * arg, int64_t i0, int64_t i1) {
    struct kw_rht_job *           j = arg;
    const struct caldera_kw_rht * t = j->t;
    const int64_t n = t->n, np = t->np;
    const float   scale = (float) (1.0 / sqrt((double) np));
    const int     core  = j->phase == 0 && t->k > 1;   // the K×K core per row (else batched, or none)
    float   stack_tmp[2048];   // a decoded token: no allocation per call
    float * tmp = NULL;
    if (core && !(tmp = np <= 2048 ? stack_tmp : caldera_malloc((size_t) np * sizeof(float)))) {
        atomic_store(&j->nomem, 1);
        return;
    }
    for (int64_t i = i0; i < i1; i++) {
        if (!j->out_side) {
            // x̃ = Uᵀ S pad(x): signs, zero padding, S_p2 on the fast index, H_Kᵀ on the slow one
            const float * x = j->x + i * j->ldx;
            float *       o = j->o + i * j->ldo;
            j->v->sign_scale(t->sign, x, n, 1.0f, o, 0);
            for (int64_t c = n; c < np; c++) {
                o[c] = 0.0f;
            }
            for (int64_t a = 0; a < t->k; a++) {
                j->v->fwht(o + a * t->p2, t->p2);
            }
            if (core) {
                memcpy(tmp, o, (size_t) np * sizeof(float));
                j->v->rht_core(t->hk, t->k, t->p2, tmp, o, 1, scale);
            } else if (t->k == 1) {
                for (int64_t c = 0; c < np; c++) {
                    o[c] *= scale;
                }
            }
        } else {
            // y = crop(S U ỹ): S_p2 on the fast index, H_K on the slow one, signs, crop
            float * yt = (float *) j->x + i * j->ldx;
            float * o  = j->o + i * j->ldo;
            if (j->phase < 2) {
                for (int64_t a = 0; a < t->k; a++) {
                    j->v->fwht(yt + a * t->p2, t->p2);
                }
                if (j->phase == 1) {
                    continue;   // the core runs batched, then phase 2
                }
            }
            const float * src = yt;
            float         sc  = j->phase == 2 ? 1.0f : scale;   // phase 2: the batched core scaled
            if (core) {
                j->v->rht_core(t->hk, t->k, t->p2, yt, tmp, 0, scale);
                src = tmp;
                sc  = 1.0f;
            }
            j->v->sign_scale(t->sign, src, n, sc, o, j->acc);
        }
    }
    if (tmp != stack_tmp) {
        caldera_free(tmp);
    }
}

// The K×K core for many rows at once: X (batch × n', stride ld) viewed (batch, K, p2) becomes
// (K, batch·p2), one sgemm with H_K (trans: H_Kᵀ) times scale, and back in place.
static int kw_core_batched(struct caldera_ctx * ctx, const struct caldera_kw_rht * t, float * x, int64_t batch,
                           int64_t ld, int trans) {
    const int64_t k = t->k, p2 = t->p2, w = batch * p2;
    float * a = caldera_malloc((size_t) (k * w) * sizeof(float)), * b = caldera_malloc((size_t) (k * w) * sizeof(float));
    if (!a || !b) {
        caldera_free(a);
        caldera_free(b);
        return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "kernels: rht: out of memory for %" PRId64 " rows", batch);
    }
    for (int64_t r = 0; r < batch; r++) {
        for (int64_t j = 0; j < k; j++) {
            memcpy(a + j * w + r * p2, x + r * ld + j * p2, (size_t) p2 * sizeof(float));
        }
    }
    cblas_sgemm(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, CblasNoTrans, (blasint) k, (blasint) w, (blasint) k,
                (float) (1.0 / sqrt((double) t->np)), t->hk, (blasint) k, a, (blasint) w, 0.0f, b, (blasint) w);
    for (int64_t r = 0; r < batch; r++) {
        for (int64_t j = 0; j < k; j++) {
            memcpy(x + r * ld + j * p2, b + j * w + r * p2, (size_t) p2 * sizeof(float));
        }
    }
    caldera_free(a);
    caldera_free(b);
    return 0;
}

// Rows from which the K×K core runs as one sgemm over the batch.
#define KW_RHT_BATCHED 8

static int kw_rht(struct caldera_ctx * ctx, struct kw_rht_job * job, int64_t batch) {
    const int64_t grain = 1 + 65536 / job->t->np;
    int rc;
    atomic_init(&job->nomem, 0);
    job->phase = batch >= KW_RHT_BATCHED && job->t->k > 1;
    caldera_parallel_for(ctx, batch, grain, kw_rht_run, job);
    if (atomic_load(&job->nomem)) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "kernels: rht: out of memory for a %" PRId64 "-vector",
                                 job->t->np);
    }
    if (job->phase == 1) {
        if (!job->out_side) {
            return kw_core_batched(ctx, job->t, job->o, batch, job->ldo, 1);
        }
        if ((rc = kw_core_batched(ctx, job->t, (float *) job->x, batch, job->ldx, 0)) < 0) {
            return rc;
        }
        job->phase = 2;
        caldera_parallel_for(ctx, batch, grain, kw_rht_run, job);
    }
    return 0;
}

int caldera_kw_rht_in(struct caldera_ctx * ctx, const struct caldera_kw_rht * t, const float * x, int64_t batch,
                      int64_t ldx, float * out, int64_t ldo) {
    int rc = kw_rht_check(ctx, t);
    if (rc < 0) {
        return rc;
    }
    if (batch < 0 || (batch > 0 && (!x || !out || ldx < t->n || ldo < t->np))) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: rht_in with batch %" PRId64 ", ldx %" PRId64
                                 ", ldo %" PRId64 "; allowed: ldx >= n (%" PRId64 "), ldo >= n' (%" PRId64 ")",
                                 batch, ldx, ldo, t->n, t->np);
    }
    struct kw_rht_job job = { .v = caldera_kw_variant(), .t = t, .x = x, .ldx = ldx, .o = out, .ldo = ldo };
    return kw_rht(ctx, &job, batch);
}

int caldera_kw_rht_out(struct caldera_ctx * ctx, const struct caldera_kw_rht * t, float * yt, int64_t batch,
                       int64_t ldy, float * out, int64_t ldo, int accumulate) {
    int rc = kw_rht_check(ctx, t);
    if (rc < 0) {
        return rc;
    }
    if (batch < 0 || (batch > 0 && (!yt || !out || ldy < t->np || ldo < t->n))) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "kernels: rht_out with batch %" PRId64 ", ldy %" PRId64
                                 ", ldo %" PRId64 "; allowed: ldy >= n' (%" PRId64 "), ldo >= n (%" PRId64 ")",
                                 batch, ldy, ldo, t->np, t->n);
    }
    struct kw_rht_job job = { .v = caldera_kw_variant(), .t = t, .x = yt, .ldx = ldy, .o = out, .ldo = ldo,
                              .out_side = 1, .acc = accumulate };
    return kw_rht(ctx, &job, batch);
}
