// SPDX-License-Identifier: MIT
// Random numbers and the parallel loop (ctx.c): fixed xoshiro256** streams, the normal
// distribution's moments, seed_mix, parallel_for covering [0, n) exactly once, parallel_tasks with
// loops nested inside its tasks, and parallel_for_blas running gemms inside its threads.
#include "testutil.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define RNG_TOL_MEAN 0.01   // |mean| of 200000 N(0,1) draws: 4.5 standard errors
#define RNG_TOL_VAR  0.015  // |var − 1| of 200000 N(0,1) draws: ~4.7 standard errors

// First outputs of xoshiro256** seeded by splitmix64. Computed once with an independent pure
// Python implementation of both generators (Blackman & Vigna's reference algorithms, 64-bit
// masked arithmetic), which also reproduces splitmix64(0) = 0xe220a8397b1dcdaf.
static const uint64_t seed0[5] = {
    0x99ec5f36cb75f2b4ull, 0xbf6e1f784956452aull, 0x1a5f849d4933e6e0ull, 0x6aa594f1262d2d2cull, 0xbba5ad4a1f842e59ull,
};
static const uint64_t seed42[5] = {
    0x15780b2e0c2ec716ull, 0x6104d9866d113a7eull, 0xae17533239e499a1ull, 0xecb8ad4703b360a1ull, 0xfde6dc7fe2ec5e64ull,
};

START_TEST(test_rng_known_values) {
    struct caldera_rng r;
    caldera_rng_seed(&r, 0);
    for (int i = 0; i < 5; i++) ck_assert_msg(caldera_rng_u64(&r) == seed0[i], "seed 0, output %d", i);
    caldera_rng_seed(&r, 42);
    for (int i = 0; i < 5; i++) ck_assert_msg(caldera_rng_u64(&r) == seed42[i], "seed 42, output %d", i);
    // uniform is the top 53 bits of the next output
    caldera_rng_seed(&r, 0);
    ck_assert_double_eq(caldera_rng_uniform(&r), (double) (seed0[0] >> 11) * 0x1.0p-53);
}
END_TEST

START_TEST(test_rng_distributions) {
    struct caldera_rng r;
    caldera_rng_seed(&r, 7);
    const int n = 200000;
    double s = 0, s2 = 0, umin = 1, umax = 0;
    for (int i = 0; i < n; i++) {
        double x = caldera_rng_normal(&r);
        ck_assert(isfinite(x));
        s += x;
        s2 += x * x;
    }
    double mean = s / n, var = s2 / n - mean * mean;
    ck_assert_msg(fabs(mean) <= RNG_TOL_MEAN, "normal mean %g", mean);
    ck_assert_msg(fabs(var - 1) <= RNG_TOL_VAR, "normal variance %g", var);
    for (int i = 0; i < n; i++) {
        double u = caldera_rng_uniform(&r);
        ck_assert(u >= 0 && u < 1);
        if (u < umin) umin = u;
        if (u > umax) umax = u;
    }
    ck_assert(umin < 1e-3 && umax > 1 - 1e-3);
}
END_TEST

START_TEST(test_seed_mix) {
    static const char * names[] = { "", "a", "b", "ab", "ba", "model.layers.0.mlp.up_proj.weight",
                                    "model.layers.1.mlp.up_proj.weight" };
    uint64_t v[7];
    for (int i = 0; i < 7; i++) {
        v[i] = caldera_seed_mix(1234, names[i]);
        ck_assert_uint_eq(v[i], caldera_seed_mix(1234, names[i]));   // a pure function
        for (int j = 0; j < i; j++) ck_assert_msg(v[i] != v[j], "seed_mix collision '%s' / '%s'", names[i], names[j]);
    }
    ck_assert_uint_ne(caldera_seed_mix(1, "a"), caldera_seed_mix(2, "a"));
    ck_assert_uint_eq(caldera_seed_mix(5, NULL), caldera_seed_mix(5, ""));
}
END_TEST

struct cover {
    atomic_int * hits;
    atomic_int   calls;
    int64_t      grain;
};

static void cover_fn(void * arg, int64_t i0, int64_t i1) {
    struct cover * c = arg;
    ck_assert(i0 < i1);
    for (int64_t i = i0; i < i1; i++) atomic_fetch_add(&c->hits[i], 1);
    atomic_fetch_add(&c->calls, 1);
}

START_TEST(test_parallel_for) {
    struct caldera_ctx * ctx = tu_ctx();
    static const int64_t ns[] = { 0, 1, 2, 3, 7, 64, 577, 1000 };
    static const int64_t grains[] = { -1, 0, 1, 3, 64, 100000 };
    for (int t = 1; t <= 3; t++) {
        caldera_ctx_set_threads(ctx, t);
        for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
            for (size_t b = 0; b < sizeof(grains) / sizeof(grains[0]); b++) {
                int64_t n = ns[a];
                struct cover c = { calloc((size_t) (n ? n : 1), sizeof(atomic_int)), 0, grains[b] };
                ck_assert_ptr_nonnull(c.hits);
                caldera_parallel_for(ctx, n, grains[b], cover_fn, &c);
                for (int64_t i = 0; i < n; i++) {
                    ck_assert_msg(atomic_load(&c.hits[i]) == 1, "n=%lld grain=%lld threads=%d: index %lld hit %d times",
                                  (long long) n, (long long) grains[b], t, (long long) i, atomic_load(&c.hits[i]));
                }
                ck_assert_int_le(atomic_load(&c.calls), n);
                if (n == 0) ck_assert_int_eq(atomic_load(&c.calls), 0);
                free(c.hits);
            }
        }
    }
    struct cover c5 = { calloc(5, sizeof(atomic_int)), 0, 1 };   // no context: serial
    caldera_parallel_for(NULL, 5, 1, cover_fn, &c5);
    ck_assert_int_eq(atomic_load(&c5.calls), 1);
    free(c5.hits);
    caldera_ctx_free(ctx);
}
END_TEST

// caldera_parallel_tasks: every task once, one call per task (one call in all when serial); loops inside a task (two levels deep)
// cover their ranges exactly once and are split into their chunks (offered to the other threads),
// while a loop inside a caldera_parallel_for chunk stays one serial call.
#define PT_TASKS 7
#define PT_INNER 200   // items of each task's inner loop (grain 1: min(200, 4 threads) chunks)
struct ptask {
    struct caldera_ctx * ctx;
    atomic_int           task_hits[PT_TASKS], task_calls;
    struct cover         inner[PT_TASKS];   // task i's loop, then a loop inside each of its chunks
    atomic_int           deep_hits[6 * PT_INNER];
    atomic_int           deep_calls;
};

struct ptask_deep_args { struct ptask * p; int64_t off; };
static void ptask_deep(void * arg, int64_t i0, int64_t i1) {
    const struct ptask_deep_args * a = arg;
    for (int64_t i = i0; i < i1; i++) atomic_fetch_add(&a->p->deep_hits[a->off + i], 1);
    atomic_fetch_add(&a->p->deep_calls, 1);
}

struct ptask_inner { struct ptask * p; int64_t task; };
static void ptask_inner(void * arg, int64_t i0, int64_t i1) {
    const struct ptask_inner * a = arg;
    cover_fn(&a->p->inner[a->task], i0, i1);
}

static void ptask_fn(void * arg, int64_t i0, int64_t i1) {
    struct ptask * p = arg;
    atomic_fetch_add(&p->task_calls, 1);
    for (int64_t t = i0; t < i1; t++) {
        atomic_fetch_add(&p->task_hits[t], 1);
        struct ptask_inner a = { p, t };
        caldera_parallel_for(p->ctx, PT_INNER, 1, ptask_inner, &a);
    }
}

// two levels of tasks (2 outer, 3 inner each), each inner task with a loop over its own PT_INNER
// items of deep_hits; at most 1 + 2 + 3 jobs are open at once (fewer than the pool's 8 slots, so
// every loop is published)
struct ptask_mid { struct ptask * p; int64_t outer; };
static void ptask_leaf(void * arg, int64_t i0, int64_t i1) {
    const struct ptask_mid * m = arg;
    for (int64_t t = i0; t < i1; t++) {
        struct ptask_deep_args a = { m->p, (m->outer * 3 + t) * PT_INNER };
        caldera_parallel_for(m->p->ctx, PT_INNER, 1, ptask_deep, &a);
    }
}
static void ptask_outer(void * arg, int64_t i0, int64_t i1) {
    struct ptask * p = arg;
    for (int64_t t = i0; t < i1; t++) {
        struct ptask_mid m = { p, t };
        caldera_parallel_tasks(p->ctx, 3, ptask_leaf, &m);
    }
}

static void plain_fn(void * arg, int64_t i0, int64_t i1) {
    struct ptask * p = arg;
    for (int64_t t = i0; t < i1; t++) {
        struct ptask_inner a = { p, t };
        caldera_parallel_for(p->ctx, PT_INNER, 1, ptask_inner, &a);
    }
}

START_TEST(test_parallel_tasks) {
    struct caldera_ctx * ctx = tu_ctx();
    for (int t = 1; t <= 3; t++) {
        caldera_ctx_set_threads(ctx, t);
        for (int round = 0; round < 50; round++) {
            struct ptask * p = calloc(1, sizeof(*p));
            ck_assert_ptr_nonnull(p);
            p->ctx = ctx;
            for (int i = 0; i < PT_TASKS; i++) p->inner[i].hits = calloc(PT_INNER, sizeof(atomic_int));
            caldera_parallel_tasks(ctx, PT_TASKS, ptask_fn, p);
            ck_assert_int_eq(atomic_load(&p->task_calls), t == 1 ? 1 : PT_TASKS);   // serially: one call
            for (int i = 0; i < PT_TASKS; i++) {
                ck_assert_int_eq(atomic_load(&p->task_hits[i]), 1);
                for (int j = 0; j < PT_INNER; j++) {
                    ck_assert_msg(atomic_load(&p->inner[i].hits[j]) == 1, "threads %d, task %d: item %d hit %d times", t, i, j,
                                  atomic_load(&p->inner[i].hits[j]));
                }
                // inside a task the loop is split into its chunks (one call when serial)
                ck_assert_int_eq(atomic_load(&p->inner[i].calls), t == 1 ? 1 : 4 * t);
            }
            // two levels: tasks inside tasks, each with a loop
            caldera_parallel_tasks(ctx, 2, ptask_outer, p);
            for (int j = 0; j < 6 * PT_INNER; j++) ck_assert_int_eq(atomic_load(&p->deep_hits[j]), 1);
            ck_assert_int_eq(atomic_load(&p->deep_calls), 6 * (t == 1 ? 1 : 4 * t));
            // inside a caldera_parallel_for chunk a loop is one serial call, as before
            for (int i = 0; i < PT_TASKS; i++) {
                memset(p->inner[i].hits, 0, PT_INNER * sizeof(atomic_int));
                atomic_store(&p->inner[i].calls, 0);
            }
            caldera_parallel_for(ctx, PT_TASKS, 1, plain_fn, p);
            for (int i = 0; i < PT_TASKS; i++) {
                for (int j = 0; j < PT_INNER; j++) ck_assert_int_eq(atomic_load(&p->inner[i].hits[j]), 1);
                ck_assert_int_eq(atomic_load(&p->inner[i].calls), 1);
                free(p->inner[i].hits);
            }
            free(p);
        }
    }
    caldera_ctx_free(ctx);
}
END_TEST

// caldera_parallel_for_blas: every item's gemm, run inside the threads with single-threaded BLAS,
// against an f64 reference; each index once.
#define PFB_ITEMS 24
#define PFB_TOL   1e-5   // relative to the largest |C| of the item: f32 sums of 64..160 products
struct pfb { struct caldera_ctx * ctx; float * a, * b, * c; int64_t m[PFB_ITEMS], k, n; atomic_int hits[PFB_ITEMS]; atomic_int bad; };

static void pfb_fn(void * arg, int64_t i0, int64_t i1) {
    struct pfb * p = arg;
    for (int64_t i = i0; i < i1; i++) {
        atomic_fetch_add(&p->hits[i], 1);
        struct caldera_tensor ta = caldera_tensor_view_f32(p->a + i * 160 * p->k, p->m[i], p->k);   // (m_i, k)
        struct caldera_tensor tb = caldera_tensor_view_f32(p->b, p->n, p->k);                         // (n, k)
        struct caldera_tensor tc = caldera_tensor_view_f32(p->c + i * 160 * p->n, p->m[i], p->n);    // (m_i, n)
        if (caldera_linalg_gemm(p->ctx, CALDERA_NO_TRANS, CALDERA_TRANS, 1.0f, &ta, &tb, 0.0f, &tc) != 0) atomic_fetch_add(&p->bad, 1);
    }
}

START_TEST(test_parallel_for_blas) {
    struct caldera_ctx * ctx = tu_ctx();
    struct pfb * p = calloc(1, sizeof(*p));
    ck_assert_ptr_nonnull(p);
    p->ctx = ctx;
    p->k = 72;
    p->n = 200;
    p->a = malloc((size_t) (PFB_ITEMS * 160 * p->k) * sizeof(float));
    p->b = malloc((size_t) (p->n * p->k) * sizeof(float));
    p->c = malloc((size_t) (PFB_ITEMS * 160 * p->n) * sizeof(float));
    ck_assert(p->a && p->b && p->c);
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 11);
    for (int64_t i = 0; i < PFB_ITEMS * 160 * p->k; i++) p->a[i] = (float) caldera_rng_normal(&rng);
    for (int64_t i = 0; i < p->n * p->k; i++) p->b[i] = (float) caldera_rng_normal(&rng);
    for (int i = 0; i < PFB_ITEMS; i++) p->m[i] = 64 + 4 * i;   // 64 .. 156 rows
    for (int t = 1; t <= 3; t++) {
        caldera_ctx_set_threads(ctx, t);
        for (int i = 0; i < PFB_ITEMS; i++) atomic_init(&p->hits[i], 0);
        atomic_init(&p->bad, 0);
        memset(p->c, 0, (size_t) (PFB_ITEMS * 160 * p->n) * sizeof(float));
        caldera_parallel_for_blas(ctx, PFB_ITEMS, 1, pfb_fn, p);
        ck_assert_int_eq(atomic_load(&p->bad), 0);
        for (int i = 0; i < PFB_ITEMS; i++) {
            ck_assert_int_eq(atomic_load(&p->hits[i]), 1);
            double emax = 0, cmax = 0;
            for (int64_t r = 0; r < p->m[i]; r++) {
                for (int64_t j = 0; j < p->n; j++) {
                    double ref = 0;
                    for (int64_t q = 0; q < p->k; q++) ref += (double) p->a[(i * 160 + r) * p->k + q] * p->b[j * p->k + q];
                    double e = fabs(p->c[(i * 160 + r) * p->n + j] - ref);
                    emax = e > emax ? e : emax;
                    cmax = fabs(ref) > cmax ? fabs(ref) : cmax;
                }
            }
            ck_assert_msg(emax <= PFB_TOL * cmax, "threads %d, item %d: error %g of max |C| %g", t, i, emax, cmax);
        }
    }
    free(p->a), free(p->b), free(p->c), free(p);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * rng_suite(void) {
    Suite * s = suite_create("rng");
    TCase * tc = tcase_create("rng");
    tcase_add_test(tc, test_rng_known_values);
    tcase_add_test(tc, test_rng_distributions);
    tcase_add_test(tc, test_seed_mix);
    tcase_add_test(tc, test_parallel_for);
    tcase_add_test(tc, test_parallel_for_blas);
    tcase_add_test(tc, test_parallel_tasks);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(rng_suite)
