// SPDX-License-Identifier: MIT
// bench-caldera: time and error of the caldera decomposer on one real-like weight with its Hessian
// (the `synthetic` format's q_proj 576×576 by default), after the RHT as in the pipelines, against
// the machine's sgemm rate in the same run. Default settings are the reference's published ones
// (rank 32, Q = ldlq over E8P 2-bit with 10 tune passes, L and R E8P 4-bit, 20 outer × 50 inner).
// Not a test: prints a Markdown table.
//   usage: bench-caldera [-w weight] [-k rank] [-O outer] [-I inner] [-T tune] [-f e8|e8row|uniform|f16]
//                        [-d 0|1 downdate] [-s 0|1 warm start] [-t threads] [-r reps] [-q (QuIP#-style row)] [-N (no sgemm reference, for profiling)]
//                        [-H hidden] [-F ffn] [-K kv_dim] [-b target_bits] [-B Q's e8 bits] [-C ldlq buffer_cols]
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "caldera/caldera.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

// sgemm rate in GFLOP per wall second (returned) and per process-CPU second (*per_cpu): on a shared
// machine the second is the fairer reference for a run's own GFLOP per CPU second.
static double sgemm_rate(struct caldera_ctx * ctx, int64_t s, double * per_cpu) {
    struct caldera_tensor a = { 0 }, b = { 0 }, c = { 0 };
    double best = 0, best_cpu = 0;
    if (caldera_tensor_alloc_f32(ctx, s, s, &a) < 0 || caldera_tensor_alloc_f32(ctx, s, s, &b) < 0 ||
        caldera_tensor_alloc_f32(ctx, s, s, &c) < 0) {
        goto done;
    }
    for (int64_t i = 0; i < s * s; i++) {
        ((float *) a.data)[i] = (float) ((i * 7919) % 1000) / 1000.0f;
        ((float *) b.data)[i] = (float) ((i * 104729) % 1000) / 1000.0f;
    }
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now(), c0 = cpu_now();
        if (caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &a, &b, 0.0f, &c) < 0) break;
        double fl = 2.0 * (double) s * (double) s * (double) s / 1e9;
        double g = fl / (now() - t0), gc = fl / (cpu_now() - c0);
        best = g > best ? g : best;
        best_cpu = gc > best_cpu ? gc : best_cpu;
    }
done:
    caldera_tensor_free(&a);
    caldera_tensor_free(&b);
    caldera_tensor_free(&c);
    *per_cpu = best_cpu;
    return best;
}

// FNV-1a over the bits of n floats (to compare builds' outputs).
static uint64_t fnv_bits(const float * x, int64_t n) {
    uint64_t h = 1469598103934665603ull;
    const unsigned char * b = (const unsigned char *) x;
    for (int64_t i = 0; i < n * (int64_t) sizeof(float); i++) {
        h = (h ^ b[i]) * 1099511628211ull;
    }
    return h;
}

static void die(struct caldera_ctx * ctx, const char * what) {
    fprintf(stderr, "bench-caldera: %s: %s\n", what, caldera_ctx_errmsg(ctx));
    exit(1);
}

static struct caldera_inst * mk(struct caldera_ctx * ctx, const char * plugin, const char * name, const char * const * kv) {
    struct caldera_inst * i = NULL;
    if (caldera_inst_create(ctx, plugin, name, &i) < 0) die(ctx, plugin);
    for (int k = 0; kv && kv[k]; k += 2) {
        if (caldera_inst_set(i, kv[k], kv[k + 1]) < 0) die(ctx, kv[k]);
    }
    return i;
}

// tr(E H Eᵀ) / tr(W H Wᵀ), E = W − Ŵ
static double rel_h(struct caldera_ctx * ctx, const struct caldera_tensor * w, const struct caldera_tensor * wh,
                    const struct caldera_tensor * h) {
    struct caldera_tensor e = { 0 };
    int64_t m = w->ne[0], n = w->ne[1];
    caldera_tensor_alloc_f32(ctx, m, n, &e);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            ((float *) e.data)[i * n + j] = ((float *) w->data)[i * w->ld + j] - ((float *) wh->data)[i * n + j];
    double te = 0, tw = 0;
    caldera_linalg_trace_quad(ctx, &e, h, &te);
    caldera_linalg_trace_quad(ctx, w, h, &tw);
    caldera_tensor_free(&e);
    return sqrt(te / tw);
}

int main(int argc, char ** argv) {
    const char * weight = "model.layers.0.self_attn.q_proj.weight";
    const char * fac = "e8";
    int rank = 32, outer = 20, inner = 50, tune = 10, downdate = 0, warm = 1, threads = 0, reps = 2, quip = 0, nosgemm = 0;
    const char * hidden = "576", * ffn = "1536", * kvdim = "192", * target = "0", * qbits = "2", * bufcols = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "w:k:O:I:T:f:d:s:t:r:qH:F:K:b:B:NC:")) != -1) {
        switch (opt) {
        case 'w': weight = optarg; break;
        case 'k': rank = atoi(optarg); break;
        case 'O': outer = atoi(optarg); break;
        case 'I': inner = atoi(optarg); break;
        case 'T': tune = atoi(optarg); break;
        case 'f': fac = optarg; break;
        case 'd': downdate = atoi(optarg); break;
        case 's': warm = atoi(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'q': quip = 1; break;
        case 'H': hidden = optarg; break;
        case 'F': ffn = optarg; break;
        case 'K': kvdim = optarg; break;
        case 'b': target = optarg; break;
        case 'B': qbits = optarg; break;
        case 'N': nosgemm = 1; break;
        case 'C': bufcols = optarg; break;
        default: fprintf(stderr, "usage: see the comment at the top of bench/bench-caldera.c\n"); return 2;
        }
    }
    struct caldera_ctx * ctx = NULL;
    if (caldera_ctx_init(&ctx) < 0) return 1;
    caldera_ctx_set_log_level(ctx, getenv("BENCH_DEBUG") ? CALDERA_LOG_DEBUG : CALDERA_LOG_WARN);
    if (threads > 0) caldera_ctx_set_threads(ctx, threads);
    // the weight and its Hessian from the synthetic format, then the RHT (seed 42)
    const char * skv[] = { "layers", "1", "hidden", hidden, "ffn", ffn, "kv_dim", kvdim, "seed", "1", NULL };
    struct caldera_inst * src = mk(ctx, "synthetic", "src", skv);
    if (caldera_inst_start(src) < 0) die(ctx, "synthetic");
    const struct caldera_format_ops * fo = caldera_inst_plugin(src)->ops;
    if (fo->open(src, "") < 0) die(ctx, "open");
    char hname[256];
    snprintf(hname, sizeof(hname), "%.*s.hessian", (int) (strlen(weight) - 7), weight);
    struct caldera_tensor w = { 0 }, h = { 0 };
    for (int64_t i = 0; i < fo->n_tensors(src); i++) {
        struct caldera_tensor_info ti;
        int owned;
        fo->tensor_info(src, i, &ti);
        if (strcmp(ti.name, weight) == 0 && fo->read_tensor(src, i, CALDERA_DTYPE_F32, &w, &owned) < 0) die(ctx, "read W");
        if (strcmp(ti.name, hname) == 0 && fo->read_tensor(src, i, CALDERA_DTYPE_F32, &h, &owned) < 0) die(ctx, "read H");
    }
    if (!w.data || !h.data) {
        fprintf(stderr, "bench-caldera: no tensor %s (or its Hessian) in the synthetic model\n", weight);
        return 1;
    }
    const char * rkv[] = { "seed", "42", NULL };
    struct caldera_inst * rht = mk(ctx, "rht", "rht", rkv);
    if (caldera_inst_start(rht) < 0) die(ctx, "rht");
    struct caldera_tensor wt = { 0 }, ht = { 0 };
    struct caldera_pack * rp = NULL;
    void * rstate = NULL;
    caldera_pack_init(&rp);
    if (((const struct caldera_transform_ops *) caldera_inst_plugin(rht)->ops)->forward(rht, weight, &w, &h, &wt, &ht, rp,
                                                                                         &rstate) < 0) die(ctx, "rht forward");
    const int64_t m = wt.ne[0], n = wt.ne[1];
    // instances
    char tb[16], kb[16], ob[16], ib[16];
    snprintf(tb, sizeof(tb), "%d", tune);
    snprintf(kb, sizeof(kb), "%d", rank);
    snprintf(ob, sizeof(ob), "%d", outer);
    snprintf(ib, sizeof(ib), "%d", inner);
    const char * e8kv[] = { "bits", qbits, NULL };
    struct caldera_inst * e8 = mk(ctx, "e8", "e8p", e8kv);
    caldera_inst_start(e8);
    const char * qkv[] = { "tune_iters", tb, bufcols ? "buffer_cols" : NULL, bufcols, NULL };
    struct caldera_inst * q = mk(ctx, "ldlq", "q", qkv);
    caldera_inst_set_ref(q, "codebook", e8);
    if (caldera_inst_start(q) < 0) die(ctx, "ldlq");
    struct caldera_inst * lq = NULL, * rq = NULL;
    const char * fkv[] = { "bits", "4", NULL };
    const char * ukv[] = { "bits", "4", "granularity", "row", NULL };
    const char * rkv8[] = { "bits", "4", "scale_mode", "row", NULL };
    const char * fplug = strcmp(fac, "e8row") == 0 ? "e8" : fac;
    const char * const * fk = strcmp(fac, "e8") == 0 ? fkv : strcmp(fac, "e8row") == 0 ? rkv8 : ukv;
    if (strcmp(fac, "f16") != 0) {
        lq = mk(ctx, fplug, "lq", fk);
        rq = mk(ctx, fplug, "rq", fk);
        if (caldera_inst_start(lq) < 0 || caldera_inst_start(rq) < 0) die(ctx, "factor quantizer");
    }
    const char * ckv[] = { "rank", kb, "outer_iters", ob, "inner_iters", ib, "downdate", downdate ? "1" : "0",
                           "warm_start", warm ? "1" : "0", "target_bits", target, NULL };
    struct caldera_inst * cal = mk(ctx, "caldera", "cal", ckv);
    caldera_inst_set_ref(cal, "q", q);
    if (lq) {
        caldera_inst_set_ref(cal, "l_quant", lq);
        caldera_inst_set_ref(cal, "r_quant", rq);
    }
    if (caldera_inst_start(cal) < 0) die(ctx, "caldera");
    const struct caldera_decomposer_ops * dops = caldera_inst_plugin(cal)->ops;

    double s576c = 0, s2048c = 0;
    double s576 = nosgemm ? 1 : sgemm_rate(ctx, m < n ? m : n, &s576c), s2048 = nosgemm ? 1 : sgemm_rate(ctx, 2048, &s2048c);
    struct caldera_tensor wh = { 0 };
    caldera_tensor_alloc_f32(ctx, m, n, &wh);
    double best_t = INFINITY, best_cpu = INFINITY, bits = 0, err = 0, flr = 0, fq = 0, flops_own = 0;
    int64_t inner_run = 0, outer_run = 0, tune_run = -1;
    uint64_t what = 0;   // hash of the last repetition's Ŵ
    for (int r = 0; r < reps; r++) {
        struct caldera_pack * pack = NULL;
        caldera_pack_init(&pack);
        double t0 = now(), c0 = cpu_now();
        if (dops->decompose(cal, &wt, &ht, &wh, pack) < 0) die(ctx, "decompose");
        double t = now() - t0, c = cpu_now() - c0;
        best_t = t < best_t ? t : best_t;
        best_cpu = c < best_cpu ? c : best_cpu;
        bits = (double) caldera_pack_bits(pack) / ((double) m * (double) n);
        int64_t kk = 0;
        caldera_meta_get_int(caldera_pack_meta(pack), "caldera.rank", &kk);
        rank = (int) kk;
        struct caldera_meta * meta = caldera_pack_meta(pack);
        caldera_meta_get_float(meta, "caldera.rel_err_h_first_lr", &flr);
        caldera_meta_get_float(meta, "caldera.rel_err_h_first_q", &fq);
        caldera_meta_get_float(meta, "caldera.flops", &flops_own);
        caldera_meta_get_int(meta, "caldera.inner_iters_run", &inner_run);
        caldera_meta_get_int(meta, "caldera.outer_iters_run", &outer_run);
        caldera_meta_get_int(meta, "caldera.q_tune_iters_run", &tune_run);
        err = rel_h(ctx, &wt, &wh, &ht);
        what = fnv_bits(wh.data, m * n);
        caldera_pack_free(pack);
    }
    // FLOPs: caldera's own GEMM/SYRK (counted in the plugin) + per Q step the ldlq count of
    // quantizers/ldlq/README.md: LDL n³/3 + pass m·n·(n−8) + 2·m·n² per tune pass (E8P rounding not counted).
    // Q steps actually run: outer_iters_run (the loop stops at a fixed point before a repeated Q step);
    // tune passes actually run: caldera.q_tune_iters_run (ldlq stops at the passes' fixed point, so
    // counting `tune` per Q step would count passes that did not run)
    const double passes = tune_run >= 0 ? (double) tune_run : (double) outer_run * tune;
    double fl_q = (double) outer_run * ((double) n * n * n / 3.0 + (double) m * n * (double) (n - 8)) + 2.0 * passes * (double) m * n * n;
    double gf = (flops_own + fl_q) / best_t / 1e9, gfc = (flops_own + fl_q) / best_cpu / 1e9;
    printf("| weight | m×n | rank | factors | outer × inner (run) | downdate | warm | tune (passes run) | threads | time s (best of %d) | CPU s | bits/param | rel. err (H) | first LR / first Q | GFLOP | GFLOP/s | of sgemm %lld / 2048 | GFLOP per CPU-s, of sgemm's |\n",
           reps, (long long) (m < n ? m : n));
    printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    printf("| %s | %lldx%lld | %d | %s 4-bit | %d × %d (%lld outer, %lld inner) | %d | %d | %d (%lld) | %d | %.3f | %.3f | %.4f | %.5f | %.5f / %.5f | %.1f | %.1f | %.0f%% / %.0f%% | %.1f, %.0f%% / %.0f%% |\n",
           weight, (long long) m, (long long) n, rank, fac, outer, inner, (long long) outer_run, (long long) inner_run, downdate, warm, tune, (long long) tune_run,
           caldera_ctx_threads(ctx), best_t, best_cpu, bits, err, flr, fq, (flops_own + fl_q) / 1e9, gf, 100.0 * gf / s576,
           100.0 * gf / s2048, gfc, 100.0 * gfc / s576c, 100.0 * gfc / s2048c);
    printf("\nŴ: FNV-1a hash of its bits %016" PRIx64 " (equal hashes: the same decomposition bit for bit)\n", what);
    printf("sgemm rate (same run): %.1f GFLOP/s at %lld³, %.1f GFLOP/s at 2048³ (per CPU-second: %.1f, %.1f)\n", s576,
           (long long) (m < n ? m : n), s2048, s576c, s2048c);
    if (quip) {
        // QuIP#-style at equal bits: e8 4-bit residual codebook would be 4 bits; the fair 2-bit row is ldlq/e8 alone
        struct caldera_pack * pack = NULL;
        caldera_pack_init(&pack);
        double t0 = now();
        if (caldera_quantizer_quantize(q, &wt, &ht, &wh, pack) < 0) die(ctx, "ldlq");
        double t = now() - t0;
        printf("QuIP#-style (ldlq/e8 %s-bit, %d tune): rel. err (H) %.5f, %.3f s, %.4f bits/param\n", qbits, tune,
               rel_h(ctx, &wt, &wh, &ht), t, (double) caldera_pack_bits(pack) / ((double) m * n));
        caldera_pack_free(pack);
    }
    caldera_tensor_free(&wh);
    caldera_tensor_free(&wt);
    caldera_tensor_free(&ht);
    caldera_tensor_free(&w);
    caldera_tensor_free(&h);
    caldera_pack_free(rp);
    ((const struct caldera_transform_ops *) caldera_inst_plugin(rht)->ops)->free_state(rht, rstate);
    caldera_inst_free(cal);
    caldera_inst_free(lq);
    caldera_inst_free(rq);
    caldera_inst_free(q);
    caldera_inst_free(e8);
    caldera_inst_free(rht);
    caldera_inst_free(src);
    caldera_ctx_free(ctx);
    return 0;
}
