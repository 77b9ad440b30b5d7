// SPDX-License-Identifier: MIT
// compressed.c: run a caldera-pipe output file. The file's recorded pipeline (caldera.config)
// gives the stage instances; every compressed weight "N" becomes a pack of views of the mapped
// file's tensors "N.<section>.<suffix>" (no copy), and the model's linear layer N is replaced by a
// fused layer: the transforms on activations (act_in ... last stage's linear_apply ... act_out),
// Ŵ never expanded. A last stage without a fused form is decoded once to a dense transformed
// weight (logged once per plugin); with params->dense every layer is reconstructed to a dense f32
// Ŵ in the original domain instead (the reference path).
#include <ini.h>
#include <inttypes.h>
#include <string.h>

#include "../internal.h"
#include "caldera/caldera-kernels.h"

#define CF_MAX_STAGES 8

struct cf_kv {
    char * section, * key, * value;
};

struct caldera_compressed {
    struct caldera_ctx *    ctx;
    struct caldera_inst *   reader;
    int                     opened;
    struct cf_kv *          kv;      // the recorded configuration, in file order
    int64_t                 nkv, capkv;
    struct caldera_inst **  insts;   // every instance the stages need (refs included)
    int64_t                 ninst;
    struct caldera_inst *   stages[CF_MAX_STAGES];
    int                     nstages;
    struct caldera_tensor * owned;   // converted copies read_tensor handed over (rare)
    int64_t                 nowned, capowned;
    char                    warned[CF_MAX_STAGES];   // "no fused layer" said once per stage
};

/** One replaced layer: y = out(last(in(x))). */
struct cf_layer {
    struct caldera_compressed * h;
    struct caldera_pack *       pack;    // views into the file (and copies in h->owned)
    int64_t                     m, n;
    int64_t                     rt[CF_MAX_STAGES + 1], ct[CF_MAX_STAGES + 1];   // shape entering stage s
    void *                      ts[CF_MAX_STAGES];   // transform act states
    void *                      ls;      // last stage's fused state, or NULL with dense_mid
    struct caldera_tensor       dense_mid;           // the transformed weight, dense (fallback)
};

// ---------------------------------------------------------------------------------------------
// The recorded configuration

static int cf_ini_entry(void * user, const char * section, const char * key, const char * value) {
    struct caldera_compressed * h = user;
    if (!key) {
        return 1;
    }
    if (h->nkv == h->capkv) {
        int64_t cap = h->capkv ? 2 * h->capkv : 64;
        struct cf_kv * kv = caldera_realloc(h->kv, (size_t) cap * sizeof(*kv));
        if (!kv) {
            return 0;
        }
        h->kv    = kv;
        h->capkv = cap;
    }
    struct cf_kv * e = &h->kv[h->nkv];
    e->section = caldera_strdup(section);
    e->key     = caldera_strdup(key);
    e->value   = caldera_strdup(value);
    if (!e->section || !e->key || !e->value) {
        caldera_free(e->section);
        caldera_free(e->key);
        caldera_free(e->value);
        return 0;
    }
    h->nkv++;
    return 1;
}

static const char * cf_get(const struct caldera_compressed * h, const char * section, const char * key) {
    for (int64_t i = 0; i < h->nkv; i++) {
        if (!strcmp(h->kv[i].section, section) && !strcmp(h->kv[i].key, key)) {
            return h->kv[i].value;
        }
    }
    return NULL;
}

static struct caldera_inst * cf_find_inst(const struct caldera_compressed * h, const char * name) {
    for (int64_t i = 0; i < h->ninst; i++) {
        if (!strcmp(caldera_inst_name(h->insts[i]), name)) {
            return h->insts[i];
        }
    }
    return NULL;
}

// Instance of [section] with its recorded options, its references created (and started) first.
static int cf_instance(struct caldera_compressed * h, const char * path, const char * section, int depth,
                       struct caldera_inst ** out) {
    struct caldera_inst * in = cf_find_inst(h, section);
    int rc;
    if (in) {
        *out = in;
        return 0;
    }
    const char * plugin = cf_get(h, section, "plugin");
    if (!plugin || depth > 16) {
        return caldera_ctx_error(h->ctx, CALDERA_ERR_FORMAT, "%s: the recorded configuration %s section [%s]", path,
                                 plugin ? "nests references too deeply at" : "has no plugin for", section);
    }
    if ((rc = caldera_inst_create(h->ctx, plugin, section, &in)) < 0) {
        return rc;
    }
    struct caldera_inst ** list = caldera_realloc(h->insts, (size_t) (h->ninst + 1) * sizeof(*list));
    if (!list) {
        caldera_inst_free(in);
        return caldera_ctx_error(h->ctx, CALDERA_ERR_NOMEM, "%s: out of memory", path);
    }
    h->insts = list;
    h->insts[h->ninst++] = in;
    const struct caldera_option * opts = caldera_inst_plugin(in)->options;
    for (int64_t i = 0; i < h->nkv; i++) {
        const struct cf_kv * e = &h->kv[i];
        if (strcmp(e->section, section) != 0 || !strcmp(e->key, "plugin")) {
            continue;
        }
        const struct caldera_option * o = opts;
        while (o && o->name && strcmp(o->name, e->key) != 0) {
            o++;
        }
        if (o && o->name && o->type == CALDERA_OPT_REF) {
            struct caldera_inst * ref = NULL;
            if (!e->value[0]) {
                continue;
            }
            if ((rc = cf_instance(h, path, e->value, depth + 1, &ref)) < 0 || (rc = caldera_inst_set_ref(in, e->key, ref)) < 0) {
                return rc;
            }
        } else if ((rc = caldera_inst_set(in, e->key, e->value)) < 0) {
            return rc;
        }
    }
    if ((rc = caldera_inst_start(in)) < 0) {
        return rc;
    }
    *out = in;
    return 0;
}

void caldera_compressed_free(struct caldera_compressed * h) {
    if (!h) {
        return;
    }
    for (int64_t i = h->ninst - 1; i >= 0; i--) {
        caldera_inst_free(h->insts[i]);
    }
    caldera_free_unaligned(h->insts);
    for (int64_t i = 0; i < h->nowned; i++) {
        caldera_tensor_free(&h->owned[i]);
    }
    caldera_free_unaligned(h->owned);
    if (h->opened) {
        const struct caldera_format_ops * f = caldera_inst_plugin(h->reader)->ops;
        if (f->close) {
            f->close(h->reader);
        }
    }
    caldera_inst_free(h->reader);
    for (int64_t i = 0; i < h->nkv; i++) {
        caldera_free(h->kv[i].section);
        caldera_free(h->kv[i].key);
        caldera_free(h->kv[i].value);
    }
    caldera_free_unaligned(h->kv);
    caldera_free(h);
}

// ---------------------------------------------------------------------------------------------
// Layers

static void cf_layer_free(void * state) {
    struct cf_layer * l = state;
    if (!l) {
        return;
    }
    const int nt = l->h->nstages - 1;
    for (int s = 0; s < nt; s++) {
        const struct caldera_transform_ops * to = caldera_inst_plugin(l->h->stages[s])->ops;
        if (l->ts[s]) {
            to->act_free(l->h->stages[s], l->ts[s]);
        }
    }
    struct caldera_inst * last = l->h->stages[nt];
    if (l->ls) {
        const struct caldera_plugin * lp = caldera_inst_plugin(last);
        if (lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER) {
            ((const struct caldera_quantizer_ops *) lp->ops)->linear_free(last, l->ls);
        } else {
            ((const struct caldera_decomposer_ops *) lp->ops)->linear_free(last, l->ls);
        }
    }
    caldera_tensor_free(&l->dense_mid);
    caldera_pack_free(l->pack);
    caldera_free(l);
}

// y (B × m) = x (B × n) Ŵᵀ through the chain.
static int cf_layer_apply(void * state, struct caldera_ctx * ctx, const struct caldera_tensor * x,
                          struct caldera_tensor * y) {
    struct cf_layer * l  = state;
    const int         nt = l->h->nstages - 1;
    const int64_t     b  = x->ne[0];
    int64_t           mx = 0;
    float *           buf = NULL;
    int               rc = 0;
    for (int s = 0; s <= nt; s++) {
        mx = l->rt[s] > mx ? l->rt[s] : mx;
        mx = l->ct[s] > mx ? l->ct[s] : mx;
    }
    if (nt > 0 || l->dense_mid.data) {
        if (!(buf = caldera_malloc((size_t) (2 * b * mx) * sizeof(float)))) {
            return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "compressed layer: out of memory for %" PRId64 " rows", b);
        }
    }
    float * p0 = buf, * p1 = buf ? buf + b * mx : NULL;
    struct caldera_tensor cur = *x, nxt;
    for (int s = 0; s < nt; s++) {   // inputs into the transformed domain
        const struct caldera_transform_ops * to = caldera_inst_plugin(l->h->stages[s])->ops;
        nxt = caldera_tensor_view_f32(s % 2 ? p1 : p0, b, l->ct[s + 1]);
        if ((rc = to->act_in(l->h->stages[s], l->ts[s], &cur, &nxt)) < 0) {
            goto done;
        }
        cur = nxt;
    }
    struct caldera_tensor mid = nt > 0 ? caldera_tensor_view_f32(nt % 2 ? p1 : p0, b, l->rt[nt]) : *y;
    struct caldera_inst * last = l->h->stages[nt];
    if (l->ls) {
        const struct caldera_plugin * lp = caldera_inst_plugin(last);
        rc = lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER
                 ? ((const struct caldera_quantizer_ops *) lp->ops)->linear_apply(last, l->ls, &cur, &mid, 0)
                 : ((const struct caldera_decomposer_ops *) lp->ops)->linear_apply(last, l->ls, &cur, &mid, 0);
    } else {
        struct caldera_kw kw = { .type = CALDERA_KW_F32, .rows = l->rt[nt], .cols = l->ct[nt], .data = l->dense_mid.data,
                                 .ld = l->ct[nt] };
        rc = caldera_kw_matmul(ctx, &kw, cur.data, b, cur.ld ? cur.ld : cur.ne[1], mid.data, mid.ld ? mid.ld : mid.ne[1], 0);
    }
    if (rc < 0) {
        goto done;
    }
    cur = mid;
    for (int s = nt - 1; s >= 0; s--) {   // outputs back
        const struct caldera_transform_ops * to = caldera_inst_plugin(l->h->stages[s])->ops;
        nxt = s == 0 ? *y : caldera_tensor_view_f32(cur.data == p0 ? p1 : p0, b, l->rt[s]);
        if ((rc = to->act_out(l->h->stages[s], l->ts[s], &cur, &nxt, 0)) < 0) {
            goto done;
        }
        cur = nxt;
    }
done:
    caldera_free(buf);
    return rc;
}

// The pack of weight `name`: every file tensor "name.<rest>" as a view under "<rest>".
static int cf_pack(struct caldera_compressed * h, const char * name, struct caldera_pack ** out) {
    const struct caldera_format_ops * f = caldera_inst_plugin(h->reader)->ops;
    const size_t nl = strlen(name);
    struct caldera_pack * pack = NULL;
    int rc;
    *out = NULL;
    if ((rc = caldera_pack_init(&pack)) < 0) {
        return caldera_ctx_error(h->ctx, rc, "out of memory");
    }
    const int64_t nt = f->n_tensors(h->reader);
    for (int64_t i = 0; i < nt; i++) {
        struct caldera_tensor_info ti;
        struct caldera_tensor      t = { 0 };
        int                        owned = 0;
        if ((rc = f->tensor_info(h->reader, i, &ti)) < 0) {
            goto fail;
        }
        if (strncmp(ti.name, name, nl) != 0 || ti.name[nl] != '.') {
            continue;
        }
        if ((rc = f->read_tensor(h->reader, i, ti.dtype, &t, &owned)) < 0) {
            goto fail;
        }
        if (owned) {   // a copy the reader made: keep it for the model's lifetime
            if (h->nowned == h->capowned) {
                int64_t cap = h->capowned ? 2 * h->capowned : 16;
                struct caldera_tensor * o = caldera_realloc(h->owned, (size_t) cap * sizeof(*o));
                if (!o) {
                    caldera_tensor_free(&t);
                    rc = caldera_ctx_error(h->ctx, CALDERA_ERR_NOMEM, "out of memory");
                    goto fail;
                }
                h->owned    = o;
                h->capowned = cap;
            }
            h->owned[h->nowned++] = t;
        }
        if ((rc = caldera_pack_add_view(pack, ti.name + nl + 1, &t)) < 0) {
            rc = caldera_ctx_error(h->ctx, rc, "%s: cannot add tensor '%s' to its pack", name, ti.name);
            goto fail;
        }
    }
    *out = pack;
    return 0;
fail:
    caldera_pack_free(pack);
    return rc;
}

// Push "<section>." on the pack.
static int cf_push(struct caldera_pack * pack, const struct caldera_inst * st) {
    int rc = caldera_pack_push_prefix(pack, caldera_inst_name(st));
    if (rc == 0 && (rc = caldera_pack_push_prefix(pack, ".")) < 0) {
        caldera_pack_pop_prefix(pack);
    }
    return rc;
}

static void cf_pop(struct caldera_pack * pack) {
    caldera_pack_pop_prefix(pack);
    caldera_pack_pop_prefix(pack);
}

// Build the layer of weight `name` (m × n). dense: the last stage is decoded to dense_mid.
static int cf_layer_init(struct caldera_compressed * h, const char * name, int64_t m, int64_t n, int dense,
                         struct cf_layer ** out) {
    struct cf_layer * l = NULL;
    const int nt = h->nstages - 1;
    int rc;
    *out = NULL;
    if (!(l = caldera_calloc(1, sizeof(*l)))) {
        return caldera_ctx_error(h->ctx, CALDERA_ERR_NOMEM, "out of memory");
    }
    l->h = h;
    l->m = m;
    l->n = n;
    l->rt[0] = m;
    l->ct[0] = n;
    if ((rc = cf_pack(h, name, &l->pack)) < 0) {
        goto fail;
    }
    if (caldera_pack_count(l->pack) == 0) {
        rc = caldera_ctx_error(h->ctx, CALDERA_ERR_NOT_FOUND, "%s: the compressed file has no tensors '%s.*'", name, name);
        goto fail;
    }
    for (int s = 0; s < nt; s++) {
        struct caldera_inst * st = h->stages[s];
        const struct caldera_transform_ops * to = caldera_inst_plugin(st)->ops;
        if (!CALDERA_OPS_HAS(to, struct caldera_transform_ops, act_init) || !CALDERA_OPS_HAS(to, struct caldera_transform_ops, act_in) ||
            !CALDERA_OPS_HAS(to, struct caldera_transform_ops, act_out) || !CALDERA_OPS_HAS(to, struct caldera_transform_ops, act_free)) {
            rc = caldera_ctx_error(h->ctx, CALDERA_ERR_UNSUPPORTED, "[%s] %s declares no activation form (act_*), so a "
                                   "compressed weight cannot be run or rebuilt from the file alone", caldera_inst_name(st),
                                   caldera_inst_plugin(st)->name);
            goto fail;
        }
        if ((rc = cf_push(l->pack, st)) < 0) {
            goto fail;
        }
        rc = to->act_init(st, l->pack, l->rt[s], l->ct[s], &l->ts[s], &l->rt[s + 1], &l->ct[s + 1]);
        cf_pop(l->pack);
        if (rc < 0) {
            goto fail;
        }
    }
    struct caldera_inst * last = h->stages[nt];
    const struct caldera_plugin * lp = caldera_inst_plugin(last);
    int has_fused;
    if (lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER) {
        const struct caldera_quantizer_ops * o = lp->ops;
        has_fused = CALDERA_OPS_HAS(o, struct caldera_quantizer_ops, linear_init) &&
                    CALDERA_OPS_HAS(o, struct caldera_quantizer_ops, linear_apply) &&
                    CALDERA_OPS_HAS(o, struct caldera_quantizer_ops, linear_free);
    } else {
        const struct caldera_decomposer_ops * o = lp->ops;
        has_fused = CALDERA_OPS_HAS(o, struct caldera_decomposer_ops, linear_init) &&
                    CALDERA_OPS_HAS(o, struct caldera_decomposer_ops, linear_apply) &&
                    CALDERA_OPS_HAS(o, struct caldera_decomposer_ops, linear_free);
    }
    if (!has_fused && !dense && !h->warned[nt]) {
        h->warned[nt] = 1;
        caldera_log(h->ctx, CALDERA_LOG_WARN, "[%s] %s declares no fused layer: its weights are decoded to dense f32 "
                    "(transformed domain) once and multiplied densely", caldera_inst_name(last), lp->name);
    }
    if ((rc = cf_push(l->pack, last)) < 0) {
        goto fail;
    }
    if (has_fused && !dense) {
        rc = lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER
                 ? ((const struct caldera_quantizer_ops *) lp->ops)->linear_init(last, l->pack, l->rt[nt], l->ct[nt], &l->ls)
                 : ((const struct caldera_decomposer_ops *) lp->ops)->linear_init(last, l->pack, l->rt[nt], l->ct[nt], &l->ls);
        if (rc == CALDERA_ERR_UNSUPPORTED) {
            // the plugin has a fused form, but not for this configuration: decode densely instead
            if (!h->warned[nt]) {
                h->warned[nt] = 1;
                caldera_log(h->ctx, CALDERA_LOG_WARN, "%s; its weights are decoded to dense f32 (transformed domain) "
                            "once and multiplied densely", caldera_ctx_errmsg(h->ctx));
            }
            has_fused = 0;
            l->ls = NULL;
        }
    }
    if (has_fused && !dense) {
        // fused state built above (or rc holds its error)
    } else if ((rc = caldera_tensor_alloc_f32(h->ctx, l->rt[nt], l->ct[nt], &l->dense_mid)) == 0) {
        rc = lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER
                 ? ((const struct caldera_quantizer_ops *) lp->ops)->dequantize(last, l->pack, &l->dense_mid)
                 : ((const struct caldera_decomposer_ops *) lp->ops)->reconstruct(last, l->pack, &l->dense_mid);
    }
    cf_pop(l->pack);
    if (rc < 0) {
        goto fail;
    }
    *out = l;
    return 0;
fail:
    cf_layer_free(l);
    return rc;
}

// Ŵ (m × n, f32, allocated) of a layer whose middle is dense: Ŵᵀ = chain(I_n).
static int cf_layer_dense(struct caldera_compressed * h, struct cf_layer * l, struct caldera_tensor * w) {
    struct caldera_tensor eye = { 0 }, wt = { 0 };
    int rc;
    if ((rc = caldera_tensor_alloc_f32(h->ctx, l->n, l->n, &eye)) < 0 || (rc = caldera_tensor_alloc_f32(h->ctx, l->n, l->m, &wt)) < 0 ||
        (rc = caldera_tensor_alloc_f32(h->ctx, l->m, l->n, w)) < 0) {
        goto done;
    }
    for (int64_t i = 0; i < l->n; i++) {
        ((float *) eye.data)[i * l->n + i] = 1.0f;
    }
    if ((rc = cf_layer_apply(l, h->ctx, &eye, &wt)) < 0) {
        goto done;
    }
    for (int64_t i = 0; i < l->m; i++) {
        for (int64_t j = 0; j < l->n; j++) {
            ((float *) w->data)[i * l->n + j] = ((const float *) wt.data)[j * l->m + i];
        }
    }
done:
    if (rc < 0) {
        caldera_tensor_free(w);
    }
    caldera_tensor_free(&eye);
    caldera_tensor_free(&wt);
    return rc;
}

// ---------------------------------------------------------------------------------------------

int caldera_model_load_compressed(struct caldera_ctx * ctx, struct caldera_inst * model, const char * path,
                                  const struct caldera_compressed_params * params, struct caldera_compressed ** out,
                                  struct caldera_compressed_report * report) {
    struct caldera_compressed_params defaults = { .struct_size = sizeof(defaults) };
    struct caldera_compressed * h = NULL;
    const struct caldera_model_ops * mops = NULL;
    int64_t replaced = 0;
    int rc;
    *out = NULL;
    if (!params) {
        params = &defaults;
    }
    if (report) {
        memset(report, 0, sizeof(*report));
    }
    if ((rc = caldera_model_ops_of(model, &mops)) < 0) {
        return rc;
    }
    if (!(h = caldera_calloc(1, sizeof(*h)))) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "%s: out of memory", path);
    }
    h->ctx = ctx;
    const char * fmt = params->format ? params->format : "safetensors";
    if ((rc = caldera_inst_create(ctx, fmt, fmt, &h->reader)) < 0 || (rc = caldera_inst_start(h->reader)) < 0) {
        goto fail;
    }
    const struct caldera_format_ops * f = caldera_inst_plugin(h->reader)->ops;
    if (!f->open || !f->meta) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "%s: format '%s' cannot read compressed files", path, fmt);
        goto fail;
    }
    if ((rc = f->open(h->reader, path)) < 0) {
        goto fail;
    }
    h->opened = 1;
    const char * config = NULL;
    if (caldera_meta_get_string(f->meta(h->reader), "caldera.config", &config) < 0 || !config) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "%s: no 'caldera.config' metadata; allowed: a file written by "
                               "caldera-pipe", path);
        goto fail;
    }
    if (ini_parse_string(config, cf_ini_entry, h) != 0) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "%s: the recorded 'caldera.config' does not parse", path);
        goto fail;
    }
    // [caldera] stages = t1, ..., last
    const char * stages = cf_get(h, "caldera", "stages");
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", stages ? stages : "");
    for (char * tok = strtok(buf, ", \t"); tok; tok = strtok(NULL, ", \t")) {
        if (h->nstages == CF_MAX_STAGES) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "%s: more than %d stages", path, CF_MAX_STAGES);
            goto fail;
        }
        if ((rc = cf_instance(h, path, tok, 0, &h->stages[h->nstages])) < 0) {
            goto fail;
        }
        h->nstages++;
    }
    if (h->nstages == 0) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "%s: the recorded configuration has no [caldera] stages", path);
        goto fail;
    }
    for (int s = 0; s < h->nstages; s++) {
        enum caldera_plugin_kind k = caldera_inst_plugin(h->stages[s])->kind;
        int ok = s < h->nstages - 1 ? k == CALDERA_PLUGIN_KIND_TRANSFORM
                                    : (k == CALDERA_PLUGIN_KIND_QUANTIZER || k == CALDERA_PLUGIN_KIND_DECOMPOSER);
        if (!ok) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "%s: stage [%s] is a %s; allowed: transforms, then one quantizer "
                                   "or decomposer", path, caldera_inst_name(h->stages[s]), caldera_plugin_kind_name(k));
            goto fail;
        }
    }
    const int64_t nlin = mops->n_linears(model);
    for (int64_t i = 0; i < nlin; i++) {
        struct caldera_model_linear li;
        struct cf_layer * l = NULL;
        if ((rc = mops->linear_info(model, i, &li)) < 0) {
            goto fail;
        }
        int found = 0;   // is the weight compressed in this file (any "name." tensor)?
        for (int64_t t = 0; t < f->n_tensors(h->reader) && !found; t++) {
            struct caldera_tensor_info ti;
            size_t nl = strlen(li.name);
            found = f->tensor_info(h->reader, t, &ti) == 0 && !strncmp(ti.name, li.name, nl) && ti.name[nl] == '.';
        }
        if (!found) {
            continue;
        }
        if ((rc = cf_layer_init(h, li.name, li.rows, li.cols, params->dense, &l)) < 0) {
            goto fail;
        }
        const uint64_t stored_bits = caldera_pack_bits(l->pack);
        uint64_t bytes = stored_bits / 8;
        if (params->dense) {
            struct caldera_tensor w = { 0 };
            rc = cf_layer_dense(h, l, &w);
            cf_layer_free(l);
            if (rc < 0 || (rc = mops->set_linear_weight(model, i, &w, 1)) < 0) {
                caldera_tensor_free(&w);
                goto fail;
            }
            replaced++;
            bytes = (uint64_t) (li.rows * li.cols) * sizeof(float);
            if (report) {
                report->n_dense++;
            }
        } else {
            struct caldera_linear_impl impl = { .struct_size = sizeof(impl), .state = l, .apply = cf_layer_apply,
                                                .free = cf_layer_free };
            if (l->dense_mid.data) {
                bytes += (uint64_t) caldera_tensor_nelements(&l->dense_mid) * sizeof(float);
            }
            if (report) {
                report->n_fused += l->ls != NULL;
                report->n_dense += l->ls == NULL;
            }
            if ((rc = mops->set_linear_impl(model, i, &impl)) < 0) {
                cf_layer_free(l);
                goto fail;
            }
            replaced++;
        }
        if (report) {
            report->bytes += bytes;
            report->params += (uint64_t) (li.rows * li.cols);
            report->stored_bits += stored_bits;
        }
    }
    *out = h;
    return 0;
fail:
    if (replaced > 0) {
        *out = h;   // layers already replaced use h: the caller frees the model, then h
    } else {
        caldera_compressed_free(h);
    }
    return rc;
}
