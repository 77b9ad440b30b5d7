// SPDX-License-Identifier: MIT
// Checkpoints of a pipeline run: one file per finished weight (its pack, its metrics and, when a
// dense export is written, Ŵ), written atomically into a folder that also holds the effective
// configuration. A run started again with the same configuration loads the finished weights
// instead of recomputing them, so it ends with the same output bytes as an uninterrupted run.
//
// File "<index>.ckpt", little-endian:
//   "CALDCKPT" | u32 version (1) | u32 name length | name | u32 tensor count
//   per tensor: u32 name length | name | u32 dtype | u32 ndim | i64 ne[ndim] | u64 bytes | data
//   f64 bits, rel_fro, rel_h, seconds | u32 has_h | u32 has_w_hat [| i64 rows | i64 cols | f32 data]
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"

#define CKPT_MAGIC   "CALDCKPT"
#define CKPT_VERSION 1u
#define CKPT_CONFIG  "config.ini"

struct caldera_ckpt {
    struct caldera_ctx * ctx;
    char *               dir;
};

static char * ckpt_path(const struct caldera_ckpt * c, int64_t index) {
    return caldera_asprintf("%s/%06lld.ckpt", c->dir, (long long) index);
}

static int read_all(FILE * f, char ** out, size_t * len) {
    size_t cap = 4096, n = 0;
    char * b = caldera_malloc(cap);
    if (!b) return CALDERA_ERR_NOMEM;
    size_t k;
    while ((k = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (n + 1 == cap) {
            char * nb = caldera_malloc(cap * 2);
            if (!nb) {
                caldera_free(b);
                return CALDERA_ERR_NOMEM;
            }
            memcpy(nb, b, n);
            caldera_free(b);
            b = nb;
            cap *= 2;
        }
    }
    b[n] = 0;
    *out = b;
    if (len) *len = n;
    return 0;
}

int caldera_ckpt_open(struct caldera_ctx * ctx, const char * dir, const char * config, struct caldera_ckpt ** out) {
    *out = NULL;
    struct stat st;
    if (stat(dir, &st) != 0) {
        if (mkdir(dir, 0755) != 0) {
            return caldera_ctx_error(ctx, CALDERA_ERR_IO, "checkpoint %s: cannot create the folder: %s", dir, strerror(errno));
        }
    } else if (!S_ISDIR(st.st_mode)) {
        return caldera_ctx_error(ctx, CALDERA_ERR_IO, "checkpoint %s: exists and is not a folder", dir);
    }
    struct caldera_ckpt * c = caldera_calloc(1, sizeof(*c));
    if (!c || !(c->dir = caldera_strdup(dir))) {
        caldera_free(c);
        return CALDERA_ERR_NOMEM;
    }
    c->ctx = ctx;
    char * cpath = caldera_asprintf("%s/" CKPT_CONFIG, dir);
    if (!cpath) {
        caldera_ckpt_close(c, 0);
        return CALDERA_ERR_NOMEM;
    }
    int rc = 0;
    FILE * f = fopen(cpath, "rb");
    if (f) {
        // An existing checkpoint continues only under the very same effective configuration.
        char * old = NULL;
        rc = read_all(f, &old, NULL);
        fclose(f);
        if (rc == 0 && strcmp(old, config) != 0) {
            rc = caldera_ctx_error(ctx, CALDERA_ERR_INVAL,
                                   "checkpoint %s was made by a different configuration (see its %s); remove the folder or "
                                   "choose another 'checkpoint'", dir, CKPT_CONFIG);
        }
        caldera_free(old);
    } else {
        struct caldera_atomic_file af;
        if ((rc = caldera_atomic_open(ctx, cpath, &af)) == 0) {
            fputs(config, af.fp);
            rc = caldera_atomic_commit(ctx, &af);
        }
    }
    caldera_free(cpath);
    if (rc < 0) {
        caldera_ckpt_close(c, 0);
        return rc;
    }
    *out = c;
    return 0;
}

void caldera_ckpt_close(struct caldera_ckpt * c, int remove_files) {
    if (!c) return;
    if (remove_files) {
        DIR * d = opendir(c->dir);
        struct dirent * de;
        while (d && (de = readdir(d))) {
            size_t l = strlen(de->d_name);
            // our files, and the temporaries of runs killed while writing one ("<name>.tmp.<pid>":
            // a SIGKILL gives no chance to remove them, and they would keep the folder)
            if ((l > 5 && strcmp(de->d_name + l - 5, ".ckpt") == 0) || strcmp(de->d_name, CKPT_CONFIG) == 0 ||
                strstr(de->d_name, ".ckpt.tmp.") || strncmp(de->d_name, CKPT_CONFIG ".tmp.", sizeof(CKPT_CONFIG ".tmp.") - 1) == 0) {
                char * p = caldera_asprintf("%s/%s", c->dir, de->d_name);
                if (p) unlink(p);
                caldera_free(p);
            }
        }
        if (d) closedir(d);
        rmdir(c->dir);   // only if nothing else is in it
    }
    caldera_free(c->dir);
    caldera_free(c);
}

static int put(FILE * f, const void * p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }

static int put_str(FILE * f, const char * s) {
    uint32_t l = (uint32_t) strlen(s);
    return put(f, &l, 4) || put(f, s, l);
}

int caldera_ckpt_save(struct caldera_ckpt * c, int64_t index, const char * name, const struct caldera_pack * pack,
                      const struct caldera_ckpt_result * res, const struct caldera_tensor * w_hat) {
    char * path = ckpt_path(c, index);
    if (!path) return CALDERA_ERR_NOMEM;
    struct caldera_atomic_file af;
    int rc = caldera_atomic_open(c->ctx, path, &af);
    caldera_free(path);
    if (rc < 0) return rc;
    FILE * f = af.fp;
    uint32_t v = CKPT_VERSION, n = (uint32_t) caldera_pack_count(pack);
    int bad = put(f, CKPT_MAGIC, 8) || put(f, &v, 4) || put_str(f, name) || put(f, &n, 4);
    for (uint32_t i = 0; !bad && i < n; i++) {
        struct caldera_tensor t;
        caldera_pack_get(pack, i, &t);
        uint32_t dt = (uint32_t) t.dtype, nd = (uint32_t) t.ndim;
        size_t bytes = 0;
        caldera_dtype_nbytes(t.dtype, caldera_tensor_nelements(&t), &bytes);
        uint64_t b64 = bytes;
        bad = put_str(f, caldera_pack_name(pack, i)) || put(f, &dt, 4) || put(f, &nd, 4) || put(f, t.ne, 8 * nd) ||
              put(f, &b64, 8) || put(f, t.data, bytes);
    }
    double m[4] = { res->bits, res->rel_fro, res->rel_h, res->seconds };
    uint32_t has_h = (uint32_t) res->has_h, has_w = w_hat != NULL;
    bad = bad || put(f, m, sizeof(m)) || put(f, &has_h, 4) || put(f, &has_w, 4);
    if (!bad && w_hat) {
        int64_t rc2[2] = { w_hat->ne[0], w_hat->ne[1] };
        bad = put(f, rc2, 16);
        for (int64_t r = 0; !bad && r < w_hat->ne[0]; r++) {
            bad = put(f, (const float *) w_hat->data + r * w_hat->ld, (size_t) w_hat->ne[1] * sizeof(float));
        }
    }
    if (bad) {
        caldera_atomic_abort(&af);
        return caldera_ctx_error(c->ctx, CALDERA_ERR_IO, "checkpoint %s: write failed: %s", c->dir, strerror(errno));
    }
    return caldera_atomic_commit(c->ctx, &af);
}

// Bounded reads from a file loaded whole; any inconsistency is CALDERA_ERR_FORMAT.
struct rd {
    const char * p;
    size_t       n, at;
};

static int take(struct rd * r, void * dst, size_t n) {
    if (n > r->n - r->at) return -1;
    memcpy(dst, r->p + r->at, n);
    r->at += n;
    return 0;
}

int caldera_ckpt_load(struct caldera_ckpt * c, int64_t index, const char * name, struct caldera_pack * pack,
                      struct caldera_ckpt_result * res, struct caldera_tensor * w_hat) {
    char * path = ckpt_path(c, index);
    if (!path) return CALDERA_ERR_NOMEM;
    FILE * f = fopen(path, "rb");
    if (!f) {
        caldera_free(path);
        return CALDERA_ERR_NOT_FOUND;
    }
    char * buf = NULL;
    size_t len = 0;
    int rc = read_all(f, &buf, &len);
    fclose(f);
    if (rc < 0) {
        caldera_free(path);
        return rc;
    }
    struct rd r = { buf, len, 0 };
    char magic[8], sname[1024];
    uint32_t v, l, n;
    if (take(&r, magic, 8) || memcmp(magic, CKPT_MAGIC, 8) != 0 || take(&r, &v, 4) || v != CKPT_VERSION || take(&r, &l, 4) ||
        l >= sizeof(sname) || take(&r, sname, l)) {
        goto bad;
    }
    sname[l] = 0;
    if (strcmp(sname, name) != 0 || take(&r, &n, 4)) goto bad;
    for (uint32_t i = 0; i < n; i++) {
        char tname[1024];
        uint32_t dt, nd;
        int64_t ne[CALDERA_MAX_DIMS];
        uint64_t bytes;
        if (take(&r, &l, 4) || l >= sizeof(tname) || take(&r, tname, l)) goto bad;
        tname[l] = 0;
        if (take(&r, &dt, 4) || dt >= CALDERA_DTYPE_COUNT || take(&r, &nd, 4) || nd < 1 || nd > CALDERA_MAX_DIMS ||
            take(&r, ne, 8 * (size_t) nd) || take(&r, &bytes, 8) || bytes > r.n - r.at) {
            goto bad;
        }
        int64_t cnt;
        if (caldera_shape_nelements((int32_t) nd, ne, &cnt, NULL) < 0) goto bad;
        size_t need;
        if (caldera_dtype_nbytes((enum caldera_dtype) dt, cnt, &need) < 0 || need != bytes) goto bad;
        void * data;
        // names were stored in full: add them without the pack's current prefixes
        if ((rc = caldera_pack_add(pack, tname, (enum caldera_dtype) dt, (int32_t) nd, ne, &data)) < 0) goto fail;
        take(&r, data, (size_t) bytes);
    }
    double m[4];
    uint32_t has_h, has_w;
    if (take(&r, m, sizeof(m)) || take(&r, &has_h, 4) || take(&r, &has_w, 4)) goto bad;
    *res = (struct caldera_ckpt_result) { m[0], m[1], m[2], m[3], (int) has_h };
    if (w_hat) {
        int64_t rc2[2];
        if (!has_w || take(&r, rc2, 16) || rc2[0] != w_hat->ne[0] || rc2[1] != w_hat->ne[1]) goto bad;
        for (int64_t i = 0; i < rc2[0]; i++) {
            if (take(&r, (float *) w_hat->data + i * w_hat->ld, (size_t) rc2[1] * sizeof(float))) goto bad;
        }
    }
    caldera_free(buf);
    caldera_free(path);
    return 0;
bad:
    rc = caldera_ctx_error(c->ctx, CALDERA_ERR_FORMAT, "checkpoint %s: damaged or not for weight %s; remove it to recompute",
                           path, name);
fail:
    caldera_free(buf);
    caldera_free(path);
    return rc;
}
