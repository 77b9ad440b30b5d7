// SPDX-License-Identifier: MIT
// caldera-gguf-dump: list the tensors of a GGUF file through the gguf plugin of libcaldera, and
// optionally dequantize every tensor to f32 (timing it, printing per-tensor checksums, or
// writing each as raw little-endian f32 for a comparison with another implementation).
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "caldera/caldera.h"

static void usage(FILE * f) {
    fprintf(f,
            "usage: caldera-gguf-dump [options] FILE.gguf\n"
            "  -m, --meta          print the key/values (arrays: type and length)\n"
            "  -d, --dequant       dequantize every tensor to f32 and report the time\n"
            "  -c, --checksum      with -d: print count, sum, sum of squares, max |x| per tensor\n"
            "  -r, --raw DIR       with -d: write DIR/<name>.f32 (raw f32, PyTorch order)\n"
            "      --gguf-layout   keep llama.cpp's attn_q/attn_k row order (hf_layout = 0)\n"
            "  -t, --threads N     threads (default: all cores)\n"
            "  -h, --help\n");
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

static void print_meta(const struct caldera_meta * m) {
    static const char * tn[] = { "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64",
                                 "i64", "f64" };
    for (int64_t i = 0; i < caldera_meta_count(m); i++) {
        const char *           k = caldera_meta_key(m, i);
        enum caldera_meta_type t = caldera_meta_type_of(m, i);
        printf("  %-44s %-6s ", k, (unsigned) t < CALDERA_META_COUNT ? tn[t] : "?");
        if (t == CALDERA_META_STRING) {
            const char * s;
            caldera_meta_get_string(m, k, &s);
            printf("\"%.60s%s\"\n", s, strlen(s) > 60 ? "..." : "");
        } else if (t == CALDERA_META_ARRAY) {
            enum caldera_meta_type et;
            int64_t                n;
            caldera_meta_get_array(m, k, &et, &n, NULL);
            printf("[%s x %" PRId64 "]\n", (unsigned) et < CALDERA_META_COUNT ? tn[et] : "?", n);
        } else if (t == CALDERA_META_F32 || t == CALDERA_META_F64) {
            double v;
            caldera_meta_get_float(m, k, &v);
            printf("%.9g\n", v);
        } else {
            int64_t v;
            int     rc = caldera_meta_get_int(m, k, &v);
            if (rc == CALDERA_ERR_RANGE) printf("%" PRIu64 "\n", (uint64_t) v);
            else printf("%" PRId64 "\n", v);
        }
    }
}

int main(int argc, char ** argv) {
    const char *         path = NULL, * raw_dir = NULL;
    int                  meta = 0, dequant = 0, checksum = 0, gguf_layout = 0, threads = 0, rc = 1;
    struct caldera_ctx * ctx  = NULL;
    struct caldera_inst * inst = NULL;
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i];
        if (!strcmp(a, "-m") || !strcmp(a, "--meta")) meta = 1;
        else if (!strcmp(a, "-d") || !strcmp(a, "--dequant")) dequant = 1;
        else if (!strcmp(a, "-c") || !strcmp(a, "--checksum")) checksum = 1;
        else if ((!strcmp(a, "-r") || !strcmp(a, "--raw")) && i + 1 < argc) raw_dir = argv[++i];
        else if (!strcmp(a, "--gguf-layout")) gguf_layout = 1;
        else if ((!strcmp(a, "-t") || !strcmp(a, "--threads")) && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (a[0] == '-' || path) { usage(stderr); return 2; }
        else path = a;
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    if ((checksum || raw_dir) && !dequant) dequant = 1;
    if (caldera_ctx_init(&ctx) < 0) {
        fprintf(stderr, "caldera-gguf-dump: cannot create a context\n");
        return 1;
    }
    if (threads > 0) caldera_ctx_set_threads(ctx, threads);
    if (caldera_inst_create(ctx, "gguf", "gguf", &inst) < 0 ||
        (gguf_layout && caldera_inst_set(inst, "hf_layout", "false") < 0) || caldera_inst_start(inst) < 0) {
        fprintf(stderr, "caldera-gguf-dump: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    const struct caldera_format_ops * ops = caldera_inst_plugin(inst)->ops;
    double t0 = now();
    if (ops->open(inst, path) < 0) {
        fprintf(stderr, "caldera-gguf-dump: %s\n", caldera_ctx_errmsg(ctx));
        goto done;
    }
    double  t_open = now() - t0;
    int64_t n      = ops->n_tensors(inst);
    struct caldera_model_desc md;
    printf("%s: %" PRId64 " tensors, opened in %.3f s\n", path, n, t_open);
    if (ops->model_desc(inst, &md) == 0) {
        printf("arch %s: layers %" PRId64 ", hidden %" PRId64 ", ffn %" PRId64 ", heads %" PRId64 "/%" PRId64
               ", head_dim %" PRId64 ", vocab %" PRId64 ", ctx %" PRId64 ", rope_theta %g, norm_eps %g, tied %d\n",
               md.arch, md.n_layers, md.hidden, md.ffn, md.n_heads, md.n_kv_heads, md.head_dim, md.vocab, md.ctx_len,
               md.rope_theta, md.norm_eps, md.tied_embeddings);
    }
    if (meta) print_meta(ops->meta(inst));
    if (raw_dir && mkdir(raw_dir, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "caldera-gguf-dump: %s: %s\n", raw_dir, strerror(errno));
        goto done;
    }
    double  t_deq = 0;
    int64_t total = 0;
    size_t  bytes = 0;
    for (int64_t i = 0; i < n; i++) {
        struct caldera_tensor_info ti;
        if (ops->tensor_info(inst, i, &ti) < 0) goto fail_msg;
        char shape[96] = "";
        for (int d = 0; d < ti.ndim; d++) {
            snprintf(shape + strlen(shape), sizeof(shape) - strlen(shape), d ? "x%" PRId64 : "%" PRId64, ti.ne[d]);
        }
        bytes += ti.nbytes;
        if (!dequant) {
            printf("%5" PRId64 " %-28s %-44s %-5s %-14s %zu\n", i, ti.name, ti.hf_name, caldera_dtype_name(ti.dtype),
                   shape, ti.nbytes);
            continue;
        }
        struct caldera_tensor t;
        int                   owned;
        double                t1 = now();
        if (ops->read_tensor(inst, i, CALDERA_DTYPE_F32, &t, &owned) < 0) goto fail_msg;
        t_deq += now() - t1;
        int64_t       ne = caldera_tensor_nelements(&t);
        const float * x  = t.data;
        total += ne;
        if (checksum) {
            double s = 0, s2 = 0, mx = 0;
            for (int64_t k = 0; k < ne; k++) {
                s += x[k];
                s2 += (double) x[k] * x[k];
                if (fabs(x[k]) > mx) mx = fabs(x[k]);
            }
            printf("%s %s %" PRId64 " %.17g %.17g %.9g\n", ti.name, caldera_dtype_name(ti.dtype), ne, s, s2, mx);
        }
        if (raw_dir) {
            char f[1024];
            snprintf(f, sizeof(f), "%s/%s.f32", raw_dir, ti.name);
            FILE * fp = fopen(f, "wb");
            if (!fp || fwrite(x, sizeof(float), (size_t) ne, fp) != (size_t) ne) {
                fprintf(stderr, "caldera-gguf-dump: %s: %s\n", f, strerror(errno));
                if (fp) fclose(fp);
                if (owned) caldera_tensor_free(&t);
                goto done;
            }
            fclose(fp);
        }
        if (owned) caldera_tensor_free(&t);
    }
    if (dequant) {
        printf("dequantized %" PRId64 " tensors, %" PRId64 " values (%zu stored bytes) to f32 in %.3f s (%.1f M values/s)\n",
               n, total, bytes, t_deq, t_deq > 0 ? (double) total / t_deq / 1e6 : 0.0);
    }
    rc = 0;
    goto done;
fail_msg:
    fprintf(stderr, "caldera-gguf-dump: %s\n", caldera_ctx_errmsg(ctx));
done:
    caldera_inst_free(inst);
    caldera_ctx_free(ctx);
    return rc;
}
