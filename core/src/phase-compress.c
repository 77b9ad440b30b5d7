// SPDX-License-Identifier: MIT
// The compress phase of a pipeline run: open the writers, stream the model's tensors one at a
// time (selected weights through the transforms and the quantizer or decomposer, with their
// Hessian when there is one; the rest copied), checkpoint each finished weight, measure bits per
// parameter and (data-aware) error, and finish the writers with the report in their metadata.
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "pipeline.h"

struct tensor_result {
    double bits, rel_fro, rel_h, seconds;
    int    has_h;
};

// CALDERA_ERR_NUMERIC naming the tensor and the first non-finite element of t (f32/f64/f16/bf16),
// or 0 when t is finite: a NaN or Inf is never passed on to a stage or into an output.
static int check_finite_named(struct caldera_ctx * ctx, const char * what, const char * name,
                              const struct caldera_tensor * t) {
    int64_t bad = 0;
    if (caldera_tensor_check_finite(t, &bad) == 0) return 0;
    if (t->ndim == 2 && t->ne[1] > 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "%s %s has a NaN or Inf at row %lld, column %lld", what, name,
                                 (long long) (bad / t->ne[1]), (long long) (bad % t->ne[1]));
    }
    return caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "%s %s has a NaN or Inf at element %lld", what, name, (long long) bad);
}

static int compress_one(struct caldera_pipeline * pl, const char * name, const struct caldera_tensor * w,
                        const struct caldera_tensor * h, struct caldera_pack * pack, struct caldera_tensor * w_hat,
                        struct tensor_result * res) {
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    int rc = 0;
    int64_t nt = pl->n_stages - 1;
    struct caldera_tensor * ws = caldera_calloc((size_t) (nt + 1), sizeof(*ws));   // transformed W per level
    struct caldera_tensor * hs = caldera_calloc((size_t) (nt + 1), sizeof(*hs));
    void ** states = caldera_calloc((size_t) (nt + 1), sizeof(void *));
    struct caldera_tensor cur_hat = { 0 }, back = { 0 };
    if (!ws || !hs || !states) { rc = CALDERA_ERR_NOMEM; goto done; }
    const struct caldera_tensor * cw = w, * ch = h;
    for (int64_t s = 0; s < nt; s++) {
        struct caldera_inst * st = pl->stages[s];
        const struct caldera_transform_ops * to = caldera_inst_plugin(st)->ops;
        if ((rc = caldera_pack_push_prefix(pack, caldera_inst_name(st))) < 0) goto done;
        caldera_pack_push_prefix(pack, ".");
        rc = to->forward(st, name, cw, ch, &ws[s], ch ? &hs[s] : NULL, pack, &states[s]);
        caldera_pack_pop_prefix(pack);
        caldera_pack_pop_prefix(pack);
        if (rc < 0) goto done;
        cw = &ws[s];
        ch = ch ? &hs[s] : NULL;
    }
    struct caldera_inst * last = pl->stages[nt];
    const struct caldera_plugin * lp = caldera_inst_plugin(last);
    if (lp->check_shape && (rc = lp->check_shape(last, cw->ne[0], cw->ne[1])) < 0) goto done;
    if ((rc = caldera_tensor_alloc_f32(ctx, cw->ne[0], cw->ne[1], &cur_hat)) < 0) goto done;
    if ((rc = caldera_pack_push_prefix(pack, caldera_inst_name(last))) < 0) goto done;
    caldera_pack_push_prefix(pack, ".");
    if (lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER) {
        rc = ((const struct caldera_quantizer_ops *) lp->ops)->quantize(last, cw, ch, &cur_hat, pack);
    } else {
        rc = ((const struct caldera_decomposer_ops *) lp->ops)->decompose(last, cw, ch, &cur_hat, pack);
    }
    if (rc == 0 && o->verify) {
        struct caldera_tensor chk = { 0 };
        rc = caldera_tensor_alloc_f32(ctx, cw->ne[0], cw->ne[1], &chk);
        if (rc == 0) {
            rc = lp->kind == CALDERA_PLUGIN_KIND_QUANTIZER
                     ? ((const struct caldera_quantizer_ops *) lp->ops)->dequantize(last, pack, &chk)
                     : ((const struct caldera_decomposer_ops *) lp->ops)->reconstruct(last, pack, &chk);
        }
        // Values must agree exactly (−0 and +0 are the same value; a NaN never agrees).
        for (int64_t k = 0; rc == 0 && k < cw->ne[0] * cw->ne[1]; k++) {
            if (((const float *) chk.data)[k] != ((const float *) cur_hat.data)[k]) {
                // %.9g: enough digits to tell any two floats apart
                rc = caldera_error(last, CALDERA_ERR_BUG, "verify: decoding the pack of %s does not reproduce the approximation "
                                   "(element %lld = row %lld, col %lld: decoded %.9g vs %.9g)", name, (long long) k,
                                   (long long) (k / cw->ne[1]), (long long) (k % cw->ne[1]),
                                   (double) ((const float *) chk.data)[k], (double) ((const float *) cur_hat.data)[k]);
            }
        }
        caldera_tensor_free(&chk);
    }
    caldera_pack_pop_prefix(pack);
    caldera_pack_pop_prefix(pack);
    if (rc < 0) goto done;
    // Back through the transforms, last first.
    for (int64_t s = nt - 1; s >= 0; s--) {
        struct caldera_inst * st = pl->stages[s];
        const struct caldera_transform_ops * to = caldera_inst_plugin(st)->ops;
        if ((rc = to->inverse(st, states[s], &cur_hat, &back)) < 0) goto done;
        caldera_tensor_free(&cur_hat);
        cur_hat = back;
        memset(&back, 0, sizeof(back));
    }
    if (cur_hat.ne[0] != w->ne[0] || cur_hat.ne[1] != w->ne[1]) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_BUG, "%s: the stages returned a %lld x %lld approximation of a %lld x %lld weight",
                               name, (long long) cur_hat.ne[0], (long long) cur_hat.ne[1], (long long) w->ne[0], (long long) w->ne[1]);
        goto done;
    }
    *w_hat = cur_hat;
    memset(&cur_hat, 0, sizeof(cur_hat));
    // Metrics in the original domain (the RHT leaves both invariant).
    int64_t m = w->ne[0], n = w->ne[1];
    double num = 0, den = 0;
    for (int64_t i = 0; i < m; i++) {
        const float * wr = (const float *) w->data + i * w->ld;
        const float * hr = (const float *) w_hat->data + i * w_hat->ld;
        for (int64_t j = 0; j < n; j++) {
            double d = (double) wr[j] - hr[j];
            num += d * d;
            den += (double) wr[j] * wr[j];
        }
    }
    if (!isfinite(num)) {  // finite input, yet the stages produced a NaN or Inf (e.g. a scale overflowed)
        rc = check_finite_named(ctx, "the approximation of weight", name, w_hat);
        if (rc == 0) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_NUMERIC, "weight %s: the squared error overflows a double", name);
        }
        caldera_tensor_free(w_hat);
        goto done;
    }
    res->rel_fro = den > 0 ? sqrt(num / den) : sqrt(num);
    res->has_h = h != NULL;
    res->rel_h = res->rel_fro;
    if (h) {
        struct caldera_tensor e = { 0 };
        if ((rc = caldera_tensor_alloc_f32(ctx, m, n, &e)) < 0) goto done;
        float * ed = e.data;
        for (int64_t i = 0; i < m; i++) {
            for (int64_t j = 0; j < n; j++) {
                ed[i * n + j] = ((const float *) w->data)[i * w->ld + j] - ((const float *) w_hat->data)[i * w_hat->ld + j];
            }
        }
        double te = 0, tw = 0;
        rc = caldera_linalg_trace_quad(ctx, &e, h, &te);
        if (rc == 0) rc = caldera_linalg_trace_quad(ctx, w, h, &tw);
        caldera_tensor_free(&e);
        if (rc < 0) goto done;
        res->rel_h = tw > 0 ? sqrt(fmax(te, 0) / tw) : sqrt(fmax(te, 0));
    }
    res->bits = (double) caldera_pack_bits(pack) / (double) (m * n);
done:
    for (int64_t s = 0; states && s < nt; s++) {
        if (states[s]) ((const struct caldera_transform_ops *) caldera_inst_plugin(pl->stages[s])->ops)->free_state(pl->stages[s], states[s]);
        caldera_tensor_free(&ws[s]);
        caldera_tensor_free(&hs[s]);
    }
    caldera_free(ws);
    caldera_free(hs);
    caldera_free(states);
    caldera_tensor_free(&cur_hat);
    caldera_tensor_free(&back);
    return rc;
}

static int write_tensor(struct caldera_inst * wr, const char * name, const struct caldera_tensor * t) {
    if (!wr) return 0;
    return ((const struct caldera_format_ops *) caldera_inst_plugin(wr)->ops)->write_tensor(wr, name, t);
}

int pl_outputs_open(struct caldera_pipeline * pl, struct pl_run * run) {
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
    int rc;
    if ((rc = caldera_meta_init(&run->fmeta)) < 0) return rc;
    if (!(run->cfgtext = pl_config_text(pl))) return CALDERA_ERR_NOMEM;
    if (rops->meta && rops->meta(o->reader)) {
        // carry the source's architecture and tokenizer metadata through
        if ((rc = caldera_meta_copy(run->fmeta, rops->meta(o->reader))) < 0) return rc;
    }
    {
        json_t * st = pl_stages_json(pl);
        char * sj = st ? json_dumps(st, JSON_COMPACT) : NULL;
        if (st) json_decref(st);
        rc = caldera_meta_set_string(run->fmeta, "caldera.version", CALDERA_VERSION_STRING);
        if (rc == 0) rc = caldera_meta_set_string(run->fmeta, "caldera.config", run->cfgtext);
        if (rc == 0) rc = sj ? caldera_meta_set_string(run->fmeta, "caldera.stages", sj) : CALDERA_ERR_NOMEM;
        free(sj);
        if (rc < 0) return rc;
    }
    if (o->checkpoint && *o->checkpoint && (rc = caldera_ckpt_open(ctx, o->checkpoint, run->cfgtext, &run->ckpt)) < 0) return rc;
    char * wpath = NULL;
    if (o->writer) {
        const char * p = pl_format_path(o->writer, &wpath);
        rc = ((const struct caldera_format_ops *) caldera_inst_plugin(o->writer)->ops)->create(o->writer, p, run->fmeta);
        caldera_free(wpath);
        if (rc < 0) return rc;
        run->writer_open = 1;
    }
    if (o->dense_writer) {
        const char * p = pl_format_path(o->dense_writer, &wpath);
        rc = ((const struct caldera_format_ops *) caldera_inst_plugin(o->dense_writer)->ops)->create(o->dense_writer, p, run->fmeta);
        caldera_free(wpath);
        if (rc < 0) return rc;
        run->dense_open = 1;
    }
    return 0;
}

// Copy a tensor that is not compressed to the writers, in the dtype copy_dtype asks for.
static int copy_tensor(struct caldera_pipeline * pl, struct pl_run * run, int64_t t, const struct caldera_tensor_info * ti,
                       const char * name) {
    struct pipeline_opts * o = popts(pl);
    const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
    struct caldera_tensor w = { 0 };
    int owned = 0, rc;
    int plain = caldera_dtype_block_elems(ti->dtype) == 1;
    int is_float = ti->dtype == CALDERA_DTYPE_F32 || ti->dtype == CALDERA_DTYPE_F64 || ti->dtype == CALDERA_DTYPE_F16 ||
                   ti->dtype == CALDERA_DTYPE_BF16 || !plain;
    enum caldera_dtype want = plain ? ti->dtype : CALDERA_DTYPE_F32;
    if (o->copy_dtype == COPY_F32 && is_float) want = CALDERA_DTYPE_F32;
    if (o->copy_dtype == COPY_F16 && is_float) want = CALDERA_DTYPE_F16;
    if (o->copy_dtype == COPY_BF16 && is_float) want = CALDERA_DTYPE_BF16;
    if ((rc = rops->read_tensor(o->reader, t, want, &w, &owned)) < 0) return rc;
    rc = check_finite_named(pl->ctx, "tensor", name, &w);
    if (rc == 0 && run->writer_open) rc = write_tensor(o->writer, name, &w);
    if (rc == 0 && run->dense_open) rc = write_tensor(o->dense_writer, name, &w);
    if (owned) caldera_tensor_free(&w);
    return rc;
}

// The Hessian (cols × cols, f32) of weight name from run->hsrc into h (h->data NULL: none, when
// hessian_missing = identity allows it); a missing one is an error naming what was expected.
static int read_hessian(struct caldera_pipeline * pl, struct pl_run * run, const char * name, int64_t cols, struct caldera_tensor * h,
                        int * owned) {
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    struct caldera_inst * hsrc = run->hsrc;   // the hessians section or the calibration cache
    char hname[1024];
    int64_t hi;
    int rc, named;
    if (run->seq) {   // sequential calibration: computed for this weight's layer now
        *owned = 0;
        rc = pl_seq_hessian(pl, run, name, cols, h);
        named = rc;
        if (rc != CALDERA_ERR_NOT_FOUND) return rc;
        memset(h, 0, sizeof(*h));
    } else {
        named = pl_hessian_name(pl, run, name, hname, sizeof(hname));
    }
    if (!run->seq && named == 0 && pl_find_tensor(hsrc, hname, &hi) == 0) {
        const struct caldera_format_ops * hops = caldera_inst_plugin(hsrc)->ops;
        if ((rc = hops->read_tensor(hsrc, hi, CALDERA_DTYPE_F32, h, owned)) < 0) return rc;
        if (h->ndim != 2 || h->ne[0] != cols || h->ne[1] != cols) {
            return caldera_ctx_error(ctx, CALDERA_ERR_FORMAT, "Hessian %s is %lld x %lld; weight %s needs %lld x %lld", hname,
                                     (long long) h->ne[0], (long long) h->ne[1], name, (long long) cols, (long long) cols);
        }
        if ((rc = check_finite_named(ctx, "Hessian", hname, h)) < 0) return rc;
        return 0;
    }
    if (o->hessian_missing != HMISS_ERROR) return 0;
    if (named < 0) {
        return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "no Hessian for weight %s: it is no linear layer of the %s model, so "
                                 "calibration sees no input of it; allowed: include only the model's linear layers, or "
                                 "hessian_missing = identity (H = I)", name, o->model);
    }
    return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "no Hessian '%s' for weight %s in [%s]; allowed: a Hessian for every "
                             "compressed weight, or hessian_missing = identity (H = I)", hname, name, caldera_inst_name(hsrc));
}

// Weights are compressed by one worker per thread (two weights at once on two cores), each weight
// on one thread with single-threaded BLAS, and committed (checkpoint, writers, model, report, log)
// strictly in the reader's order by whichever thread finishes the next one. So the output bytes,
// the report and every number are those of a one-thread run: nothing depends on the thread count
// (the result of one weight never depends on how its BLAS calls were split). Measured on SmolLM2
// (docs/results.md): whole weights in parallel beat splitting each weight's small GEMMs and its
// 8-column E8P blocks over two threads, where OpenBLAS's waiting threads ate most of a core.
// Sequential calibration needs the weights before a layer committed before the layer's Hessian,
// so it runs one worker, as does device = cuda.

struct cslot {   // one selected weight in flight
    struct caldera_tensor w, h, w_hat;
    int                   w_owned, h_owned, from_ckpt, done, rc;
    struct caldera_pack * pack;
    struct tensor_result  res;
    double                t0;
    char                  err[CALDERA_ERRMSG_MAX];   // its failure's message (workers fail at once)
};

struct cjob {
    struct caldera_pipeline * pl;
    struct pl_run *           run;
    pthread_mutex_t           mu;
    pthread_cond_t            cv;
    int64_t                   nt, nsel;
    int64_t *                 sel;          // (nsel) reader index of each selected weight, in order
    unsigned char *           is_sel;       // (nt)
    struct cslot *            slots;        // (nsel)
    int64_t                   next_job;     // next selected weight to start
    int64_t                   next_commit;  // next reader index to commit (copy or write)
    int64_t                   committed;    // selected weights committed
    int64_t                   window;       // started but uncommitted weights at most (memory bound)
    int                       want_hat;
    int                       stop;         // a weight failed or the run was cancelled: start no more
    int                       rc;           // the first failure in commit order (or the cancellation)
    double                    t_start;
};

static void cslot_release(struct cslot * s) {
    caldera_pack_free(s->pack);
    s->pack = NULL;
    caldera_tensor_free(&s->w_hat);
    if (s->w_owned) caldera_tensor_free(&s->w);
    if (s->h_owned) caldera_tensor_free(&s->h);
    memset(&s->w, 0, sizeof(s->w));
    memset(&s->h, 0, sizeof(s->h));
    s->w_owned = s->h_owned = 0;
}

// Under the lock: the checkpointed result of slot j, or its W and H read for compress_one.
static int cslot_prepare(struct cjob * cj, int64_t j) {
    struct caldera_pipeline * pl = cj->pl;
    struct pl_run * run = cj->run;
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
    struct cslot * s = &cj->slots[j];
    struct caldera_tensor_info ti;
    int64_t t = cj->sel[j];
    int rc;
    s->t0 = pl_now();
    if ((rc = rops->tensor_info(o->reader, t, &ti)) < 0) return rc;
    const char * name = ti.hf_name ? ti.hf_name : ti.name;
    if ((rc = caldera_pack_init(&s->pack)) < 0) return rc;
    if (run->ckpt) {
        struct caldera_ckpt_result cr;
        if (cj->want_hat && (rc = caldera_tensor_alloc_f32(ctx, ti.ne[0], ti.ne[1], &s->w_hat)) < 0) return rc;
        rc = caldera_ckpt_load(run->ckpt, t, name, s->pack, &cr, cj->want_hat ? &s->w_hat : NULL);
        if (rc == 0) {
            s->res = (struct tensor_result) { cr.bits, cr.rel_fro, cr.rel_h, cr.seconds, cr.has_h };
            s->w.ne[0] = ti.ne[0];
            s->w.ne[1] = ti.ne[1];
            s->from_ckpt = 1;
            return 0;
        }
        if (rc != CALDERA_ERR_NOT_FOUND) return rc;
        caldera_tensor_free(&s->w_hat);
    }
    if ((rc = rops->read_tensor(o->reader, t, CALDERA_DTYPE_F32, &s->w, &s->w_owned)) < 0) return rc;
    if ((rc = check_finite_named(ctx, "weight", name, &s->w)) < 0) return rc;
    if ((run->hsrc || run->seq) && (rc = read_hessian(pl, run, name, s->w.ne[1], &s->h, &s->h_owned)) < 0) return rc;
    return 0;
}

// Under the lock: slot j's results into the checkpoint, the writers, the model and the report.
static int cslot_commit(struct cjob * cj, int64_t j) {
    struct caldera_pipeline * pl = cj->pl;
    struct pl_run * run = cj->run;
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
    struct cslot * s = &cj->slots[j];
    struct caldera_tensor_info ti;
    int64_t t = cj->sel[j];
    int rc;
    if ((rc = rops->tensor_info(o->reader, t, &ti)) < 0) return rc;
    const char * name = ti.hf_name ? ti.hf_name : ti.name;
    if (!s->from_ckpt) {
        s->res.seconds = pl_now() - s->t0;
        if (run->ckpt && (rc = caldera_ckpt_save(run->ckpt, t, name, s->pack, &(struct caldera_ckpt_result) { s->res.bits,
                              s->res.rel_fro, s->res.rel_h, s->res.seconds, s->res.has_h }, cj->want_hat ? &s->w_hat : NULL)) < 0) {
            return rc;
        }
    } else {
        run->resumed++;
    }
    for (int64_t k = 0; run->writer_open && k < caldera_pack_count(s->pack); k++) {
        struct caldera_tensor pt;
        caldera_pack_get(s->pack, k, &pt);
        char * full = caldera_asprintf("%s.%s", name, caldera_pack_name(s->pack, k));
        if (!full) return CALDERA_ERR_NOMEM;
        rc = write_tensor(o->writer, full, &pt);
        caldera_free(full);
        if (rc < 0) return rc;
    }
    if (run->dense_open && (rc = write_tensor(o->dense_writer, name, &s->w_hat)) < 0) return rc;
    if ((pl->eval || run->seq) && run->model) {   // the model runs with Ŵ in place of W from now on
        int64_t li = run->mops->linear_find(run->model, name);
        if (li < 0) {
            return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "weight %s is no linear layer of the %s model, so the evaluation "
                                     "cannot use its reconstruction; allowed: include only linear layers, or no [eval]", name, o->model);
        }
        if ((rc = run->mops->set_linear_weight(run->model, li, &s->w_hat, 1)) < 0) return rc;
        run->replaced++;
    }
    const struct tensor_result * res = &s->res;
    double params = (double) (s->w.ne[0] * s->w.ne[1]);
    run->sum_bits_params += res->bits * params;
    run->sum_params += params;
    run->sum_err += res->rel_fro;
    if (res->rel_fro > run->worst) run->worst = res->rel_fro;
    if (res->has_h) {
        run->n_h++;
        run->sum_err_h += res->rel_h;
        if (res->rel_h > run->worst_h) run->worst_h = res->rel_h;
    }
    run->ndone++;
    json_t * tj = json_pack("{s:s, s:[I,I], s:f, s:f, s:f, s:b, s:f}", "name", name, "shape", (json_int_t) s->w.ne[0],
                            (json_int_t) s->w.ne[1], "bits_per_param", res->bits, "rel_err", res->rel_fro, "rel_err_h", res->rel_h,
                            "data_aware", res->has_h, "seconds", res->seconds);
    if (tj) json_array_append_new(run->tensors, tj);
    double el = pl_now() - cj->t_start, eta = run->ndone ? el / (double) run->ndone * (double) (cj->nsel - run->ndone) : 0;
    char herr[48] = "";
    if (res->has_h) snprintf(herr, sizeof(herr), ", data-aware %.4f", res->rel_h);
    caldera_log(ctx, CALDERA_LOG_INFO, "[%lld/%lld] %s (%lld x %lld): %.3f bits/param, rel. error %.4f%s (%.2f s; %.2f weights/s, ETA %.0f s)",
                (long long) run->ndone, (long long) cj->nsel, name, (long long) s->w.ne[0], (long long) s->w.ne[1], res->bits,
                res->rel_fro, herr, res->seconds, el > 0 ? (double) run->ndone / el : 0.0, eta);
    return 0;
}

// Under the lock: commit everything that is ready, in the reader's order (copies included).
static void cjob_commit_ready(struct cjob * cj) {
    struct caldera_pipeline * pl = cj->pl;
    struct pipeline_opts * o = popts(pl);
    const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
    while (cj->rc == 0 && cj->next_commit < cj->nt) {
        int64_t t = cj->next_commit;
        int rc = 0;
        if (!cj->is_sel[t]) {
            if (cj->run->writer_open || cj->run->dense_open) {
                struct caldera_tensor_info ti;
                if ((rc = rops->tensor_info(o->reader, t, &ti)) == 0) rc = copy_tensor(pl, cj->run, t, &ti, ti.hf_name ? ti.hf_name : ti.name);
            }
        } else {
            struct cslot * s = &cj->slots[cj->committed];
            if (!s->done) break;
            // a failed weight: its own message, whatever the other workers raised meanwhile
            rc = s->rc < 0 ? caldera_ctx_error(pl->ctx, s->rc, "%s", s->err) : cslot_commit(cj, cj->committed);
            cslot_release(s);
            cj->committed++;
        }
        if (rc < 0) {
            cj->rc = rc;
            break;
        }
        cj->next_commit++;
    }
}

static void cjob_worker(void * arg, int64_t i0, int64_t i1) {
    struct cjob * cj = arg;
    struct caldera_ctx * ctx = cj->pl->ctx;
    struct pipeline_opts * o = popts(cj->pl);
    (void) i0;
    (void) i1;
    pthread_mutex_lock(&cj->mu);
    for (;;) {
        cjob_commit_ready(cj);
        if (cj->rc < 0 || cj->stop || cj->next_job >= cj->nsel) break;
        if (caldera_ctx_cancelled(ctx)) {   // the weights in flight still finish and are committed (checkpointed)
            cj->stop = 1;
            break;
        }
        if (cj->next_job >= cj->committed + cj->window) {
            pthread_cond_wait(&cj->cv, &cj->mu);
            continue;
        }
        int64_t j = cj->next_job++;
        struct cslot * s = &cj->slots[j];
        int rc = cslot_prepare(cj, j);
        if (rc < 0) caldera_strlcpy(s->err, caldera_ctx_errmsg(ctx), sizeof(s->err));
        pthread_mutex_unlock(&cj->mu);
        char name[512] = "";
        if (rc == 0 && !s->from_ckpt) {
            char * prev = caldera_ctx_thread_errmsg(s->err);   // this weight's errors into its slot
            struct caldera_tensor_info ti;
            const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
            pthread_mutex_lock(&cj->mu);
            if ((rc = rops->tensor_info(o->reader, cj->sel[j], &ti)) == 0) caldera_strlcpy(name, ti.hf_name ? ti.hf_name : ti.name, sizeof(name));
            pthread_mutex_unlock(&cj->mu);
            if (rc == 0) rc = compress_one(cj->pl, name, &s->w, s->h.data ? &s->h : NULL, s->pack, &s->w_hat, &s->res);
            caldera_ctx_thread_errmsg(prev);
        }
        pthread_mutex_lock(&cj->mu);
        if (rc < 0 && *name) {
            char msg[CALDERA_ERRMSG_MAX];
            caldera_strlcpy(msg, s->err, sizeof(msg));
            int n = snprintf(s->err, sizeof(s->err), "weight %s (%lld x %lld): ", name, (long long) s->w.ne[0], (long long) s->w.ne[1]);
            if (n > 0 && (size_t) n < sizeof(s->err)) caldera_strlcpy(s->err + n, msg, sizeof(s->err) - (size_t) n);
        }
        s->rc = rc;
        s->done = 1;
        if (rc < 0) cj->stop = 1;   // the weights before it are still committed (and checkpointed)
        pthread_cond_broadcast(&cj->cv);
    }
    pthread_cond_broadcast(&cj->cv);
    pthread_mutex_unlock(&cj->mu);
}

int pl_phase_compress(struct caldera_pipeline * pl, struct pl_run * run) {
    struct caldera_ctx * ctx = pl->ctx;
    struct pipeline_opts * o = popts(pl);
    const struct caldera_format_ops * rops = caldera_inst_plugin(o->reader)->ops;
    struct cjob cj = { .pl = pl, .run = run };
    int rc = 0, sync = 0;
    double t_phase = pl_now(), t_cal0 = run->t_calibrate;   // sequential calibration inside is counted as calibration
    if (!(run->tensors = json_array())) return CALDERA_ERR_NOMEM;
    cj.nt = rops->n_tensors(o->reader);
    cj.is_sel = caldera_calloc((size_t) (cj.nt > 0 ? cj.nt : 1), 1);
    cj.sel = caldera_calloc((size_t) (cj.nt > 0 ? cj.nt : 1), sizeof(int64_t));
    cj.slots = caldera_calloc((size_t) (cj.nt > 0 ? cj.nt : 1), sizeof(struct cslot));
    if (!cj.is_sel || !cj.sel || !cj.slots) { rc = CALDERA_ERR_NOMEM; goto done; }
    run->model_params = 0;
    for (int64_t t = 0; t < cj.nt; t++) {
        struct caldera_tensor_info ti;
        if ((rc = rops->tensor_info(o->reader, t, &ti)) < 0) goto done;
        if (pl_selected(o, &ti) && (o->max_tensors == 0 || cj.nsel < o->max_tensors)) {
            cj.is_sel[t] = 1;
            cj.sel[cj.nsel++] = t;
        }
        int64_t ne = 1;
        for (int d = 0; d < ti.ndim; d++) ne *= ti.ne[d];
        run->model_params += (double) ne;
    }
    // Ŵ is kept (and checkpointed) when a dense file is written or the model is evaluated with it.
    cj.want_hat = run->dense_open || ((pl->eval || run->seq) && run->model);
    // one worker under device = cuda: the device's handles and staging buffers are per context
    int workers = run->seq || caldera_ctx_device(ctx) != CALDERA_DEVICE_CPU ? 1 : caldera_ctx_threads(ctx);
    if (workers > cj.nsel) workers = cj.nsel > 0 ? (int) cj.nsel : 1;
    // 4 per worker: a layer's three long MLP weights beside its four short attention ones need a
    // worker to run 6 past the oldest uncommitted weight, or it waits (2 per worker left one core
    // idle ~1 s per layer); each started slot holds W, H and Ŵ of one weight (≤ 17 MB for SmolLM2)
    cj.window = 4 * (int64_t) workers;
    run->t_start = cj.t_start = pl_now();
    pthread_mutex_init(&cj.mu, NULL);
    pthread_cond_init(&cj.cv, NULL);
    sync = 1;
    if (workers > 1) caldera_blas_set_threads(1);   // one weight per thread; BLAS inside it on that thread
    caldera_parallel_for(ctx, workers, 1, cjob_worker, &cj);
    if (workers > 1) caldera_blas_set_threads(caldera_ctx_threads(ctx));
    rc = cj.rc;
    for (int64_t j = 0; rc == 0 && cj.stop && j < cj.nsel; j++) {   // a failure is in commit order, with its message
        if ((rc = cj.slots[j].rc) < 0) caldera_ctx_error(ctx, rc, "%s", cj.slots[j].err);
    }
    if (rc == 0 && cj.stop) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_CANCELLED, "cancelled after %lld weights", (long long) run->ndone);
    }
done:
    run->t_compress = pl_now() - t_phase - (run->t_calibrate - t_cal0);
    for (int64_t j = 0; cj.slots && j < cj.nsel; j++) cslot_release(&cj.slots[j]);
    if (sync) {
        pthread_mutex_destroy(&cj.mu);
        pthread_cond_destroy(&cj.cv);
    }
    caldera_free(cj.slots);
    caldera_free(cj.sel);
    caldera_free(cj.is_sel);
    return rc;
}

int pl_outputs_finish(struct caldera_pipeline * pl, struct pl_run * run) {
    struct pipeline_opts * o = popts(pl);
    int rc = 0;
    // The report goes into the file metadata too, so a compressed file says how it was made; without
    // the timings, so that a resumed run writes the same bytes as an uninterrupted one.
    if (pl->report) {
        json_t * frep = json_deep_copy(pl->report);
        size_t ti_;
        json_t * tj;
        json_array_foreach(json_object_get(frep, "tensors"), ti_, tj) json_object_del(tj, "seconds");
        json_object_del(json_object_get(frep, "summary"), "seconds");
        char * fj = frep ? json_dumps(frep, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) : NULL;
        json_decref(frep);
        rc = fj ? caldera_meta_set_string(run->fmeta, "caldera.report", fj) : CALDERA_ERR_NOMEM;
        free(fj);
        if (rc < 0) return rc;
        struct caldera_inst * ws[2] = { run->writer_open ? o->writer : NULL, run->dense_open ? o->dense_writer : NULL };
        for (int k = 0; k < 2; k++) {
            if (!ws[k]) continue;
            const struct caldera_format_ops * wo = caldera_inst_plugin(ws[k])->ops;
            if (CALDERA_OPS_HAS(wo, struct caldera_format_ops, update_meta) && (rc = wo->update_meta(ws[k], run->fmeta)) < 0) return rc;
        }
    }
    if (run->writer_open) {
        run->writer_open = 0;
        if ((rc = ((const struct caldera_format_ops *) caldera_inst_plugin(o->writer)->ops)->finish(o->writer, 1)) < 0) return rc;
    }
    if (run->dense_open) {
        run->dense_open = 0;
        if ((rc = ((const struct caldera_format_ops *) caldera_inst_plugin(o->dense_writer)->ops)->finish(o->dense_writer, 1)) < 0) return rc;
    }
    return 0;
}

void pl_run_close(struct caldera_pipeline * pl, struct pl_run * run, int rc) {
    struct pipeline_opts * o = popts(pl);
    // A finished run removes its checkpoint; a failed or cancelled one keeps it to continue from.
    caldera_ckpt_close(run->ckpt, rc == 0);
    if (run->writer_open) ((const struct caldera_format_ops *) caldera_inst_plugin(o->writer)->ops)->finish(o->writer, 0);
    if (run->dense_open) ((const struct caldera_format_ops *) caldera_inst_plugin(o->dense_writer)->ops)->finish(o->dense_writer, 0);
    caldera_meta_free(run->fmeta);
    caldera_free(run->cfgtext);
    if (run->tensors) json_decref(run->tensors);
    if (run->model) run->mops->release(run->model);
    caldera_inst_free(run->model);
    if (run->hcache) {
        const struct caldera_format_ops * hops = caldera_inst_plugin(run->hcache)->ops;
        if (hops->close) hops->close(run->hcache);
        caldera_inst_free(run->hcache);
    }
    if (run->hcache_tmp) unlink(run->hcache_tmp);
    caldera_free(run->hcache_tmp);
    pl_seq_free(run);
    if (run->calib_json) json_decref(run->calib_json);
    if (run->eval_json) json_decref(run->eval_json);
    if (run->eval_original) json_decref(run->eval_original);
    memset(run, 0, sizeof(*run));
}
