// SPDX-License-Identifier: MIT
// Stress test of the thread pool (ctx.c): random trees of caldera_parallel_tasks and
// caldera_parallel_for calls nested up to 3 levels deep (plus chains deeper than the pool's 8
// slots), random grains, tasks that fail, 2-4 threads with the thread count changing between
// calls. Every index of every call must run exactly once (atomic counters), every call must return
// only after all its indexes ran (a parent sums its child's outputs right after the nested call),
// the outputs must equal a serial computation of the same tree, and the failures must reach the
// caller. A watchdog alarm turns a hang into a failure. `test-pool --long` (label slow) runs more
// trees.
#include "testutil.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POOL_MAX_DEPTH  3     // nesting levels below the top call of a random tree
#define POOL_MAX_NODES  400   // calls per random tree (a tree stops growing here)
#define POOL_WATCHDOG_S 120   // seconds before a hung case fails (the default run takes ~1 s)

// One call of the tree: kind (tasks or for), n indexes, grain (for), and per index an optional
// nested call and whether the index fails. out[i]: the index's value; hits[i]: how often it ran.
struct pnode {
    int              tasks;   // 1: caldera_parallel_tasks, 0: caldera_parallel_for
    int64_t          n, grain;
    int              id, depth;
    struct pnode **  child;   // n entries, NULL: a leaf index
    unsigned char *  fail;    // n entries
    uint64_t *       out;     // written by the index's thread, read by the caller after the call
    atomic_int *     hits;
    atomic_int       rc;      // the first failure of the call (0: none)
    atomic_int       calls;   // calls of the function (one per chunk; one in all when serial)
};

struct ptree {
    struct pnode * node[POOL_MAX_NODES];
    int            count;
    struct caldera_ctx * ctx;
};

static uint64_t mix64(uint64_t x) {   // splitmix64's finaliser
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// a few hundred cycles of work per index, so that chunks overlap on the threads
static uint64_t leaf_value(const struct pnode * nd, int64_t i) {
    uint64_t h = mix64(((uint64_t) nd->id << 32) ^ (uint64_t) i);
    for (int k = 0; k < 64; k++) h = mix64(h + (uint64_t) k);
    return h;
}

static int node_code(const struct pnode * nd) { return -1000 - nd->id; }

// A call of n indexes without nested calls or failures, added to the tree.
static struct pnode * node_alloc(struct ptree * t, int depth, int tasks, int64_t n, int64_t grain) {
    ck_assert_int_lt(t->count, POOL_MAX_NODES);
    struct pnode * nd = calloc(1, sizeof(*nd));
    ck_assert_ptr_nonnull(nd);
    nd->id    = t->count;
    nd->depth = depth;
    nd->tasks = tasks;
    nd->n     = n;
    nd->grain = grain;
    nd->child = calloc((size_t) n, sizeof(*nd->child));
    nd->fail  = calloc((size_t) n, 1);
    nd->out   = calloc((size_t) n, sizeof(*nd->out));
    nd->hits  = calloc((size_t) n, sizeof(*nd->hits));
    ck_assert(nd->child && nd->fail && nd->out && nd->hits);
    t->node[t->count++] = nd;
    return nd;
}

static struct pnode * node_new(struct ptree * t, struct caldera_rng * rng, int depth, int max_depth) {
    if (t->count >= POOL_MAX_NODES) return NULL;
    const int     tasks = caldera_rng_u64(rng) % 2 == 0;
    const int64_t n     = tasks ? 1 + (int64_t) (caldera_rng_u64(rng) % 6) : 1 + (int64_t) (caldera_rng_u64(rng) % 300);
    int64_t grain = 1 + (int64_t) (caldera_rng_u64(rng) % (uint64_t) (caldera_rng_u64(rng) % 4 == 0 ? n : 1 + n / 8));
    if (caldera_rng_u64(rng) % 8 == 0) grain = 0;   // below 1: taken as 1
    struct pnode * nd = node_alloc(t, depth, tasks, n, grain);
    // tasks open nested calls often, loops rarely (a loop of 300 indexes would open 300)
    const uint64_t nest_pct = nd->tasks ? 70 : 3;
    for (int64_t i = 0; i < nd->n; i++) {
        if (depth < max_depth && caldera_rng_u64(rng) % 100 < nest_pct) nd->child[i] = node_new(t, rng, depth + 1, max_depth);
        nd->fail[i] = caldera_rng_u64(rng) % 40 == 0;
    }
    return nd;
}

static void tree_free(struct ptree * t) {
    for (int k = 0; k < t->count; k++) {
        struct pnode * nd = t->node[k];
        free(nd->child), free(nd->fail), free(nd->out), free(nd->hits), free(nd);
    }
    t->count = 0;
}

static void node_reset(struct ptree * t) {
    for (int k = 0; k < t->count; k++) {
        struct pnode * nd = t->node[k];
        memset(nd->out, 0, (size_t) nd->n * sizeof(*nd->out));
        for (int64_t i = 0; i < nd->n; i++) atomic_store(&nd->hits[i], 0);
        atomic_store(&nd->rc, 0);
        atomic_store(&nd->calls, 0);
    }
}

// The serial reference: the value of index i is its leaf value plus the sum of its nested call's
// values; a call fails when one of its indexes fails or one of their nested calls does.
static uint64_t ref_sum(const struct pnode * nd, int * failed) {
    uint64_t s = 0;
    for (int64_t i = 0; i < nd->n; i++) {
        uint64_t v = leaf_value(nd, i);
        if (nd->child[i]) v += ref_sum(nd->child[i], failed);
        if (nd->fail[i]) *failed = 1;
        s += v;
    }
    return s;
}

static int subtree_has_code(const struct pnode * nd, int code) {
    if (node_code(nd) == code) return 1;
    for (int64_t i = 0; i < nd->n; i++) {
        if (nd->child[i] && subtree_has_code(nd->child[i], code)) return 1;
    }
    return 0;
}

struct pcall { struct ptree * t; struct pnode * nd; };
static void run_node(struct ptree * t, struct pnode * nd);

static void node_fn(void * arg, int64_t i0, int64_t i1) {
    const struct pcall * c = arg;
    struct pnode *       nd = c->nd;
    atomic_fetch_add(&nd->calls, 1);
    for (int64_t i = i0; i < i1; i++) {
        atomic_fetch_add(&nd->hits[i], 1);
        uint64_t v  = leaf_value(nd, i);
        int      rc = nd->fail[i] ? node_code(nd) : 0;
        struct pnode * ch = nd->child[i];
        if (ch) {
            run_node(c->t, ch);
            // the nested call has returned: every one of its indexes must have run and written
            for (int64_t k = 0; k < ch->n; k++) v += ch->out[k];
            int crc = atomic_load(&ch->rc);
            if (crc < 0 && rc == 0) rc = crc;
        }
        nd->out[i] = v;
        if (rc < 0) {
            int none = 0;
            atomic_compare_exchange_strong(&nd->rc, &none, rc);
        }
    }
}

static void run_node(struct ptree * t, struct pnode * nd) {
    struct pcall c = { t, nd };
    if (nd->tasks) {
        caldera_parallel_tasks(t->ctx, nd->n, node_fn, &c);
    } else {
        caldera_parallel_for(t->ctx, nd->n, nd->grain, node_fn, &c);
    }
}

// The calls of nd's function, run in a chunk (in_job) of a job whose loops may be published
// (nest), and those of its nested calls: one in all where the loop must run serially (one thread,
// one chunk, or inside a chunk of a plain caldera_parallel_for), one per chunk at the top level, and
// either inside a task (serially when all 8 slots of the pool are open).
static void check_calls(const struct pnode * nd, int in_job, int nest, int threads, const char * what) {
    const int64_t grain  = nd->grain < 1 ? 1 : nd->grain;
    const int64_t chunks = nd->tasks ? nd->n : nd->n / grain < 4 * threads ? nd->n / grain : 4 * threads;
    const int     calls  = atomic_load(&nd->calls);
    int           child_in_job = in_job, child_nest = nest;
    if (threads <= 1 || chunks <= 1 || (in_job && !nest)) {
        ck_assert_msg(calls == 1, "%s, threads %d: call %d (%s, n %lld, %lld chunks, in a chunk %d, nested %d) must be one "
                      "serial call; made %d", what, threads, nd->id, nd->tasks ? "tasks" : "for", (long long) nd->n,
                      (long long) chunks, in_job, nest, calls);
    } else if (!in_job) {
        ck_assert_msg(calls == chunks, "%s, threads %d: call %d (%s, n %lld): %d calls for %lld chunks", what, threads, nd->id,
                      nd->tasks ? "tasks" : "for", (long long) nd->n, calls, (long long) chunks);
        child_in_job = 1;
        child_nest   = nd->tasks;   // inside a plain loop nested calls run serially
    } else {
        ck_assert_msg(calls == chunks || calls == 1, "%s, threads %d: call %d (%s, n %lld, nested): %d calls for %lld chunks",
                      what, threads, nd->id, nd->tasks ? "tasks" : "for", (long long) nd->n, calls, (long long) chunks);
        child_in_job = 1;
        child_nest   = 1;   // published (loops inside may be published) or serially inside a task
    }
    for (int64_t i = 0; i < nd->n; i++) {
        if (nd->child[i]) check_calls(nd->child[i], child_in_job, child_nest, threads, what);
    }
}

// Run the tree from its root and check every call against the serial reference.
static void tree_check(struct ptree * t, const char * what, int threads) {
    node_reset(t);
    run_node(t, t->node[0]);
    check_calls(t->node[0], 0, 0, threads, what);
    for (int k = 0; k < t->count; k++) {
        const struct pnode * nd = t->node[k];
        for (int64_t i = 0; i < nd->n; i++) {
            ck_assert_msg(atomic_load(&nd->hits[i]) == 1, "%s, threads %d: call %d (%s, n %lld, depth %d), index %lld ran %d times",
                          what, threads, k, nd->tasks ? "tasks" : "for", (long long) nd->n, nd->depth, (long long) i,
                          atomic_load(&nd->hits[i]));
        }
        int      failed = 0;
        uint64_t got = 0, want = ref_sum(nd, &failed);
        for (int64_t i = 0; i < nd->n; i++) got += nd->out[i];
        ck_assert_msg(got == want, "%s, threads %d: call %d (%s, n %lld, depth %d): sum %llx, serially %llx", what, threads, k,
                      nd->tasks ? "tasks" : "for", (long long) nd->n, nd->depth, (unsigned long long) got,
                      (unsigned long long) want);
        int rc = atomic_load(&nd->rc);
        ck_assert_msg((rc < 0) == failed, "%s, threads %d: call %d: rc %d, a failure expected: %d", what, threads, k, rc, failed);
        ck_assert_msg(rc == 0 || subtree_has_code(nd, rc), "%s, threads %d: call %d: rc %d is no failure of its calls", what,
                      threads, k, rc);
    }
}

static int g_long;   // test-pool --long

static void watchdog(void) { alarm(POOL_WATCHDOG_S * (g_long ? 10 : 1)); }   // SIGALRM ends the process: a failure

// Random trees at depths 0-3, each run at a thread count drawn from 2-4 (1 now and then) that
// changes between the calls, so the pool is freed and made again while its workers still spin.
START_TEST(test_pool_random_trees) {
    watchdog();
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_rng   rng;
    caldera_rng_seed(&rng, 20261130);
    const int trees = g_long ? 3000 : 100, reps = 4;
    int64_t   calls = 0;
    for (int k = 0; k < trees; k++) {
        struct ptree t = { .ctx = ctx };
        node_new(&t, &rng, 0, (int) (caldera_rng_u64(&rng) % (POOL_MAX_DEPTH + 1)));
        for (int r = 0; r < reps; r++) {
            int threads = caldera_rng_u64(&rng) % 10 == 0 ? 1 : 2 + (int) (caldera_rng_u64(&rng) % 3);
            caldera_ctx_set_threads(ctx, threads);
            char what[64];
            snprintf(what, sizeof(what), "tree %d, run %d", k, r);
            tree_check(&t, what, threads);
            calls += t.count;
        }
        tree_free(&t);
    }
    ck_assert_int_gt(calls, (int64_t) trees * reps);
    caldera_ctx_free(ctx);
    alarm(0);
}
END_TEST

// A chain of 2-task calls nested 11 deep (more open calls than the pool's 8 slots: the deepest run
// serially inside their task), ending in loops; the whole chain run again and again at 2-4 threads.
static struct pnode * chain_new(struct ptree * t, int depth, int levels) {
    struct pnode * nd = node_alloc(t, depth, depth < levels, depth < levels ? 2 : 48, 1);
    if (nd->tasks) {
        nd->child[0] = chain_new(t, depth + 1, levels);   // task 0 goes deeper, task 1 is a loop
        nd->child[1] = chain_new(t, levels, levels);
    }
    nd->fail[0] = depth == levels;   // every leaf loop fails at its index 0
    return nd;
}

START_TEST(test_pool_deep_chain) {
    watchdog();
    struct caldera_ctx * ctx = tu_ctx();
    struct ptree         t = { .ctx = ctx };
    chain_new(&t, 0, 11);
    const int reps = g_long ? 2000 : 150;
    for (int r = 0; r < reps; r++) {
        int threads = 2 + r % 3;
        caldera_ctx_set_threads(ctx, threads);
        tree_check(&t, "deep chain", threads);
        // 11 nested calls of 2 tasks are open at once (each waits for its task 0) and 8 slots: >= 3 ran serially
        int serial = 0;
        for (int k = 0; k < t.count; k++) serial += t.node[k]->tasks && atomic_load(&t.node[k]->calls) == 1;
        ck_assert_msg(serial >= 3, "deep chain, threads %d: %d of the nested tasks calls ran serially", threads, serial);
    }
    tree_free(&t);
    caldera_ctx_free(ctx);
    alarm(0);
}
END_TEST

// Many short calls back to back in the same slot with chunk counts that alternate (2 tasks, then
// a loop of 16 chunks): a worker scanning the slots sees a closed job's ticket while the next job
// of the slot is being written.
START_TEST(test_pool_slot_reuse) {
    watchdog();
    struct caldera_ctx * ctx = tu_ctx();
    struct ptree         t = { .ctx = ctx };
    struct pnode * a = node_alloc(&t, 0, 1, 2, 1);    // 2 tasks
    struct pnode * b = node_alloc(&t, 0, 0, 64, 1);   // a loop of 64, grain 1: 8-16 chunks
    const int reps = g_long ? 400000 : 8000;
    for (int r = 0; r < reps; r++) {
        if (r % 2000 == 0) caldera_ctx_set_threads(ctx, 2 + (r / 2000) % 3);
        struct pnode * nd = r % 2 ? b : a;
        for (int64_t i = 0; i < nd->n; i++) atomic_store(&nd->hits[i], 0);
        run_node(&t, nd);
        for (int64_t i = 0; i < nd->n; i++) {
            ck_assert_msg(atomic_load(&nd->hits[i]) == 1, "call %d (%s): index %lld ran %d times", r, nd->tasks ? "tasks" : "for",
                          (long long) i, atomic_load(&nd->hits[i]));
            ck_assert_msg(nd->out[i] == leaf_value(nd, i), "call %d: index %lld has a wrong value", r, (long long) i);
        }
    }
    tree_free(&t);
    caldera_ctx_free(ctx);
    alarm(0);
}
END_TEST

static Suite * pool_suite(void) {
    Suite *            s      = suite_create("pool");
    static const char * names[] = { "random-trees", "deep-chain", "slot-reuse" };
    const TTest *      tests[]  = { test_pool_random_trees, test_pool_deep_chain, test_pool_slot_reuse };
    for (int i = 0; i < 3; i++) {   // one case each (CK_RUN_CASE=name runs one)
        TCase * tc = tcase_create(names[i]);
        tcase_set_timeout(tc, POOL_WATCHDOG_S * (g_long ? 10 : 1));
        tcase_add_test(tc, tests[i]);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(int argc, char ** argv) {
    g_long = argc > 1 && strcmp(argv[1], "--long") == 0;
    return tu_run(pool_suite());
}
