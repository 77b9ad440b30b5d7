// SPDX-License-Identifier: MIT
// caldera-convert: export any model a format plugin can read (llama2.c, GGUF, safetensors, ...)
// as a Hugging Face-style safetensors folder: model.safetensors with HF tensor names,
// config.json from the model description and tokenizer_config.json. The folder is built under
// a temporary name and renamed into place, so OUTPUT_DIR appears only when complete.
// An OUTPUT ending in .gguf is one dense GGUF file instead (the gguf writer: llama.cpp names and
// q/k row order, the source's metadata and tokenizer carried over; written to a temporary file and
// renamed), for example the original weights of a block-quantized GGUF as f32 for llama-quantize.
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "caldera/caldera.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

static void usage(FILE * f) {
    fprintf(f,
            "usage: caldera-convert INPUT OUTPUT_DIR|OUTPUT.gguf [options]\n"
            "Export a model as a Hugging Face-style safetensors folder (model.safetensors, config.json),\n"
            "or, when the output name ends in .gguf, as one dense GGUF file (llama.cpp names and layout).\n"
            "\n"
            "  --dtype f32|f16      dtype of the written tensors (default f32)\n"
            "  --dtype q8_0|q4_0|q4_1  (.gguf only) ggml's 32-element block types, round to nearest, for the 2-d\n"
            "                       tensors whose rows are whole blocks; the others (norms, rows of other\n"
            "                       lengths) f32: a small llama.cpp-readable quantized model, e.g. a test peer\n"
            "  --from NAME          format plugin that reads INPUT (default: chosen by probing INPUT)\n"
            "  --plugin-path DIR    load the plugin shared objects in DIR first\n"
            "  -q, --quiet          no progress lines\n"
            "  -h, --help           this help\n"
            "\n"
            "OUTPUT_DIR must not exist, or be an empty folder; OUTPUT.gguf must not exist. Exit status: 0 ok, 1 failure, 2 usage error.\n");
}

// A format plugin by name (--from), or the best probe_path score among the registered ones.
static const struct caldera_plugin * pick_reader(struct caldera_ctx * ctx, const char * from, const char * input,
                                                 int * usage_err) {
    *usage_err = 0;
    if (from) {
        const struct caldera_plugin * p = caldera_registry_find(ctx, from);
        if (!p || p->kind != CALDERA_PLUGIN_KIND_FORMAT || !((const struct caldera_format_ops *) p->ops)->open) {
            fprintf(stderr, "caldera-convert: --from %s: no format plugin of that name can read models; allowed:", from);
            for (int64_t i = 0; i < caldera_registry_count(ctx); i++) {
                const struct caldera_plugin * q = caldera_registry_get(ctx, i);
                if (q->kind == CALDERA_PLUGIN_KIND_FORMAT && ((const struct caldera_format_ops *) q->ops)->open) {
                    fprintf(stderr, " %s", q->name);
                }
            }
            fprintf(stderr, "\n");
            *usage_err = 1;
            return NULL;
        }
        return p;
    }
    const struct caldera_plugin * best = NULL;
    int best_score = 0;
    for (int64_t i = 0; i < caldera_registry_count(ctx); i++) {
        const struct caldera_plugin * q = caldera_registry_get(ctx, i);
        if (q->kind != CALDERA_PLUGIN_KIND_FORMAT) continue;
        const struct caldera_format_ops * ops = q->ops;
        if (!ops->probe_path || !ops->open) continue;
        int s = ops->probe_path(input);
        if (s > best_score) {
            best_score = s;
            best = q;
        }
    }
    if (!best) fprintf(stderr, "caldera-convert: %s: no format plugin recognises this file; use --from NAME\n", input);
    return best;
}

static const char * hf_architecture(const char * arch, char * buf, size_t n) {
    if (strcmp(arch, "llama") == 0) return "LlamaForCausalLM";
    if (strcmp(arch, "mistral") == 0) return "MistralForCausalLM";
    if (strcmp(arch, "qwen2") == 0) return "Qwen2ForCausalLM";
    snprintf(buf, n, "%c%.40sForCausalLM", arch[0] >= 'a' && arch[0] <= 'z' ? arch[0] - 'a' + 'A' : arch[0], arch[0] ? arch + 1 : "");
    return buf;
}

// A token string of the source vocabulary, or NULL.
static const char * token_text(const struct caldera_meta * m, const char * id_key) {
    int64_t id, n;
    enum caldera_meta_type et;
    const void * data;
    if (!m || caldera_meta_get_int(m, id_key, &id) != 0) return NULL;
    if (caldera_meta_get_array(m, "tokenizer.ggml.tokens", &et, &n, &data) != 0 || et != CALDERA_META_STRING) return NULL;
    return id >= 0 && id < n ? ((const char * const *) data)[id] : NULL;
}

// A value that is exactly a float32 (GGUF stores f32) becomes its shortest decimal form, so
// config.json says 1e-05 and not 9.99999974737875e-06.
static double tidy(double v) {
    float f = (float) v;
    char b[32];
    if ((double) f != v) return v;
    for (int p = 1; p <= 9; p++) {
        snprintf(b, sizeof(b), "%.*g", p, v);
        if ((float) strtod(b, NULL) == f) return strtod(b, NULL);
    }
    return v;
}

static int write_json(const char * path, json_t * j) {
    // 15 digits: every decimal with up to 15 significant digits prints as itself (DBL_DIG)
    int rc = json_dump_file(j, path, JSON_INDENT(2) | JSON_REAL_PRECISION(15));
    json_decref(j);
    if (rc != 0) fprintf(stderr, "caldera-convert: cannot write %s: %s\n", path, strerror(errno));
    return rc;
}

// config.json (transformers' names) from the model description.
static int write_config(const char * path, const struct caldera_model_desc * d, const struct caldera_meta * m,
                        const char * dtype) {
    char buf[64];
    json_t * j = json_object();
    json_t * arr = json_array();
    if (!j || !arr) return -1;
    json_array_append_new(arr, json_string(hf_architecture(d->arch, buf, sizeof(buf))));
    json_object_set_new(j, "architectures", arr);
    json_object_set_new(j, "model_type", json_string(d->arch));
    json_object_set_new(j, "hidden_size", json_integer(d->hidden));
    json_object_set_new(j, "intermediate_size", json_integer(d->ffn));
    json_object_set_new(j, "num_hidden_layers", json_integer(d->n_layers));
    json_object_set_new(j, "num_attention_heads", json_integer(d->n_heads));
    json_object_set_new(j, "num_key_value_heads", json_integer(d->n_kv_heads));
    json_object_set_new(j, "head_dim", json_integer(d->head_dim));
    json_object_set_new(j, "vocab_size", json_integer(d->vocab));
    json_object_set_new(j, "max_position_embeddings", json_integer(d->ctx_len));
    json_object_set_new(j, "rope_theta", json_real(tidy(d->rope_theta)));
    json_object_set_new(j, "rms_norm_eps", json_real(tidy(d->norm_eps)));
    json_object_set_new(j, "tie_word_embeddings", json_boolean(d->tied_embeddings));
    json_object_set_new(j, "hidden_act", json_string("silu"));
    json_object_set_new(j, "torch_dtype", json_string(strcmp(dtype, "f16") == 0 ? "float16" : "float32"));
    if (d->rope_scaling[0]) {
        json_t * rs = json_object();
        json_object_set_new(rs, "rope_type", json_string(d->rope_scaling));
        json_object_set_new(rs, "factor", json_real(tidy(d->rope_scaling_factor)));
        json_object_set_new(j, "rope_scaling", rs);
    }
    int64_t id;
    if (m && caldera_meta_get_int(m, "tokenizer.ggml.bos_token_id", &id) == 0) json_object_set_new(j, "bos_token_id", json_integer(id));
    if (m && caldera_meta_get_int(m, "tokenizer.ggml.eos_token_id", &id) == 0) json_object_set_new(j, "eos_token_id", json_integer(id));
    return write_json(path, j);
}

// tokenizer_config.json: the special tokens (the vocabulary itself travels in the
// safetensors __metadata__ as tokenizer.ggml.*).
static int write_tokenizer_config(const char * path, const struct caldera_meta * m, int64_t ctx_len) {
    json_t * j = json_object();
    if (!j) return -1;
    const char * bos = token_text(m, "tokenizer.ggml.bos_token_id");
    const char * eos = token_text(m, "tokenizer.ggml.eos_token_id");
    const char * unk = token_text(m, "tokenizer.ggml.unknown_token_id");
    const char * model = NULL;
    if (bos) json_object_set_new(j, "bos_token", json_string(bos));
    if (eos) json_object_set_new(j, "eos_token", json_string(eos));
    if (unk) json_object_set_new(j, "unk_token", json_string(unk));
    if (ctx_len > 0) json_object_set_new(j, "model_max_length", json_integer(ctx_len));
    if (caldera_meta_get_string(m, "tokenizer.ggml.model", &model) == 0) {
        json_object_set_new(j, "caldera_tokenizer_model", json_string(model));
    }
    return write_json(path, j);
}

static char * join(const char * a, const char * b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char * s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", a, b);
    return s;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

// ggml's 32-element block types, written from their layouts (formats/gguf/gguf-quants.c reads them
// back). Each element rounds to the nearest level of the block's f16-stored scale (and minimum),
// so |x - x̂| <= d/2 wherever no clamp is needed (Q8_0: always; Q4_0: all but +8 d; Q4_1: up to
// the f16 rounding of d and m); tools/README.md gives the bounds the test checks.
#define QBLK 32

static float put_f16(uint8_t * p, float v) {
    uint16_t h = caldera_f32_to_f16(v);
    memcpy(p, &h, 2);
    return caldera_f16_to_f32(h);
}

static int qround(float v, int lo, int hi) {
    long q = lrintf(v);
    return (int) (q < lo ? lo : q > hi ? hi : q);
}

// Q8_0, 34 bytes: d (f16) = max|x| / 127, qs[32] (i8): x̂ = d q.
static void enc_q8_0(const float * x, uint8_t * b) {
    float amax = 0.0f;
    for (int j = 0; j < QBLK; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float d = put_f16(b, amax / 127.0f), id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QBLK; j++) b[2 + j] = (uint8_t) (int8_t) qround(x[j] * id, -127, 127);
}

// Q4_0, 18 bytes: d (f16), qs[16] (element j low nibble of qs[j], j + 16 the high one): x̂ = d (q - 8).
// d = m / -8 with m the element of largest magnitude, so m itself is exact (q = 0).
static void enc_q4_0(const float * x, uint8_t * b) {
    float m = 0.0f;
    for (int j = 0; j < QBLK; j++) if (fabsf(x[j]) > fabsf(m)) m = x[j];
    const float d = put_f16(b, m / -8.0f), id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QBLK / 2; j++) {
        b[2 + j] = (uint8_t) (qround(x[j] * id + 8.0f, 0, 15) | qround(x[j + QBLK / 2] * id + 8.0f, 0, 15) << 4);
    }
}

// Q4_1, 20 bytes: d (f16) = (max - min) / 15, m (f16) = min, qs[16] as Q4_0: x̂ = d q + m.
static void enc_q4_1(const float * x, uint8_t * b) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < QBLK; j++) lo = fminf(lo, x[j]), hi = fmaxf(hi, x[j]);
    const float d = put_f16(b, (hi - lo) / 15.0f), m = put_f16(b + 2, lo), id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QBLK / 2; j++) {
        b[4 + j] = (uint8_t) (qround((x[j] - m) * id, 0, 15) | qround((x[j + QBLK / 2] - m) * id, 0, 15) << 4);
    }
}

// @p src (rows × cols, f32, contiguous) in the block type @p dt into @p out (allocated here).
static int encode_blocks(struct caldera_ctx * ctx, enum caldera_dtype dt, const struct caldera_tensor * src,
                         struct caldera_tensor * out) {
    void (*enc)(const float *, uint8_t *) = dt == CALDERA_DTYPE_Q8_0 ? enc_q8_0 : dt == CALDERA_DTYPE_Q4_0 ? enc_q4_0 : enc_q4_1;
    const size_t bb = dt == CALDERA_DTYPE_Q8_0 ? 34 : dt == CALDERA_DTYPE_Q4_0 ? 18 : 20;   // bytes per block
    int rc = caldera_tensor_alloc(ctx, dt, 2, src->ne, out);
    if (rc < 0) return rc;
    const int64_t nblk = src->ne[0] * (src->ne[1] / QBLK);
    const float * x = src->data;
    for (int64_t k = 0; k < nblk; k++) enc(x + k * QBLK, (uint8_t *) out->data + (size_t) k * bb);
    return 0;
}

int main(int argc, char ** argv) {
    const char * dtype_name = "f32", * from = NULL, * plugin_path = NULL;
    int quiet = 0, ret = EXIT_RUNTIME, rc, usage_err = 0, writing = 0;
    static const struct option longopts[] = {
        { "dtype", required_argument, NULL, 'd' }, { "from", required_argument, NULL, 'f' },
        { "plugin-path", required_argument, NULL, 'p' }, { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
    };
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'd': dtype_name = optarg; break;
        case 'f': from = optarg; break;
        case 'p': plugin_path = optarg; break;
        case 'q': quiet = 1; break;
        case 'h': usage(stdout); return 0;
        default:
            fprintf(stderr, "caldera-convert: unknown or incomplete option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "caldera-convert: expected INPUT and OUTPUT_DIR, got %d argument(s)\n", argc - optind);
        usage(stderr);
        return EXIT_USAGE;
    }
    enum caldera_dtype want, blocks = CALDERA_DTYPE_COUNT;   // blocks: the block type of --dtype q*, else COUNT
    const char * input = argv[optind], * output = argv[optind + 1];
    size_t       olen = strlen(output);
    int          gguf_out = olen > 5 && strcmp(output + olen - 5, ".gguf") == 0;
    if (strcmp(dtype_name, "f32") == 0) {
        want = CALDERA_DTYPE_F32;
    } else if (strcmp(dtype_name, "f16") == 0) {
        want = CALDERA_DTYPE_F16;
    } else if (!strcmp(dtype_name, "q8_0") || !strcmp(dtype_name, "q4_0") || !strcmp(dtype_name, "q4_1")) {
        want = CALDERA_DTYPE_F32;
        blocks = dtype_name[1] == '8' ? CALDERA_DTYPE_Q8_0 : dtype_name[3] == '0' ? CALDERA_DTYPE_Q4_0 : CALDERA_DTYPE_Q4_1;
        if (!gguf_out) {
            fprintf(stderr, "caldera-convert: --dtype %s needs an OUTPUT.gguf (safetensors has no ggml block types)\n", dtype_name);
            return EXIT_USAGE;
        }
    } else {
        fprintf(stderr, "caldera-convert: --dtype %s; allowed: f32, f16, q8_0, q4_0, q4_1 (the q types: .gguf only)\n", dtype_name);
        return EXIT_USAGE;
    }
    const char * wname = gguf_out ? "gguf" : "safetensors";

    struct caldera_ctx * ctx = NULL;
    struct caldera_inst * rd = NULL, * wr = NULL;
    const struct caldera_format_ops * rops = NULL, * wops = NULL;
    char * tmp = NULL, * st_path = NULL, * cfg_path = NULL, * tok_path = NULL;
    int tmp_made = 0;
    double t0 = now();
    if ((rc = caldera_ctx_init(&ctx)) < 0) {
        fprintf(stderr, "caldera-convert: cannot create a context: %s\n", caldera_status_str(rc));
        return EXIT_RUNTIME;
    }
    if (quiet) caldera_ctx_set_log_level(ctx, CALDERA_LOG_ERROR);
    if (plugin_path && (rc = caldera_registry_load_dir(ctx, plugin_path)) < 0) goto ctx_fail;
    const struct caldera_plugin * rp = pick_reader(ctx, from, input, &usage_err);
    if (!rp) {
        ret = usage_err ? EXIT_USAGE : EXIT_RUNTIME;
        goto done;
    }
    if (!caldera_registry_find(ctx, wname)) {
        fprintf(stderr, "caldera-convert: the %s plugin is not available\n", wname);
        goto done;
    }
    if ((rc = caldera_inst_create(ctx, rp->name, "input", &rd)) < 0 || (rc = caldera_inst_start(rd)) < 0) goto ctx_fail;
    rops = rp->ops;
    if ((rc = rops->open(rd, input)) < 0) goto ctx_fail;
    const struct caldera_meta * smeta = rops->meta ? rops->meta(rd) : NULL;
    struct caldera_model_desc desc;
    int have_desc = rops->model_desc && rops->model_desc(rd, &desc) == 0;

    // Output folder: built as OUTPUT_DIR.tmp.<pid> beside it, renamed at the end. A .gguf output:
    // the gguf writer makes its own temporary file and renames it when finished.
    struct stat st;
    if (gguf_out && stat(output, &st) == 0) {
        fprintf(stderr, "caldera-convert: %s exists; remove it first\n", output);
        goto done;
    }
    if (!gguf_out && stat(output, &st) == 0 && (!S_ISDIR(st.st_mode) || rmdir(output) != 0)) {
        fprintf(stderr, "caldera-convert: %s exists and is not an empty folder; remove it first\n", output);
        goto done;
    }
    size_t tl = olen + 32;
    if (gguf_out) goto make_writer;
    if (!(tmp = malloc(tl))) goto oom;
    snprintf(tmp, tl, "%s.tmp.%ld", output, (long) getpid());
    if (mkdir(tmp, 0755) != 0) {
        fprintf(stderr, "caldera-convert: cannot create %s: %s\n", tmp, strerror(errno));
        goto done;
    }
    tmp_made = 1;
    if (!(st_path = join(tmp, "model.safetensors")) || !(cfg_path = join(tmp, "config.json")) ||
        !(tok_path = join(tmp, "tokenizer_config.json"))) {
        goto oom;
    }

make_writer:;
    struct caldera_meta * wmeta = NULL;
    if ((rc = caldera_meta_init(&wmeta)) < 0) goto ctx_fail;
    if ((smeta && caldera_meta_copy(wmeta, smeta) < 0) ||
        (!gguf_out && caldera_meta_set_string(wmeta, "format", "pt") < 0) ||  // what transformers expects of a checkpoint
        caldera_meta_set_string(wmeta, "caldera.source_format", rp->name) < 0 ||
        caldera_meta_set_string(wmeta, "caldera.version", caldera_version()) < 0) {
        caldera_meta_free(wmeta);
        goto oom;
    }
    if ((rc = caldera_inst_create(ctx, wname, "output", &wr)) < 0 || (rc = caldera_inst_start(wr)) < 0) {
        caldera_meta_free(wmeta);
        goto ctx_fail;
    }
    wops = caldera_registry_find(ctx, wname)->ops;
    rc = wops->create(wr, gguf_out ? output : st_path, wmeta);
    caldera_meta_free(wmeta);
    if (rc < 0) goto ctx_fail;
    writing = 1;

    int64_t nt = rops->n_tensors(rd);
    int tty = isatty(2);
    uint64_t bytes = 0;
    for (int64_t i = 0; i < nt; i++) {
        struct caldera_tensor_info ti;
        struct caldera_tensor t;
        int owned = 0;
        if ((rc = rops->tensor_info(rd, i, &ti)) < 0) goto ctx_fail;
        const char * name = ti.hf_name && ti.hf_name[0] ? ti.hf_name : ti.name;
        if ((rc = rops->read_tensor(rd, i, want, &t, &owned)) < 0) goto ctx_fail;
        if (blocks != CALDERA_DTYPE_COUNT && t.ndim == 2 && t.ne[1] % QBLK == 0 && t.ne[1] > 0 && (!t.ld || t.ld == t.ne[1])) {
            struct caldera_tensor q = { 0 };
            if ((rc = encode_blocks(ctx, blocks, &t, &q)) == 0) rc = wops->write_tensor(wr, name, &q);
            size_t qb = 0;
            caldera_dtype_nbytes(blocks, caldera_tensor_nelements(&t), &qb);
            bytes += qb;
            caldera_tensor_free(&q);
        } else {
            rc = wops->write_tensor(wr, name, &t);
            bytes += (uint64_t) caldera_tensor_nelements(&t) * (want == CALDERA_DTYPE_F16 ? 2 : 4);
        }
        if (owned) caldera_tensor_free(&t);
        if (rc < 0) goto ctx_fail;
        if (!quiet && (i + 1 == nt || (i + 1) % (tty ? 10 : 100) == 0)) {  // a line per step unless a terminal
            fprintf(stderr, "%scaldera-convert: %" PRId64 "/%" PRId64 " tensors, %.1f MB%s", tty ? "\r" : "", i + 1, nt,
                    (double) bytes / 1e6, tty && i + 1 < nt ? "" : "\n");
        }
    }
    writing = 0;
    if ((rc = wops->finish(wr, 1)) < 0) goto ctx_fail;
    if (gguf_out) goto written;
    if (have_desc && write_config(cfg_path, &desc, smeta, dtype_name) != 0) goto done;
    if (smeta && caldera_meta_find(smeta, "tokenizer.ggml.tokens") >= 0 &&
        write_tokenizer_config(tok_path, smeta, have_desc ? desc.ctx_len : 0) != 0) {
        goto done;
    }
    if (!have_desc) fprintf(stderr, "caldera-convert: warning: %s has no model description; no config.json written\n", input);
    if (rename(tmp, output) != 0) {
        fprintf(stderr, "caldera-convert: cannot rename %s to %s: %s\n", tmp, output, strerror(errno));
        goto done;
    }
    tmp_made = 0;
written:
    if (!quiet) {
        fprintf(stderr, "caldera-convert: wrote %s (%s, %" PRId64 " tensors, %.1f MB of %s) in %.2f s\n", output, rp->name, nt,
                (double) bytes / 1e6, dtype_name, now() - t0);
    }
    ret = 0;
    goto done;
oom:
    fprintf(stderr, "caldera-convert: out of memory\n");
    goto done;
ctx_fail:
    fprintf(stderr, "caldera-convert: %s\n", caldera_ctx_errmsg(ctx)[0] ? caldera_ctx_errmsg(ctx) : caldera_status_str(rc));
done:
    if (writing) wops->finish(wr, 0);
    if (tmp_made) {  // nothing under the final name, and no temporary left behind
        if (st_path) unlink(st_path);
        if (cfg_path) unlink(cfg_path);
        if (tok_path) unlink(tok_path);
        rmdir(tmp);
    }
    caldera_inst_free(wr);
    caldera_inst_free(rd);
    caldera_ctx_free(ctx);
    free(tok_path);
    free(cfg_path);
    free(st_path);
    free(tmp);
    return ret;
}
