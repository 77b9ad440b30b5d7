// SPDX-License-Identifier: MIT
// e8.c: the "e8" quantizer plugin: QuIP#'s E8P lattice codebooks at 2, 3 and 4 bits per weight
// (codebook math in e8p.h / e8p.c), round-to-nearest on blocks of 8 weights along a row, with
// one scale per tensor (as the reference) or per row. Also the codebook level that ldlq wraps.
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-kernels.h"
#include "caldera/caldera-plugin.h"
#include "e8p-batch.h"

enum e8_scale_mode { E8_SCALE_TENSOR = 0, E8_SCALE_ROW = 1 };
enum e8_scale_dtype { E8_DTYPE_F16 = 0, E8_DTYPE_F32 = 1 };

struct e8_priv {
    int64_t              bits;           // 2, 3 or 4 bits per weight
    int                  scale_mode;     // enum e8_scale_mode
    double               scale_override; // RMS of the scaled input; 0 = the codebook's opt_scale
    int                  scale_dtype;    // enum e8_scale_dtype
    struct e8p_tables *  tab;            // built by init
    float *              kgrid;          // (256, 8) stored patterns (nibble − 8)/2, nibble order (kernels)
    float *              krvq1;          // (256, 8) "E8 1-bit" points permuted to nibble order (kernels)
    uint8_t *            key2idx;        // (E8P_NKEYS) pattern index of each base-4 key (batched encode)
    float *              dtab;           // (256, 8) stored pattern values in output order (batched decode)
    int                  avx2;           // the CPU has AVX2: e8p_round8_avx2 for 2 and 4 bits
    void (*encode8)(const struct e8p_tables *, const uint8_t *, const float (*)[E8P_DIM], int, uint16_t *);
};

/** Codebook state: the scales chosen from the whole W, and the codes rounded so far. */
struct caldera_cb_state {
    int64_t    rows, cols;  // shape of W
    int64_t    nscale;      // 1 (tensor) or rows
    float *    scale;       // (nscale) effective scales, already rounded to scale_dtype
    uint16_t * codes;       // (rows, cols / 8) E8P12 codes
    uint16_t * codes2;      // (rows, cols / 8) second-stage codes (3 and 4 bits), else NULL
    // The last narrow call's input and output (ldlq rounds one block of columns at a time, and its
    // tune guard rounds a block again with most rows unchanged): a block whose 8 inputs are
    // bit-identical to the last call's at the same columns keeps its codes and value unsearched.
    float *    memo_x;      // (rows, E8_MEMO_COLS) input of the last call of <= E8_MEMO_COLS columns
    float *    memo_y;      // (rows, E8_MEMO_COLS) its output
    int64_t    memo_col0;   // its first column, or -1: no memo
    int64_t    memo_c;      // its width
};

#define E8_MEMO_COLS 16

#define OFF(x) offsetof(struct e8_priv, x)

static const struct caldera_opt_choice e8_scale_mode_choices[] = {
    { .name = "tensor", .value = E8_SCALE_TENSOR, .help = "one scale rms(W) / opt_scale for the matrix (as QuIP#, CALDERA)" },
    { .name = "row",    .value = E8_SCALE_ROW,    .help = "one scale rms(row) / opt_scale per row" },
    { .name = NULL }
};

static const struct caldera_opt_choice e8_dtype_choices[] = {
    { .name = "f16", .value = E8_DTYPE_F16, .help = "scales stored as IEEE half (16 bits)" },
    { .name = "f32", .value = E8_DTYPE_F32, .help = "scales stored as IEEE single (32 bits)" },
    { .name = NULL }
};

static const struct caldera_option e8_options[] = {
    { .name = "bits", .offset = OFF(bits), .type = CALDERA_OPT_INT, .def.i64 = 2, .min = 2, .max = 4,
      .help = "bits per weight: 2 = E8P12, 3 = E8P12 + E8 1-bit residual, 4 = E8P12 + E8P12 residual" },
    { .name = "scale_mode", .offset = OFF(scale_mode), .type = CALDERA_OPT_ENUM,
      .def.i64 = E8_SCALE_TENSOR, .choices = e8_scale_mode_choices,
      .help = "granularity of the scale" },
    { .name = "scale_override", .offset = OFF(scale_override), .type = CALDERA_OPT_DOUBLE,
      .def.dbl = 0.0, .min = 0.0, .max = 100.0,
      .help = "RMS the input is scaled to before rounding; 0 = codebook default (1.03 for 2 and 4 bits, 0.98 for 3 bits)" },
    { .name = "scale_dtype", .offset = OFF(scale_dtype), .type = CALDERA_OPT_ENUM,
      .def.i64 = E8_DTYPE_F16, .choices = e8_dtype_choices,
      .help = "storage type of the scales" },
    { .name = NULL }
};

static int e8_init(struct caldera_inst * inst) {
    struct e8_priv * p = caldera_inst_priv(inst);
    p->tab = caldera_malloc(sizeof(*p->tab));
    if (!p->tab) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "init: cannot allocate %zu bytes of codebook tables",
                             sizeof(*p->tab));
    }
    e8p_tables_build(p->tab);
    if (!(p->key2idx = caldera_malloc(E8P_NKEYS))) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "init: cannot allocate the key index");
    }
    e8p_key_index_build(p->tab, p->key2idx);
    if (!(p->dtab = caldera_malloc(E8P_NABS * E8P_DIM * sizeof(float)))) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "init: cannot allocate the decode table");
    }
    e8p_decode_table_build(p->tab, p->dtab);
    // 8 blocks per call with AVX2 where the CPU has it: the same codes as the scalar search
    p->avx2 = e8p_have_avx2();
    p->encode8 = p->avx2 ? e8p_encode8_avx2 : e8p_encode8_scalar;
    // The fused kernels' tables (caldera-kernels.h): everything in the stored nibble order, where
    // nibble j holds output coordinate perm[j], perm = [0,2,4,6,1,3,5,7].
    p->kgrid = caldera_malloc(2 * E8P_NABS * E8P_DIM * sizeof(float));
    if (!p->kgrid) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "init: cannot allocate the kernel tables");
    }
    p->krvq1 = p->kgrid + E8P_NABS * E8P_DIM;
    for (int a = 0; a < E8P_NABS; a++) {
        for (int j = 0; j < E8P_DIM; j++) {
            p->kgrid[a * E8P_DIM + j] = (float) ((int) ((p->tab->packed[a] >> (4 * j)) & 0xFu) - 8) * 0.5f;
            p->krvq1[a * E8P_DIM + j] = p->tab->rvq1[a][j < 4 ? 2 * j : 2 * (j - 4) + 1];
        }
    }
    return 0;
}

static void e8_uninit(struct caldera_inst * inst) {
    struct e8_priv * p = caldera_inst_priv(inst);
    caldera_freep(&p->tab);
    caldera_freep(&p->kgrid);
    caldera_freep(&p->key2idx);
    caldera_freep(&p->dtab);
    p->krvq1 = NULL;
}

static int e8_check_shape(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    if (rows < 1 || cols < 1) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED,
                             "shape %" PRId64 "x%" PRId64 " is empty; rows and cols must be >= 1",
                             rows, cols);
    }
    if (cols % E8P_DIM != 0) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED,
                             "cols=%" PRId64 " is not a multiple of 8; e8 rounds blocks of 8 weights "
                             "along a row (pad the input, e.g. with the rht transform)", cols);
    }
    return 0;
}

static double e8_opt_scale(const struct e8_priv * p) {
    if (p->scale_override > 0.0) {
        return p->scale_override;
    }
    return p->bits == 3 ? E8P_OPT_SCALE_3BIT : E8P_OPT_SCALE_2BIT;
}

static double e8_bits(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct e8_priv * p = caldera_inst_priv(inst);
    double nscale = p->scale_mode == E8_SCALE_ROW ? (double) rows : 1.0;
    double sbits  = p->scale_dtype == E8_DTYPE_F16 ? 16.0 : 32.0;
    return (double) p->bits * (double) rows * (double) cols + nscale * sbits;
}

static int64_t e8_cb_dim(struct caldera_inst * inst) {
    (void) inst;
    return E8P_DIM;
}

static void e8_cb_free(struct caldera_inst * inst, struct caldera_cb_state * st) {
    (void) inst;
    if (!st) {
        return;
    }
    caldera_free(st->scale);
    caldera_free(st->codes);
    caldera_free(st->codes2);
    caldera_free(st->memo_x);
    caldera_free(st->memo_y);
    caldera_free(st);
}



// Round a scale to its storage type; the rounded value is the one used for codes and for Ŵ.
static int e8_round_scale(struct caldera_inst * inst, const struct e8_priv * p, double s, float * out) {
    float f = (float) s;
    if (p->scale_dtype == E8_DTYPE_F16) {
        f = caldera_f16_to_f32(caldera_f32_to_f16(f));
    }
    if (!isfinite(f)) {
        return caldera_error(inst, CALDERA_ERR_RANGE,
                             "cb_begin: scale %g does not fit scale_dtype=%s; use scale_dtype=f32",
                             s, p->scale_dtype == E8_DTYPE_F16 ? "f16" : "f32");
    }
    *out = f;
    return 0;
}

static int e8_cb_begin(struct caldera_inst * inst, const struct caldera_tensor * w,
                       struct caldera_cb_state ** state) {
    const struct e8_priv *    p  = caldera_inst_priv(inst);
    struct caldera_cb_state * st = NULL;
    int rc = 0;

    *state = NULL;
    if (!p->tab) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "cb_begin: instance not started; call caldera_inst_start first");
    }
    if ((rc = caldera_check_matrix(inst, "cb_begin", "W", w, -1, -1)) < 0 ||
        (rc = e8_check_shape(inst, w->ne[0], w->ne[1])) < 0 ||
        (rc = caldera_check_finite(inst, "cb_begin", "W", w)) < 0) {
        return rc;
    }
    const int64_t m = w->ne[0], n = w->ne[1], nb = n / E8P_DIM;
    if (!(st = caldera_calloc(1, sizeof(*st)))) {
        goto nomem;
    }
    st->rows   = m;
    st->cols   = n;
    st->memo_col0 = -1;
    st->nscale = p->scale_mode == E8_SCALE_ROW ? m : 1;
    if (!(st->scale = caldera_malloc((size_t) st->nscale * sizeof(float))) ||
        !(st->codes = caldera_calloc((size_t) (m * nb), sizeof(uint16_t)))) {
        goto nomem;
    }
    if (p->bits > 2 && !(st->codes2 = caldera_calloc((size_t) (m * nb), sizeof(uint16_t)))) {
        goto nomem;
    }

    // s = rms / opt_scale, so that W / s has RMS opt_scale (algorithms.md 3.1 "Scales")
    const double opt = e8_opt_scale(p);
    const float * wd = w->data;
    double total = 0.0;
    for (int64_t i = 0; i < m; i++) {
        double ss = 0.0;
        for (int64_t j = 0; j < n; j++) {
            double v = wd[i * w->ld + j];
            ss += v * v;
        }
        const int row_mode = p->scale_mode == E8_SCALE_ROW;
        if (row_mode && (rc = e8_round_scale(inst, p, sqrt(ss / (double) n) / opt, &st->scale[i])) < 0) {
            goto fail;
        }
        total += ss;
    }
    if (p->scale_mode == E8_SCALE_TENSOR &&
        (rc = e8_round_scale(inst, p, sqrt(total / ((double) m * (double) n)) / opt, &st->scale[0])) < 0) {
        goto fail;
    }
    *state = st;
    return 0;

nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "cb_begin: out of memory for %" PRId64 "x%" PRId64 " codes",
                       m, n);
fail:
    e8_cb_free(inst, st);
    return rc;
}

struct e8_round_job {
    const struct e8_priv *          p;
    int                             bits;
    struct caldera_cb_state *       st;
    int64_t                         b0, nb;   // first block (of the whole row) and block count
    const struct caldera_tensor *   x;        // (rows, nb * 8)
    struct caldera_tensor *         x_hat;    // (rows, nb * 8)
    int                             memo;     // record this call in st->memo_x / memo_y (a narrow call)
    int                             reuse;    // the memo holds the last call at these columns
};

// Rows [i0, i1): every block rounded as e8p_round_scaled does, 8 blocks per encode8 call (the blocks
// of one row, or with one block per row, as in LDLQ, the blocks of 8 rows). Same codes and values
// as e8p_round_scaled block by block.
static void e8_round_rows(void * arg, int64_t i0, int64_t i1) {
    const struct e8_round_job * job = arg;
    const struct caldera_cb_state * st = job->st;
    const struct e8p_tables * t = job->p->tab;
    const int64_t nbt = st->cols / E8P_DIM;
    const int64_t total = (i1 - i0) * job->nb;   // blocks, row-major over (row, block)
    float    xs[8][E8P_DIM], r[8][E8P_DIM];
    float    sc[8];
    int64_t  at[8][2];
    uint16_t k1[8], k2[8];
    if (job->p->avx2 && job->bits != 3) {
        // 2 and 4 bits with AVX2: scaling, both searches, decode and Ŵ in one call per 8 blocks
        const float * xp[8];
        float *       yp[8];
        for (int64_t q0 = 0; q0 < total;) {
            int64_t q1 = q0;   // blocks looked at: up to 8 to round, the memo's repeats skipped
            int n = 0;
            for (; q1 < total && n < 8; q1++) {
                const int64_t i = i0 + q1 / job->nb, b = q1 % job->nb;
                const float * xb = (const float *) job->x->data + i * job->x->ld + b * E8P_DIM;
                float * yb = (float *) job->x_hat->data + i * job->x_hat->ld + b * E8P_DIM;
                float * mx = job->memo ? st->memo_x + i * E8_MEMO_COLS + b * E8P_DIM : NULL;
                if (job->reuse && memcmp(xb, mx, E8P_DIM * sizeof(float)) == 0) {
                    memmove(yb, st->memo_y + i * E8_MEMO_COLS + b * E8P_DIM, E8P_DIM * sizeof(float));
                    continue;   // the codes at (i, b) are still that call's
                }
                if (mx) {
                    memcpy(mx, xb, E8P_DIM * sizeof(float));   // before yb is written (x_hat may be x)
                }
                sc[n] = st->scale[st->nscale == 1 ? 0 : i];
                xp[n] = mx ? mx : xb;
                yp[n] = yb;
                at[n][0] = i;
                at[n][1] = b;
                n++;
            }
            q0 = q1;
            if (n == 0) {
                continue;
            }
            e8p_round8_avx2(t, job->p->key2idx, job->p->dtab, job->bits, xp, sc, n, yp, k1, k2);
            for (int l = 0; l < n; l++) {
                if (job->memo) {
                    memcpy(st->memo_y + at[l][0] * E8_MEMO_COLS + at[l][1] * E8P_DIM, yp[l], E8P_DIM * sizeof(float));
                }
                st->codes[at[l][0] * nbt + job->b0 + at[l][1]] = k1[l];
                if (st->codes2) {
                    st->codes2[at[l][0] * nbt + job->b0 + at[l][1]] = k2[l];
                }
            }
        }
        return;
    }
    for (int64_t q0 = 0; q0 < total; q0 += 8) {
        const int n = (int) (total - q0 < 8 ? total - q0 : 8);
        for (int l = 0; l < n; l++) {
            const int64_t i = i0 + (q0 + l) / job->nb, b = (q0 + l) % job->nb;
            const float s = st->scale[st->nscale == 1 ? 0 : i];
            const float inv = s > 0.0f ? 1.0f / s : 0.0f;   // a zero row: every x is 0
            const float * xr = (const float *) job->x->data + i * job->x->ld + b * E8P_DIM;
            for (int k = 0; k < E8P_DIM; k++) {
                xs[l][k] = xr[k] * inv;
            }
            sc[l] = s;
            at[l][0] = i;
            at[l][1] = b;
            k2[l] = 0;
        }
        job->p->encode8(t, job->p->key2idx, (const float (*)[E8P_DIM]) xs, n, k1);
        if (job->bits == 4) {
            for (int l = 0; l < n; l++) {
                float v[E8P_DIM];
                e8p_decode(t, k1[l], v);
                for (int k = 0; k < E8P_DIM; k++) {
                    r[l][k] = (xs[l][k] - v[k]) * E8P_RESID_SCALE_4BIT;
                }
            }
            job->p->encode8(t, job->p->key2idx, (const float (*)[E8P_DIM]) r, n, k2);
        } else if (job->bits == 3) {
            for (int l = 0; l < n; l++) {
                float v[E8P_DIM], v2[E8P_DIM];
                e8p_decode(t, k1[l], v);
                for (int k = 0; k < E8P_DIM; k++) {
                    r[l][k] = (xs[l][k] - v[k]) * E8P_RESID_SCALE_3BIT;
                }
                k2[l] = e8p_rvq1_encode(t, r[l], v2);
            }
        }
        for (int l = 0; l < n; l++) {
            const int64_t i = at[l][0], b = at[l][1];
            float v[E8P_DIM];
            // Ŵ from the codes with the one decode rule, so dequantize reproduces it exactly
            e8p_decode_bits(t, job->bits, k1[l], k2[l], v);
            float * yr = (float *) job->x_hat->data + i * job->x_hat->ld + b * E8P_DIM;
            for (int k = 0; k < E8P_DIM; k++) {
                yr[k] = sc[l] * v[k];
            }
            st->codes[i * nbt + job->b0 + b] = k1[l];
            if (st->codes2) {
                st->codes2[i * nbt + job->b0 + b] = k2[l];
            }
        }
    }
}

static int e8_cb_round(struct caldera_inst * inst, struct caldera_cb_state * st, int64_t col0,
                       const struct caldera_tensor * x, struct caldera_tensor * x_hat) {
    const struct e8_priv * p = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    int rc;
    if (!st) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "cb_round: no state; call cb_begin first");
    }
    // device tensors (ldlq's loop under device = cuda) are checked by the core
    const int on_dev = x && x->device == CALDERA_DEVICE_CUDA;
    if (!on_dev && (rc = caldera_check_matrix(inst, "cb_round", "x", x, st->rows, -1)) < 0) {
        return rc;
    }
    const int64_t c = x->ne[1];
    if (col0 < 0 || col0 % E8P_DIM != 0 || c % E8P_DIM != 0 || col0 + c > st->cols) {
        return caldera_error(inst, CALDERA_ERR_INVAL,
                             "cb_round: columns [%" PRId64 ", %" PRId64 ") are not whole blocks of 8 "
                             "inside [0, %" PRId64 ")", col0, col0 + c, st->cols);
    }
    if (!on_dev && ((rc = caldera_check_matrix(inst, "cb_round", "x_hat", x_hat, st->rows, c)) < 0 ||
                    (rc = caldera_check_finite(inst, "cb_round", "x", x)) < 0)) {
        return rc;
    }
    if (!on_dev && caldera_ctx_device(ctx) == CALDERA_DEVICE_CPU) {
        // on the CPU: 8 blocks per search call (AVX2 where the CPU has it), the same codes and
        // values as the core's caldera_round_e8p (one block at a time)
        const int narrow = p->avx2 && p->bits != 3 && c <= E8_MEMO_COLS;
        if (narrow && !st->memo_x) {
            const size_t bytes = (size_t) st->rows * E8_MEMO_COLS * sizeof(float);
            if (!(st->memo_x = caldera_malloc(bytes)) || !(st->memo_y = caldera_malloc(bytes))) {
                caldera_freep(&st->memo_x);
                return caldera_error(inst, CALDERA_ERR_NOMEM, "cb_round: out of memory for %" PRId64 " rows", st->rows);
            }
        }
        struct e8_round_job job = {
            .p = p, .bits = (int) p->bits, .st = st, .b0 = col0 / E8P_DIM, .nb = c / E8P_DIM,
            .x = x, .x_hat = x_hat, .memo = narrow, .reuse = narrow && st->memo_col0 == col0 && st->memo_c == c,
        };
        int64_t grain = job.nb > 0 ? 1 + 512 / job.nb : st->rows;
        caldera_parallel_for(ctx, st->rows, grain, e8_round_rows, &job);
        st->memo_col0 = narrow ? col0 : -1;
        st->memo_c = c;
        return 0;
    }
    st->memo_col0 = -1;   // codes written below are not the memo's
    // codes of blocks [col0/8, (col0 + c)/8) of every row: views into the (rows, cols/8) stores
    const int64_t nbt = st->cols / E8P_DIM, b0 = col0 / E8P_DIM;
    struct caldera_tensor c1 = { .data = st->codes + b0, .dtype = CALDERA_DTYPE_U16, .device = CALDERA_DEVICE_CPU,
                                 .ndim = 2, .ne = { st->rows, c / E8P_DIM }, .ld = nbt };
    struct caldera_tensor c2 = c1;
    c2.data = st->codes2 ? st->codes2 + b0 : NULL;
    rc = caldera_round_e8p(ctx, p->tab, (int) p->bits, st->scale, st->nscale, x, &c1, st->codes2 ? &c2 : NULL, x_hat);
    return rc < 0 ? caldera_error(inst, rc, "cb_round: %s", caldera_ctx_errmsg(ctx)) : 0;
}

// caldera_pack_add with this plugin's error message.
static int e8_pack_add(struct caldera_inst * inst, struct caldera_pack * pack, const char * suffix,
                       enum caldera_dtype dtype, int32_t ndim, const int64_t * ne, void ** data) {
    int rc = caldera_pack_add(pack, suffix, dtype, ndim, ne, data);
    if (rc < 0) {
        return caldera_error(inst, rc, "cb_end: cannot add tensor '%s' to the pack (%s)", suffix,
                             caldera_status_str(rc));
    }
    return 0;
}

static int e8_cb_end(struct caldera_inst * inst, struct caldera_cb_state * st,
                     struct caldera_pack * pack) {
    const struct e8_priv * p = caldera_inst_priv(inst);
    void * data = NULL;
    int rc;
    if (!st) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "cb_end: no state; call cb_begin first");
    }
    const int64_t nb = st->cols / E8P_DIM;
    const int64_t ne[2] = { st->rows, nb };
    const size_t  ncode = (size_t) (st->rows * nb);

    // "codes": (rows, cols/8) u16, the E8P12 code of block b of row r at [r][b]
    if ((rc = e8_pack_add(inst, pack, "codes", CALDERA_DTYPE_U16, 2, ne, &data)) < 0) {
        return rc;
    }
    memcpy(data, st->codes, ncode * sizeof(uint16_t));
    if (p->bits == 4) {  // "codes2": (rows, cols/8) u16, second E8P12 stage
        if ((rc = e8_pack_add(inst, pack, "codes2", CALDERA_DTYPE_U16, 2, ne, &data)) < 0) {
            return rc;
        }
        memcpy(data, st->codes2, ncode * sizeof(uint16_t));
    } else if (p->bits == 3) {  // "codes2": (rows, cols/8) u8, "E8 1-bit" residual
        if ((rc = e8_pack_add(inst, pack, "codes2", CALDERA_DTYPE_U8, 2, ne, &data)) < 0) {
            return rc;
        }
        uint8_t * d8 = data;
        for (size_t k = 0; k < ncode; k++) {
            d8[k] = (uint8_t) st->codes2[k];
        }
    }
    // "scale": (1) or (rows), f16 or f32
    const int64_t nes[1] = { st->nscale };
    if (p->scale_dtype == E8_DTYPE_F16) {
        if ((rc = e8_pack_add(inst, pack, "scale", CALDERA_DTYPE_F16, 1, nes, &data)) < 0) {
            return rc;
        }
        uint16_t * h = data;
        for (int64_t k = 0; k < st->nscale; k++) {
            h[k] = caldera_f32_to_f16(st->scale[k]);  // exact: the scale was rounded in cb_begin
        }
    } else {
        if ((rc = e8_pack_add(inst, pack, "scale", CALDERA_DTYPE_F32, 1, nes, &data)) < 0) {
            return rc;
        }
        memcpy(data, st->scale, (size_t) st->nscale * sizeof(float));
    }
    return 0;
}

static int e8_quantize(struct caldera_inst * inst, const struct caldera_tensor * w,
                       const struct caldera_tensor * h, struct caldera_tensor * w_hat,
                       struct caldera_pack * pack) {
    struct caldera_cb_state * st = NULL;
    int rc;
    (void) h;  // round to nearest: the Hessian is for wrappers such as ldlq
    if ((rc = caldera_check_matrix(inst, "quantize", "W", w, -1, -1)) < 0 ||
        (rc = caldera_check_matrix(inst, "quantize", "w_hat", w_hat, w->ne[0], w->ne[1])) < 0 ||
        (rc = e8_cb_begin(inst, w, &st)) < 0 ||
        (rc = e8_cb_round(inst, st, 0, w, w_hat)) < 0 ||
        (rc = e8_cb_end(inst, st, pack)) < 0) {
        goto fail;
    }
fail:
    e8_cb_free(inst, st);
    return rc;
}

// Find pack tensor suffix with the given dtype(s) and element count.
static int e8_find(struct caldera_inst * inst, const char * where, const struct caldera_pack * pack,
                   const char * suffix, enum caldera_dtype dt1, enum caldera_dtype dt2, int64_t nelem,
                   struct caldera_tensor * out) {
    int rc = caldera_pack_find(pack, suffix, out);
    if (rc == CALDERA_ERR_NOT_FOUND) {
        return caldera_error(inst, rc, "%s: the pack has no tensor '%s' (bits=%d)", where, suffix,
                             (int) ((const struct e8_priv *) caldera_inst_priv(inst))->bits);
    }
    if (rc < 0) {
        return caldera_error(inst, rc, "%s: cannot look up tensor '%s' (%s)", where, suffix,
                             rc == CALDERA_ERR_NOMEM ? "out of memory" : caldera_status_str(rc));
    }
    if ((out->dtype != dt1 && out->dtype != dt2) || caldera_tensor_nelements(out) != nelem) {
        return caldera_error(inst, CALDERA_ERR_FORMAT,
                             "%s: tensor '%s' is %s with %" PRId64 " elements; expected %s with %" PRId64,
                             where, suffix, caldera_dtype_name(out->dtype), caldera_tensor_nelements(out),
                             caldera_dtype_name(dt1), nelem);
    }
    return 0;
}

struct e8_dequant_job {
    const struct e8p_tables * tab;
    int                       bits;
    int64_t                   nscale, nb;
    const float *             scale;
    const uint16_t *          c1;
    const void *              c2;    // u16 (4 bits) or u8 (3 bits)
    struct caldera_tensor *   w_hat;
};

static void e8_dequant_rows(void * arg, int64_t i0, int64_t i1) {
    const struct e8_dequant_job * job = arg;
    for (int64_t i = i0; i < i1; i++) {
        const float s  = job->scale[job->nscale == 1 ? 0 : i];
        float *     yr = (float *) job->w_hat->data + i * job->w_hat->ld;
        for (int64_t b = 0; b < job->nb; b++) {
            int64_t  k  = i * job->nb + b;
            uint16_t k2 = job->bits == 4 ? ((const uint16_t *) job->c2)[k]
                        : job->bits == 3 ? ((const uint8_t *) job->c2)[k] : 0;
            float v[E8P_DIM];
            e8p_decode_bits(job->tab, job->bits, job->c1[k], k2, v);
            for (int j = 0; j < E8P_DIM; j++) {
                yr[b * E8P_DIM + j] = s * v[j];
            }
        }
    }
}

static int e8_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack,
                         struct caldera_tensor * w_hat) {
    const struct e8_priv * p = caldera_inst_priv(inst);
    struct caldera_tensor codes, codes2, scale;
    float * sc = NULL;
    int rc;
    if (!p->tab) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "dequantize: instance not started; call caldera_inst_start first");
    }
    if ((rc = caldera_check_matrix(inst, "dequantize", "w_hat", w_hat, -1, -1)) < 0 ||
        (rc = e8_check_shape(inst, w_hat->ne[0], w_hat->ne[1])) < 0) {
        return rc;
    }
    const int64_t m = w_hat->ne[0], nb = w_hat->ne[1] / E8P_DIM;
    const int64_t nscale = p->scale_mode == E8_SCALE_ROW ? m : 1;
    if ((rc = e8_find(inst, "dequantize", pack, "codes", CALDERA_DTYPE_U16, CALDERA_DTYPE_U16, m * nb, &codes)) < 0 ||
        (rc = e8_find(inst, "dequantize", pack, "scale", CALDERA_DTYPE_F16, CALDERA_DTYPE_F32, nscale, &scale)) < 0) {
        return rc;
    }
    if (p->bits > 2) {
        enum caldera_dtype dt = p->bits == 4 ? CALDERA_DTYPE_U16 : CALDERA_DTYPE_U8;
        if ((rc = e8_find(inst, "dequantize", pack, "codes2", dt, dt, m * nb, &codes2)) < 0) {
            return rc;
        }
    }
    if (!(sc = caldera_malloc((size_t) nscale * sizeof(float)))) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "dequantize: out of memory");
    }
    if ((rc = caldera_convert_to_f32(scale.dtype, scale.data, nscale, sc)) < 0) {
        rc = caldera_error(inst, rc, "dequantize: cannot convert 'scale' to f32");
        goto fail;
    }
    struct e8_dequant_job job = {
        .tab = p->tab, .bits = (int) p->bits, .nscale = nscale, .nb = nb, .scale = sc,
        .c1 = codes.data, .c2 = p->bits > 2 ? codes2.data : NULL, .w_hat = w_hat,
    };
    caldera_parallel_for(caldera_inst_ctx(inst), m, 1 + 4096 / (nb > 0 ? nb : 1), e8_dequant_rows, &job);
fail:
    caldera_free(sc);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Fused layer: the codes are multiplied in place by the E8P kernels (caldera-kernels.h).

static int e8_linear_init(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows,
                          int64_t cols, void ** state) {
    const struct e8_priv * p = caldera_inst_priv(inst);
    struct caldera_tensor codes, codes2 = { 0 }, scale;
    struct caldera_kw * kw = NULL;
    int rc;
    *state = NULL;
    if (!p->kgrid) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "linear_init: instance not started; call caldera_inst_start first");
    }
    if ((rc = e8_check_shape(inst, rows, cols)) < 0) {
        return rc;
    }
    const int64_t nb = cols / E8P_DIM, nscale = p->scale_mode == E8_SCALE_ROW ? rows : 1;
    if ((rc = e8_find(inst, "linear_init", pack, "codes", CALDERA_DTYPE_U16, CALDERA_DTYPE_U16, rows * nb, &codes)) < 0 ||
        (rc = e8_find(inst, "linear_init", pack, "scale", CALDERA_DTYPE_F16, CALDERA_DTYPE_F32, nscale, &scale)) < 0) {
        return rc;
    }
    if (p->bits > 2) {
        enum caldera_dtype dt = p->bits == 4 ? CALDERA_DTYPE_U16 : CALDERA_DTYPE_U8;
        if ((rc = e8_find(inst, "linear_init", pack, "codes2", dt, dt, rows * nb, &codes2)) < 0) {
            return rc;
        }
    }
    if (!(kw = caldera_calloc(1, sizeof(*kw)))) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "linear_init: out of memory");
    }
    *kw = (struct caldera_kw) {
        .type = CALDERA_KW_E8P, .rows = rows, .cols = cols, .bits = (int) p->bits,
        .codes = codes.data, .codes2 = p->bits > 2 ? codes2.data : NULL,
        .e8_grid = p->kgrid, .e8_rvq1 = p->krvq1,
        .e8_rho = p->bits == 4 ? E8P_RESID_SCALE_4BIT : E8P_RESID_SCALE_3BIT,
        .scale = scale.data, .scale_dtype = scale.dtype, .scale_per_row = p->scale_mode == E8_SCALE_ROW,
    };
    if ((rc = caldera_kw_check(caldera_inst_ctx(inst), kw)) < 0) {
        caldera_free(kw);
        return caldera_error(inst, rc, "linear_init: %s", caldera_ctx_errmsg(caldera_inst_ctx(inst)));
    }
    *state = kw;
    return 0;
}

static int e8_linear_apply(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                             struct caldera_tensor * y, unsigned flags) {
    return caldera_kw_apply(inst, state, x, y, flags);
}

static void e8_linear_free(struct caldera_inst * inst, void * state) {
    (void) inst;
    caldera_free(state);
}

static const struct caldera_quantizer_ops e8_ops = {
    .struct_size = sizeof(struct caldera_quantizer_ops),
    .quantize    = e8_quantize,
    .dequantize  = e8_dequantize,
    .bits        = e8_bits,
    .cb_dim      = e8_cb_dim,
    .cb_begin    = e8_cb_begin,
    .cb_round    = e8_cb_round,
    .cb_end      = e8_cb_end,
    .cb_free     = e8_cb_free,
    .cb_begin_h  = NULL,
    .linear_init  = e8_linear_init,
    .linear_apply = e8_linear_apply,
    .linear_free  = e8_linear_free,
    .cb_device    = 1,
};

static const struct caldera_plugin e8_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_QUANTIZER,
    .name           = "e8",
    .description    = "E8P lattice codebooks of QuIP# (2, 3, 4 bits per weight, blocks of 8)",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct e8_priv),
    .options        = e8_options,
    .probe          = NULL,
    .check          = NULL,
    .check_shape    = e8_check_shape,
    .init           = e8_init,
    .uninit         = e8_uninit,
    .ops            = &e8_ops,
};

CALDERA_PLUGIN_DEFINE(e8_plugin)
