// SPDX-License-Identifier: MIT
// bench-cuda: GPU speed of the core's linear algebra, of LDLQ and CALDERA, and of the fused
// compressed layer, beside the CPU on the same inputs, as a Markdown table with the targets of
// docs/cuda.md (what a GPU of the stated class is expected to reach; targets, not results). Not a
// test. Without a usable CUDA device it says why and exits 0 having measured nothing.
//   usage: bench-cuda [-n size] [-m rows] [-r reps] [-c] [-q]
//     -n  square size of the linalg set, LDLQ's and CALDERA's Hessian, the fused layer (default 4096)
//     -m  rows of the LDLQ / CALDERA weight (default n)
//     -r  repetitions, best time reported (default 3)
//     -c  skip the CPU column (the CPU takes minutes at 4096 on a small machine)
//     -q  skip LDLQ, CALDERA and the fused layer (linalg set only)
// Perplexity throughput is measured by the evaluation phase itself (docs/cuda.md: one command).
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

static int g_reps = 3;

enum op { OP_GEMM, OP_CHOL, OP_EIGH, OP_LDL, OP_INV, OP_SVD, OP_COUNT };
static const char * const op_name[OP_COUNT] = { "gemm n×n×n", "cholesky", "eigh", "block_ldl b=8", "spd_inverse", "svd" };
// Targets on an A100-class GPU (FP32, no TF32) at n = 4096, in seconds; see docs/cuda.md.
static const double op_target[OP_COUNT] = { 0.009, 0.02, 0.8, 0.05, 0.06, 4.0 };

static double op_flops(enum op o, double n) {
    switch (o) {
    case OP_GEMM: return 2 * n * n * n;
    case OP_CHOL: return n * n * n / 3;
    case OP_EIGH: return 9 * n * n * n;
    case OP_LDL:  return n * n * n / 3;
    case OP_INV:  return n * n * n;
    default:      return 22 * n * n * n;   // thin SVD with vectors, the usual Golub-Van Loan count
    }
}

// Best time of one op on tensors of the given device (inputs restored before each repetition).
static double time_op(struct caldera_ctx * ctx, enum op o, enum caldera_device dev, const struct caldera_tensor * h_host,
                      const struct caldera_tensor * a_host, int64_t n) {
    struct caldera_tensor h = { 0 }, a = { 0 }, x = { 0 }, y = { 0 }, z = { 0 };
    float * w = malloc((size_t) n * sizeof(float));
    double best = -1;
    int64_t ne[2] = { n, n };
    if (!w || caldera_tensor_alloc_device(ctx, dev, CALDERA_DTYPE_F32, 2, ne, &h) < 0 ||
        caldera_tensor_alloc_device(ctx, dev, CALDERA_DTYPE_F32, 2, ne, &a) < 0 ||
        caldera_tensor_alloc_device(ctx, dev, CALDERA_DTYPE_F32, 2, ne, &x) < 0 ||
        caldera_tensor_alloc_device(ctx, dev, CALDERA_DTYPE_F32, 2, ne, &y) < 0 ||
        caldera_tensor_alloc_device(ctx, dev, CALDERA_DTYPE_F32, 2, ne, &z) < 0 || caldera_tensor_copy(ctx, &h, h_host) < 0 ||
        caldera_tensor_copy(ctx, &a, a_host) < 0) {
        fprintf(stderr, "bench-cuda: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    for (int r = 0; r < g_reps; r++) {
        int rc = 0;
        if (o == OP_CHOL || o == OP_INV) rc = caldera_tensor_copy(ctx, &x, &h);
        double t0 = now();
        switch (o) {
        case OP_GEMM: rc = caldera_linalg_gemm(ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &a, &h, 0.0f, &x); break;
        case OP_CHOL: rc = rc ? rc : caldera_linalg_cholesky(ctx, &x); break;
        case OP_EIGH: rc = caldera_linalg_eigh(ctx, &h, w, &x); break;
        case OP_LDL:  rc = caldera_linalg_block_ldl(ctx, &h, 8, &x, &y); break;
        case OP_INV:  rc = rc ? rc : caldera_linalg_spd_inverse(ctx, &x); break;
        default:      rc = caldera_linalg_svd(ctx, &a, &x, w, &z); break;
        }
        // every op ends with a synchronising copy or download on the GPU path, so the time is complete
        double t = now() - t0;
        if (rc < 0) {
            fprintf(stderr, "bench-cuda: %s: %s\n", op_name[o], caldera_ctx_errmsg(ctx));
            best = -1;
            goto done;
        }
        if (best < 0 || t < best) best = t;
    }
done:
    caldera_tensor_free(&h);
    caldera_tensor_free(&a);
    caldera_tensor_free(&x);
    caldera_tensor_free(&y);
    caldera_tensor_free(&z);
    free(w);
    return best;
}

// LDLQ over E8P 2-bit with 2 tune passes on host tensors; device = cuda routes its big GEMMs.
static double time_ldlq(struct caldera_ctx * ctx, enum caldera_device dev, const struct caldera_tensor * w,
                        const struct caldera_tensor * h) {
    struct caldera_inst * cb = NULL, * q = NULL;
    struct caldera_tensor wh = { 0 };
    struct caldera_pack * pack = NULL;
    double best = -1;
    if (caldera_ctx_set_device(ctx, dev) < 0 || caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], &wh) < 0 ||
        caldera_inst_create(ctx, "e8", "cb", &cb) < 0 || caldera_inst_set(cb, "bits", "2") < 0 || caldera_inst_start(cb) < 0 ||
        caldera_inst_create(ctx, "ldlq", "q", &q) < 0 || caldera_inst_set_ref(q, "codebook", cb) < 0 ||
        caldera_inst_set(q, "tune_iters", "2") < 0 || caldera_inst_start(q) < 0) {
        fprintf(stderr, "bench-cuda: ldlq: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    for (int r = 0; r < g_reps; r++) {
        caldera_pack_free(pack);
        pack = NULL;
        if (caldera_pack_init(&pack) < 0) goto done;
        double t0 = now();
        if (caldera_quantizer_quantize(q, w, h, &wh, pack) < 0) {
            fprintf(stderr, "bench-cuda: ldlq: %s\n", caldera_ctx_errmsg(ctx));
            best = -1;
            goto done;
        }
        double t = now() - t0;
        if (best < 0 || t < best) best = t;
    }
done:
    caldera_pack_free(pack);
    caldera_inst_free(q);
    caldera_inst_free(cb);
    caldera_tensor_free(&wh);
    caldera_ctx_set_device(ctx, CALDERA_DEVICE_CPU);
    return best;
}

// CALDERA (Q: LDLQ over E8P 2-bit with 10 tune passes; L, R: E8P 4-bit; rank 64; 5 outer passes)
// on host tensors; under device = cuda the LDLQ loops run on the GPU and the BLAS-3 updates above
// the threshold go through cuBLAS.
static double time_caldera(struct caldera_ctx * ctx, enum caldera_device dev, const struct caldera_tensor * w,
                           const struct caldera_tensor * h) {
    struct caldera_inst * cb = NULL, * q = NULL, * lr = NULL, * cal = NULL;
    struct caldera_tensor wh = { 0 };
    struct caldera_pack * pack = NULL;
    double best = -1;
    if (caldera_ctx_set_device(ctx, dev) < 0 || caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], &wh) < 0 ||
        caldera_inst_create(ctx, "e8", "e8p", &cb) < 0 || caldera_inst_set(cb, "bits", "2") < 0 || caldera_inst_start(cb) < 0 ||
        caldera_inst_create(ctx, "ldlq", "q", &q) < 0 || caldera_inst_set_ref(q, "codebook", cb) < 0 ||
        caldera_inst_set(q, "tune_iters", "10") < 0 || caldera_inst_start(q) < 0 ||
        caldera_inst_create(ctx, "e8", "lr4", &lr) < 0 || caldera_inst_set(lr, "bits", "4") < 0 || caldera_inst_start(lr) < 0 ||
        caldera_inst_create(ctx, "caldera", "cal", &cal) < 0 || caldera_inst_set_ref(cal, "q", q) < 0 ||
        caldera_inst_set_ref(cal, "l_quant", lr) < 0 || caldera_inst_set_ref(cal, "r_quant", lr) < 0 ||
        caldera_inst_set(cal, "rank", "64") < 0 || caldera_inst_start(cal) < 0) {
        fprintf(stderr, "bench-cuda: caldera: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    const struct caldera_decomposer_ops * ops = caldera_inst_plugin(cal)->ops;
    for (int r = 0; r < g_reps; r++) {
        caldera_pack_free(pack);
        pack = NULL;
        if (caldera_pack_init(&pack) < 0) goto done;
        double t0 = now();
        if (ops->decompose(cal, w, h, &wh, pack) < 0) {
            fprintf(stderr, "bench-cuda: caldera: %s\n", caldera_ctx_errmsg(ctx));
            best = -1;
            goto done;
        }
        double t = now() - t0;
        if (best < 0 || t < best) best = t;
    }
done:
    caldera_pack_free(pack);
    caldera_inst_free(cal);
    caldera_inst_free(lr);
    caldera_inst_free(q);
    caldera_inst_free(cb);
    caldera_tensor_free(&wh);
    caldera_ctx_set_device(ctx, CALDERA_DEVICE_CPU);
    return best;
}

// The fused layer: Y (batch × n) = X Ŵᵀ for an E8P 2-bit n × n weight, through linear_apply (host
// tensors; under device = cuda the codes go up, Ŵ is decoded on the GPU and cuBLAS multiplies).
static double time_fused(struct caldera_ctx * ctx, enum caldera_device dev, const struct caldera_tensor * w, int64_t batch) {
    struct caldera_inst * q = NULL;
    struct caldera_tensor wh = { 0 }, x = { 0 }, y = { 0 };
    struct caldera_pack * pack = NULL;
    void * st = NULL;
    double best = -1;
    const struct caldera_quantizer_ops * ops = NULL;
    const int64_t n = w->ne[1];
    if (caldera_tensor_alloc_f32(ctx, w->ne[0], n, &wh) < 0 || caldera_tensor_alloc_f32(ctx, batch, n, &x) < 0 ||
        caldera_tensor_alloc_f32(ctx, batch, w->ne[0], &y) < 0 || caldera_inst_create(ctx, "e8", "q", &q) < 0 ||
        caldera_inst_set(q, "bits", "2") < 0 || caldera_inst_start(q) < 0 || caldera_pack_init(&pack) < 0) {
        fprintf(stderr, "bench-cuda: fused: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    ops = caldera_inst_plugin(q)->ops;
    if (ops->quantize(q, w, NULL, &wh, pack) < 0 || ops->linear_init(q, pack, w->ne[0], n, &st) < 0 ||
        caldera_ctx_set_device(ctx, dev) < 0) {
        fprintf(stderr, "bench-cuda: fused: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    for (int64_t i = 0; i < batch * n; i++) ((float *) x.data)[i] = (float) ((i * 7919) % 13) * 0.1f - 0.6f;
    for (int r = 0; r < g_reps; r++) {
        double t0 = now();
        if (ops->linear_apply(q, st, &x, &y, 0) < 0) {
            fprintf(stderr, "bench-cuda: fused: %s\n", caldera_ctx_errmsg(ctx));
            best = -1;
            goto done;
        }
        double t = now() - t0;
        if (best < 0 || t < best) best = t;
    }
done:
    caldera_ctx_set_device(ctx, CALDERA_DEVICE_CPU);
    if (ops && st) ops->linear_free(q, st);
    caldera_pack_free(pack);
    caldera_inst_free(q);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&x);
    caldera_tensor_free(&y);
    return best;
}

// A table cell: the time, and the rate when flops > 0.
static void cell(double t, double flops) {
    if (t < 0) printf(" — |");
    else if (flops > 0) printf(" %.3f s (%.0f GFLOP/s) |", t, flops / t * 1e-9);
    else printf(" %.3f s |", t);
}

int main(int argc, char ** argv) {
    int64_t n = 4096, m = 0;
    int no_cpu = 0, no_ldlq = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-n") && i + 1 < argc) n = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) m = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-c")) no_cpu = 1;
        else if (!strcmp(argv[i], "-q")) no_ldlq = 1;
        else {
            fprintf(stderr, "bench-cuda: unknown argument '%s'; allowed: -n size, -m rows, -r reps, -c, -q\n", argv[i]);
            return 2;
        }
    }
    if (n < 8 || n % 8 != 0 || g_reps < 1) {
        fprintf(stderr, "bench-cuda: -n must be a positive multiple of 8 and -r >= 1\n");
        return 2;
    }
    if (m <= 0) m = n;
    struct caldera_ctx * ctx = NULL;
    if (caldera_ctx_init(&ctx) < 0) return 1;
    if (caldera_ctx_set_device(ctx, CALDERA_DEVICE_CUDA) < 0) {
        printf("bench-cuda: nothing measured: %s\n", caldera_ctx_errmsg(ctx));
        caldera_ctx_free(ctx);
        return 0;
    }
    caldera_ctx_set_device(ctx, CALDERA_DEVICE_CPU);
    // inputs: H = X Xᵀ / 2n + 0.01 I (SPD, real-like spread), A ~ N(0, 1)
    struct caldera_tensor x = { 0 }, h = { 0 }, a = { 0 }, w = { 0 };
    struct caldera_rng rng;
    int rc = caldera_tensor_alloc_f32(ctx, n, 2 * n, &x);
    if (rc == 0) rc = caldera_tensor_alloc_f32(ctx, n, n, &h);
    if (rc == 0) rc = caldera_tensor_alloc_f32(ctx, n, n, &a);
    if (rc == 0) rc = caldera_tensor_alloc_f32(ctx, m, n, &w);
    if (rc < 0) {
        fprintf(stderr, "bench-cuda: %s\n", caldera_ctx_errmsg(ctx));
        return 1;
    }
    caldera_rng_seed(&rng, 1);
    for (int64_t i = 0; i < n * 2 * n; i++) ((float *) x.data)[i] = (float) caldera_rng_normal(&rng);
    for (int64_t i = 0; i < n * n; i++) ((float *) a.data)[i] = (float) caldera_rng_normal(&rng);
    for (int64_t i = 0; i < m * n; i++) ((float *) w.data)[i] = (float) caldera_rng_normal(&rng);
    caldera_linalg_syrk(ctx, CALDERA_NO_TRANS, 1.0f / (float) (2 * n), &x, 0.0f, &h);
    for (int64_t i = 0; i < n; i++) ((float *) h.data)[i * n + i] += 0.01f;
    caldera_ctx_set_device(ctx, CALDERA_DEVICE_CUDA);
    printf("n = %lld, best of %d; machine shared or not, say so when quoting\n\n", (long long) n, g_reps);
    printf("| op | CPU | CUDA | CUDA target (A100-class, n = 4096) |\n|---|---|---|---|\n");
    for (int o = 0; o < OP_COUNT; o++) {
        printf("| %s |", op_name[o]);
        cell(no_cpu ? -1 : time_op(ctx, (enum op) o, CALDERA_DEVICE_CPU, &h, &a, n), op_flops((enum op) o, (double) n));
        cell(time_op(ctx, (enum op) o, CALDERA_DEVICE_CUDA, &h, &a, n), op_flops((enum op) o, (double) n));
        printf(" %.3f s |\n", op_target[o]);
    }
    if (!no_ldlq) {
        printf("| ldlq e8 2-bit, 2 tune passes, %lldx%lld (host tensors) |", (long long) m, (long long) n);
        cell(no_cpu ? -1 : time_ldlq(ctx, CALDERA_DEVICE_CPU, &w, &h), 0);
        cell(time_ldlq(ctx, CALDERA_DEVICE_CUDA, &w, &h), 0);
        printf(" 1.5 s at 4096² |\n");
        printf("| caldera rank 64, Q ldlq e8 2-bit + 10 tune passes, L R e8 4-bit, %lldx%lld |", (long long) m, (long long) n);
        cell(no_cpu ? -1 : time_caldera(ctx, CALDERA_DEVICE_CPU, &w, &h), 0);
        cell(time_caldera(ctx, CALDERA_DEVICE_CUDA, &w, &h), 0);
        printf(" 30 s at 4096² |\n");
        const double ff = 2.0 * 512.0 * (double) m * (double) n;
        printf("| fused layer e8 2-bit, batch 512, %lldx%lld |", (long long) m, (long long) n);
        cell(no_cpu ? -1 : time_fused(ctx, CALDERA_DEVICE_CPU, &w, 512), ff);
        cell(time_fused(ctx, CALDERA_DEVICE_CUDA, &w, 512), ff);
        printf(" 0.003 s at 4096² |\n");
    }
    printf("| perplexity throughput | — | — | see docs/cuda.md: the evaluation phase under device = cuda |\n");
    caldera_tensor_free(&x);
    caldera_tensor_free(&h);
    caldera_tensor_free(&a);
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
    return 0;
}
