// SPDX-License-Identifier: MIT
// Models as applications use them: open any readable model file into a model plugin instance,
// read evaluation text, and measure perplexity with llama-perplexity's or Hugging Face's
// protocol. Logits arrive from the model in chunks of positions and are reduced to negative
// log-likelihoods at once, so ctx × vocab floats never exist together.
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "caldera/caldera-kernels.h"
#include "internal.h"

int caldera_model_ops_of(struct caldera_inst * model, const struct caldera_model_ops ** ops) {
    const struct caldera_plugin * pl = model ? caldera_inst_plugin(model) : NULL;
    if (!pl || pl->kind != CALDERA_PLUGIN_KIND_MODEL) {
        if (model) {
            return caldera_ctx_error(caldera_inst_ctx(model), CALDERA_ERR_INVAL, "[%s] %s is a %s plugin, not a model",
                                     caldera_inst_name(model), pl ? pl->name : "?", pl ? caldera_plugin_kind_name(pl->kind) : "?");
        }
        return CALDERA_ERR_INVAL;
    }
    *ops = pl->ops;
    return 0;
}

// A format plugin by name, or the best probe_path score among the readers.
static int pick_format(struct caldera_ctx * ctx, const char * name, const char * path, const struct caldera_plugin ** out) {
    if (name) {
        const struct caldera_plugin * p = caldera_registry_find(ctx, name);
        if (!p || p->kind != CALDERA_PLUGIN_KIND_FORMAT || !((const struct caldera_format_ops *) p->ops)->open) {
            return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "%s: no format plugin '%s' that reads models", path, name);
        }
        *out = p;
        return 0;
    }
    const struct caldera_plugin * best = NULL;
    int                           best_score = 0;
    for (int64_t i = 0; i < caldera_registry_count(ctx); i++) {
        const struct caldera_plugin * q = caldera_registry_get(ctx, i);
        if (q->kind != CALDERA_PLUGIN_KIND_FORMAT) continue;
        const struct caldera_format_ops * ops = q->ops;
        if (!ops->probe_path || !ops->open) continue;
        int s = ops->probe_path(path);
        if (s > best_score) {
            best_score = s;
            best       = q;
        }
    }
    if (!best) {
        return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "%s: no format plugin recognises this file (GGUF, safetensors "
                                 "file or Hugging Face folder, llama2.c checkpoint); name one", path);
    }
    *out = best;
    return 0;
}

static void compressed_free_arg(void * h) { caldera_compressed_free(h); }

// Is tensor @p name a part ("W.<section>.<suffix>") of a linear weight W stored compressed?
static int storage_is_part(struct caldera_inst * model, const struct caldera_model_ops * mops, const char * name) {
    for (int64_t i = 0; i < mops->n_linears(model); i++) {
        struct caldera_model_linear li;
        if (mops->linear_info(model, i, &li) < 0) continue;
        size_t nl = strlen(li.name);
        if (!strncmp(name, li.name, nl) && name[nl] == '.') return 1;
    }
    return 0;
}

// What the open @p reader stores (caldera_model_storage), counted as a pipeline report counts:
// every tensor's elements; the linear weights of the blocks (layer >= 0) by their stored bytes.
// A caldera-pipe output's compressed parts are left to the compressed layers' report.
static int storage_count(struct caldera_inst * reader, struct caldera_inst * model, const struct caldera_model_ops * mops,
                         int is_output, struct caldera_model_storage * st) {
    const struct caldera_format_ops * fops = caldera_inst_plugin(reader)->ops;
    int64_t ntype[CALDERA_DTYPE_COUNT] = { 0 };
    int rc;
    memset(st, 0, sizeof(*st));
    for (int64_t t = 0; t < fops->n_tensors(reader); t++) {
        struct caldera_tensor_info ti;
        struct caldera_model_linear li;
        if ((rc = fops->tensor_info(reader, t, &ti)) < 0) return rc;
        int64_t ne = 1;
        for (int d = 0; d < ti.ndim; d++) ne *= ti.ne[d];
        int64_t lin = mops->linear_find(model, ti.hf_name ? ti.hf_name : ti.name);
        if (lin < 0 && is_output && storage_is_part(model, mops, ti.name)) continue;
        st->params += ne;
        if (lin < 0 || is_output || mops->linear_info(model, lin, &li) < 0 || li.layer < 0) continue;
        st->linear_params += ne;
        st->linear_bits += (uint64_t) ti.nbytes * 8;
        if ((unsigned) ti.dtype < CALDERA_DTYPE_COUNT) ntype[ti.dtype]++;
    }
    size_t used = 0;
    for (int d = 0; d < CALDERA_DTYPE_COUNT && used < sizeof(st->types); d++) {
        if (ntype[d]) used += (size_t) snprintf(st->types + used, sizeof(st->types) - used, "%s%s:%" PRId64, used ? " " : "",
                                                caldera_dtype_name((enum caldera_dtype) d), ntype[d]);
    }
    return 0;
}

#define OPEN_HAS(p, field) ((p)->struct_size >= offsetof(struct caldera_model_open_params, field) + sizeof((p)->field))

int caldera_model_open(struct caldera_ctx * ctx, const char * path, const struct caldera_model_open_params * params,
                       struct caldera_inst ** out) {
    struct caldera_model_open_params  defaults = { .struct_size = sizeof(defaults) };
    const struct caldera_plugin *     fp = NULL;
    const struct caldera_model_ops *  mops = NULL;
    struct caldera_inst *             reader = NULL, * model = NULL;
    struct caldera_compressed *       cmp = NULL;
    int                               rc, opened = 0, is_output = 0;
    *out = NULL;
    if (!params) params = &defaults;
    struct caldera_compressed_report   own_report;
    struct caldera_compressed_report * report = OPEN_HAS(params, compressed_report) ? params->compressed_report : NULL;
    struct caldera_model_storage *     storage = OPEN_HAS(params, storage) ? params->storage : NULL;
    if (!report) report = &own_report;   // the storage of a caldera-pipe output needs it
    memset(report, 0, sizeof(*report));
    if (!path || !path[0]) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "model_open: no model path given");
    if ((rc = pick_format(ctx, params->format, path, &fp)) < 0) return rc;
    const struct caldera_format_ops * fops = fp->ops;
    if ((rc = caldera_inst_create(ctx, fp->name, fp->name, &reader)) < 0) goto fail;
    if (params->tokenizer && params->tokenizer[0] && (rc = caldera_inst_set(reader, "tokenizer", params->tokenizer)) < 0) {
        rc = caldera_ctx_error(ctx, rc, "%s: the %s format takes no separate tokenizer file (%s)", path, fp->name,
                               params->tokenizer);
        goto fail;
    }
    if ((rc = caldera_inst_start(reader)) < 0) goto fail;
    if ((rc = fops->open(reader, path)) < 0) goto fail;
    opened = 1;
    {   // a caldera-pipe output: its linear layers are stored compressed (caldera.config records how)
        const char * cfg = NULL;
        is_output = fops->meta && fops->meta(reader) && caldera_meta_get_string(fops->meta(reader), "caldera.config", &cfg) == 0 &&
                    cfg != NULL;
    }
    const char * mname = params->model ? params->model : "llama";
    if ((rc = caldera_inst_create(ctx, mname, mname, &model)) < 0) goto fail;
    if (params->weights && (rc = caldera_inst_set(model, "weights", params->weights)) < 0) goto fail;
    if ((rc = caldera_inst_start(model)) < 0) goto fail;
    if ((rc = caldera_model_ops_of(model, &mops)) < 0) goto fail;
    if ((rc = mops->load(model, reader)) < 0) {
        if (is_output) {
            char why[512];
            snprintf(why, sizeof(why), "%s", caldera_ctx_errmsg(ctx));
            rc = caldera_ctx_error(ctx, rc, "%s; this caldera-pipe output does not carry what the model needs (written from a "
                                   "source without a model description or its tensors): run it on top of its original "
                                   "model with --model ORIGINAL --compressed %s (caldera_model_load_compressed)",
                                   why, path);
        }
        goto fail;
    }
    if (storage && (rc = storage_count(reader, model, mops, is_output, storage)) < 0) goto fail;
    if (fops->close) fops->close(reader);
    opened = 0;
    if (is_output) {
        struct caldera_compressed_params cp = { .struct_size = sizeof(cp), .format = fp->name,
                                                .dense = OPEN_HAS(params, dense) ? params->dense : 0 };
        if ((rc = caldera_model_load_compressed(ctx, model, path, &cp, &cmp, report)) < 0) goto fail;
        caldera_inst_on_free(model, compressed_free_arg, cmp);   // after the model's layers that use it
        cmp = NULL;
        if (storage) {
            storage->params += (int64_t) report->params;
            storage->linear_params = (int64_t) report->params;
            storage->linear_bits = report->stored_bits;
            storage->compressed = 1;
            snprintf(storage->types, sizeof(storage->types), "compressed:%" PRId64, report->n_fused + report->n_dense);
        }
    }
    caldera_inst_free(reader);
    *out = model;
    return 0;
fail:
    if (opened && fops->close) fops->close(reader);
    caldera_inst_free(reader);
    caldera_inst_free(model);
    caldera_compressed_free(cmp);   // after the model: layers replaced before a failure use it
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Text

int caldera_text_read(struct caldera_ctx * ctx, const char * path, enum caldera_text_layout layout, char ** text, size_t * len) {
    FILE * f = NULL;
    char * buf = NULL, * outb = NULL;
    long   size;
    int    rc;
    *text = NULL;
    *len  = 0;
    if ((unsigned) layout > CALDERA_TEXT_ROWS) return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "%s: invalid text layout %d", path, (int) layout);
    if (!(f = fopen(path, "rb"))) {
        return caldera_ctx_error(ctx, errno == ENOENT ? CALDERA_ERR_NOT_FOUND : CALDERA_ERR_IO, "%s: cannot open: %s", path,
                                 strerror(errno));
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_IO, "%s: cannot tell its size: %s", path, strerror(errno));
        goto fail;
    }
    if (!(buf = caldera_malloc((size_t) size + 1))) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "%s: cannot allocate %ld bytes", path, size);
        goto fail;
    }
    if (fread(buf, 1, (size_t) size, f) != (size_t) size) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_IO, "%s: read failed", path);
        goto fail;
    }
    buf[size] = 0;
    size_t n = (size_t) size;
    if (layout != CALDERA_TEXT_RAW) {
        // at most doubles (every LF doubled)
        if (!(outb = caldera_malloc(2 * n + 1))) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, 2 * n + 1);
            goto fail;
        }
        size_t o = 0;
        for (size_t i = 0; i < n; i++) {
            if (buf[i] == '\r' && i + 1 < n && buf[i + 1] == '\n') continue;   // CRLF -> LF
            outb[o++] = buf[i];
            if (buf[i] == '\n' && layout == CALDERA_TEXT_ROWS) outb[o++] = '\n';
        }
        outb[o] = 0;
        caldera_free(buf);
        buf  = outb;
        outb = NULL;
        n    = o;
    }
    fclose(f);
    *text = buf;
    *len  = n;
    return 0;
fail:
    if (f) fclose(f);
    caldera_free(buf);
    caldera_free(outb);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Perplexity

struct ppl_acc {
    struct caldera_ctx * ctx;
    const int32_t *      targets;   // targets[seq * seq_stride + j]: the token predicted at position j of sequence seq
    int64_t              seq_stride;
    int64_t              vocab;
    double               nll, nll2;
    int64_t              count;
    double *             row_nll;   // per-row scratch (LLM chunk rows)
    int64_t              row_cap;
};

struct lsm_args { const float * lg; int64_t vocab; const int32_t * tgt; double * out; };

// -log softmax(row)[target], in double for the sum as llama-perplexity does
static void lsm_rows(void * arg, int64_t r0, int64_t r1) {
    const struct lsm_args * a = arg;
    for (int64_t r = r0; r < r1; r++) {
        const float * x = a->lg + r * a->vocab;
        float         m = x[0];
        for (int64_t j = 1; j < a->vocab; j++) m = x[j] > m ? x[j] : m;
        double s = 0;
        for (int64_t j = 0; j < a->vocab; j++) s += expf(x[j] - m);
        a->out[r] = -((double) x[a->tgt[r]] - m - log(s));
    }
}

static int ppl_logits(void * user, int64_t seq, int64_t pos0, const struct caldera_tensor * logits) {
    struct ppl_acc * acc = user;
    int64_t          n = logits->ne[0];
    if (logits->ne[1] != acc->vocab) {
        return caldera_ctx_error(acc->ctx, CALDERA_ERR_BUG, "perplexity: logits of width %" PRId64 ", vocabulary %" PRId64,
                                 logits->ne[1], acc->vocab);
    }
    if (n > acc->row_cap) {
        caldera_free(acc->row_nll);
        if (!(acc->row_nll = caldera_malloc((size_t) n * sizeof(double)))) {
            acc->row_cap = 0;
            return caldera_ctx_error(acc->ctx, CALDERA_ERR_NOMEM, "perplexity: out of memory");
        }
        acc->row_cap = n;
    }
    struct lsm_args a = { logits->data, acc->vocab, acc->targets + seq * acc->seq_stride + pos0, acc->row_nll };
    caldera_parallel_for(acc->ctx, n, 4, lsm_rows, &a);
    for (int64_t r = 0; r < n; r++) {
        acc->nll += acc->row_nll[r];
        acc->nll2 += acc->row_nll[r] * acc->row_nll[r];
    }
    acc->count += n;
    return 0;
}

int caldera_model_perplexity(struct caldera_inst * model, const char * text, size_t len, const struct caldera_ppl_params * params,
                             struct caldera_ppl_result * out) {
    struct caldera_ctx *             ctx = model ? caldera_inst_ctx(model) : NULL;
    const struct caldera_model_ops * ops = NULL;
    struct caldera_model_vocab       voc;
    int32_t *                        ids = NULL, * win = NULL;
    int64_t                          n = 0;
    struct ppl_acc                   acc = { 0 };
    int                              rc;
    if (!model || !params || !out || !text) return CALDERA_ERR_INVAL;
    memset(out, 0, sizeof(*out));
    if ((rc = caldera_model_ops_of(model, &ops)) < 0) return rc;
    if (!ops->tokenize || !ops->vocab) {
        return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "perplexity: the model plugin '%s' has no tokenizer",
                                 caldera_inst_plugin(model)->name);
    }
    if ((rc = ops->vocab(model, &voc)) < 0) return rc;
    int64_t c = params->ctx;
    if (c < 2) return caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "perplexity: ctx %" PRId64 "; allowed: >= 2", c);
    if (params->protocol != CALDERA_PPL_LLAMACPP && params->protocol != CALDERA_PPL_STRIDED) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "perplexity: unknown protocol %d; allowed: llamacpp, strided",
                                 (int) params->protocol);
    }
    struct caldera_model_desc d;
    if ((rc = ops->desc(model, &d)) < 0) return rc;
    int add_bos = voc.add_bos && voc.bos >= 0;
    if ((rc = ops->tokenize(model, text, len, add_bos, 0, &ids, &n)) < 0) return rc;
    int64_t batch = params->batch > 0 ? params->batch : 1;
    if (params->protocol != CALDERA_PPL_LLAMACPP) batch = 1;   // strided windows differ in what they score
    if (!(win = caldera_malloc((size_t) (batch * c) * sizeof(int32_t)))) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "perplexity: out of memory");
        goto fail;
    }
    acc.ctx   = ctx;
    acc.vocab = d.vocab;
    struct caldera_model_forward_args fa = { .struct_size = sizeof(fa), .tokens = win, .n_seq = 1, .on_logits = ppl_logits,
                                             .logits_user = &acc };
    int64_t n_win = 0;
    if (params->protocol == CALDERA_PPL_LLAMACPP) {
        // llama-perplexity: non-overlapping windows of c tokens; the first becomes the BOS when the
        // model adds one; positions [c/2, c-1) predict the tokens after them
        int64_t total = n / c;
        if (total < 1) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "perplexity: the text has %" PRId64 " tokens; a window needs %" PRId64,
                                   n, c);
            goto fail;
        }
        if (params->windows > 0 && params->windows < total) total = params->windows;
        for (int64_t w = 0; w < total; w += batch) {
            int64_t nb = total - w < batch ? total - w : batch;   // windows in this forward pass
            memcpy(win, ids + w * c, (size_t) (nb * c) * sizeof(int32_t));
            for (int64_t b = 0; add_bos && b < nb; b++) win[b * c] = voc.bos;
            acc.targets    = ids + w * c + 1;   // target of position j of window b: token b·c + j + 1
            acc.seq_stride = c;
            fa.n_seq       = nb;
            fa.n_tok       = c;
            fa.logits_from = c / 2;
            fa.logits_to   = c - 1;
            if ((rc = ops->forward(model, &fa)) < 0) goto fail;
            n_win += nb;
            if (params->progress) params->progress(params->progress_user, n_win, total, exp(acc.nll / (double) acc.count));
        }
    } else {
        // Hugging Face strided: windows [begin, min(begin + c, n)) for begin = 0, stride, ...; each
        // scores the tokens after the previous window's end (never a window's first token)
        int64_t stride = params->stride > 0 ? params->stride : c / 2;
        if (stride > c) stride = c;
        int64_t total = 0;
        for (int64_t b = 0, e = 0; e < n; b += stride, total++) e = b + c < n ? b + c : n;
        if (params->windows > 0 && params->windows < total) total = params->windows;
        int64_t prev_end = 0;
        for (int64_t begin = 0; n_win < total; begin += stride) {
            int64_t end = begin + c < n ? begin + c : n;
            int64_t first = prev_end > begin + 1 ? prev_end : begin + 1;   // first scored token
            if (end - begin >= 2 && first < end) {
                memcpy(win, ids + begin, (size_t) (end - begin) * sizeof(int32_t));
                acc.targets    = ids + begin + 1;
                fa.n_tok       = end - begin;
                fa.logits_from = first - 1 - begin;
                fa.logits_to   = end - 1 - begin;
                if ((rc = ops->forward(model, &fa)) < 0) goto fail;
            }
            n_win++;
            if (params->progress && acc.count > 0) params->progress(params->progress_user, n_win, total, exp(acc.nll / (double) acc.count));
            prev_end = end;
            if (end == n) break;
        }
    }
    if (acc.count < 1) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "perplexity: no token was scored (%" PRId64 " text tokens, ctx %" PRId64 ")",
                               n, c);
        goto fail;
    }
    double mean = acc.nll / (double) acc.count;
    double var  = acc.nll2 / (double) acc.count - mean * mean;
    out->nll           = mean;
    out->ppl           = exp(mean);
    out->ppl_err       = var > 0 && acc.count > 1 ? sqrt(var / (double) (acc.count - 1)) * out->ppl : 0.0;
    out->tokens_scored = acc.count;
    out->windows       = n_win;
    out->text_tokens   = n;
    rc = 0;
fail:
    caldera_free(ids);
    caldera_free(win);
    caldera_free(acc.row_nll);
    return rc;
}
