// SPDX-License-Identifier: MIT
// rht.c: the randomized Hadamard transform on both sides of a weight (algorithms.md §4):
// W̃ = U_mᵀ S_V W S_U U_n and H̃ = U_nᵀ S_U H S_U U_n, with U = (H_K ⊗ S_{2^p}) / √size built in
// code (hadamard.c), random signs from the seed mixed with the tensor name, zero padding to the
// next size that factors, and the exact inverse W = S_V U_m W̃ U_nᵀ S_U cropped to m×n.
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-kernels.h"
#include "caldera/caldera-plugin.h"
#include "hadamard.h"

struct rht_priv {
    int64_t seed;       // base seed; mixed with the tensor name
    double  pad_ridge;  // padded diagonal of H = pad_ridge * mean(diag H)
    int64_t max_k;      // largest Hadamard core K before padding
};

/** What inverse needs (and what the pack stores). */
struct rht_state {
    int64_t        m, n;     // original shape
    struct rht_dim dm, dn;   // padded sizes m' = dm.n, n' = dn.n and their K×K cores
    float *        sv;       // (m') ±1
    float *        su;       // (n') ±1
};

#define OFF(x) offsetof(struct rht_priv, x)

static const struct caldera_option rht_options[] = {
    { .name = "seed", .offset = OFF(seed), .type = CALDERA_OPT_INT, .def.i64 = 0, .min = 0, .max = 9007199254740992.0,
      .help = "base seed of the random signs (mixed with each tensor's name)" },
    { .name = "pad_ridge", .offset = OFF(pad_ridge), .type = CALDERA_OPT_DOUBLE, .def.dbl = 0.01, .min = 0.0,
      .max = 1.0, .help = "when a size is zero-padded: diagonal of H on the padded rows/cols, relative to mean(diag H)" },
    { .name = "max_k", .offset = OFF(max_k), .type = CALDERA_OPT_INT, .def.i64 = 256, .min = 1, .max = 4096,
      .help = "largest Hadamard core order K (size = K * 2^p) before falling back to zero padding",
      .flags = CALDERA_OPT_EXPERT },
    { .name = NULL }
};

// ---------------------------------------------------------------------------------------------
// Helpers

static int64_t ldof(const struct caldera_tensor * t) {
    return t->ld ? t->ld : t->ne[1];
}


// dst (cols, rows) = srcᵀ, both contiguous.
static void transpose(const float * src, float * dst, int64_t rows, int64_t cols) {
    const int64_t tb = 32;
    for (int64_t i0 = 0; i0 < rows; i0 += tb) {
        for (int64_t j0 = 0; j0 < cols; j0 += tb) {
            int64_t i1 = i0 + tb < rows ? i0 + tb : rows, j1 = j0 + tb < cols ? j0 + tb : cols;
            for (int64_t i = i0; i < i1; i++) {
                for (int64_t j = j0; j < j1; j++) {
                    dst[j * rows + i] = src[i * cols + j];
                }
            }
        }
    }
}

// x (rows, cols) contiguous ← U_rowsᵀ x U_cols (trans = 1, forward) or U_rows x U_colsᵀ (trans = 0,
// inverse). Right factor: each row r ↦ r U (= Uᵀ applied to the row vector) for the forward.
static int two_sided(struct caldera_ctx * ctx, const struct rht_dim * dr, const struct rht_dim * dc, float * x,
                     float * tmp, int trans) {
    const int64_t rows = dr->n, cols = dc->n;
    int rc;
    if ((rc = rht_apply_rows(ctx, dc, x, rows, trans)) < 0) {
        return rc;
    }
    transpose(x, tmp, rows, cols);
    if ((rc = rht_apply_rows(ctx, dr, tmp, cols, trans)) < 0) {
        return rc;
    }
    transpose(tmp, x, cols, rows);
    return 0;
}

static void rht_free_state(struct caldera_inst * inst, void * state) {
    (void) inst;
    struct rht_state * s = state;
    if (!s) {
        return;
    }
    rht_dim_free(&s->dm);
    rht_dim_free(&s->dn);
    caldera_free(s->sv);
    caldera_free(s->su);
    caldera_free(s);
}

// Signs as bits, LSB first: bit i of byte i/8 is 1 when s[i] = -1.
static int pack_signs(struct caldera_pack * pack, const char * name, const float * s, int64_t n) {
    uint8_t * d;
    int64_t nb = (n + 7) / 8;
    int rc = caldera_pack_add(pack, name, CALDERA_DTYPE_U8, 1, &nb, (void **) &d);
    if (rc < 0) {
        return rc;
    }
    for (int64_t i = 0; i < n; i++) {
        if (s[i] < 0) {
            d[i / 8] |= (uint8_t) (1u << (i % 8));
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------

static int rht_forward(struct caldera_inst * inst, const char * tensor_name, const struct caldera_tensor * w,
                       const struct caldera_tensor * h, struct caldera_tensor * w_out, struct caldera_tensor * h_out,
                       struct caldera_pack * pack, void ** state) {
    struct rht_priv * p = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    struct rht_state * s = NULL;
    struct caldera_tensor wo = { 0 }, ho = { 0 };
    float * tmp = NULL;
    int rc;

    if (!w_out || !state || (h && !h_out)) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "forward: w_out, state (and h_out when H is given) must not be NULL");
    }
    *state = NULL;
    if ((rc = caldera_check_matrix(inst, "forward", "W", w, -1, -1)) < 0) {
        return rc;
    }
    const int64_t m = w->ne[0], n = w->ne[1];
    if (h && (rc = caldera_check_matrix(inst, "forward", "H", h, n, n)) < 0) {
        return rc;
    }
    if (w->ne[0] < 1 || n < 1) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "forward: W is %" PRId64 "x%" PRId64 "; allowed: non-empty", w->ne[0], n);
    }
    if ((rc = caldera_check_finite(inst, "forward", "W", w)) < 0 || (h && (rc = caldera_check_finite(inst, "forward", "H", h)) < 0)) {
        return rc;
    }

    s = caldera_calloc(1, sizeof(*s));
    if (!s) {
        rc = CALDERA_ERR_NOMEM;
        goto fail;
    }
    s->m = m;
    s->n = n;
    const int64_t mp = rht_padded_size(m, p->max_k), np = rht_padded_size(n, p->max_k);
    if ((rc = rht_dim_init(&s->dm, mp, p->max_k)) < 0 || (rc = rht_dim_init(&s->dn, np, p->max_k)) < 0) {
        goto fail;
    }
    s->sv = caldera_malloc((size_t) mp * sizeof(float));
    s->su = caldera_malloc((size_t) np * sizeof(float));
    tmp   = caldera_malloc((size_t) (mp > np ? mp : np) * (size_t) np * sizeof(float));
    if (!s->sv || !s->su || !tmp) {
        rc = CALDERA_ERR_NOMEM;
        goto fail;
    }
    // Signs: SU (n') then SV (m') from one xoshiro256** stream, the sign bit of each draw.
    uint64_t mixed = caldera_seed_mix((uint64_t) p->seed, tensor_name ? tensor_name : "");
    struct caldera_rng rng;
    caldera_rng_seed(&rng, mixed);
    for (int64_t i = 0; i < np; i++) {
        s->su[i] = (caldera_rng_u64(&rng) >> 63) ? -1.0f : 1.0f;
    }
    for (int64_t i = 0; i < mp; i++) {
        s->sv[i] = (caldera_rng_u64(&rng) >> 63) ? -1.0f : 1.0f;
    }

    // W̃ = U_mᵀ (S_V W S_U) U_n on the zero-padded W.
    if ((rc = caldera_tensor_alloc_f32(ctx, mp, np, &wo)) < 0) {
        goto fail;
    }
    float * wd = wo.data;
    for (int64_t r = 0; r < m; r++) {
        const float * src = (const float *) w->data + r * ldof(w);
        for (int64_t c = 0; c < n; c++) {
            wd[r * np + c] = src[c] * s->sv[r] * s->su[c];
        }
    }
    if ((rc = two_sided(ctx, &s->dm, &s->dn, wd, tmp, 1)) < 0) {
        goto fail;
    }
    if (h) {
        // H̃ = U_nᵀ (S_U H S_U) U_n on H padded with pad_ridge * mean(diag H) on the new diagonal.
        if ((rc = caldera_tensor_alloc_f32(ctx, np, np, &ho)) < 0) {
            goto fail;
        }
        float * hd = ho.data;
        double mean = 0.0;
        for (int64_t r = 0; r < n; r++) {
            const float * src = (const float *) h->data + r * ldof(h);
            mean += src[r];
            for (int64_t c = 0; c < n; c++) {
                hd[r * np + c] = src[c] * s->su[r] * s->su[c];
            }
        }
        mean /= (double) n;
        for (int64_t r = n; r < np; r++) {
            hd[r * np + r] = (float) (p->pad_ridge * mean);
        }
        if ((rc = two_sided(ctx, &s->dn, &s->dn, hd, tmp, 1)) < 0) {
            goto fail;
        }
        for (int64_t r = 0; r < np; r++) {   // exact symmetry (the two sides round differently)
            for (int64_t c = r + 1; c < np; c++) {
                float v = 0.5f * (hd[r * np + c] + hd[c * np + r]);
                hd[r * np + c] = v;
                hd[c * np + r] = v;
            }
        }
    }
    // Pack: sign bits and sizes; the cores H_K follow from the sizes (hadamard.c), not stored.
    if (pack) {
        int32_t * dims;
        int64_t six = 6;
        if ((rc = pack_signs(pack, "su", s->su, np)) < 0 || (rc = pack_signs(pack, "sv", s->sv, mp)) < 0 ||
            (rc = caldera_pack_add(pack, "dims", CALDERA_DTYPE_I32, 1, &six, (void **) &dims)) < 0) {
            rc = caldera_error(inst, rc, "forward: cannot add the rht tensors to the pack (%s)", caldera_status_str(rc));
            goto fail;
        }
        dims[0] = (int32_t) m;
        dims[1] = (int32_t) n;
        dims[2] = (int32_t) mp;
        dims[3] = (int32_t) np;
        dims[4] = (int32_t) s->dm.k;
        dims[5] = (int32_t) s->dn.k;
        struct caldera_meta * meta = caldera_pack_meta(pack);
        caldera_meta_set_uint64(meta, "rht.seed", mixed);
    }
    if (mp != m || np != n) {
        caldera_inst_log(inst, CALDERA_LOG_DEBUG, "%s: %" PRId64 "x%" PRId64 " zero-padded to %" PRId64 "x%" PRId64,
                         tensor_name ? tensor_name : "?", m, n, mp, np);
    }
    caldera_free(tmp);
    *w_out = wo;
    if (h) {
        *h_out = ho;
    }
    *state = s;
    return 0;
fail:
    caldera_free(tmp);
    caldera_tensor_free(&wo);
    caldera_tensor_free(&ho);
    rht_free_state(inst, s);
    if (rc == CALDERA_ERR_NOMEM) {
        rc = caldera_error(inst, rc, "forward: out of memory for a %" PRId64 "x%" PRId64 " transform", m, n);
    }
    return rc;
}

static int rht_inverse(struct caldera_inst * inst, void * state, const struct caldera_tensor * w_t,
                       struct caldera_tensor * w_out) {
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    const struct rht_state * s = state;
    struct caldera_tensor wo = { 0 };
    float * x = NULL, * tmp = NULL;
    int rc;
    if (!s || !w_out) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "inverse: no state (call forward first) or w_out is NULL");
    }
    const int64_t mp = s->dm.n, np = s->dn.n;
    if ((rc = caldera_check_matrix(inst, "inverse", "w_t", w_t, mp, np)) < 0) {
        return rc;
    }
    x   = caldera_malloc((size_t) mp * (size_t) np * sizeof(float));
    tmp = caldera_malloc((size_t) mp * (size_t) np * sizeof(float));
    if (!x || !tmp || (rc = caldera_tensor_alloc_f32(ctx, s->m, s->n, &wo)) < 0) {
        rc = caldera_error(inst, CALDERA_ERR_NOMEM, "inverse: out of memory for %" PRId64 "x%" PRId64, mp, np);
        goto fail;
    }
    for (int64_t r = 0; r < mp; r++) {
        memcpy(x + r * np, (const float *) w_t->data + r * ldof(w_t), (size_t) np * sizeof(float));
    }
    // W = S_V (U_m W̃ U_nᵀ) S_U, cropped.
    if ((rc = two_sided(ctx, &s->dm, &s->dn, x, tmp, 0)) < 0) {
        goto fail;
    }
    float * wd = wo.data;
    for (int64_t r = 0; r < s->m; r++) {
        for (int64_t c = 0; c < s->n; c++) {
            wd[r * s->n + c] = x[r * np + c] * s->sv[r] * s->su[c];
        }
    }
    *w_out = wo;
    wo = (struct caldera_tensor) { 0 };
fail:
    caldera_free(x);
    caldera_free(tmp);
    caldera_tensor_free(&wo);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// The transform on activations (fused layers): W x = S_V U_m W̃ (U_nᵀ S_U x), from the pack alone.

struct rht_act {
    struct rht_dim        dm, dn;   // row side (m', K_m) and column side (n', K_n)
    struct caldera_kw_rht in, out;  // column side for inputs, row side for outputs (kernels)
};

static void rht_act_free(struct caldera_inst * inst, void * state) {
    (void) inst;
    struct rht_act * a = state;
    if (!a) {
        return;
    }
    rht_dim_free(&a->dm);
    rht_dim_free(&a->dn);
    caldera_free(a);
}

// One side from the stored size and core order (not refactored with this instance's max_k, so a
// file written with another max_k still reads).
static int rht_act_side(struct caldera_inst * inst, const char * what, int64_t n, int64_t np, int64_t k,
                        const struct caldera_tensor * signs, struct rht_dim * d, struct caldera_kw_rht * t) {
    memset(d, 0, sizeof(*d));
    if (np < n || k < 1 || np % k != 0 || ((np / k) & (np / k - 1)) != 0 || rht_had_kind(k, NULL) == RHT_HAD_NONE) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "act_init: 'dims' gives %s size %" PRId64 " padded to %" PRId64
                             " with core K=%" PRId64 "; allowed: padded >= size = K * 2^p with a Paley/Sylvester K",
                             what, n, np, k);
    }
    if (signs->dtype != CALDERA_DTYPE_U8 || caldera_tensor_nelements(signs) != (np + 7) / 8) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "act_init: %s signs are %s with %" PRId64 " elements; "
                             "expected u8 with %" PRId64, what, caldera_dtype_name(signs->dtype),
                             caldera_tensor_nelements(signs), (np + 7) / 8);
    }
    d->n  = np;
    d->k  = k;
    d->p2 = np / k;
    if (k > 1) {
        int rc;
        if (!(d->hk = caldera_malloc((size_t) (k * k) * sizeof(float)))) {
            return caldera_error(inst, CALDERA_ERR_NOMEM, "act_init: out of memory");
        }
        if ((rc = rht_had_build(k, d->hk)) < 0) {
            return caldera_error(inst, rc, "act_init: cannot build the Hadamard core of order %" PRId64, k);
        }
    }
    *t = (struct caldera_kw_rht) { .n = n, .np = np, .k = k, .p2 = np / k, .hk = d->hk, .sign = signs->data };
    return 0;
}

static int rht_act_init(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows, int64_t cols,
                        void ** state, int64_t * rows_t, int64_t * cols_t) {
    struct caldera_tensor dims, su, sv;
    struct rht_act * a = NULL;
    int rc;
    *state = NULL;
    const char * names[3] = { "dims", "su", "sv" };
    struct caldera_tensor * ts[3] = { &dims, &su, &sv };
    for (int i = 0; i < 3; i++) {
        if ((rc = caldera_pack_find(pack, names[i], ts[i])) < 0) {
            return caldera_error(inst, rc, "act_init: the pack has no tensor '%s'", names[i]);
        }
    }
    if (dims.dtype != CALDERA_DTYPE_I32 || caldera_tensor_nelements(&dims) != 6) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "act_init: 'dims' is %s with %" PRId64 " elements; expected i32 with 6",
                             caldera_dtype_name(dims.dtype), caldera_tensor_nelements(&dims));
    }
    const int32_t * d = dims.data;
    if (d[0] != rows || d[1] != cols) {
        return caldera_error(inst, CALDERA_ERR_FORMAT, "act_init: 'dims' is for a %dx%d weight; the layer is %" PRId64
                             "x%" PRId64, (int) d[0], (int) d[1], rows, cols);
    }
    if (!(a = caldera_calloc(1, sizeof(*a)))) {
        return caldera_error(inst, CALDERA_ERR_NOMEM, "act_init: out of memory");
    }
    if ((rc = rht_act_side(inst, "row", rows, d[2], d[4], &sv, &a->dm, &a->out)) < 0 ||
        (rc = rht_act_side(inst, "column", cols, d[3], d[5], &su, &a->dn, &a->in)) < 0) {
        rht_act_free(inst, a);
        return rc;
    }
    *rows_t = d[2];
    *cols_t = d[3];
    *state  = a;
    return 0;
}

static int rht_act_in(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                      struct caldera_tensor * x_t) {
    const struct rht_act * a = state;
    int rc;
    if (!a) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "act_in: no state; call act_init first");
    }
    if ((rc = caldera_check_matrix(inst, "act_in", "x", x, -1, a->in.n)) < 0 ||
        (rc = caldera_check_matrix(inst, "act_in", "x_t", x_t, x->ne[0], a->in.np)) < 0) {
        return rc;
    }
    if ((rc = caldera_kw_rht_in(caldera_inst_ctx(inst), &a->in, x->data, x->ne[0], ldof(x), x_t->data, ldof(x_t))) < 0) {
        return caldera_error(inst, rc, "act_in: %s", caldera_ctx_errmsg(caldera_inst_ctx(inst)));
    }
    return 0;
}

static int rht_act_out(struct caldera_inst * inst, void * state, struct caldera_tensor * y_t,
                       struct caldera_tensor * y, int accumulate) {
    const struct rht_act * a = state;
    int rc;
    if (!a) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "act_out: no state; call act_init first");
    }
    if ((rc = caldera_check_matrix(inst, "act_out", "y_t", y_t, -1, a->out.np)) < 0 ||
        (rc = caldera_check_matrix(inst, "act_out", "y", y, y_t->ne[0], a->out.n)) < 0) {
        return rc;
    }
    if ((rc = caldera_kw_rht_out(caldera_inst_ctx(inst), &a->out, y_t->data, y_t->ne[0], ldof(y_t), y->data, ldof(y),
                                 accumulate)) < 0) {
        return caldera_error(inst, rc, "act_out: %s", caldera_ctx_errmsg(caldera_inst_ctx(inst)));
    }
    return 0;
}

static const struct caldera_transform_ops rht_ops = {
    .struct_size = sizeof(struct caldera_transform_ops),
    .forward     = rht_forward,
    .inverse     = rht_inverse,
    .free_state  = rht_free_state,
    .act_init    = rht_act_init,
    .act_in      = rht_act_in,
    .act_out     = rht_act_out,
    .act_free    = rht_act_free,
};

static const struct caldera_plugin rht_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_TRANSFORM,
    .name           = "rht",
    .description    = "randomized Hadamard transform on both sides (any size: K * 2^p, else zero padding)",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct rht_priv),
    .options        = rht_options,
    .probe          = NULL,
    .check          = NULL,
    .check_shape    = NULL,
    .init           = NULL,
    .uninit         = NULL,
    .ops            = &rht_ops,
};

CALDERA_PLUGIN_DEFINE(rht_plugin)
