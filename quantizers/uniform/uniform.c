// SPDX-License-Identifier: MIT
// uniform.c: the "uniform" quantizer plugin: scalar round-to-nearest with 1..8 bits, scales per
// tensor, row, column or group of g weights along a row, symmetric (absmax) or asymmetric
// (min/max with GPTQ's integer zero point, so 0 is always a level), an optional clip-ratio search
// per scale group, and a bit-packed code stream.
// It is also a cb_dim = 1 codebook, so ldlq can wrap it (GPTQ-style: scales from the original W).
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-kernels.h"
#include "caldera/caldera-plugin.h"
#include "uniform-rule.h"

enum uniform_lev   { UNI_LEV_FULL = 0, UNI_LEV_REFERENCE = 1 };
enum uniform_dtype { UNI_F16 = 0, UNI_F32 = 1 };
enum uniform_zero  { UNI_ZERO_INTEGER = 0, UNI_ZERO_FLOAT = 1 };

struct uniform_priv {
    int64_t bits;         // 1..8
    int     granularity;  // enum uniform_gran
    int64_t group_size;   // weights per group along a row (granularity=group)
    int     symmetric;    // absmax (1) or min/max (0)
    int     levels;       // enum uniform_lev (symmetric only)
    int     clip_search;  // search a clip ratio per scale group
    int64_t clip_grid;    // number of ratios in [clip_min, 1]
    double  clip_min;     // smallest ratio tried
    int     scale_dtype;  // enum uniform_dtype
    int     zero_point;   // enum uniform_zero (asymmetric only)
};

/** Codebook state: scale groups chosen from the whole W, and one byte per code until cb_end. */
struct caldera_cb_state {
    int64_t   rows, cols;  // shape of W
    int64_t   ngr;         // groups per row (granularity=group), else 0
    int64_t   nscale;      // number of scale groups
    float *   scale;       // (nscale) step sizes, already rounded to scale_dtype
    float *   zero;        // (nscale) integer zero point z (asymmetric, 0..2^b-1, held as float); else NULL
    uint8_t * codes;       // (rows, cols) codes, one per byte
};


#define OFF(x) offsetof(struct uniform_priv, x)

static const struct caldera_opt_choice uniform_gran_choices[] = {
    { .name = "tensor", .value = UNI_TENSOR, .help = "one scale for the matrix" },
    { .name = "row",    .value = UNI_ROW,    .help = "one scale per row (output channel)" },
    { .name = "column", .value = UNI_COLUMN, .help = "one scale per column (input channel)" },
    { .name = "group",  .value = UNI_GROUP,  .help = "one scale per group_size consecutive weights of a row" },
    { .name = NULL }
};

static const struct caldera_opt_choice uniform_lev_choices[] = {
    { .name = "full", .value = UNI_LEV_FULL,
      .help = "2^b levels (k + 1/2) d, k = -2^(b-1) .. 2^(b-1) - 1 (no zero level)" },
    { .name = "reference", .value = UNI_LEV_REFERENCE,
      .help = "2^b - 1 levels k d, |k| <= 2^(b-1) - 1, as CALDERA's LowMemoryQuantizer" },
    { .name = NULL }
};

static const struct caldera_opt_choice uniform_dtype_choices[] = {
    { .name = "f16", .value = UNI_F16, .help = "scales (and zeros) stored as IEEE half" },
    { .name = "f32", .value = UNI_F32, .help = "scales (and zeros) stored as IEEE single" },
    { .name = NULL }
};

static const struct caldera_opt_choice uniform_zero_choices[] = {
    { .name = "integer", .value = UNI_ZERO_INTEGER,
      .help = "GPTQ: range widened to contain 0, integer zero point (u8), so 0 is a level" },
    { .name = "float", .value = UNI_ZERO_FLOAT,
      .help = "z = min exactly (f16/f32): the levels span [min, max], 0 is in general not a level" },
    { .name = NULL }
};

static const struct caldera_option uniform_options[] = {
    { .name = "bits", .offset = OFF(bits), .type = CALDERA_OPT_INT, .def.i64 = 4, .min = 1, .max = 8,
      .help = "bits per weight" },
    { .name = "granularity", .offset = OFF(granularity), .type = CALDERA_OPT_ENUM,
      .def.i64 = UNI_GROUP, .choices = uniform_gran_choices, .help = "what one scale covers" },
    { .name = "group_size", .offset = OFF(group_size), .type = CALDERA_OPT_INT, .def.i64 = 64,
      .min = 1, .max = 1 << 30,
      .help = "weights per scale group along a row (granularity=group); the last group of a row may be shorter" },
    { .name = "symmetric", .offset = OFF(symmetric), .type = CALDERA_OPT_BOOL, .def.i64 = 1,
      .min = 0, .max = 1, .help = "1: absmax scale, no zero point; 0: min/max scale and GPTQ's integer zero point (0 is a level)" },
    { .name = "levels", .offset = OFF(levels), .type = CALDERA_OPT_ENUM, .def.i64 = UNI_LEV_FULL,
      .choices = uniform_lev_choices, .help = "level set of the symmetric quantizer" },
    { .name = "clip_search", .offset = OFF(clip_search), .type = CALDERA_OPT_BOOL, .def.i64 = 0,
      .min = 0, .max = 1,
      .help = "search a clip ratio per scale group minimising the (diag(H)-weighted) squared error" },
    { .name = "clip_grid", .offset = OFF(clip_grid), .type = CALDERA_OPT_INT, .def.i64 = 40,
      .min = 1, .max = 1000, .help = "number of clip ratios tried, evenly spaced in [clip_min, 1]" },
    { .name = "clip_min", .offset = OFF(clip_min), .type = CALDERA_OPT_DOUBLE, .def.dbl = 0.2,
      .min = 0.01, .max = 1.0, .help = "smallest clip ratio tried" },
    { .name = "scale_dtype", .offset = OFF(scale_dtype), .type = CALDERA_OPT_ENUM,
      .def.i64 = UNI_F16, .choices = uniform_dtype_choices,
      .help = "storage type of scales and zero points" },
    { .name = "zero_point", .offset = OFF(zero_point), .type = CALDERA_OPT_ENUM, .def.i64 = UNI_ZERO_INTEGER,
      .choices = uniform_zero_choices, .help = "zero point of the asymmetric quantizer (symmetric=0)" },
    { .name = NULL }
};

static int uniform_check(struct caldera_inst * inst) {
    const struct uniform_priv * p = caldera_inst_priv(inst);
    if (p->levels == UNI_LEV_REFERENCE && !p->symmetric) {
        return caldera_error(inst, CALDERA_ERR_INVAL,
                             "levels=reference needs symmetric=1; allowed with symmetric=0: levels=full");
    }
    if (p->levels == UNI_LEV_REFERENCE && p->bits < 2) {
        return caldera_error(inst, CALDERA_ERR_INVAL,
                             "levels=reference with bits=%" PRId64 " has no level but 0; allowed: bits >= 2 "
                             "or levels=full", p->bits);
    }
    return 0;
}

static int uniform_check_shape(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    if (rows < 1 || cols < 1) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED,
                             "shape %" PRId64 "x%" PRId64 " is empty; rows and cols must be >= 1",
                             rows, cols);
    }
    return 0;
}

static struct uniform_rule uniform_rule_of(const struct uniform_priv * p) {
    struct uniform_rule r;
    int64_t L = (int64_t) 1 << (p->bits - 1);
    if (!p->symmetric) {
        r.kind = p->zero_point == UNI_ZERO_FLOAT ? 3 : 2;
        r.kmax = (int) (2 * L - 1);
        r.half = 0.0f;
    } else if (p->levels == UNI_LEV_REFERENCE) {
        r.kind = 1;
        r.kmax = (int) (2 * L - 2);
        r.half = (float) (L - 1);
    } else {
        r.kind = 0;
        r.kmax = (int) (2 * L - 1);
        r.half = (float) L - 0.5f;
    }
    return r;
}




// Round v to the storage dtype.
static inline float uniform_round_dtype(const struct uniform_priv * p, float v) {
    return p->scale_dtype == UNI_F16 ? caldera_f16_to_f32(caldera_f32_to_f16(v)) : v;
}

// Step and zero from a group's range [lo, hi] shrunk by ratio c, rounded to the storage type.
static void uniform_params(const struct uniform_priv * p, const struct uniform_rule * r,
                           float lo, float hi, double c, float * d, float * z) {
    if (r->kind == 2) {
        // GPTQ: the range is widened to contain 0, z = rint(-min / d) is an integer code, so the
        // level of code z is exactly 0
        double l = fmin(lo * c, 0.0), h = fmax(hi * c, 0.0);
        *d = uniform_round_dtype(p, (float) ((h - l) / (double) r->kmax));
        double zz = *d > 0.0f ? rint(-l / (double) *d) : 0.0;
        *z = (float) (zz < 0.0 ? 0.0 : zz > r->kmax ? r->kmax : zz);
    } else if (r->kind == 3) {
        double l = lo * c, h = hi * c;
        *z = uniform_round_dtype(p, (float) l);
        *d = uniform_round_dtype(p, (float) ((h - l) / (double) r->kmax));
    } else {
        double a = fmax(fabs((double) lo), fabs((double) hi)) * c;
        *z = 0.0f;
        *d = uniform_round_dtype(p, (float) (a / (double) r->half));
    }
}

// The rectangle [r0, r1) x [c0, c1) of W that scale group k covers.
static void uniform_group_rect(const struct uniform_priv * p, const struct caldera_cb_state * st,
                               int64_t k, int64_t * r0, int64_t * r1, int64_t * c0, int64_t * c1) {
    switch (p->granularity) {
    case UNI_TENSOR: *r0 = 0; *r1 = st->rows; *c0 = 0; *c1 = st->cols; break;
    case UNI_ROW:    *r0 = k; *r1 = k + 1; *c0 = 0; *c1 = st->cols; break;
    case UNI_COLUMN: *r0 = 0; *r1 = st->rows; *c0 = k; *c1 = k + 1; break;
    default:
        *r0 = k / st->ngr;
        *r1 = *r0 + 1;
        *c0 = (k % st->ngr) * p->group_size;
        *c1 = *c0 + p->group_size < st->cols ? *c0 + p->group_size : st->cols;
        break;
    }
}

static inline int64_t uniform_gid(const struct uniform_priv * p, const struct caldera_cb_state * st,
                                  int64_t i, int64_t j) {
    return uniform_gid_of(p->granularity, st->ngr, p->group_size, i, j);
}

static double uniform_bits(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct uniform_priv * p = caldera_inst_priv(inst);
    double nscale;
    switch (p->granularity) {
    case UNI_TENSOR: nscale = 1.0; break;
    case UNI_ROW:    nscale = (double) rows; break;
    case UNI_COLUMN: nscale = (double) cols; break;
    default:         nscale = (double) rows * (double) ((cols + p->group_size - 1) / p->group_size); break;
    }
    double code_bits = 8.0 * (double) (((uint64_t) rows * (uint64_t) cols * (uint64_t) p->bits + 7) / 8);
    const double fbits = p->scale_dtype == UNI_F16 ? 16.0 : 32.0;
    double per_scale = fbits + (p->symmetric ? 0.0 : p->zero_point == UNI_ZERO_FLOAT ? fbits : 8.0);  // + zero point
    return code_bits + nscale * per_scale;
}

static int64_t uniform_cb_dim(struct caldera_inst * inst) {
    (void) inst;
    return 1;
}

static void uniform_cb_free(struct caldera_inst * inst, struct caldera_cb_state * st) {
    (void) inst;
    if (!st) {
        return;
    }
    caldera_free(st->scale);
    caldera_free(st->zero);
    caldera_free(st->codes);
    caldera_free(st);
}



struct uniform_begin_job {
    const struct uniform_priv *   p;
    struct uniform_rule           rule;
    struct caldera_cb_state *     st;
    const struct caldera_tensor * w;
    const float *                 hdiag;   // (cols) column weights for the clip search, or NULL
};

// Clip-ratio candidates of one scale group: each ratio's rounded step and zero and its error.
struct uniform_ratio_job {
    const struct uniform_begin_job * job;
    int64_t                          r0, r1, c0, c1;  // the group's rectangle of W
    float                            lo, hi;          // the group's range
    double *                         err;             // (clip_grid) squared error per ratio
    float *                          d, * z;          // (clip_grid) rounded step and zero
};

static void uniform_ratio_range(void * arg, int64_t g0, int64_t g1) {
    const struct uniform_ratio_job * rj  = arg;
    const struct uniform_begin_job * job = rj->job;
    const struct uniform_priv *      p   = job->p;
    const float * wd = job->w->data;
    const int64_t ld = job->w->ld;
    for (int64_t g = g0; g < g1; g++) {
        double c = 1.0 - (1.0 - p->clip_min) * (double) g / (double) (p->clip_grid - 1);
        float  dg, zg;
        uniform_params(p, &job->rule, rj->lo, rj->hi, c, &dg, &zg);
        double err = 0.0;
        for (int64_t i = rj->r0; i < rj->r1; i++) {
            for (int64_t j = rj->c0; j < rj->c1; j++) {
                float  v = wd[i * ld + j];
                double e = (double) v - uniform_decode(&job->rule, uniform_encode(&job->rule, v, dg, zg), dg, zg);
                err += (job->hdiag ? (double) job->hdiag[j] : 1.0) * e * e;
            }
        }
        rj->err[g] = err;
        rj->d[g]   = dg;
        rj->z[g]   = zg;
    }
}

// Choose step and zero of group k: its range, then (optionally) the clip ratio with the least
// (weighted) squared error, evaluated with the rounded parameters actually stored. With a ctx
// the ratios are tried in parallel (for few, large groups); the result is the same either way.
static void uniform_choose(const struct uniform_begin_job * job, int64_t k, struct caldera_ctx * ctx) {
    const struct uniform_priv * p  = job->p;
    struct caldera_cb_state *   st = job->st;
    const float * wd = job->w->data;
    const int64_t ld = job->w->ld;
    struct uniform_ratio_job rj = { .job = job };
    uniform_group_rect(p, st, k, &rj.r0, &rj.r1, &rj.c0, &rj.c1);
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = rj.r0; i < rj.r1; i++) {
        for (int64_t j = rj.c0; j < rj.c1; j++) {
            float v = wd[i * ld + j];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    }
    float d, z;
    uniform_params(p, &job->rule, lo, hi, 1.0, &d, &z);
    if (p->clip_search && p->clip_grid > 1) {
        double err[1000];  // clip_grid <= 1000 (option range)
        float  dg[1000], zg[1000];
        rj.lo  = lo;
        rj.hi  = hi;
        rj.err = err;
        rj.d   = dg;
        rj.z   = zg;
        if (ctx) {
            caldera_parallel_for(ctx, p->clip_grid, 1, uniform_ratio_range, &rj);
        } else {
            uniform_ratio_range(&rj, 0, p->clip_grid);
        }
        double best = INFINITY;
        for (int64_t g = 0; g < p->clip_grid; g++) {
            if (err[g] < best) {  // strict: ties keep the larger ratio (1 first)
                best = err[g];
                d = dg[g];
                z = zg[g];
            }
        }
    }
    st->scale[k] = d;
    if (st->zero) {
        st->zero[k] = z;
    }
}

static void uniform_begin_groups(void * arg, int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; k++) {
        uniform_choose(arg, k, NULL);
    }
}

static int uniform_begin(struct caldera_inst * inst, const struct caldera_tensor * w,
                         const float * hdiag, struct caldera_cb_state ** state) {
    const struct uniform_priv * p  = caldera_inst_priv(inst);
    struct caldera_cb_state *   st = NULL;
    int rc;

    *state = NULL;
    if ((rc = caldera_check_matrix(inst, "cb_begin", "W", w, -1, -1)) < 0 ||
        (rc = uniform_check_shape(inst, w->ne[0], w->ne[1])) < 0 ||
        (rc = uniform_check(inst)) < 0 ||
        (rc = caldera_check_finite(inst, "cb_begin", "W", w)) < 0) {
        return rc;
    }
    const int64_t m = w->ne[0], n = w->ne[1];
    if (!(st = caldera_calloc(1, sizeof(*st)))) {
        goto nomem;
    }
    st->rows = m;
    st->cols = n;
    switch (p->granularity) {
    case UNI_TENSOR: st->nscale = 1; break;
    case UNI_ROW:    st->nscale = m; break;
    case UNI_COLUMN: st->nscale = n; break;
    default:
        st->ngr    = (n + p->group_size - 1) / p->group_size;
        st->nscale = m * st->ngr;
        break;
    }
    if (!(st->scale = caldera_malloc((size_t) st->nscale * sizeof(float))) ||
        (!p->symmetric && !(st->zero = caldera_malloc((size_t) st->nscale * sizeof(float)))) ||
        !(st->codes = caldera_calloc((size_t) (m * n), 1))) {
        goto nomem;
    }
    struct uniform_begin_job job = { .p = p, .rule = uniform_rule_of(p), .st = st, .w = w, .hdiag = hdiag };
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    if (p->clip_search && st->nscale < 4 * (int64_t) caldera_ctx_threads(ctx)) {
        for (int64_t k = 0; k < st->nscale; k++) {  // few large groups: ratios in parallel
            uniform_choose(&job, k, ctx);
        }
    } else {
        int64_t per_group = m * n / st->nscale;
        caldera_parallel_for(ctx, st->nscale, 1 + 16384 / (per_group > 0 ? per_group : 1),
                             uniform_begin_groups, &job);
    }
    for (int64_t k = 0; k < st->nscale; k++) {
        if (!isfinite(st->scale[k]) || (st->zero && !isfinite(st->zero[k]))) {
            rc = caldera_error(inst, CALDERA_ERR_RANGE,
                               "cb_begin: scale group %" PRId64 " has a step or zero beyond the range of "
                               "scale_dtype=%s; use scale_dtype=f32", k,
                               p->scale_dtype == UNI_F16 ? "f16" : "f32");
            goto fail;
        }
    }
    *state = st;
    return 0;

nomem:
    rc = caldera_error(inst, CALDERA_ERR_NOMEM, "cb_begin: out of memory for %" PRId64 "x%" PRId64 " codes",
                       m, n);
fail:
    uniform_cb_free(inst, st);
    return rc;
}

static int uniform_cb_begin(struct caldera_inst * inst, const struct caldera_tensor * w,
                            struct caldera_cb_state ** state) {
    return uniform_begin(inst, w, NULL, state);
}

static int uniform_cb_round(struct caldera_inst * inst, struct caldera_cb_state * st, int64_t col0,
                            const struct caldera_tensor * x, struct caldera_tensor * x_hat) {
    const struct uniform_priv * p = caldera_inst_priv(inst);
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
    if (col0 < 0 || col0 + c > st->cols) {
        return caldera_error(inst, CALDERA_ERR_INVAL,
                             "cb_round: columns [%" PRId64 ", %" PRId64 ") are outside [0, %" PRId64 ")",
                             col0, col0 + c, st->cols);
    }
    if (!on_dev && ((rc = caldera_check_matrix(inst, "cb_round", "x_hat", x_hat, st->rows, c)) < 0 ||
                    (rc = caldera_check_finite(inst, "cb_round", "x", x)) < 0)) {
        return rc;
    }
    const struct uniform_rule rule = uniform_rule_of(p);
    // codes of columns [col0, col0 + c): a view into the (rows, cols) store
    struct caldera_tensor codes = { .data = st->codes + col0, .dtype = CALDERA_DTYPE_U8, .device = CALDERA_DEVICE_CPU,
                                    .ndim = 2, .ne = { st->rows, c }, .ld = st->cols };
    rc = caldera_round_uniform(ctx, &rule, p->granularity, st->ngr, p->group_size, col0, st->scale, st->zero,
                               st->nscale, x, &codes, x_hat);
    return rc < 0 ? caldera_error(inst, rc, "cb_round: %s", caldera_ctx_errmsg(ctx)) : 0;
}

// Shape of the scale (and zero) tensors: (1), (rows), (cols) or (rows, groups per row).
static int32_t uniform_scale_shape(const struct uniform_priv * p, const struct caldera_cb_state * st,
                                   int64_t ne[2]) {
    switch (p->granularity) {
    case UNI_TENSOR: ne[0] = 1; return 1;
    case UNI_ROW:    ne[0] = st->rows; return 1;
    case UNI_COLUMN: ne[0] = st->cols; return 1;
    default:         ne[0] = st->rows; ne[1] = st->ngr; return 2;
    }
}

static int uniform_add_floats(struct caldera_inst * inst, struct caldera_pack * pack, const char * suffix,
                              const struct uniform_priv * p, int32_t ndim, const int64_t * ne,
                              const float * v, int64_t n) {
    void * data = NULL;
    enum caldera_dtype dt = p->scale_dtype == UNI_F16 ? CALDERA_DTYPE_F16 : CALDERA_DTYPE_F32;
    int rc = caldera_pack_add(pack, suffix, dt, ndim, ne, &data);
    if (rc < 0) {
        return caldera_error(inst, rc, "cb_end: cannot add tensor '%s' to the pack (%s)", suffix,
                             caldera_status_str(rc));
    }
    if (dt == CALDERA_DTYPE_F16) {
        uint16_t * h = data;
        for (int64_t k = 0; k < n; k++) {
            h[k] = caldera_f32_to_f16(v[k]);  // exact: values were rounded to f16 in cb_begin
        }
    } else {
        memcpy(data, v, (size_t) n * sizeof(float));
    }
    return 0;
}

static int uniform_cb_end(struct caldera_inst * inst, struct caldera_cb_state * st,
                          struct caldera_pack * pack) {
    const struct uniform_priv * p = caldera_inst_priv(inst);
    void * data = NULL;
    int rc;
    if (!st) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "cb_end: no state; call cb_begin first");
    }
    // "codes": u8 bit stream, code e = i * cols + j in bits [e b, e b + b), LSB first
    const int64_t  nel    = st->rows * st->cols;
    const int64_t  nbytes = (int64_t) (((uint64_t) nel * (uint64_t) p->bits + 7) / 8);
    const int64_t  ne1[1] = { nbytes };
    if ((rc = caldera_pack_add(pack, "codes", CALDERA_DTYPE_U8, 1, ne1, &data)) < 0) {
        return caldera_error(inst, rc, "cb_end: cannot add tensor 'codes' to the pack (%s)",
                             caldera_status_str(rc));
    }
    uint8_t * out = data;
    uint64_t  acc = 0;
    int       nacc = 0;
    int64_t   o = 0;
    for (int64_t e = 0; e < nel; e++) {
        acc |= (uint64_t) st->codes[e] << nacc;
        nacc += (int) p->bits;
        while (nacc >= 8) {
            out[o++] = (uint8_t) acc;
            acc >>= 8;
            nacc -= 8;
        }
    }
    if (nacc > 0) {
        out[o++] = (uint8_t) acc;
    }
    int64_t ne[2];
    int32_t nd = uniform_scale_shape(p, st, ne);
    if ((rc = uniform_add_floats(inst, pack, "scale", p, nd, ne, st->scale, st->nscale)) < 0) {
        return rc;
    }
    if (st->zero && p->zero_point == UNI_ZERO_FLOAT) {
        if ((rc = uniform_add_floats(inst, pack, "zero", p, nd, ne, st->zero, st->nscale)) < 0) {
            return rc;
        }
    } else if (st->zero) {   // integer zero points, one byte each
        if ((rc = caldera_pack_add(pack, "zero", CALDERA_DTYPE_U8, nd, ne, &data)) < 0) {
            return caldera_error(inst, rc, "cb_end: cannot add tensor 'zero' to the pack (%s)", caldera_status_str(rc));
        }
        uint8_t * zb = data;
        for (int64_t k = 0; k < st->nscale; k++) {
            zb[k] = (uint8_t) st->zero[k];
        }
    }
    return 0;
}

// cb_begin with the Hessian: its diagonal weights the clip search (when clip_search is on).
static int uniform_cb_begin_h(struct caldera_inst * inst, const struct caldera_tensor * w,
                              const struct caldera_tensor * h, struct caldera_cb_state ** state) {
    const struct uniform_priv * p = caldera_inst_priv(inst);
    float * hdiag = NULL;
    int rc;
    if ((rc = caldera_check_matrix(inst, "cb_begin", "W", w, -1, -1)) < 0) {
        return rc;
    }
    if (h && p->clip_search) {  // the Hessian only weights the clip search: diag(H) per column
        const int64_t n = w->ne[1];
        if ((rc = caldera_check_matrix(inst, "quantize", "H", h, n, n)) < 0) {
            return rc;
        }
        if (!(hdiag = caldera_malloc((size_t) n * sizeof(float)))) {
            return caldera_error(inst, CALDERA_ERR_NOMEM, "quantize: out of memory");
        }
        for (int64_t j = 0; j < n; j++) {
            hdiag[j] = ((const float *) h->data)[j * h->ld + j];
            if (!isfinite(hdiag[j]) || hdiag[j] < 0.0f) {
                rc = caldera_error(inst, CALDERA_ERR_NUMERIC,
                                   "quantize: H[%" PRId64 "][%" PRId64 "] = %g; the diagonal of H must be "
                                   "finite and >= 0", j, j, (double) hdiag[j]);
                caldera_free(hdiag);
                return rc;
            }
        }
    }
    rc = uniform_begin(inst, w, hdiag, state);
    caldera_free(hdiag);
    return rc;
}

static int uniform_quantize(struct caldera_inst * inst, const struct caldera_tensor * w,
                            const struct caldera_tensor * h, struct caldera_tensor * w_hat,
                            struct caldera_pack * pack) {
    struct caldera_cb_state * st = NULL;
    int rc;
    if ((rc = caldera_check_matrix(inst, "quantize", "W", w, -1, -1)) < 0 ||
        (rc = caldera_check_matrix(inst, "quantize", "w_hat", w_hat, w->ne[0], w->ne[1])) < 0) {
        return rc;
    }
    if ((rc = uniform_cb_begin_h(inst, w, h, &st)) < 0 ||
        (rc = uniform_cb_round(inst, st, 0, w, w_hat)) < 0 ||
        (rc = uniform_cb_end(inst, st, pack)) < 0) {
        goto fail;
    }
fail:
    uniform_cb_free(inst, st);
    return rc;
}

struct uniform_dequant_job {
    const struct uniform_priv * p;
    struct uniform_rule         rule;
    struct caldera_cb_state *   st;     // shape and group geometry only (no codes)
    const uint8_t *             codes;  // bit stream
    int64_t                     nbytes;
    const float *               scale;
    const float *               zero;
    struct caldera_tensor *     w_hat;
};

static void uniform_dequant_rows(void * arg, int64_t i0, int64_t i1) {
    const struct uniform_dequant_job * job = arg;
    const int64_t  n    = job->st->cols;
    const int      b    = (int) job->p->bits;
    const uint32_t mask = (1u << b) - 1u;
    for (int64_t i = i0; i < i1; i++) {
        float * yr = (float *) job->w_hat->data + i * job->w_hat->ld;
        for (int64_t j = 0; j < n; j++) {
            uint64_t bit = (uint64_t) (i * n + j) * (uint64_t) b;
            int64_t  o   = (int64_t) (bit >> 3);
            uint32_t v   = job->codes[o];
            if (o + 1 < job->nbytes) {
                v |= (uint32_t) job->codes[o + 1] << 8;
            }
            int     k = (int) ((v >> (bit & 7)) & mask);
            int64_t g = uniform_gid(job->p, job->st, i, j);
            yr[j] = uniform_decode(&job->rule, k, job->scale[g], job->zero ? job->zero[g] : 0.0f);
        }
    }
}

static int uniform_find(struct caldera_inst * inst, const char * where, const struct caldera_pack * pack,
                        const char * suffix, int floats, int64_t nelem, struct caldera_tensor * out) {
    int rc = caldera_pack_find(pack, suffix, out);
    if (rc == CALDERA_ERR_NOT_FOUND) {
        return caldera_error(inst, rc, "%s: the pack has no tensor '%s'", where, suffix);
    }
    if (rc < 0) {
        return caldera_error(inst, rc, "%s: cannot look up tensor '%s' (%s)", where, suffix,
                             rc == CALDERA_ERR_NOMEM ? "out of memory" : caldera_status_str(rc));
    }
    int dt_ok = floats ? (out->dtype == CALDERA_DTYPE_F16 || out->dtype == CALDERA_DTYPE_F32)
                       : out->dtype == CALDERA_DTYPE_U8;
    if (!dt_ok || caldera_tensor_nelements(out) != nelem) {
        return caldera_error(inst, CALDERA_ERR_FORMAT,
                             "%s: tensor '%s' is %s with %" PRId64 " elements; expected %s with %" PRId64,
                             where, suffix, caldera_dtype_name(out->dtype), caldera_tensor_nelements(out),
                             floats ? "f16 or f32" : "u8", nelem);
    }
    return 0;
}

static int uniform_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack,
                              struct caldera_tensor * w_hat) {
    const struct uniform_priv * p = caldera_inst_priv(inst);
    struct caldera_tensor codes, scale, zero;
    struct caldera_cb_state geo = { 0 };
    float * sc = NULL;
    int rc;
    if ((rc = caldera_check_matrix(inst, "dequantize", "w_hat", w_hat, -1, -1)) < 0 ||
        (rc = uniform_check_shape(inst, w_hat->ne[0], w_hat->ne[1])) < 0 ||
        (rc = uniform_check(inst)) < 0) {
        return rc;
    }
    geo.rows = w_hat->ne[0];
    geo.cols = w_hat->ne[1];
    switch (p->granularity) {
    case UNI_TENSOR: geo.nscale = 1; break;
    case UNI_ROW:    geo.nscale = geo.rows; break;
    case UNI_COLUMN: geo.nscale = geo.cols; break;
    default:
        geo.ngr    = (geo.cols + p->group_size - 1) / p->group_size;
        geo.nscale = geo.rows * geo.ngr;
        break;
    }
    const int64_t nbytes = (int64_t) (((uint64_t) (geo.rows * geo.cols) * (uint64_t) p->bits + 7) / 8);
    if ((rc = uniform_find(inst, "dequantize", pack, "codes", 0, nbytes, &codes)) < 0 ||
        (rc = uniform_find(inst, "dequantize", pack, "scale", 1, geo.nscale, &scale)) < 0 ||
        (!p->symmetric && (rc = uniform_find(inst, "dequantize", pack, "zero", p->zero_point == UNI_ZERO_FLOAT, geo.nscale, &zero)) < 0)) {
        return rc;
    }
    if (!(sc = caldera_malloc((size_t) geo.nscale * (p->symmetric ? 1 : 2) * sizeof(float)))) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "dequantize: out of memory");
    }
    if ((rc = caldera_convert_to_f32(scale.dtype, scale.data, geo.nscale, sc)) < 0 ||
        (!p->symmetric && (rc = caldera_convert_to_f32(zero.dtype, zero.data, geo.nscale, sc + geo.nscale)) < 0)) {
        rc = caldera_error(inst, rc, "dequantize: cannot convert the scales to f32");
        goto fail;
    }
    for (int64_t k = 0; !p->symmetric && p->zero_point == UNI_ZERO_INTEGER && k < geo.nscale; k++) {
        if (sc[geo.nscale + k] > (float) ((1 << p->bits) - 1)) {
            rc = caldera_error(inst, CALDERA_ERR_FORMAT, "dequantize: zero point %d of group %" PRId64 " is above the "
                               "largest %" PRId64 "-bit code %d", (int) sc[geo.nscale + k], k, p->bits,
                               (1 << p->bits) - 1);
            goto fail;
        }
    }
    struct uniform_dequant_job job = {
        .p = p, .rule = uniform_rule_of(p), .st = &geo, .codes = codes.data, .nbytes = nbytes,
        .scale = sc, .zero = p->symmetric ? NULL : sc + geo.nscale, .w_hat = w_hat,
    };
    caldera_parallel_for(caldera_inst_ctx(inst), geo.rows, 1 + 16384 / geo.cols, uniform_dequant_rows, &job);
fail:
    caldera_free(sc);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Fused layer: the bit stream is multiplied in place by the kernels (caldera-kernels.h).

static int uniform_linear_init(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows,
                               int64_t cols, void ** state) {
    const struct uniform_priv * p = caldera_inst_priv(inst);
    struct caldera_tensor codes, scale, zero = { 0 };
    struct caldera_kw * kw = NULL;
    int rc;
    *state = NULL;
    if ((rc = uniform_check_shape(inst, rows, cols)) < 0 || (rc = uniform_check(inst)) < 0) {
        return rc;
    }
    if (!p->symmetric && p->zero_point == UNI_ZERO_FLOAT) {
        // the kernels take GPTQ's integer zero points (value (k - z) d); a float zero (z + k d) is decoded densely
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "linear_init: no fused layer for zero_point = float");
    }
    int64_t nscale;
    switch (p->granularity) {
    case UNI_TENSOR: nscale = 1; break;
    case UNI_ROW:    nscale = rows; break;
    case UNI_COLUMN: nscale = cols; break;
    default:         nscale = rows * ((cols + p->group_size - 1) / p->group_size); break;
    }
    const int64_t nbytes = (int64_t) (((uint64_t) (rows * cols) * (uint64_t) p->bits + 7) / 8);
    if ((rc = uniform_find(inst, "linear_init", pack, "codes", 0, nbytes, &codes)) < 0 ||
        (rc = uniform_find(inst, "linear_init", pack, "scale", 1, nscale, &scale)) < 0 ||
        (!p->symmetric && (rc = uniform_find(inst, "linear_init", pack, "zero", 0, nscale, &zero)) < 0)) {
        return rc;
    }
    if (!(kw = caldera_calloc(1, sizeof(*kw)))) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "linear_init: out of memory");
    }
    const struct uniform_rule rule = uniform_rule_of(p);
    *kw = (struct caldera_kw) {
        .type = CALDERA_KW_UNIFORM, .rows = rows, .cols = cols, .bits = (int) p->bits,
        .stream = codes.data, .scale = scale.data, .zero = p->symmetric ? NULL : zero.data,
        .scale_dtype = scale.dtype,
        .rule = rule.kind == 0 ? CALDERA_KW_UNI_MIDRISE : rule.kind == 1 ? CALDERA_KW_UNI_REFERENCE : CALDERA_KW_UNI_ASYM,
        .gran = p->granularity == UNI_TENSOR ? CALDERA_KW_GRAN_TENSOR : p->granularity == UNI_ROW ? CALDERA_KW_GRAN_ROW
              : p->granularity == UNI_COLUMN ? CALDERA_KW_GRAN_COLUMN : CALDERA_KW_GRAN_GROUP,
        .group_size = p->group_size,
    };
    if ((rc = caldera_kw_check(caldera_inst_ctx(inst), kw)) < 0) {
        caldera_free(kw);
        return caldera_error(inst, rc, "linear_init: %s", caldera_ctx_errmsg(caldera_inst_ctx(inst)));
    }
    *state = kw;
    return 0;
}

static int uniform_linear_apply(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                                  struct caldera_tensor * y, unsigned flags) {
    return caldera_kw_apply(inst, state, x, y, flags);
}

static void uniform_linear_free(struct caldera_inst * inst, void * state) {
    (void) inst;
    caldera_free(state);
}

static const struct caldera_quantizer_ops uniform_ops = {
    .struct_size = sizeof(struct caldera_quantizer_ops),
    .quantize    = uniform_quantize,
    .dequantize  = uniform_dequantize,
    .bits        = uniform_bits,
    .cb_dim      = uniform_cb_dim,
    .cb_begin    = uniform_cb_begin,
    .cb_round    = uniform_cb_round,
    .cb_end      = uniform_cb_end,
    .cb_free     = uniform_cb_free,
    .cb_begin_h  = uniform_cb_begin_h,
    .linear_init  = uniform_linear_init,
    .linear_apply = uniform_linear_apply,
    .linear_free  = uniform_linear_free,
    .cb_device    = 1,
};

static const struct caldera_plugin uniform_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_QUANTIZER,
    .name           = "uniform",
    .description    = "scalar uniform quantizer: 1-8 bits, scales per tensor/row/column/group",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 2,   // 2: asymmetric zero points are integers (u8), GPTQ's
    .priv_size      = sizeof(struct uniform_priv),
    .options        = uniform_options,
    .probe          = NULL,
    .check          = uniform_check,
    .check_shape    = uniform_check_shape,
    .init           = NULL,
    .uninit         = NULL,
    .ops            = &uniform_ops,
};

CALDERA_PLUGIN_DEFINE(uniform_plugin)
