// SPDX-License-Identifier: MIT
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char   tu_logbuf[1 << 16];
static size_t tu_loglen;

static void tu_log_cb(enum caldera_log_level level, const char * msg, void * user) {
    (void) level; (void) user;
    size_t n = strlen(msg);
    if (tu_loglen + n + 2 >= sizeof(tu_logbuf)) {
        tu_loglen = 0;
    }
    memcpy(tu_logbuf + tu_loglen, msg, n);
    tu_loglen += n;
    tu_logbuf[tu_loglen++] = '\n';
    tu_logbuf[tu_loglen] = 0;
}

struct caldera_ctx * tu_ctx(void) {
    struct caldera_ctx * ctx = NULL;
    int rc = caldera_ctx_init(&ctx);
    ck_assert_msg(rc == 0, "caldera_ctx_init: %s", caldera_status_str(rc));
    caldera_ctx_set_log(ctx, tu_log_cb, NULL);
    caldera_ctx_set_log_level(ctx, CALDERA_LOG_DEBUG);
    // CALDERA_TEST_THREADS=N: the contexts of the tests at N threads instead of 2 (the pool's
    // interleavings at 3 and 4 threads, e.g. in a ThreadSanitizer build)
    const char * e = getenv("CALDERA_TEST_THREADS");
    char *       end;
    long         t = e && *e ? strtol(e, &end, 10) : 2;
    ck_assert_msg(!e || !*e || (!*end && t >= 1 && t <= 64), "CALDERA_TEST_THREADS='%s'; allowed: an integer in [1, 64]", e);
    caldera_ctx_set_threads(ctx, (int) t);
    return ctx;
}

const char * tu_log(void) { return tu_logbuf; }
void tu_log_clear(void) { tu_loglen = 0; tu_logbuf[0] = 0; }

void tu_fill_normal(float * x, int64_t n, float sigma, uint64_t seed) {
    struct caldera_rng rng;
    caldera_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) {
        x[i] = (float) (sigma * caldera_rng_normal(&rng));
    }
}

struct caldera_tensor tu_randn(struct caldera_ctx * ctx, int64_t rows, int64_t cols, uint64_t seed) {
    struct caldera_tensor t;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, rows, cols, &t), 0);
    tu_fill_normal(t.data, rows * cols, 1.0f, seed);
    return t;
}

struct caldera_tensor tu_hessian(struct caldera_ctx * ctx, int64_t n, int64_t rank, double ridge,
                                 uint64_t seed) {
    struct caldera_tensor x = tu_randn(ctx, n, rank, seed);
    float * xd = x.data;
    for (int64_t i = 0; i < n; i++) {          // decaying column scales: a few large directions
        for (int64_t j = 0; j < rank; j++) {
            xd[i * rank + j] *= (float) (1.0 / sqrt(1.0 + j));
        }
    }
    struct caldera_tensor h;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, n, n, &h), 0);
    ck_assert_int_eq(caldera_linalg_syrk(ctx, CALDERA_NO_TRANS, 1.0f / (float) rank, &x, 0.0f, &h), 0);
    float * hd = h.data;
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += hd[i * n + i];
    mean /= (double) n;
    for (int64_t i = 0; i < n * n; i++) hd[i] = (float) (hd[i] / mean);
    for (int64_t i = 0; i < n; i++) hd[i * n + i] += (float) ridge;
    caldera_tensor_free(&x);
    return h;
}

double tu_max_abs_diff(const struct caldera_tensor * a, const struct caldera_tensor * b) {
    double m = 0;
    for (int64_t i = 0; i < a->ne[0]; i++) {
        for (int64_t j = 0; j < a->ne[1]; j++) {
            double d = fabs((double) ((const float *) a->data)[i * a->ld + j] -
                            (double) ((const float *) b->data)[i * b->ld + j]);
            if (d > m || isnan(d)) m = d;
        }
    }
    return m;
}

double tu_fro(const struct caldera_tensor * a) {
    double s = 0;
    for (int64_t i = 0; i < a->ne[0]; i++) {
        for (int64_t j = 0; j < a->ne[1]; j++) {
            double v = ((const float *) a->data)[i * a->ld + j];
            s += v * v;
        }
    }
    return sqrt(s);
}

int tu_quantizer_oom_sweep(struct caldera_ctx * ctx, struct caldera_inst * q, const struct caldera_tensor * w,
                           struct caldera_tensor * w_hat, const char * msg_prefix, int * dequant_fails) {
    int ok = 0, fails = 0, dfails = 0;
    for (int64_t k = 1; k < 100 && !ok; k++) {
        struct caldera_pack * pack = NULL;
        ck_assert_int_eq(caldera_pack_init(&pack), 0);
        caldera_alloc_fail_at(k);
        int rc = caldera_quantizer_quantize(q, w, NULL, w_hat, pack);
        caldera_alloc_fail_at(0);
        if (rc == 0) {
            ok = 1;
            for (int64_t k2 = 1; k2 < 100; k2++) {
                caldera_alloc_fail_at(k2);
                int rc2 = caldera_quantizer_dequantize(q, pack, w_hat);
                caldera_alloc_fail_at(0);
                if (rc2 == 0) break;
                ck_assert_int_eq(rc2, CALDERA_ERR_NOMEM);
                ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "out of memory"));
                dfails++;
            }
        } else {
            ck_assert_int_eq(rc, CALDERA_ERR_NOMEM);
            ck_assert_msg(strstr(caldera_ctx_errmsg(ctx), msg_prefix) != NULL, "message '%s' lacks '%s'",
                          caldera_ctx_errmsg(ctx), msg_prefix);
            fails++;
        }
        caldera_pack_free(pack);
    }
    ck_assert(ok);
    if (dequant_fails) *dequant_fails = dfails;
    return fails;
}

const char * tu_tmpdir(void) {
    static char dir[512];
    if (!dir[0]) {
        snprintf(dir, sizeof(dir), "%s/tmp-XXXXXX", CALDERA_TEST_BIN_DIR);
        if (!mkdtemp(dir)) {
            snprintf(dir, sizeof(dir), "/tmp/caldera-test-XXXXXX");
            ck_assert_ptr_nonnull(mkdtemp(dir));
        }
    }
    return dir;
}

const char * tu_path(const char * dir, const char * name) {
    static char ring[8][1024];
    static int  k;
    char * p = ring[k++ & 7];
    snprintf(p, 1024, "%s/%s", dir, name);
    return p;
}

int tu_write_file(const char * path, const char * text) {
    FILE * f = fopen(path, "wb");
    if (!f) return -1;
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

char * tu_read_file(const char * path, size_t * len) {
    FILE * f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char * buf = caldera_malloc((size_t) n + 1);
    if (buf && fread(buf, 1, (size_t) n, f) != (size_t) n) { caldera_free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = 0; if (len) *len = (size_t) n; }
    return buf;
}

int tu_run(Suite * s) {
    SRunner * sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

// Cyclic Jacobi eigen-decomposition of a symmetric s×s matrix a (destroyed): eigenvalues in w,
// eigenvectors in the columns of v.
void tu_jacobi(double * a, int64_t s, double * w, double * v) {
    for (int64_t i = 0; i < s * s; i++) v[i] = 0.0;
    for (int64_t i = 0; i < s; i++) v[i * s + i] = 1.0;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0;
        for (int64_t p = 0; p < s; p++) for (int64_t q = p + 1; q < s; q++) off += a[p * s + q] * a[p * s + q];
        if (off < 1e-30) break;
        for (int64_t p = 0; p < s; p++) {
            for (int64_t q = p + 1; q < s; q++) {
                double apq = a[p * s + q];
                if (fabs(apq) < 1e-300) continue;
                double theta = (a[q * s + q] - a[p * s + p]) / (2.0 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), sn = t * c;
                for (int64_t k = 0; k < s; k++) {   // columns p, q
                    double akp = a[k * s + p], akq = a[k * s + q];
                    a[k * s + p] = c * akp - sn * akq;
                    a[k * s + q] = sn * akp + c * akq;
                }
                for (int64_t k = 0; k < s; k++) {   // rows p, q
                    double apk = a[p * s + k], aqk = a[q * s + k];
                    a[p * s + k] = c * apk - sn * aqk;
                    a[q * s + k] = sn * apk + c * aqk;
                }
                for (int64_t k = 0; k < s; k++) {
                    double vkp = v[k * s + p], vkq = v[k * s + q];
                    v[k * s + p] = c * vkp - sn * vkq;
                    v[k * s + q] = sn * vkp + c * vkq;
                }
            }
        }
    }
    for (int64_t i = 0; i < s; i++) w[i] = a[i * s + i];
}
