// SPDX-License-Identifier: MIT
// Library context: logging with a settable callback, the last error message, threads, device,
// cancellation, the core's parallel loop, the random generator and atomic file output.
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "internal.h"
#include "linalg_cuda.h"

static void log_stderr(enum caldera_log_level level, const char * msg, void * user) {
    (void) user;
    static const char * tags[] = { "error", "warning", "info", "debug" };
    fprintf(stderr, "caldera %s: %s\n", tags[level], msg);
}

static int env_log_level(enum caldera_log_level * out) {
    const char * e = getenv("CALDERA_LOG");
    if (!e || !*e) return 0;
    static const char * names[] = { "error", "warn", "info", "debug" };
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(e, names[i]) == 0) {
            *out = (enum caldera_log_level) i;
            return 1;
        }
    }
    return 0;
}

static int cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int) n : 1;
}

int caldera_ctx_init(struct caldera_ctx ** out) {
    *out = NULL;
    struct caldera_ctx * ctx = caldera_calloc(1, sizeof(*ctx));
    if (!ctx) return CALDERA_ERR_NOMEM;
    ctx->log_fn    = log_stderr;
    ctx->log_level = CALDERA_LOG_INFO;
    env_log_level(&ctx->log_level);
    ctx->device = CALDERA_DEVICE_CPU;
    caldera_ctx_set_threads(ctx, 0);
    int rc = caldera_registry_add_builtins(ctx);
    if (rc < 0) {
        caldera_ctx_free(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

void caldera_ctx_free(struct caldera_ctx * ctx) {
    if (!ctx) return;
    caldera_pool_free(ctx->pool);
    caldera_cuda_ctx_free(ctx);
    caldera_registry_free(ctx);
    caldera_free(ctx);
}

void caldera_ctx_set_log(struct caldera_ctx * ctx, caldera_log_fn fn, void * user) {
    ctx->log_fn   = fn ? fn : log_stderr;
    ctx->log_user = fn ? user : NULL;
}

void caldera_ctx_set_log_level(struct caldera_ctx * ctx, enum caldera_log_level level) {
    ctx->log_level = level;
    env_log_level(&ctx->log_level);   // the environment wins, as documented
}

enum caldera_log_level caldera_ctx_log_level(const struct caldera_ctx * ctx) { return ctx->log_level; }

int caldera_ctx_set_threads(struct caldera_ctx * ctx, int threads) {
    if (threads < 0) return caldera_ctx_error(ctx, CALDERA_ERR_RANGE, "threads = %d; allowed: 0 (all cores) or more", threads);
    ctx->threads = threads ? threads : cpu_count();
    caldera_blas_set_threads(ctx->threads);
    return 0;
}

int caldera_ctx_threads(const struct caldera_ctx * ctx) { return ctx->threads; }

int caldera_ctx_set_device(struct caldera_ctx * ctx, enum caldera_device device) {
    if (device != CALDERA_DEVICE_CPU && device != CALDERA_DEVICE_CUDA) {
        return caldera_ctx_error(ctx, CALDERA_ERR_INVAL, "device %d; allowed: cpu (0), cuda (1)", (int) device);
    }
    if (device == CALDERA_DEVICE_CUDA) {
        char why[1024];
        if (caldera_cuda_probe(why, sizeof(why)) <= 0) {
#ifdef CALDERA_CUDA_MODULE
            return caldera_ctx_error(ctx, CALDERA_ERR_DEVICE, "device 'cuda': no usable CUDA device (%s); allowed: cpu", why);
#else
            return caldera_ctx_error(ctx, CALDERA_ERR_UNSUPPORTED, "device 'cuda': %s; allowed: cpu", why);
#endif
        }
    }
    ctx->device = device;
    return 0;
}

enum caldera_device caldera_ctx_device(const struct caldera_ctx * ctx) { return ctx->device; }

void caldera_ctx_cancel(struct caldera_ctx * ctx) { atomic_store(&ctx->cancelled, 1); }
int  caldera_ctx_cancelled(const struct caldera_ctx * ctx) { return atomic_load(&ctx->cancelled); }

// ---------------------------------------------------------------------------------------------
// Logging and errors

void caldera_log_prefixed(struct caldera_ctx * ctx, enum caldera_log_level level, const char * prefix,
                          const char * fmt, va_list ap) {
    if (!ctx || level > ctx->log_level) return;
    char buf[4096];
    size_t n = prefix ? caldera_strlcpy(buf, prefix, sizeof(buf)) : 0;
    if (n >= sizeof(buf)) n = sizeof(buf) - 1;
    vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
    ctx->log_fn(level, buf, ctx->log_user);
}

void caldera_log(struct caldera_ctx * ctx, enum caldera_log_level level, const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    caldera_log_prefixed(ctx, level, NULL, fmt, ap);
    va_end(ap);
}

static void inst_prefix(const struct caldera_inst * inst, char * buf, size_t n) {
    snprintf(buf, n, "[%s] %s: ", inst->name ? inst->name : "?",
             inst->plugin && inst->plugin->name ? inst->plugin->name : "?");
}

void caldera_inst_log(const struct caldera_inst * inst, enum caldera_log_level level, const char * fmt, ...) {
    if (!inst) return;
    char prefix[128];
    inst_prefix(inst, prefix, sizeof(prefix));
    va_list ap;
    va_start(ap, fmt);
    caldera_log_prefixed(inst->ctx, level, prefix, fmt, ap);
    va_end(ap);
}

// A thread that set a buffer of its own (a worker of a phase that runs several jobs at once) gets
// its errors there instead of in the context's one message, so that concurrent failures neither mix
// nor overwrite each other; caldera_ctx_errmsg on that thread reads the same buffer.
static _Thread_local char * tl_errmsg;

char * caldera_ctx_thread_errmsg(char * buf) {
    char * old = tl_errmsg;
    tl_errmsg  = buf;
    return old;
}

int caldera_error(const struct caldera_inst * inst, int code, const char * fmt, ...) {
    if (!inst || !inst->ctx) return code;
    struct caldera_ctx * ctx = inst->ctx;
    // formatted into a copy first: an argument may be the context's own message
    // (caldera_error(inst, rc, "...: %s", caldera_ctx_errmsg(ctx)), passing on a core error)
    char msg[sizeof(ctx->errmsg)];
    inst_prefix(inst, msg, sizeof(msg));
    size_t n = strlen(msg);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + n, sizeof(msg) - n, fmt, ap);
    va_end(ap);
    memcpy(tl_errmsg ? tl_errmsg : ctx->errmsg, msg, sizeof(msg));
    caldera_log(ctx, CALDERA_LOG_DEBUG, "error (%s): %s", caldera_status_str(code), msg);
    return code;
}

int caldera_ctx_error(struct caldera_ctx * ctx, int code, const char * fmt, ...) {
    if (!ctx) return code;
    char msg[sizeof(ctx->errmsg)];   // an argument may be the context's own message
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    memcpy(tl_errmsg ? tl_errmsg : ctx->errmsg, msg, sizeof(msg));
    caldera_log(ctx, CALDERA_LOG_DEBUG, "error (%s): %s", caldera_status_str(code), msg);
    return code;
}

const char * caldera_ctx_errmsg(const struct caldera_ctx * ctx) { return !ctx ? "" : tl_errmsg ? tl_errmsg : ctx->errmsg; }

// ---------------------------------------------------------------------------------------------
// Parallel loop: a pool of threads-1 workers that help with whatever loops are open. A loop is
// published in one of POOL_SLOTS slots as `chunks` contiguous ranges handed out through one atomic
// ticket (job id << 32 | next chunk): a thread claims a chunk by a compare-and-swap that fails once
// the slot holds another job, so the issuer never waits for a thread that has not woken up (on a
// loaded machine it may not run for milliseconds; the issuer then does every chunk itself), only
// for chunks already being run. Between jobs a worker spins (POOL_SPIN polls with a pause, ~100 µs
// on this Zen 4: a pause is 26 ns) and then sleeps on a condition variable: a decoded token runs a
// few hundred short loops, and a futex wake-up per loop cost more than the loops; unbounded
// spinning (OpenMP's) made 2 threads 4-13x slower than 1 on a loaded 2-core VM, and OpenBLAS's
// pthread build runs its own pool beside ours.
//
// Nesting: a loop called from inside a chunk runs serially, except inside the tasks of
// caldera_parallel_tasks (and the loops those open): there it is published in a free slot one
// level deeper, and threads out of work help with it (an idle worker takes the shallowest open
// chunk first: whole tasks before pieces of one; an issuer waiting for its chunks takes chunks of
// loops at its own depth or deeper only, so that it never starts a long task while its own loop is
// about to finish). Results do not depend on who runs a chunk: the split of [0, n) is the same.

#define POOL_SPIN  4000
#define POOL_SLOTS 8

typedef void (*pool_fn)(void *, int64_t, int64_t);

// The ticket's chunk field while the issuer writes a job into its slot: no chunk is open (it is >=
// any job's chunk count), and the id in it is already the new job's.
#define POOL_CLOSED 0xFFFFFFFFull

struct pool_job {
    atomic_int    busy;     // 0: free, 1: an issuer owns the slot
    atomic_ullong ticket;   // id << 32 | next chunk to hand out (ids count per slot, mod 2^32)
    atomic_llong  done;     // chunks finished
    // the job: written (release) by the issuer after it closed the ticket under the new id and
    // before it opens it; read (acquire) before a claim, which the ticket's compare-and-swap checks
    _Atomic(pool_fn) fn;
    _Atomic(void *)  arg;
    atomic_llong     items, chunks;
    atomic_int       depth, nest;
} __attribute__((aligned(64)));

struct caldera_pool {
    pthread_t *     th;
    int             n;          // workers (the caller is the other thread)
    int             want;       // workers asked for (n is fewer when a thread could not be created)
    pthread_mutex_t mu;
    pthread_cond_t  cv_work;
    atomic_uint     pulse;      // publications so far (mod 2^32): a change wakes the workers
    atomic_int      stop;
    atomic_int      sleepers;   // workers waiting on cv_work
    struct pool_job job[POOL_SLOTS];
};

static _Thread_local int tl_in_job;   // running a chunk
static _Thread_local int tl_depth;    // depth of that chunk's job
static _Thread_local int tl_nest;     // loops inside it may be published (caldera_parallel_tasks)

static inline void pool_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Item c * items / chunks, the start of chunk c (c <= chunks), without overflow: items = q chunks
// + r, and c r < chunks² < 2^64 (chunks < 2^32).
static inline int64_t pool_split(int64_t items, int64_t c, int64_t chunks) {
    const uint64_t q = (uint64_t) items / (uint64_t) chunks, r = (uint64_t) items % (uint64_t) chunks;
    return (int64_t) ((uint64_t) c * q + (uint64_t) c * r / (uint64_t) chunks);
}

// Claim one chunk of slot j and run it; 0 when the slot has none left.
//
// The fields are read before the claim, so they may belong to a job the issuer is still writing:
// the claim's compare-and-swap must then fail. It does because the issuer first replaces the
// ticket by (new id, POOL_CLOSED) and writes the fields after it with release stores: a field
// read (acquire) from the new job orders that ticket before the compare-and-swap, which then finds
// another id than t's. (With the fields written before the ticket changed, a thread holding the old
// job's exhausted ticket id | n could read the new job's larger chunk count and claim chunk n of
// the new job, which its issuer hands out again; the spare done then let the issuer return while
// a chunk ran.) A t of the new job was read (acquire) after its fields were written.
static int pool_run_one(struct pool_job * j) {
    unsigned long long t = atomic_load(&j->ticket);
    for (;;) {
        pool_fn fn     = atomic_load_explicit(&j->fn, memory_order_acquire);
        void *  arg    = atomic_load_explicit(&j->arg, memory_order_acquire);
        int64_t items  = atomic_load_explicit(&j->items, memory_order_acquire);
        int64_t chunks = atomic_load_explicit(&j->chunks, memory_order_acquire);
        int     depth  = atomic_load_explicit(&j->depth, memory_order_acquire);
        int     nest   = atomic_load_explicit(&j->nest, memory_order_acquire);
        int64_t c      = (int64_t) (t & 0xFFFFFFFFull);
        if (c >= chunks) return 0;
        if (!atomic_compare_exchange_weak(&j->ticket, &t, t + 1)) continue;   // t reloaded: lost the race, or a new job
        int64_t i0 = pool_split(items, c, chunks), i1 = pool_split(items, c + 1, chunks);
        int     in = tl_in_job, d = tl_depth, ns = tl_nest;
        tl_in_job = 1;
        tl_depth  = depth;
        tl_nest   = nest;
        if (i1 > i0) fn(arg, i0, i1);
        tl_in_job = in;
        tl_depth  = d;
        tl_nest   = ns;
        atomic_fetch_add(&j->done, 1);
        return 1;
    }
}

// Run one open chunk of a job at depth >= min_depth, the shallowest first; 0 when there is none.
static int pool_help(struct caldera_pool * p, int min_depth) {
    for (;;) {
        struct pool_job * best = NULL;
        int               bd   = 0;
        for (int s = 0; s < POOL_SLOTS; s++) {
            struct pool_job *  j = &p->job[s];
            unsigned long long t = atomic_load_explicit(&j->ticket, memory_order_relaxed);
            int                d = atomic_load_explicit(&j->depth, memory_order_relaxed);
            if ((int64_t) (t & 0xFFFFFFFFull) < atomic_load_explicit(&j->chunks, memory_order_relaxed) && d >= min_depth &&
                (!best || d < bd)) {
                best = j;
                bd   = d;
            }
        }
        if (!best) return 0;
        if (pool_run_one(best)) return 1;   // else claimed by another thread meanwhile: look again
    }
}

// A lost wake-up is excluded by the seq_cst pairs (sleepers++, read pulse) here and (pulse++, read
// sleepers) in the issuer; a job published after `seen` was read changes the pulse.
static void * pool_worker(void * arg) {
    struct caldera_pool * p = arg;
    for (;;) {
        unsigned seen = atomic_load(&p->pulse);
        while (pool_help(p, 0)) {}
        for (int i = 0; i < POOL_SPIN && atomic_load(&p->pulse) == seen && !atomic_load(&p->stop); i++) pool_pause();
        if (atomic_load(&p->pulse) == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->pulse) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv_work, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
    }
    return NULL;
}

void caldera_pool_free(struct caldera_pool * p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n; i++) pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_work);
    caldera_free(p->th);
    caldera_free(p);
}

static struct caldera_pool * pool_new(int workers) {
    struct caldera_pool * p = caldera_calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->th = caldera_calloc((size_t) workers, sizeof(pthread_t));
    if (!p->th) {
        caldera_free(p);
        return NULL;
    }
    p->want = workers;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_work, NULL);
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&p->th[i], NULL, pool_worker, p) != 0) break;
        p->n++;
    }
    return p;
}

// fn over [0, n) in `chunks` chunks on the pool, nest: loops inside the chunks may be published.
// Serially (on the calling thread) when there is no pool or inside a chunk that allows no nesting.
static void pool_loop(struct caldera_ctx * ctx, int64_t n, int64_t chunks, int nest, pool_fn fn, void * arg) {
    int threads = ctx ? ctx->threads : 1;
    if (threads <= 1 || chunks <= 1 || (tl_in_job && !tl_nest)) {
        fn(arg, 0, n);
        return;
    }
    if (!tl_in_job && ctx->pool && ctx->pool->want != threads - 1) {
        caldera_pool_free(ctx->pool);
        ctx->pool = NULL;
    }
    if (!ctx->pool && (tl_in_job || !(ctx->pool = pool_new(threads - 1)))) {
        fn(arg, 0, n);   // no pool (out of memory or threads): still correct, serially
        return;
    }
    struct caldera_pool * p = ctx->pool;
    struct pool_job *     j = NULL;
    for (int s = 0; s < POOL_SLOTS && !j; s++) {
        int zero = 0;
        if (atomic_compare_exchange_strong(&p->job[s].busy, &zero, 1)) j = &p->job[s];
    }
    if (!j) {   // every slot open (deep nesting): serially
        fn(arg, 0, n);
        return;
    }
    const int depth = tl_in_job ? tl_depth + 1 : 0;
    unsigned  id    = (unsigned) (atomic_load_explicit(&j->ticket, memory_order_relaxed) >> 32) + 1u;   // the slot's next id
    // the old job's ticket (id | its chunk count) can no longer be claimed; the new id first, closed
    // (pool_run_one says why), then the fields, then the ticket opened
    atomic_store_explicit(&j->ticket, (unsigned long long) id << 32 | POOL_CLOSED, memory_order_relaxed);
    atomic_store_explicit(&j->fn, fn, memory_order_release);
    atomic_store_explicit(&j->arg, arg, memory_order_release);
    atomic_store_explicit(&j->items, n, memory_order_release);
    atomic_store_explicit(&j->chunks, chunks, memory_order_release);
    atomic_store_explicit(&j->depth, depth, memory_order_release);
    atomic_store_explicit(&j->nest, nest, memory_order_release);
    atomic_store(&j->done, 0);
    atomic_store(&j->ticket, (unsigned long long) id << 32);   // publishes the job (seq_cst)
    atomic_fetch_add(&p->pulse, 1u);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
    }
    while (pool_run_one(j)) {}
    // every chunk is claimed; wait for the ones other threads still run, helping with loops at
    // this depth or deeper meanwhile
    for (long i = 0; atomic_load(&j->done) < chunks;) {
        if (pool_help(p, depth)) continue;
        if (i++ < POOL_SPIN) {
            pool_pause();
        } else {
            sched_yield();
        }
    }
    atomic_store(&j->busy, 0);
}

void caldera_parallel_for(struct caldera_ctx * ctx, int64_t n, int64_t grain, pool_fn fn, void * arg) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int     threads = ctx ? ctx->threads : 1;
    int64_t pieces  = n / grain;   // chunks of at least grain items, as promised
    // up to 4 chunks per thread so that uneven chunks balance; never smaller than grain
    int64_t chunks = pieces < 4 * (int64_t) threads ? pieces : 4 * (int64_t) threads;
    pool_loop(ctx, n, chunks, tl_in_job && tl_nest, fn, arg);
}

void caldera_parallel_tasks(struct caldera_ctx * ctx, int64_t n, pool_fn fn, void * arg) {
    if (n <= 0) return;
    if (n > 0xFFFFFFFFll) {   // more tasks than a ticket counts: as a loop
        caldera_parallel_for(ctx, n, 1, fn, arg);
        return;
    }
    pool_loop(ctx, n, n, 1, fn, arg);
}

int caldera_parallel_nested(void) { return tl_in_job && tl_nest; }

void caldera_parallel_for_blas(struct caldera_ctx * ctx, int64_t n, int64_t grain, pool_fn fn, void * arg) {
    int threads = ctx ? ctx->threads : 1;
    if (ctx && ctx->device != CALDERA_DEVICE_CPU) {   // linalg may route to the device: its handles are per context
        fn(arg, 0, n);
        return;
    }
    if (tl_in_job) {   // BLAS inside a chunk: serially, on this thread
        fn(arg, 0, n);
        return;
    }
    if (threads <= 1 || n / (grain < 1 ? 1 : grain) <= 1) {   // serial: BLAS keeps its threads
        caldera_parallel_for(ctx, n, grain, fn, arg);
        return;
    }
    caldera_blas_set_threads(1);
    caldera_parallel_for(ctx, n, grain, fn, arg);
    caldera_blas_set_threads(threads);
}

// ---------------------------------------------------------------------------------------------
// Random numbers: xoshiro256** (Blackman & Vigna), seeded with splitmix64.

static uint64_t splitmix64(uint64_t * x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void caldera_rng_seed(struct caldera_rng * rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t caldera_rng_u64(struct caldera_rng * rng) {
    uint64_t * s = rng->s;
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

double caldera_rng_uniform(struct caldera_rng * rng) {
    return (double) (caldera_rng_u64(rng) >> 11) * 0x1.0p-53;
}

double caldera_rng_normal(struct caldera_rng * rng) {
    // Box–Muller; one draw per call keeps the stream simple and reproducible.
    double u1 = caldera_rng_uniform(rng), u2 = caldera_rng_uniform(rng);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t caldera_seed_mix(uint64_t seed, const char * str) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char * p = (const unsigned char *) (str ? str : ""); *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    uint64_t x = seed ^ h;
    return splitmix64(&x);
}

// ---------------------------------------------------------------------------------------------
// Atomic output files.

int caldera_atomic_open(struct caldera_ctx * ctx, const char * path, struct caldera_atomic_file * af) {
    memset(af, 0, sizeof(*af));
    af->path = caldera_strdup(path);
    af->tmp  = caldera_asprintf("%s.tmp.%ld", path, (long) getpid());
    if (!af->path || !af->tmp) {
        caldera_atomic_abort(af);
        return CALDERA_ERR_NOMEM;
    }
    af->fp = fopen(af->tmp, "wb");
    if (!af->fp) {
        int e = errno;
        int rc = caldera_ctx_error(ctx, CALDERA_ERR_IO, "%s: cannot create: %s", af->tmp, strerror(e));
        caldera_atomic_abort(af);
        return rc;
    }
    return 0;
}

int caldera_atomic_commit(struct caldera_ctx * ctx, struct caldera_atomic_file * af) {
    int rc = 0;
    FILE * fp = af->fp;
    af->fp = NULL;
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_IO, "%s: write failed: %s", af->tmp, strerror(errno));
    }
    if (fclose(fp) != 0 && rc == 0) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_IO, "%s: close failed: %s", af->tmp, strerror(errno));
    }
    if (rc == 0 && rename(af->tmp, af->path) != 0) {
        rc = caldera_ctx_error(ctx, CALDERA_ERR_IO, "%s: rename to %s failed: %s", af->tmp, af->path, strerror(errno));
    }
    if (rc != 0) unlink(af->tmp);
    caldera_freep(&af->path);
    caldera_freep(&af->tmp);
    return rc;
}

// Is name "<base>.tmp.<pid>" or "<base>.<word>.tmp.<pid>" (word [a-z]+)? The pid in *pid.
static int stale_tmp_name(const char * name, const char * base, long * pid) {
    size_t bl = strlen(base);
    if (strncmp(name, base, bl) != 0 || name[bl] != '.') return 0;
    const char * p = name + bl + 1;
    if (strncmp(p, "tmp.", 4) != 0) {
        while (*p >= 'a' && *p <= 'z') p++;
        if (p == name + bl + 1 || *p != '.' || strncmp(p + 1, "tmp.", 4) != 0) return 0;
        p++;
    }
    p += 4;
    if (*p < '1' || *p > '9') return 0;
    char * end;
    errno = 0;
    long v = strtol(p, &end, 10);
    if (errno || *end || v <= 0) return 0;
    *pid = v;
    return 1;
}

int64_t caldera_tmp_remove_stale(struct caldera_ctx * ctx, const char * path) {
    char *          dir = caldera_strdup(path ? path : "");
    const char *    base;
    DIR *           d = NULL;
    struct dirent * de;
    int64_t         removed = 0;
    if (!dir || !path || !*path) goto done;
    char * slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        base   = path + (slash - dir) + 1;
        if (slash == dir) dir[0] = '/', dir[1] = '\0';   // "/name"
    } else {
        base = path;
        dir[0] = '.', dir[1] = '\0';
    }
    if (!*base || !(d = opendir(dir))) goto done;
    while ((de = readdir(d))) {
        long pid;
        if (!stale_tmp_name(de->d_name, base, &pid) || pid == (long) getpid()) continue;
        if (kill((pid_t) pid, 0) == 0 || errno != ESRCH) continue;   // alive (or not ours to judge)
        char * p = caldera_asprintf("%s/%s", dir, de->d_name);
        if (p && unlink(p) == 0) {
            removed++;
            caldera_log(ctx, CALDERA_LOG_INFO, "removed %s, a temporary of process %ld that no longer runs", p, pid);
        }
        caldera_free(p);
    }
done:
    if (d) closedir(d);
    caldera_free(dir);
    return removed;
}

void caldera_atomic_abort(struct caldera_atomic_file * af) {
    if (af->fp) {
        fclose(af->fp);
        af->fp = NULL;
    }
    if (af->tmp) unlink(af->tmp);
    caldera_freep(&af->path);
    caldera_freep(&af->tmp);
}
