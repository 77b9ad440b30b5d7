// SPDX-License-Identifier: MIT
// caldera-pipe eval: perplexity of any readable model on a text (WikiText-2 test by default in
// the layout llama-perplexity is given by our fixtures: CRLF -> LF, rows joined by a blank line).
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli-model.h"

static void eval_usage(FILE * f) {
    fprintf(f,
            "usage: caldera-pipe eval --model PATH [options]\n"
            "Perplexity of a model (GGUF, safetensors file or folder, llama2.c checkpoint) on a text.\n"
            "\n"
            "  --model PATH          the model file or folder (required)\n"
            "  --text FILE           UTF-8 text (default: $CALDERA_SHARED_DATA/wikitext-2-raw/wiki.test.raw)\n"
            "  --layout rows|lf|raw  rows: CRLF -> LF and rows joined by a blank line (default; WikiText-2's\n"
            "                        conventional layout); lf: CRLF -> LF only; raw: the bytes as they are\n"
            "  --ctx N               window length in tokens (default 2048)\n"
            "  --windows N           evaluate at most N windows (default 0: the whole text)\n"
            "  --protocol P          llamacpp (default): llama-perplexity's windows, second half scored;\n"
            "                        strided: Hugging Face's sliding windows (see --stride)\n"
            "  --stride N            strided: window step (default ctx/2)\n"
            "  --tokenizer FILE      tokenizer for formats that keep it apart (llama2.c tok512.bin)\n"
            "  --format NAME         format plugin that reads the model (default: guessed)\n"
            "  --weights f32|f16     weight storage of the runtime (default f32)\n"
            "  --threads N           threads (0: all cores)\n"
            CLI_COMPRESSED_USAGE
            "  --plugin-path PATH    load plugins from a .so or a directory (repeatable)\n"
            "  --json FILE           also write the result as JSON (written when the evaluation succeeded)\n"
            "  -q, --quiet           no progress\n"
            "Prints perplexity ± (as llama-perplexity computes it), tokens scored, windows, time and the model's\n"
            "storage as a pipeline report counts it: bits per parameter of the transformer blocks' linear weights\n"
            "(stored bytes x 8 over their parameters; of a caldera-pipe output, its compressed layers' stored bits)\n"
            "and the file's bits over all the model's parameters (file size x 8 over every tensor's elements).\n");
}

struct progress { int quiet, tty; double t0; };

static void on_progress(void * user, int64_t done, int64_t total, double ppl) {
    struct progress * p = user;
    if (p->quiet) return;
    double el = cli_now() - p->t0;
    fprintf(stderr, "%s[%lld/%lld] ppl %.4f, %.1f s, ETA %.0f s%s", p->tty ? "\r\033[K" : "", (long long) done, (long long) total,
            ppl, el, el / (double) done * (double) (total - done), p->tty ? "" : "\n");
    fflush(stderr);
}

// The storage figures of the model as a pipeline report and `compare` count them.
struct eval_bits {
    double       bits;        // linear weights' stored bits / their parameters (NAN: none)
    double       file_bits;   // file bytes × 8 / all the model's parameters (NAN: not one regular file)
    double       file_bytes;  // (-1: not one regular file)
    const char * file;        // the file measured: --compressed FILE, else --model
};

static void eval_bits_of(const struct cli_model * m, struct eval_bits * b) {
    const struct caldera_model_storage * st = &m->storage;
    struct stat sb;
    b->file = m->compressed ? m->compressed : m->model;
    b->bits = st->linear_params > 0 ? (double) st->linear_bits / (double) st->linear_params : NAN;
    b->file_bytes = stat(b->file, &sb) == 0 && S_ISREG(sb.st_mode) ? (double) sb.st_size : -1;
    b->file_bits = b->file_bytes >= 0 && st->params > 0 ? b->file_bytes * 8.0 / (double) st->params : NAN;
}

static json_t * jnum_or_null(double v) { return isnan(v) ? json_null() : json_real(v); }

// The result as JSON in @p path (written to a temporary name, then renamed): 0 or an exit code.
static int eval_write_json(const char * path, const struct cli_model * m, const char * text_path, const char * layout,
                           const char * protocol, long long ctx_len, long long windows, long long stride,
                           const struct caldera_ppl_result * res, double secs, const struct eval_bits * b) {
    const struct caldera_model_storage * st = &m->storage;
    char * tmp = NULL, * js = NULL;
    int    code = 0;
    json_t * o = json_pack("{s:s, s:o, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f}", "model", m->model,
                           "compressed", m->compressed ? json_string(m->compressed) : json_null(), "text", text_path, "layout",
                           layout, "protocol", protocol, "ctx", (json_int_t) ctx_len, "windows", (json_int_t) windows, "stride",
                           (json_int_t) stride, "windows_scored", (json_int_t) res->windows, "text_tokens",
                           (json_int_t) res->text_tokens, "tokens_scored", (json_int_t) res->tokens_scored, "ppl", res->ppl,
                           "ppl_err", res->ppl_err, "nll", res->nll, "seconds", secs);
    json_t * s = json_pack("{s:o, s:s, s:I, s:I, s:s, s:o, s:s, s:o, s:I}", "bits_per_param", jnum_or_null(b->bits), "bits_over",
                           st->compressed ? "compressed layers" : "linear weights of the transformer blocks (layer >= 0)",
                           "linear_params", (json_int_t) st->linear_params, "linear_bits", (json_int_t) st->linear_bits,
                           "linear_types", st->types, "file_bits_per_model_param", jnum_or_null(b->file_bits), "file", b->file,
                           "file_bytes", b->file_bytes >= 0 ? json_integer((json_int_t) b->file_bytes) : json_null(),
                           "model_params", (json_int_t) st->params);
    if (!o || !s || json_object_set_new(o, "storage", s) < 0) { s = NULL; code = CLI_EXIT_RUNTIME; goto out; }
    s = NULL;
    if (!(js = json_dumps(o, JSON_INDENT(2) | JSON_REAL_PRECISION(17))) || asprintf(&tmp, "%s.tmp.%ld", path, (long) getpid()) < 0) {
        tmp = NULL;
        code = CLI_EXIT_RUNTIME;
        goto out;
    }
    FILE * f = fopen(tmp, "w");
    int    bad = !f;
    if (f) {
        bad = fputs(js, f) < 0 || fputc('\n', f) < 0;
        bad |= fclose(f) != 0;
    }
    if (bad || rename(tmp, path) != 0) {
        fprintf(stderr, "caldera-pipe eval: --json %s: cannot write: %s\n", path, strerror(errno));
        remove(tmp);
        code = CLI_EXIT_RUNTIME;
    }
out:
    json_decref(s);
    json_decref(o);
    free(js);
    free(tmp);
    return code;
}

int cli_eval(int argc, char ** argv) {
    struct cli_model m = { .threads = -1 };
    const char *     text_path = NULL, * protocol = "llamacpp", * layout = "rows", * json_path = NULL;
    long long        ctx_len = 2048, windows = 0, stride = 0;
    int              exit_code = 0, rc;
    char *           text = NULL;
    size_t           len = 0;
    if (!(m.paths = calloc((size_t) argc, sizeof(char *)))) return CLI_EXIT_RUNTIME;
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i], * next = i + 1 < argc ? argv[i + 1] : NULL;
        int          r = cli_model_option(&m, "eval", argc, argv, &i);
        if (r < 0) { exit_code = CLI_EXIT_USAGE; goto out; }
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { eval_usage(stdout); goto out; }
        int valued = !strcmp(a, "--text") || !strcmp(a, "--ctx") || !strcmp(a, "--windows") || !strcmp(a, "--protocol") ||
                     !strcmp(a, "--stride") || !strcmp(a, "--layout") || !strcmp(a, "--json");
        if (!valued) {
            fprintf(stderr, "caldera-pipe eval: unknown argument '%s' (see eval --help)\n", a);
            exit_code = CLI_EXIT_USAGE;
            goto out;
        }
        if (!next) {
            fprintf(stderr, "caldera-pipe eval: %s needs a value\n", a);
            exit_code = CLI_EXIT_USAGE;
            goto out;
        }
        i++;
        if (!strcmp(a, "--text")) text_path = next;
        else if (!strcmp(a, "--protocol")) protocol = next;
        else if (!strcmp(a, "--layout")) layout = next;
        else if (!strcmp(a, "--json")) json_path = next;
        else if (!strcmp(a, "--ctx")) { if (cli_parse_int("eval", a, next, 2, 1 << 20, &ctx_len) < 0) { exit_code = CLI_EXIT_USAGE; goto out; } }
        else if (!strcmp(a, "--windows")) { if (cli_parse_int("eval", a, next, 0, 1LL << 40, &windows) < 0) { exit_code = CLI_EXIT_USAGE; goto out; } }
        else if (cli_parse_int("eval", a, next, 1, 1 << 20, &stride) < 0) { exit_code = CLI_EXIT_USAGE; goto out; }
    }
    enum caldera_ppl_protocol proto;
    if (!strcmp(protocol, "llamacpp")) proto = CALDERA_PPL_LLAMACPP;
    else if (!strcmp(protocol, "strided")) proto = CALDERA_PPL_STRIDED;
    else {
        fprintf(stderr, "caldera-pipe eval: --protocol '%s'; allowed: llamacpp, strided\n", protocol);
        exit_code = CLI_EXIT_USAGE;
        goto out;
    }
    enum caldera_text_layout lay;
    if (!strcmp(layout, "rows")) lay = CALDERA_TEXT_ROWS;
    else if (!strcmp(layout, "lf")) lay = CALDERA_TEXT_LF;
    else if (!strcmp(layout, "raw")) lay = CALDERA_TEXT_RAW;
    else {
        fprintf(stderr, "caldera-pipe eval: --layout '%s'; allowed: rows, lf, raw\n", layout);
        exit_code = CLI_EXIT_USAGE;
        goto out;
    }
    char def_text[4096];
    if (!text_path && getenv("CALDERA_SHARED_DATA")) {
        snprintf(def_text, sizeof(def_text), "%s/wikitext-2-raw/wiki.test.raw", getenv("CALDERA_SHARED_DATA"));
        text_path = def_text;
    }
    if (!text_path) {
        fprintf(stderr, "caldera-pipe eval: --text FILE is required (or CALDERA_SHARED_DATA for WikiText-2's test file)\n");
        exit_code = CLI_EXIT_USAGE;
        goto out;
    }
    if (!m.model) {
        fprintf(stderr, "caldera-pipe eval: --model PATH is required\n");
        exit_code = CLI_EXIT_USAGE;
        goto out;
    }
    if ((exit_code = cli_model_open(&m, "eval")) != 0) goto out;
    if ((rc = caldera_text_read(m.ctx, text_path, lay, &text, &len)) < 0) {
        fprintf(stderr, "caldera-pipe eval: %s\n", caldera_ctx_errmsg(m.ctx));
        exit_code = CLI_EXIT_RUNTIME;
        goto out;
    }
    struct progress           pr = { m.quiet, isatty(2), cli_now() };
    struct caldera_ppl_params pp = { .struct_size = sizeof(pp), .protocol = proto, .ctx = ctx_len, .windows = windows,
                                     .stride = stride, .progress = on_progress, .progress_user = &pr };
    struct caldera_ppl_result res;
    rc = caldera_model_perplexity(m.inst, text, len, &pp, &res);
    if (pr.tty && !m.quiet) fputc('\n', stderr);
    if (rc < 0) {
        fprintf(stderr, "caldera-pipe eval: %s\n", caldera_ctx_errmsg(m.ctx));
        exit_code = CLI_EXIT_RUNTIME;
        goto out;
    }
    double secs = cli_now() - pr.t0;
    printf("model:      %s\n", m.model);
    printf("text:       %s (layout %s, %lld tokens)\n", text_path, layout, (long long) res.text_tokens);
    if (proto == CALDERA_PPL_LLAMACPP) {
        printf("protocol:   llamacpp, ctx %lld, %lld windows, second half of each scored\n", ctx_len, (long long) res.windows);
    } else {
        printf("protocol:   strided, ctx %lld, stride %lld, %lld windows\n", ctx_len, stride > 0 ? stride : ctx_len / 2,
               (long long) res.windows);
    }
    printf("scored:     %lld tokens\n", (long long) res.tokens_scored);
    printf("perplexity: %.4f +/- %.5f\n", res.ppl, res.ppl_err);
    printf("time:       %.1f s (%.0f tokens/s through the model)\n", secs,
           (double) res.windows * (double) ctx_len / (secs > 0 ? secs : 1));
    struct eval_bits b;
    eval_bits_of(&m, &b);
    if (isnan(b.bits)) printf("storage:    no linear weight of the transformer blocks in %s", m.model);
    else printf("storage:    %.4f bits/param over %.3f M params of the %s (%s)", b.bits, (double) m.storage.linear_params / 1e6,
                m.storage.compressed ? "compressed layers" : "blocks' linear weights", m.storage.types);
    if (isnan(b.file_bits)) printf("; %s is no single file\n", b.file);
    else printf("; file %.4f bits/param over all %.3f M params of the model\n", b.file_bits, (double) m.storage.params / 1e6);
    if (json_path && (exit_code = eval_write_json(json_path, &m, text_path, layout, protocol, ctx_len, windows, stride, &res, secs, &b)) != 0) goto out;
out:
    caldera_free(text);
    cli_model_close(&m);
    free(m.paths);
    return exit_code;
}
