// SPDX-License-Identifier: MIT
// bench-quant: speed of the Hessian-aware quantization path on one m×n weight with a real-like
// n×n Hessian: the machine's sgemm rate through caldera_linalg_gemm, block LDL, ldlq over a
// codebook (uniform b=1, e8 b=8) with its FLOP count and fraction of sgemm, tune passes, e8 RTN
// encode throughput, and the rht forward/inverse. Not a test: prints a Markdown table.
//   usage: bench-quant [-m rows] [-n cols] [-t 1,2] [-T tune_iters] [-s sgemm_size] [-q uniform,e8]
//                      [-b buffer_cols] [-r reps]   (timings: best of reps runs)
//          bench-quant -Q [-m rows] [-n cols] [-T tune]: quality table (relative proxy error of RTN,
//                      ldlq, ldlq + tune passes, each with and without rht) instead of speed
//          -O: W gets outlier input channels (every 64th column x20), as LLM weights have
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "caldera/caldera.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static void fill_normal(float * x, int64_t n, uint64_t seed) {
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float) caldera_rng_normal(&rng);
    }
}

// Real-like Hessian: X Xᵀ / k, X (n × k) with column scales 1/√(1+j), normalised to mean diag 1,
// plus a ridge of 0.01 (algorithms.md §5 regularize_H).
static int make_hessian(struct caldera_ctx * ctx, int64_t n, int64_t k, struct caldera_tensor * h) {
    struct caldera_tensor x = { 0 };
    int rc;
    if ((rc = caldera_tensor_alloc_f32(ctx, n, k, &x)) < 0 || (rc = caldera_tensor_alloc_f32(ctx, n, n, h)) < 0) {
        caldera_tensor_free(&x);
        return rc;
    }
    float * xd = x.data;
    fill_normal(xd, n * k, 77);
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < k; j++) {
            xd[i * k + j] *= (float) (1.0 / sqrt(1.0 + (double) j));
        }
    }
    rc = caldera_linalg_syrk(ctx, CALDERA_NO_TRANS, 1.0f / (float) k, &x, 0.0f, h);
    caldera_tensor_free(&x);
    if (rc < 0) {
        return rc;
    }
    float * hd = h->data;
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += hd[i * n + i];
    mean /= (double) n;
    for (int64_t i = 0; i < n * n; i++) hd[i] = (float) (hd[i] / mean);
    for (int64_t i = 0; i < n; i++) hd[i * n + i] += 0.01f;
    return 0;
}

static double sgemm_rate(struct caldera_ctx * ctx, int64_t s) {
    struct caldera_tensor a = { 0 }, b = { 0 }, c = { 0 };
    double best = 0;
    if (caldera_tensor_alloc_f32(ctx, s, s, &a) < 0 || caldera_tensor_alloc_f32(ctx, s, s, &b) < 0 ||
        caldera_tensor_alloc_f32(ctx, s, s, &c) < 0) {
        goto done;
    }
    fill_normal(a.data, s * s, 1);
    fill_normal(b.data, s * s, 2);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
        if (caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &a, &b, 0.0f, &c) < 0) break;
        double g = 2.0 * (double) s * (double) s * (double) s / (now() - t0) / 1e9;
        best = g > best ? g : best;
    }
done:
    caldera_tensor_free(&a);
    caldera_tensor_free(&b);
    caldera_tensor_free(&c);
    return best;
}

// One ldlq run: returns seconds, or < 0 on failure.
static const char * g_buffer = "512";   // the ldlq default
static int          g_reps   = 1;   // timings are the best of g_reps runs

static double time_ldlq(struct caldera_ctx * ctx, const char * cbname, int64_t tune, const struct caldera_tensor * w,
                        const struct caldera_tensor * h, struct caldera_tensor * wh, double * loss) {
    struct caldera_inst * cb = NULL, * q = NULL;
    struct caldera_pack * pack = NULL;
    char buf[32];
    double t = -1;
    if (caldera_inst_create(ctx, cbname, "cb", &cb) < 0) goto done;
    if (strcmp(cbname, "uniform") == 0 && (caldera_inst_set(cb, "bits", "4") < 0 ||
                                            caldera_inst_set(cb, "granularity", "row") < 0 ||
                                            caldera_inst_set(cb, "symmetric", "0") < 0)) goto done;
    if (strcmp(cbname, "e8") == 0 && caldera_inst_set(cb, "bits", "2") < 0) goto done;
    snprintf(buf, sizeof(buf), "%" PRId64, tune);
    if (caldera_inst_start(cb) < 0 || caldera_inst_create(ctx, "ldlq", "q", &q) < 0 ||
        caldera_inst_set_ref(q, "codebook", cb) < 0 || caldera_inst_set(q, "tune_iters", buf) < 0 ||
        caldera_inst_set(q, "buffer_cols", g_buffer) < 0 ||
        caldera_inst_start(q) < 0 || caldera_pack_init(&pack) < 0) {
        goto done;
    }
    for (int rep = 0; rep < g_reps; rep++) {
        caldera_pack_free(pack);
        pack = NULL;
        if (caldera_pack_init(&pack) < 0) goto done;
        double t0 = now();
        if (caldera_quantizer_quantize(q, w, h, wh, pack) < 0) {
            t = -1;
            goto done;
        }
        double dt = now() - t0;
        t = (t < 0 || dt < t) ? dt : t;
    }
    if (loss) {
        caldera_meta_get_float(caldera_pack_meta(pack), "ldlq.loss_ldlq", loss);
    }
done:
    if (t < 0) fprintf(stderr, "bench-quant: ldlq over %s: %s\n", cbname, caldera_ctx_errmsg(ctx));
    caldera_pack_free(pack);
    caldera_inst_free(q);
    caldera_inst_free(cb);
    return t;
}

static double time_rtn(struct caldera_ctx * ctx, const char * cbname, const struct caldera_tensor * w,
                       struct caldera_tensor * wh) {
    struct caldera_inst * cb = NULL;
    struct caldera_pack * pack = NULL;
    double t = -1;
    if (caldera_inst_create(ctx, cbname, "cb", &cb) < 0 || caldera_inst_set(cb, "bits", "2") < 0 ||
        caldera_inst_start(cb) < 0 || caldera_pack_init(&pack) < 0) {
        goto done;
    }
    for (int rep = 0; rep < g_reps; rep++) {
        double t0 = now();
        if (caldera_quantizer_quantize(cb, w, NULL, wh, pack) < 0) {
            t = -1;
            goto done;
        }
        double dt = now() - t0;
        t = (t < 0 || dt < t) ? dt : t;
        caldera_pack_free(pack);
        pack = NULL;
        if (caldera_pack_init(&pack) < 0) goto done;
    }
done:
    if (t < 0) fprintf(stderr, "bench-quant: %s RTN: %s\n", cbname, caldera_ctx_errmsg(ctx));
    caldera_pack_free(pack);
    caldera_inst_free(cb);
    return t;
}

static void time_rht(struct caldera_ctx * ctx, const struct caldera_tensor * w, const struct caldera_tensor * h,
                     double * tf, double * ti, double * err) {
    struct caldera_inst * t = NULL;
    struct caldera_tensor wt = { 0 }, ht = { 0 }, back = { 0 };
    void * st = NULL;
    *tf = *ti = *err = -1;
    if (caldera_inst_create(ctx, "rht", "rht", &t) < 0 || caldera_inst_start(t) < 0) goto done;
    const struct caldera_transform_ops * ops = caldera_inst_plugin(t)->ops;
    double t0 = now();
    if (ops->forward(t, "bench.weight", w, h, &wt, &ht, NULL, &st) < 0) goto done;
    *tf = now() - t0;
    t0 = now();
    if (ops->inverse(t, st, &wt, &back) < 0) goto done;
    *ti = now() - t0;
    double e = 0;
    for (int64_t i = 0; i < w->ne[0] * w->ne[1]; i++) {
        e = fmax(e, fabs((double) ((float *) back.data)[i] - ((float *) w->data)[i]));
    }
    *err = e;
done:
    if (*err < 0) fprintf(stderr, "bench-quant: rht: %s\n", caldera_ctx_errmsg(ctx));
    if (t && st) ((const struct caldera_transform_ops *) caldera_inst_plugin(t)->ops)->free_state(t, st);
    caldera_tensor_free(&wt);
    caldera_tensor_free(&ht);
    caldera_tensor_free(&back);
    caldera_inst_free(t);
}

// Relative proxy error tr(E H Eᵀ) / tr(W H Wᵀ) of one method: codebook cbname, RTN (tune < 0) or
// ldlq with tune passes, optionally inside the rht transform. Returns < 0 on failure.
static double rel_err(struct caldera_ctx * ctx, const char * cbname, const char * bits, int64_t tune, int use_rht,
                      const struct caldera_tensor * w, const struct caldera_tensor * h, double * secs) {
    struct caldera_inst * cb = NULL, * q = NULL, * t = NULL;
    struct caldera_pack * pack = NULL;
    struct caldera_tensor wt = { 0 }, ht = { 0 }, qt = { 0 }, back = { 0 }, e = { 0 };
    void * st = NULL;
    const struct caldera_tensor * win = w, * hin = h;
    double res = -1, num = 0, den = 0;
    char buf[32];
    if (caldera_inst_create(ctx, cbname, "cb", &cb) < 0 || caldera_inst_set(cb, "bits", bits) < 0) goto done;
    if (strcmp(cbname, "uniform") == 0 && (caldera_inst_set(cb, "granularity", "row") < 0 ||
                                           caldera_inst_set(cb, "symmetric", "0") < 0)) goto done;
    if (caldera_inst_start(cb) < 0) goto done;
    struct caldera_inst * use = cb;
    if (tune >= 0) {
        snprintf(buf, sizeof(buf), "%" PRId64, tune);
        if (caldera_inst_create(ctx, "ldlq", "q", &q) < 0 || caldera_inst_set_ref(q, "codebook", cb) < 0 ||
            caldera_inst_set(q, "tune_iters", buf) < 0 || caldera_inst_start(q) < 0) goto done;
        use = q;
    }
    double t0 = now();
    if (use_rht) {
        if (caldera_inst_create(ctx, "rht", "rht", &t) < 0 || caldera_inst_start(t) < 0) goto done;
        const struct caldera_transform_ops * to = caldera_inst_plugin(t)->ops;
        if (to->forward(t, "bench.weight", w, h, &wt, &ht, NULL, &st) < 0) goto done;
        win = &wt;
        hin = &ht;
    }
    if (caldera_pack_init(&pack) < 0 || caldera_tensor_alloc_f32(ctx, win->ne[0], win->ne[1], &qt) < 0) goto done;
    if (caldera_quantizer_quantize(use, win, tune >= 0 ? hin : NULL, &qt, pack) < 0) goto done;
    const struct caldera_tensor * wq = &qt;
    if (use_rht) {
        if (((const struct caldera_transform_ops *) caldera_inst_plugin(t)->ops)->inverse(t, st, &qt, &back) < 0) goto done;
        wq = &back;
    }
    *secs = now() - t0;
    if (caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], &e) < 0) goto done;
    for (int64_t i = 0; i < w->ne[0] * w->ne[1]; i++) {
        ((float *) e.data)[i] = ((const float *) w->data)[i] - ((const float *) wq->data)[i];
    }
    if (caldera_linalg_trace_quad(ctx, &e, h, &num) < 0 || caldera_linalg_trace_quad(ctx, w, h, &den) < 0) goto done;
    res = num / den;
done:
    if (res < 0) fprintf(stderr, "bench-quant: quality %s: %s\n", cbname, caldera_ctx_errmsg(ctx));
    if (t && st) ((const struct caldera_transform_ops *) caldera_inst_plugin(t)->ops)->free_state(t, st);
    caldera_pack_free(pack);
    caldera_tensor_free(&wt); caldera_tensor_free(&ht); caldera_tensor_free(&qt);
    caldera_tensor_free(&back); caldera_tensor_free(&e);
    caldera_inst_free(t); caldera_inst_free(q); caldera_inst_free(cb);
    return res;
}

static int quality(struct caldera_ctx * ctx, const struct caldera_tensor * w, const struct caldera_tensor * h,
                   int64_t tune) {
    static const char * cfg[][2] = { { "uniform", "4" }, { "uniform", "3" }, { "e8", "2" } };
    printf("| codebook | method | rht | rel. proxy error tr(EHE^T)/tr(WHW^T) | seconds |\n|---|---|---|---|---|\n");
    for (int c = 0; c < 3; c++) {
        for (int use_rht = 0; use_rht <= 1; use_rht++) {
            int64_t tunes[3] = { -1, 0, tune };
            for (int k = 0; k < (tune > 0 ? 3 : 2); k++) {
                double secs = 0, r = rel_err(ctx, cfg[c][0], cfg[c][1], tunes[k], use_rht, w, h, &secs);
                if (r < 0) return 1;
                char meth[32];
                if (tunes[k] < 0) snprintf(meth, sizeof(meth), "RTN");
                else snprintf(meth, sizeof(meth), "ldlq tune %" PRId64, tunes[k]);
                printf("| %s %s-bit%s | %s | %s | %.4f | %.2f |\n", cfg[c][0], cfg[c][1],
                       strcmp(cfg[c][0], "uniform") == 0 ? " (row min/max)" : "", meth, use_rht ? "yes" : "no", r, secs);
            }
        }
    }
    return 0;
}

int main(int argc, char ** argv) {
    int64_t m = 4096, n = 4096, tune = 0, gs = 0;
    int do_quality = 0, outliers = 0;
    const char * threads = "1,2";
    const char * cbs = "uniform,e8";
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i], * v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-Q") == 0 || strcmp(a, "-O") == 0) {
            do_quality |= a[1] == 'Q';
            outliers |= a[1] == 'O';
            continue;
        }
        if (!v) { fprintf(stderr, "bench-quant: %s needs a value\n", a); return 2; }
        if (strcmp(a, "-m") == 0) m = atoll(v);
        else if (strcmp(a, "-n") == 0) n = atoll(v);
        else if (strcmp(a, "-t") == 0) threads = v;
        else if (strcmp(a, "-T") == 0) tune = atoll(v);
        else if (strcmp(a, "-s") == 0) gs = atoll(v);
        else if (strcmp(a, "-q") == 0) cbs = v;
        else if (strcmp(a, "-b") == 0) g_buffer = v;
        else if (strcmp(a, "-r") == 0) g_reps = atoi(v) > 0 ? atoi(v) : 1;
        else { fprintf(stderr, "usage: bench-quant [-m rows] [-n cols] [-t 1,2] [-T tune] [-s sgemm] [-q uniform,e8] [-b buffer_cols] [-r reps] [-Q] [-O]\n"); return 2; }
        i++;
    }
    if (gs <= 0) gs = n;
    struct caldera_ctx * ctx = NULL;
    struct caldera_tensor w = { 0 }, h = { 0 }, wh = { 0 }, lt = { 0 }, dt = { 0 };
    int rc = 1;
    if (caldera_ctx_init(&ctx) < 0) return 1;
    caldera_ctx_set_log_level(ctx, CALDERA_LOG_WARN);
    if (caldera_tensor_alloc_f32(ctx, m, n, &w) < 0 || caldera_tensor_alloc_f32(ctx, m, n, &wh) < 0 ||
        caldera_tensor_alloc_f32(ctx, n, n, &lt) < 0 || caldera_tensor_alloc_f32(ctx, n, n, &dt) < 0 ||
        make_hessian(ctx, n, n / 4 > 0 ? n / 4 : 1, &h) < 0) {
        fprintf(stderr, "bench-quant: out of memory\n");
        goto done;
    }
    fill_normal(w.data, m * n, 5);
    if (outliers) {   // LLM-like outlier input channels: every 64th column ×20
        for (int64_t r = 0; r < m; r++) {
            for (int64_t c = 0; c < n; c += 64) {
                ((float *) w.data)[r * n + c] *= 20.0f;
            }
        }
    }
    printf("# bench-quant: W %" PRId64 "x%" PRId64 " N(0,1)%s, H %" PRId64 "x%" PRId64 " real-like (rank n/4 + ridge 0.01),"
           " tune_iters %" PRId64 ", buffer_cols %s, best of %d\n\n", m, n,
           outliers ? " with every 64th column x20" : "", n, n, tune, g_buffer, g_reps);
    if (do_quality) {
        caldera_ctx_set_threads(ctx, 2);
        rc = quality(ctx, &w, &h, tune);
        goto done;
    }
    printf("| threads | what | seconds | FLOP | GFLOP/s | of sgemm | note |\n|---|---|---|---|---|---|---|\n");
    for (const char * tp = threads; *tp;) {
        int nt = atoi(tp);
        caldera_ctx_set_threads(ctx, nt);
        double peak = sgemm_rate(ctx, gs);
        printf("| %d | sgemm %" PRId64 "^3 | %.3f | %.3g | %.1f | 100%% | best of 3 |\n", nt, gs,
               2.0 * (double) gs * gs * gs / peak / 1e9, 2.0 * (double) gs * gs * gs, peak);
        // block LDL alone (part of every ldlq call)
        for (int64_t b = 1; b <= 8; b += 7) {
            double t = -1, fl = (double) n * n * n / 3.0;
            for (int rep = 0; rep < g_reps; rep++) {
                double t0 = now();
                if (caldera_linalg_block_ldl(ctx, &h, b, &lt, &dt) < 0) {
                    fprintf(stderr, "bench-quant: block_ldl: %s\n", caldera_ctx_errmsg(ctx));
                    goto done;
                }
                double d = now() - t0;
                t = (t < 0 || d < t) ? d : t;
            }
            printf("| %d | block_ldl b=%" PRId64 " | %.3f | %.3g | %.1f | %.0f%% | Cholesky n^3/3 + block solves |\n", nt,
                   b, t, fl, fl / t / 1e9, 100.0 * fl / t / 1e9 / peak);
        }
        for (const char * cp = cbs; *cp;) {
            char name[32];
            size_t len = strcspn(cp, ",");
            snprintf(name, sizeof(name), "%.*s", (int) len, cp);
            int64_t b = strcmp(name, "e8") == 0 ? 8 : 1;
            double loss = NAN;
            double t = time_ldlq(ctx, name, tune, &w, &h, &wh, &loss);
            if (t < 0) goto done;
            // feedback pass: m·n·(n-b) FLOPs; tune passes: 2·m·n² each (GEMM Δ·H) + the LDL
            double fl_pass = (double) m * n * (double) (n - b), fl_tune = 2.0 * m * (double) n * n * (double) tune;
            double fl = fl_pass + fl_tune + (double) n * n * n / 3.0;
            printf("| %d | ldlq over %s (b=%" PRId64 ") | %.3f | %.3g | %.1f | %.0f%% | LDL + pass m*n*(n-b)"
                   "%s; loss_ldlq %.4g |\n", nt, name, b, t, fl, fl / t / 1e9, 100.0 * fl / t / 1e9 / peak,
                   tune ? " + tune 2*m*n^2 each" : "", loss);
            if (b == 8) {
                double tr = time_rtn(ctx, name, &w, &wh);
                if (tr < 0) goto done;
                printf("| %d | e8 2-bit RTN encode | %.3f | | | | %.3g vectors/s (8 weights each) |\n", nt, tr,
                       (double) m * n / 8.0 / tr);
            }
            cp += len;
            if (*cp == ',') cp++;
        }
        double tf, ti, err;
        time_rht(ctx, &w, &h, &tf, &ti, &err);
        if (err < 0) goto done;
        printf("| %d | rht forward W and H | %.3f | | | | max abs inverse error %.2g |\n", nt, tf, err);
        printf("| %d | rht inverse W | %.3f | | | | |\n", nt, ti);
        tp += strcspn(tp, ",");
        if (*tp == ',') tp++;
    }
    rc = 0;
done:
    caldera_tensor_free(&w);
    caldera_tensor_free(&h);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&lt);
    caldera_tensor_free(&dt);
    caldera_ctx_free(ctx);
    return rc;
}
