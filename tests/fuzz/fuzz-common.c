// SPDX-License-Identifier: MIT
// fuzz-common.c: see fuzz-common.h.
#include "fuzz-common.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef CALDERA_LIBFUZZER
#include <sanitizer/allocator_interface.h>
#endif

static void fz_die(const char * what) {
    fprintf(stderr, "fuzz harness: %s\n", what);
    abort();
}

static void quiet_log(enum caldera_log_level level, const char * msg, void * user) {
    (void) level;
    (void) msg;
    (void) user;
}

struct caldera_ctx * fz_ctx(void) {
    static struct caldera_ctx * ctx;
    if (!ctx) {
        if (caldera_ctx_init(&ctx) < 0) fz_die("caldera_ctx_init failed");
        if (!getenv("CALDERA_FUZZ_VERBOSE")) caldera_ctx_set_log(ctx, quiet_log, NULL);
        caldera_ctx_set_threads(ctx, 1);
    }
    return ctx;
}

void fz_memfile_open(struct fz_memfile * f, const char * name) {
    f->fd = memfd_create(name, MFD_CLOEXEC);
    if (f->fd < 0) fz_die("memfd_create failed");
    snprintf(f->path, sizeof(f->path), "/proc/self/fd/%d", f->fd);
}

void fz_memfile_set(struct fz_memfile * f, const uint8_t * data, size_t size) {
    if (ftruncate(f->fd, 0) != 0) fz_die("ftruncate failed");
    for (size_t done = 0; done < size;) {
        ssize_t k = pwrite(f->fd, data + done, size - done, (off_t) done);
        if (k <= 0) fz_die("pwrite to the memfd failed");
        done += (size_t) k;
    }
}

static void touch_meta(const struct caldera_meta * m) {
    volatile uint64_t sink = 0;
    for (int64_t i = 0; i < caldera_meta_count(m); i++) {
        const char * key = caldera_meta_key(m, i);
        if (!key) fz_die("meta key NULL inside the count");
        enum caldera_meta_type t = caldera_meta_type_of(m, i);
        int64_t iv;
        double  fv;
        const char * s;
        size_t len;
        if (t == CALDERA_META_STRING) {
            if (caldera_meta_get_string_n(m, key, &s, &len) != 0) fz_die("string key without its string");
            for (size_t k = 0; k < len; k++) sink += (uint8_t) s[k];
        } else if (t == CALDERA_META_ARRAY) {
            enum caldera_meta_type et;
            int64_t n;
            const void * d;
            if (caldera_meta_get_array(m, key, &et, &n, &d) != 0 || n < 0) fz_die("array key without its array");
            if (et == CALDERA_META_STRING) {
                const char * const * strs;
                const size_t * lens;
                if (caldera_meta_get_string_array_n(m, key, &n, &strs, &lens) != 0) fz_die("string array unreadable");
                for (int64_t k = 0; k < n; k++) sink += lens[k] + (uint8_t) strs[k][lens[k]];
            } else if (n > 0) {
                sink += ((const uint8_t *) d)[0];
            }
        } else {
            if (caldera_meta_get_int(m, key, &iv) == 0) sink += (uint64_t) iv;
            if (caldera_meta_get_float(m, key, &fv) == 0) sink += fv == fv;
        }
    }
    (void) sink;
}

static void check_view(const struct caldera_tensor_info * ti, const struct caldera_tensor * t, enum caldera_dtype want) {
    if (t->dtype != want) fz_die("read_tensor returned another dtype than asked");
    if (t->ndim != ti->ndim) fz_die("read_tensor and tensor_info disagree on ndim");
    for (int d = 0; d < ti->ndim; d++) {
        if (t->ne[d] != ti->ne[d]) fz_die("read_tensor and tensor_info disagree on the shape");
    }
}

// A reader must refuse a shape whose non-zero dimensions overflow int64 in product, in any order
// (a zero dimension does not excuse the others: code multiplies subsets of them).
static int64_t info_elems(const struct caldera_tensor_info * ti) {
    int64_t nz = 1;
    int     zero = 0;
    for (int d = 0; d < ti->ndim; d++) {
        if (ti->ne[d] < 0) fz_die("tensor_info: negative dimension");
        if (ti->ne[d] == 0) {
            zero = 1;
        } else if (__builtin_mul_overflow(nz, ti->ne[d], &nz)) {
            fz_die("tensor_info: element count overflows");
        }
    }
    return zero ? 0 : nz;
}

void fz_drive_format(const char * plugin, const char * path, const char * const * options, size_t input_bytes) {
    struct caldera_ctx *  ctx  = fz_ctx();
    struct caldera_inst * inst = NULL;
    if (caldera_inst_create(ctx, plugin, "fuzz", &inst) < 0) fz_die("caldera_inst_create failed");
    for (const char * const * o = options; o && o[0]; o += 2) {
        if (caldera_inst_set(inst, o[0], o[1]) < 0) fz_die("caldera_inst_set failed");
    }
    if (caldera_inst_start(inst) < 0) fz_die("caldera_inst_start failed");
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
#ifdef CALDERA_LIBFUZZER
    size_t held0 = __sanitizer_get_current_allocated_bytes();
#endif
    int rc = ops->open(inst, path);
#ifdef CALDERA_LIBFUZZER
    size_t held = __sanitizer_get_current_allocated_bytes();
    held = held > held0 ? held - held0 : 0;
    if (getenv("CALDERA_FUZZ_VERBOSE")) fprintf(stderr, "open holds %zu bytes for %zu input bytes\n", held, input_bytes);
    if (held > FZ_OPEN_FACTOR * input_bytes + FZ_OPEN_SLACK) fz_die("open holds more memory than its input justifies");
#else
    (void) input_bytes;
#endif
    if (rc < 0 && getenv("CALDERA_FUZZ_VERBOSE")) fprintf(stderr, "open: %s\n", caldera_ctx_errmsg(ctx));
    if (rc < 0) {
        if (!caldera_ctx_errmsg(ctx)[0]) fz_die("open failed without a message");
        goto done;
    }
    int64_t n = ops->n_tensors(inst);
    if (n < 0) fz_die("n_tensors < 0");
    if (ops->meta) touch_meta(ops->meta(inst));
    struct caldera_model_desc desc;
    if (ops->model_desc && ops->model_desc(inst, &desc) == 0) {
        if (desc.n_layers < 0 || desc.hidden < 0 || desc.n_heads < 0 || desc.head_dim < 0 || desc.vocab < 0) {
            fz_die("model_desc returned a negative size");
        }
    }
    for (int64_t i = 0; i < n; i++) {
        struct caldera_tensor_info ti;
        if (ops->tensor_info(inst, i, &ti) < 0) fz_die("tensor_info failed for an index in range");
        if (!ti.name || !ti.hf_name || ti.ndim < 1 || ti.ndim > CALDERA_MAX_DIMS) fz_die("tensor_info: bad entry");
        int64_t nel = info_elems(&ti);
        if (nel > FZ_READ_CAP) continue;
        const enum caldera_dtype want[3] = { ti.dtype, CALDERA_DTYPE_F32, CALDERA_DTYPE_F16 };
        for (int k = 0; k < (nel <= FZ_F16_CAP ? 3 : 2); k++) {
            struct caldera_tensor t;
            int owned = 0;
            if (ops->read_tensor(inst, i, want[k], &t, &owned) < 0) {
                if (getenv("CALDERA_FUZZ_VERBOSE")) fprintf(stderr, "read_tensor: %s\n", caldera_ctx_errmsg(ctx));
                if (!caldera_ctx_errmsg(ctx)[0]) fz_die("read_tensor failed without a message");
                continue;
            }
            check_view(&ti, &t, want[k]);
            if (nel > 0 && t.dtype == CALDERA_DTYPE_F32) {  // touch the first and the last value
                volatile float a = ((const float *) t.data)[0], b = ((const float *) t.data)[nel - 1];
                (void) a;
                (void) b;
            }
            if (owned) caldera_tensor_free(&t);
        }
    }
done:
    if (ops->close) ops->close(inst);
    caldera_inst_free(inst);
}

static char fz_dir[256];

static void fz_rmdir(void) {
    DIR * d = opendir(fz_dir);
    struct dirent * e;
    char p[512];
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(p, sizeof(p), "%s/%s", fz_dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(fz_dir);
}

const char * fz_tmpdir(void) {
    if (!fz_dir[0]) {
        struct stat st;
        snprintf(fz_dir, sizeof(fz_dir), "%s/caldera-fuzz-XXXXXX", stat("/dev/shm", &st) == 0 ? "/dev/shm" : "/tmp");
        if (!mkdtemp(fz_dir)) fz_die("mkdtemp failed");
        atexit(fz_rmdir);
    }
    return fz_dir;
}

void fz_write_file(const char * dir, const char * name, const uint8_t * data, size_t size) {
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    if (!data) {
        if (unlink(p) != 0 && errno != ENOENT) fz_die("unlink failed");
        return;
    }
    FILE * f = fopen(p, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) fz_die("writing a file of the input failed");
}
