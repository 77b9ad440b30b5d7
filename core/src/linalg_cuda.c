// SPDX-License-Identifier: MIT
// The core's side of the CUDA backend: loading the module (caldera-cuda.so, dlopen on first use),
// the context's device (opened lazily: one stream and one cuBLAS / cuSOLVER handle set per
// context), device tensors, and the caldera_linalg_* entry points' CUDA path. Plain C: no CUDA
// header is included here, so this file is the same in builds with and without nvcc; without it
// (CALDERA_CUDA_MODULE undefined) every CUDA request fails with "this build has no CUDA".
//
// Routing (linalg_cpu.c asks caldera_cuda_route): an op runs on the GPU when one of its tensors
// is a device tensor, or when the context's device is CUDA and the op is big enough to pay for
// copying host operands there and back (CALDERA_CUDA_MIN_FLOPS); small ops on host tensors stay
// on the CPU. Host operands are staged through dense device copies.
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "caldera/caldera-kernels.h"
#include "cuda/cuda-backend.h"
#include "internal.h"
#include "linalg_cuda.h"

// ~0.1 GFLOP (a 464³ gemm): below it the PCIe copies of host operands cost more than the CPU.
// The environment variable CALDERA_CUDA_MIN_FLOPS overrides it (0: every op; the GPU tests).
#define CALDERA_CUDA_MIN_FLOPS 1.0e8
static double          g_min_flops = CALDERA_CUDA_MIN_FLOPS;

static const struct caldera_cuda_backend * g_be;
static char             g_be_err[1024];
static pthread_once_t   g_be_once = PTHREAD_ONCE_INIT;

#ifdef CALDERA_CUDA_MODULE
// The module beside the library that holds this code (installed: libdir/caldera/), then the build tree.
static void * open_module(char * why, size_t n) {
    const char * env = getenv("CALDERA_CUDA_MODULE");
    const char * tried[3] = { 0 };
    char here[4096] = "";
    int nt = 0;
    if (env && *env) tried[nt++] = env;
    Dl_info info;
    if (dladdr((void *) open_module, &info) && info.dli_fname && strchr(info.dli_fname, '/')) {
        size_t len = (size_t) (strrchr(info.dli_fname, '/') - info.dli_fname);
        if (len + sizeof("/caldera/" CALDERA_CUDA_MODULE_NAME) < sizeof(here)) {
            memcpy(here, info.dli_fname, len);
            memcpy(here + len, "/caldera/" CALDERA_CUDA_MODULE_NAME, sizeof("/caldera/" CALDERA_CUDA_MODULE_NAME));
            tried[nt++] = here;
        }
    }
    tried[nt++] = CALDERA_CUDA_MODULE;
    size_t used = 0;
    for (int i = 0; i < nt; i++) {
        void * h = dlopen(tried[i], RTLD_NOW | RTLD_LOCAL);
        if (h) return h;
        const char * e = dlerror();
        int w = snprintf(why + used, n - used, "%s%s", used ? "; " : "", e ? e : tried[i]);
        if (w > 0 && (size_t) w < n - used) used += (size_t) w;
    }
    return NULL;
}
#endif

static void load_backend(void) {
    const char * mf = getenv("CALDERA_CUDA_MIN_FLOPS");
    if (mf && *mf) {
        char * end;
        double v = strtod(mf, &end);
        if (*end == '\0' && v >= 0) g_min_flops = v;
    }
#ifdef CALDERA_CUDA_MODULE
    char why[sizeof(g_be_err) - 64] = "";
    void * h = open_module(why, sizeof(why));
    if (!h) {
        snprintf(g_be_err, sizeof(g_be_err), "the CUDA backend module could not be loaded: %s", why);
        return;
    }
    caldera_cuda_backend_fn fn = (caldera_cuda_backend_fn) dlsym(h, CALDERA_CUDA_BACKEND_SYMBOL);
    const struct caldera_cuda_backend * be = fn ? fn() : NULL;
    if (!be || be->version != CALDERA_CUDA_BACKEND_VERSION || be->size != sizeof(*be)) {
        snprintf(g_be_err, sizeof(g_be_err), "the CUDA backend module is not the one of this build (version or size differs)");
        dlclose(h);
        return;
    }
    g_be = be;   // kept loaded for the life of the process (device memory may still point into it)
#else
    snprintf(g_be_err, sizeof(g_be_err), "this build has no CUDA (configured without nvcc, or with -DCALDERA_CUDA=OFF)");
#endif
}

static const struct caldera_cuda_backend * backend(void) {
    pthread_once(&g_be_once, load_backend);
    return g_be;
}

int caldera_cuda_probe(char * why, size_t n) {
    const struct caldera_cuda_backend * be = backend();
    if (!be) {
        snprintf(why, n, "%s", g_be_err);
        return 0;
    }
    int count = 0;
    why[0] = '\0';
    be->device_count(&count, why, n);
    return count;
}

void caldera_cuda_ctx_free(struct caldera_ctx * ctx) {
    if (ctx->cuda_dev && g_be) g_be->close(ctx->cuda_dev);
    ctx->cuda_dev = NULL;
}

// The context's device, opened on first use.
static int ctx_dev(struct caldera_ctx * ctx, const struct caldera_cuda_backend ** bep, struct ccu_dev ** out) {
    const struct caldera_cuda_backend * be = backend();
    *bep = be;
    if (!be) return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "device 'cuda': %s", g_be_err);
    if (!ctx->cuda_dev) {
        char why[1024] = "";
        int count = 0;
        be->device_count(&count, why, sizeof(why));
        if (count == 0) return caldera_ctx_error(ctx, CALDERA_ERR_DEVICE, "device 'cuda': no CUDA device (%s)", why);
        int rc = be->open(0, &ctx->cuda_dev, why, sizeof(why));
        if (rc < 0) return caldera_ctx_error(ctx, rc, "device 'cuda': opening cuda:0 failed: %s", why);
    }
    *out = ctx->cuda_dev;
    return 0;
}

int caldera_cuda_device_name(struct caldera_ctx * ctx, const char ** name) {
    const struct caldera_cuda_backend * be;
    struct ccu_dev * d;
    int rc = ctx_dev(ctx, &be, &d);
    *name = rc == 0 ? be->name(d) : NULL;
    return rc;
}

static int dev_error(struct caldera_ctx * ctx, const struct caldera_cuda_backend * be, struct ccu_dev * d, int rc,
                     const char * op) {
    if (rc == CALDERA_ERR_NUMERIC) return caldera_ctx_error(ctx, rc, "%s", be->err(d));
    return caldera_ctx_error(ctx, rc, "%s on the GPU: %s", op, be->err(d));
}

// ---------------------------------------------------------------------------------------------
// Routing

int caldera_cuda_route(struct caldera_ctx * ctx, double flops, const struct caldera_tensor * const * ts) {
    for (int i = 0; ts[i]; i++) {
        if (ts[i]->device == CALDERA_DEVICE_CUDA) return 1;
    }
    if (ctx->device != CALDERA_DEVICE_CUDA) return 0;
    pthread_once(&g_be_once, load_backend);
    return flops >= g_min_flops;
}

// ---------------------------------------------------------------------------------------------
// Device tensors

static int elem_size(struct caldera_ctx * ctx, enum caldera_dtype dt, size_t * es) {
    if (caldera_dtype_block_elems(dt) != 1) {
        return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "device tensor of block type %s; allowed: plain types",
                                 caldera_dtype_name(dt));
    }
    *es = caldera_dtype_block_bytes(dt);
    return 0;
}

int caldera_cuda_alloc(struct caldera_ctx * ctx, size_t bytes, void ** out) {
    const struct caldera_cuda_backend * be;
    struct ccu_dev * d;
    int rc = ctx_dev(ctx, &be, &d);
    if (rc < 0) return rc;
    if ((rc = be->dmalloc(d, bytes, out)) < 0) return dev_error(ctx, be, d, rc, "allocation");
    return 0;
}

void caldera_cuda_free(void * p) {
    // only reached for memory that caldera_cuda_alloc returned, so the backend is loaded
    if (p && g_be && g_be->dfree) g_be->dfree(p);
}

static int64_t rows_of(const struct caldera_tensor * t, int64_t * cols, int64_t * ld) {
    *cols = t->ndim ? t->ne[t->ndim - 1] : 1;
    *ld = (t->ndim == 2 && t->ld) ? t->ld : *cols;
    return *cols ? caldera_tensor_nelements(t) / *cols : 0;
}

int caldera_cuda_copy(struct caldera_ctx * ctx, struct caldera_tensor * dst, const struct caldera_tensor * src) {
    const struct caldera_cuda_backend * be;
    struct ccu_dev * d;
    size_t es = 0;
    int rc;
    if (src->dtype != dst->dtype) {
        return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "tensor copy to or from a device: %s to %s; allowed: the same dtype",
                                 caldera_dtype_name(src->dtype), caldera_dtype_name(dst->dtype));
    }
    if ((rc = elem_size(ctx, src->dtype, &es)) < 0 || (rc = ctx_dev(ctx, &be, &d)) < 0) return rc;
    int64_t cols, sld, dld, rows = rows_of(src, &cols, &sld);
    rows_of(dst, &cols, &dld);
    int kind = src->device == CALDERA_DEVICE_CUDA ? (dst->device == CALDERA_DEVICE_CUDA ? 2 : 1) : 0;
    rc = be->copy2d(d, dst->data, (size_t) dld * es, src->data, (size_t) sld * es, (size_t) cols * es, (size_t) rows, kind);
    return rc < 0 ? dev_error(ctx, be, d, rc, "tensor copy") : 0;
}

// ---------------------------------------------------------------------------------------------
// Staging of host operands

struct staged {
    struct caldera_tensor   dev;    // what the backend sees
    const struct caldera_tensor * host;   // NULL: the operand was on the device already
};

static int stage_in(struct caldera_ctx * ctx, const struct caldera_cuda_backend * be, struct ccu_dev * d,
                    const struct caldera_tensor * t, int upload, struct staged * s) {
    memset(s, 0, sizeof(*s));
    if (!t) return 0;
    if (t->device == CALDERA_DEVICE_CUDA) {
        s->dev = *t;
        return 0;
    }
    const size_t es = caldera_dtype_block_bytes(t->dtype);
    int64_t r = t->ne[0], c = t->ne[1];
    void * p = NULL;
    int rc = be->dmalloc(d, (size_t) (r > 0 ? r : 1) * (size_t) (c > 0 ? c : 1) * es, &p);
    if (rc < 0) return dev_error(ctx, be, d, rc, "staging");
    s->host = t;
    s->dev = *t;   // same dtype and shape, dense, on the device
    s->dev.data = p;
    s->dev.ld = c;
    s->dev.device = CALDERA_DEVICE_CUDA;
    if (upload && r > 0 && c > 0) {
        int64_t ld = t->ld ? t->ld : c;
        rc = be->copy2d(d, p, (size_t) c * es, t->data, (size_t) ld * es, (size_t) c * es, (size_t) r, 0);
        if (rc < 0) return dev_error(ctx, be, d, rc, "upload");
    }
    return 0;
}

static int stage_out(struct caldera_ctx * ctx, const struct caldera_cuda_backend * be, struct ccu_dev * d,
                     const struct staged * s) {
    if (!s->host || s->host->ne[0] == 0 || s->host->ne[1] == 0) return 0;
    const size_t es = caldera_dtype_block_bytes(s->host->dtype);
    int64_t r = s->host->ne[0], c = s->host->ne[1], ld = s->host->ld ? s->host->ld : c;
    int rc = be->copy2d(d, s->host->data, (size_t) ld * es, s->dev.data, (size_t) c * es, (size_t) c * es, (size_t) r, 1);
    return rc < 0 ? dev_error(ctx, be, d, rc, "download") : 0;
}

static void unstage(const struct caldera_cuda_backend * be, struct staged * s, int n) {
    for (int i = 0; i < n; i++) {
        if (s[i].host) be->dfree(s[i].dev.data);
    }
}

#define DEV(i) (&st[i].dev)
#define OPEN()                                                             \
    const struct caldera_cuda_backend * be;                                \
    struct ccu_dev * d;                                                    \
    int rc = ctx_dev(ctx, &be, &d);                                        \
    if (rc < 0) return rc
#define IN(i, t, up)                                                       \
    if ((rc = stage_in(ctx, be, d, (t), (up), &st[i])) < 0) goto done
#define RUN(op, call)                                                      \
    if ((rc = be->call) < 0) {                                             \
        rc = dev_error(ctx, be, d, rc, op);                                \
        goto done;                                                         \
    }
#define OUT(i)                                                             \
    if ((rc = stage_out(ctx, be, d, &st[i])) < 0) goto done

int caldera_cuda_gemm(struct caldera_ctx * ctx, int ta, int tb, float alpha, const struct caldera_tensor * a,
                      const struct caldera_tensor * b, float beta, struct caldera_tensor * c) {
    OPEN();
    struct staged st[3] = { 0 };
    IN(0, a, 1); IN(1, b, 1); IN(2, c, beta != 0.0f);
    RUN("gemm", gemm(d, ta, tb, alpha, DEV(0), DEV(1), beta, DEV(2)));
    OUT(2);
done:
    unstage(be, st, 3);
    return rc;
}

int caldera_cuda_syrk(struct caldera_ctx * ctx, int trans, float alpha, const struct caldera_tensor * a, float beta,
                      struct caldera_tensor * c) {
    OPEN();
    struct staged st[2] = { 0 };
    IN(0, a, 1); IN(1, c, beta != 0.0f);
    RUN("syrk", syrk(d, trans, alpha, DEV(0), beta, DEV(1)));
    OUT(1);
done:
    unstage(be, st, 2);
    return rc;
}

int caldera_cuda_cholesky(struct caldera_ctx * ctx, struct caldera_tensor * a) {
    OPEN();
    struct staged st[1] = { 0 };
    IN(0, a, 1);
    RUN("cholesky", cholesky(d, DEV(0)));
    OUT(0);
done:
    unstage(be, st, 1);
    return rc;
}

int caldera_cuda_trsm(struct caldera_ctx * ctx, int right, int lower, int trans, int unit_diag, float alpha,
                      const struct caldera_tensor * t, struct caldera_tensor * b) {
    OPEN();
    struct staged st[2] = { 0 };
    IN(0, t, 1); IN(1, b, 1);
    RUN("trsm", trsm(d, right, lower, trans, unit_diag, alpha, DEV(0), DEV(1)));
    OUT(1);
done:
    unstage(be, st, 2);
    return rc;
}

int caldera_cuda_spd_inverse(struct caldera_ctx * ctx, struct caldera_tensor * a) {
    OPEN();
    struct staged st[1] = { 0 };
    IN(0, a, 1);
    RUN("spd_inverse", spd_inverse(d, DEV(0)));
    OUT(0);
done:
    unstage(be, st, 1);
    return rc;
}

int caldera_cuda_spd_solve(struct caldera_ctx * ctx, const struct caldera_tensor * a, struct caldera_tensor * b) {
    OPEN();
    struct staged st[2] = { 0 };
    IN(0, a, 1); IN(1, b, 1);
    RUN("spd_solve", spd_solve(d, DEV(0), DEV(1)));
    OUT(1);
done:
    unstage(be, st, 2);
    return rc;
}

int caldera_cuda_block_ldl(struct caldera_ctx * ctx, const struct caldera_tensor * h, int64_t b, struct caldera_tensor * l,
                           struct caldera_tensor * dm) {
    OPEN();
    struct staged st[3] = { 0 };
    IN(0, h, 1); IN(1, l, 0); IN(2, dm, 0);
    RUN("block_ldl", block_ldl(d, DEV(0), b, DEV(1), DEV(2)));
    OUT(1); OUT(2);
done:
    unstage(be, st, 3);
    return rc;
}

int caldera_cuda_eigh(struct caldera_ctx * ctx, const struct caldera_tensor * a, float * w, struct caldera_tensor * v) {
    OPEN();
    struct staged st[2] = { 0 };
    IN(0, a, 1); IN(1, v, 0);
    RUN("eigh", eigh(d, DEV(0), w, DEV(1)));
    OUT(1);
done:
    unstage(be, st, 2);
    return rc;
}

int caldera_cuda_svd(struct caldera_ctx * ctx, const struct caldera_tensor * a, struct caldera_tensor * u, float * s,
                     struct caldera_tensor * vt) {
    OPEN();
    struct staged st[3] = { 0 };
    IN(0, a, 1); IN(1, u, 0); IN(2, vt, 0);
    RUN("svd", svd(d, DEV(0), u ? DEV(1) : NULL, s, vt ? DEV(2) : NULL));
    OUT(1); OUT(2);
done:
    unstage(be, st, 3);
    return rc;
}

int caldera_cuda_svd_trunc(struct caldera_ctx * ctx, const struct caldera_tensor * a, int64_t k, int64_t l,
                           int power_iters, const float * omega, struct caldera_tensor * u, float * s,
                           struct caldera_tensor * vt) {
    OPEN();
    struct staged st[3] = { 0 };
    int64_t m = a->ne[0], n = a->ne[1], kmax = m < n ? m : n;
    float * sk = NULL;
    void * uf = NULL, * vf = NULL;
    IN(0, a, 1); IN(1, u, 0); IN(2, vt, 0);
    if (omega) {
        RUN("svd_trunc", svd_rand(d, DEV(0), k, l, power_iters, omega, u ? DEV(1) : NULL, s, vt ? DEV(2) : NULL));
    } else {
        // exact: the thin SVD of A, then its first k columns of U and rows of Vᵀ
        sk = caldera_malloc((size_t) kmax * sizeof(float));
        if (!sk) { rc = caldera_ctx_error(ctx, CALDERA_ERR_NOMEM, "svd_trunc: out of memory"); goto done; }
        if ((u && (rc = caldera_cuda_alloc(ctx, (size_t) (m * kmax) * sizeof(float), &uf)) < 0) ||
            (vt && (rc = caldera_cuda_alloc(ctx, (size_t) (kmax * n) * sizeof(float), &vf)) < 0)) {
            goto done;
        }
        struct caldera_tensor ut = caldera_tensor_view_f32(uf, m, kmax), vtt = caldera_tensor_view_f32(vf, kmax, n);
        ut.device = vtt.device = CALDERA_DEVICE_CUDA;
        RUN("svd_trunc", svd(d, DEV(0), u ? &ut : NULL, sk, vt ? &vtt : NULL));
        memcpy(s, sk, (size_t) k * sizeof(float));
        ut.ne[1] = k;
        vtt.ne[0] = k;
        if (u && (rc = caldera_cuda_copy(ctx, DEV(1), &ut)) < 0) goto done;
        if (vt && (rc = caldera_cuda_copy(ctx, DEV(2), &vtt)) < 0) goto done;
    }
    OUT(1); OUT(2);
done:
    caldera_free(sk);
    caldera_cuda_free(uf);
    caldera_cuda_free(vf);
    unstage(be, st, 3);
    return rc;
}

int caldera_cuda_lstsq(struct caldera_ctx * ctx, const struct caldera_tensor * a, const struct caldera_tensor * b,
                       struct caldera_tensor * x) {
    OPEN();
    struct staged st[3] = { 0 };
    IN(0, a, 1); IN(1, b, 1); IN(2, x, 0);
    RUN("lstsq", lstsq(d, DEV(0), DEV(1), DEV(2)));
    OUT(2);
done:
    unstage(be, st, 3);
    return rc;
}

int caldera_cuda_fwht(struct caldera_ctx * ctx, struct caldera_tensor * a) {
    OPEN();
    struct staged st[1] = { 0 };
    IN(0, a, 1);
    RUN("fwht", fwht(d, DEV(0)));
    OUT(0);
done:
    unstage(be, st, 1);
    return rc;
}

int caldera_cuda_trace_quad(struct caldera_ctx * ctx, const struct caldera_tensor * a, const struct caldera_tensor * h,
                            double * out) {
    OPEN();
    struct staged st[2] = { 0 };
    IN(0, a, 1); IN(1, h, 1);
    RUN("trace_quad", trace_quad(d, DEV(0), DEV(1), out));
done:
    unstage(be, st, 2);
    return rc;
}

// Host parameters (n floats) into fresh device memory; NULL stays NULL.
static int upload_params(struct caldera_ctx * ctx, const struct caldera_cuda_backend * be, struct ccu_dev * d,
                         const float * host, int64_t n, void ** out) {
    *out = NULL;
    if (!host) return 0;
    int rc = be->dmalloc(d, (size_t) (n > 0 ? n : 1) * sizeof(float), out);
    if (rc < 0) return dev_error(ctx, be, d, rc, "staging");
    rc = be->copy2d(d, *out, (size_t) n * sizeof(float), host, (size_t) n * sizeof(float), (size_t) n * sizeof(float), 1, 0);
    return rc < 0 ? dev_error(ctx, be, d, rc, "upload") : 0;
}

int caldera_cuda_e8p_round(struct caldera_ctx * ctx, const struct e8p_tables * tab, int bits, const float * scale,
                           int64_t nscale, const struct caldera_tensor * x, struct caldera_tensor * codes,
                           struct caldera_tensor * codes2, struct caldera_tensor * x_hat) {
    OPEN();
    struct staged st[4] = { 0 };
    void * ds = NULL;
    IN(0, x, 1); IN(1, x_hat, 0); IN(2, codes, 0); IN(3, codes2, 0);
    if ((rc = upload_params(ctx, be, d, scale, nscale, &ds)) < 0) goto done;
    RUN("e8p_round", e8p_round(d, tab, bits, DEV(0), ds, nscale, DEV(2)->data, codes2 ? DEV(3)->data : NULL,
                               DEV(2)->ld ? DEV(2)->ld : DEV(2)->ne[1], DEV(1)));
    OUT(1); OUT(2); OUT(3);
done:
    if (ds) be->dfree(ds);
    unstage(be, st, 4);
    return rc;
}

int caldera_cuda_uniform_round(struct caldera_ctx * ctx, const struct uniform_rule * r, int granularity, int64_t ngr,
                               int64_t group_size, int64_t col0, const float * scale, const float * zero, int64_t nscale,
                               const struct caldera_tensor * x, struct caldera_tensor * codes,
                               struct caldera_tensor * x_hat) {
    OPEN();
    struct staged st[3] = { 0 };
    void * ds = NULL, * dz = NULL;
    IN(0, x, 1); IN(1, x_hat, 0); IN(2, codes, 0);
    if ((rc = upload_params(ctx, be, d, scale, nscale, &ds)) < 0 || (rc = upload_params(ctx, be, d, zero, nscale, &dz)) < 0) {
        goto done;
    }
    RUN("uniform_round", uniform_round(d, r, granularity, ngr, group_size, col0, DEV(0), ds, dz, DEV(2)->data,
                                       DEV(2)->ld ? DEV(2)->ld : DEV(2)->ne[1], DEV(1)));
    OUT(1); OUT(2);
done:
    if (ds) be->dfree(ds);
    if (dz) be->dfree(dz);
    unstage(be, st, 3);
    return rc;
}

int caldera_cuda_ldlq_gather(struct caldera_ctx * ctx, const float * xt, int64_t m, int64_t j0, int64_t b, float * xj) {
    OPEN();
    if ((rc = be->ldlq_gather(d, xt, m, j0, b, xj)) < 0) rc = dev_error(ctx, be, d, rc, "ldlq_gather");
    return rc;
}

int caldera_cuda_ldlq_scatter(struct caldera_ctx * ctx, const float * qj, const float * wt, int64_t m, int64_t j0,
                              int64_t jl, int64_t b, float * hbt, float * dbt) {
    OPEN();
    if ((rc = be->ldlq_scatter(d, qj, wt, m, j0, jl, b, hbt, dbt)) < 0) rc = dev_error(ctx, be, d, rc, "ldlq_scatter");
    return rc;
}

int caldera_cuda_ldlq_loss(struct caldera_ctx * ctx, const float * xj, const float * qj, const float * dj, int64_t m,
                           int64_t b, double * loss) {
    OPEN();
    if ((rc = be->ldlq_loss(d, xj, qj, dj, m, b, loss)) < 0) rc = dev_error(ctx, be, d, rc, "ldlq_loss");
    return rc;
}

int caldera_cuda_ldlq_tune_target(struct caldera_ctx * ctx, const float * old, const float * gj, const float * hi,
                                  int64_t m, int64_t b, float * xs) {
    OPEN();
    if ((rc = be->ldlq_tune_target(d, old, gj, hi, m, b, xs)) < 0) rc = dev_error(ctx, be, d, rc, "ldlq_tune_target");
    return rc;
}

int caldera_cuda_ldlq_tune_guard(struct caldera_ctx * ctx, const float * q, const float * old, const float * hjj,
                                 int64_t ldh, int64_t m, int64_t b, float * xs, int64_t * kept) {
    OPEN();
    if ((rc = be->ldlq_tune_guard(d, q, old, hjj, ldh, m, b, xs, kept)) < 0) rc = dev_error(ctx, be, d, rc, "ldlq_tune_guard");
    return rc;
}

int caldera_cuda_ldlq_tune_update(struct caldera_ctx * ctx, const float * q, int64_t m, int64_t j0, int64_t b, float * ht,
                                  float * dt, const float * wt, float * dqt) {
    OPEN();
    if ((rc = be->ldlq_tune_update(d, q, m, j0, b, ht, dt, wt, dqt)) < 0) rc = dev_error(ctx, be, d, rc, "ldlq_tune_update");
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Fused layer: the compressed storage goes up (2 to 4 bits a weight instead of 32), Ŵ is decoded
// on the device by the kernels' per-element math, and cuBLAS multiplies.

// Device copy of the n bytes at host p (NULL or n == 0: NULL), recorded in bufs for freeing.
static int kw_up(struct caldera_ctx * ctx, const struct caldera_cuda_backend * be, struct ccu_dev * d, const void * p,
                 size_t n, void ** bufs, int * nbuf, const void ** out) {
    *out = NULL;
    if (!p || n == 0) return 0;
    void * q = NULL;
    int rc = be->dmalloc(d, n, &q);
    if (rc < 0) return dev_error(ctx, be, d, rc, "fused layer: staging");
    bufs[(*nbuf)++] = q;
    if ((rc = be->copy2d(d, q, n, p, n, n, 1, 0)) < 0) return dev_error(ctx, be, d, rc, "fused layer: upload");
    *out = q;
    return 0;
}

int caldera_cuda_kw_matmul(struct caldera_ctx * ctx, const struct caldera_kw * w, const float * x, int64_t batch,
                           int64_t ldx, float * y, int64_t ldy, int trans, int acc) {
    OPEN();
    void * bufs[8] = { 0 };
    int    nbuf = 0;
    struct staged st[2] = { 0 };
    struct caldera_kw dw = *w;
    const int64_t nb = w->cols / 8, xin = trans ? w->rows : w->cols, yout = trans ? w->cols : w->rows;
    const size_t  ps = w->scale_dtype == CALDERA_DTYPE_F16 ? 2 : 4;
    size_t nscale = 1, nzero = 0;
    if (w->type == CALDERA_KW_E8P) {
        nscale = w->scale_per_row ? (size_t) w->rows : 1;
    } else if (w->type == CALDERA_KW_UNIFORM) {
        const size_t ngr = w->gran == CALDERA_KW_GRAN_GROUP ? (size_t) ((w->cols + w->group_size - 1) / w->group_size) : 0;
        nscale = w->gran == CALDERA_KW_GRAN_TENSOR ? 1 : w->gran == CALDERA_KW_GRAN_ROW ? (size_t) w->rows
               : w->gran == CALDERA_KW_GRAN_COLUMN ? (size_t) w->cols : (size_t) w->rows * ngr;
        nzero = w->zero ? nscale : 0;
    }
    const size_t es = w->type == CALDERA_KW_F16 ? 2 : 4;
    const size_t dense = w->type <= CALDERA_KW_F16 ? ((size_t) (w->rows - 1) * (size_t) w->ld + (size_t) w->cols) * es : 0;
    const size_t ncode = (size_t) w->rows * (size_t) nb;
    const size_t nstream = ((size_t) w->rows * (size_t) w->cols * (size_t) w->bits + 7) / 8;
    void * wd = NULL;   // (rows, cols) decoded Ŵ on the device
    if (w->type <= CALDERA_KW_F16) {
        rc = kw_up(ctx, be, d, w->data, dense, bufs, &nbuf, &dw.data);
    } else if (w->type == CALDERA_KW_E8P) {
        const void * c = NULL, * g = NULL, * rv = NULL;
        if ((rc = kw_up(ctx, be, d, w->codes, ncode * 2, bufs, &nbuf, &c)) < 0 ||
            (rc = kw_up(ctx, be, d, w->codes2, w->bits > 2 ? ncode * (w->bits == 4 ? 2 : 1) : 0, bufs, &nbuf, &dw.codes2)) < 0 ||
            (rc = kw_up(ctx, be, d, w->e8_grid, 256 * 8 * sizeof(float), bufs, &nbuf, &g)) < 0 ||
            (rc = kw_up(ctx, be, d, w->e8_rvq1, w->bits == 3 ? 256 * 8 * sizeof(float) : 0, bufs, &nbuf, &rv)) < 0 ||
            (rc = kw_up(ctx, be, d, w->scale, nscale * ps, bufs, &nbuf, &dw.scale)) < 0) {
            goto done;
        }
        dw.codes = c;
        dw.e8_grid = g;
        dw.e8_rvq1 = rv;
    } else {
        const void * sm = NULL, * z = NULL;
        if ((rc = kw_up(ctx, be, d, w->stream, nstream, bufs, &nbuf, &sm)) < 0 ||
            (rc = kw_up(ctx, be, d, w->scale, nscale * ps, bufs, &nbuf, &dw.scale)) < 0 ||
            (rc = kw_up(ctx, be, d, w->zero, nzero, bufs, &nbuf, &z)) < 0) {
            goto done;
        }
        dw.stream = sm;
        dw.zero = z;
    }
    if (rc < 0) goto done;
    if ((rc = be->dmalloc(d, (size_t) w->rows * (size_t) w->cols * sizeof(float), &wd)) < 0) {
        rc = dev_error(ctx, be, d, rc, "fused layer: staging");
        goto done;
    }
    bufs[nbuf++] = wd;
    RUN("fused layer decode", kw_decode(d, &dw, wd, w->cols));
    {
        struct caldera_tensor tw = caldera_tensor_view_f32(wd, w->rows, w->cols);
        struct caldera_tensor tx = caldera_tensor_view_f32((float *) x, batch, xin), ty = caldera_tensor_view_f32(y, batch, yout);
        tw.device = CALDERA_DEVICE_CUDA;
        tx.ld = ldx;
        ty.ld = ldy;
        IN(0, &tx, 1); IN(1, &ty, acc);
        // y = x Ŵᵀ, or y = x Ŵ (transposed layer)
        RUN("fused layer gemm", gemm(d, 0, trans ? 0 : 1, 1.0f, DEV(0), &tw, acc ? 1.0f : 0.0f, DEV(1)));
        OUT(1);
    }
done:
    unstage(be, st, 2);
    for (int i = 0; i < nbuf; i++) be->dfree(bufs[i]);
    return rc;
}
