// SPDX-License-Identifier: MIT
// caldera-pipe generate: continue a prompt with any readable model, streaming tokens as they are
// made. Greedy at temperature 0; otherwise softmax(logits / T) restricted to the smallest set of
// most likely tokens whose mass reaches top-p (nucleus), drawn with the core's seeded generator.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli-chat.h"
#include "cli-model.h"

static void gen_usage(FILE * f) {
    fprintf(f,
            "usage: caldera-pipe generate --model PATH --prompt TEXT [options]\n"
            "Continue a prompt; tokens are printed as they are made.\n"
            "\n"
            "  --model PATH          the model file or folder (required)\n"
            "  --prompt TEXT         the prompt (required)\n"
            "  --tokens N            tokens to generate (default 64); stops early at end of text\n"
            "  --temperature T       0 (default): greedy; > 0: sampling\n"
            "  --top-p P             nucleus sampling mass (default 1: off)\n"
            "  --seed S              sampling seed (default 1)\n"
            "  --chat                wrap the prompt as a user turn of the model's ChatML template\n"
            "                        (<|im_start|>user ... <|im_end|> <|im_start|>assistant), when it declares one,\n"
            "                        after the template's default system turn when it has one (SmolLM2's does)\n"
            "  --system TEXT         with --chat: the system turn's text instead of the template's default\n"
            "  --tokenizer FILE      tokenizer for formats that keep it apart (llama2.c tok512.bin)\n"
            "  --format NAME, --weights f32|f16, --threads N, --plugin-path PATH, -q  as for eval\n"
            CLI_COMPRESSED_USAGE
            "Speed of prompt processing and generation is reported on stderr.\n");
}

struct cand { float p; int32_t id; };

static int cand_cmp(const void * a, const void * b) {
    float x = ((const struct cand *) a)->p, y = ((const struct cand *) b)->p;
    return x < y ? 1 : x > y ? -1 : ((const struct cand *) a)->id - ((const struct cand *) b)->id;
}

static int32_t pick(const float * logits, int64_t n, double temp, double top_p, struct caldera_rng * rng, struct cand * c) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++) best = logits[i] > logits[best] ? i : best;
    if (temp <= 0) return (int32_t) best;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        c[i].p  = (float) exp((logits[i] - logits[best]) / temp);
        c[i].id = (int32_t) i;
        sum += c[i].p;
    }
    qsort(c, (size_t) n, sizeof(*c), cand_cmp);
    int64_t k = 0;
    double  mass = 0;
    while (k < n && (k == 0 || mass < top_p * sum)) mass += c[k++].p;
    double r = caldera_rng_uniform(rng) * mass, acc = 0;
    for (int64_t i = 0; i < k; i++) {
        acc += c[i].p;
        if (r < acc) return c[i].id;
    }
    return c[k - 1].id;
}

int cli_generate(int argc, char ** argv) {
    struct cli_model m = { .threads = -1 };
    const char *     prompt = NULL, * system = NULL;
    long long        n_gen = 64, seed = 1;
    double           temp = 0, top_p = 1;
    int              chat = 0, exit_code = 0, rc;
    int32_t *        ids = NULL;
    int64_t          n_ids = 0;
    float *          logits = NULL;
    struct cand *    cands = NULL;
    char *           wrapped = NULL;
    if (!(m.paths = calloc((size_t) argc, sizeof(char *)))) return CLI_EXIT_RUNTIME;
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i], * next = i + 1 < argc ? argv[i + 1] : NULL;
        int          r = cli_model_option(&m, "generate", argc, argv, &i);
        if (r < 0) { exit_code = CLI_EXIT_USAGE; goto out; }
        if (r > 0) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { gen_usage(stdout); goto out; }
        if (!strcmp(a, "--chat")) { chat = 1; continue; }
        int valued = !strcmp(a, "--prompt") || !strcmp(a, "--tokens") || !strcmp(a, "--temperature") || !strcmp(a, "--top-p") ||
                     !strcmp(a, "--seed") || !strcmp(a, "--system");
        if (!valued) {
            fprintf(stderr, "caldera-pipe generate: unknown argument '%s' (see generate --help)\n", a);
            exit_code = CLI_EXIT_USAGE;
            goto out;
        }
        if (!next) {
            fprintf(stderr, "caldera-pipe generate: %s needs a value\n", a);
            exit_code = CLI_EXIT_USAGE;
            goto out;
        }
        i++;
        int bad = 0;
        if (!strcmp(a, "--prompt")) prompt = next;
        else if (!strcmp(a, "--system")) system = next;
        else if (!strcmp(a, "--tokens")) bad = cli_parse_int("generate", a, next, 1, 1 << 20, &n_gen) < 0;
        else if (!strcmp(a, "--seed")) bad = cli_parse_int("generate", a, next, 0, INT64_MAX, &seed) < 0;
        else if (!strcmp(a, "--temperature")) bad = cli_parse_double("generate", a, next, 0, 100, &temp) < 0;
        else bad = cli_parse_double("generate", a, next, 1e-6, 1, &top_p) < 0;
        if (bad) { exit_code = CLI_EXIT_USAGE; goto out; }
    }
    if (!prompt || !m.model) {
        fprintf(stderr, "caldera-pipe generate: --model PATH and --prompt TEXT are required\n");
        exit_code = CLI_EXIT_USAGE;
        goto out;
    }
    if (system && !chat) {
        fprintf(stderr, "caldera-pipe generate: --system TEXT needs --chat\n");
        exit_code = CLI_EXIT_USAGE;
        goto out;
    }
    if ((exit_code = cli_model_open(&m, "generate")) != 0) goto out;
    struct caldera_model_vocab voc;
    struct caldera_model_desc  d;
    if ((rc = m.ops->vocab(m.inst, &voc)) < 0 || (rc = m.ops->desc(m.inst, &d)) < 0) {
        fprintf(stderr, "caldera-pipe generate: %s\n", caldera_ctx_errmsg(m.ctx));
        exit_code = CLI_EXIT_RUNTIME;
        goto out;
    }
    const char * text = prompt;
    if (chat) {
        char err[256];
        if (cli_chat_render(voc.chat_template, system, prompt, &wrapped, err, sizeof(err)) < 0) {
            fprintf(stderr, "caldera-pipe generate: --chat: %s: %s\n", m.model, err);
            exit_code = CLI_EXIT_USAGE;
            goto out;
        }
        text = wrapped;
    }
    if ((rc = m.ops->tokenize(m.inst, text, strlen(text), voc.add_bos && voc.bos >= 0, chat, &ids, &n_ids)) < 0 || n_ids < 1) {
        fprintf(stderr, "caldera-pipe generate: the prompt cannot be tokenized: %s\n",
                rc < 0 ? caldera_ctx_errmsg(m.ctx) : "it gives no tokens");
        exit_code = CLI_EXIT_RUNTIME;
        goto out;
    }
    int64_t need = n_ids + n_gen;
    if (need > d.ctx_len && d.ctx_len > 0) {
        fprintf(stderr, "caldera-pipe generate: %lld prompt + %lld new tokens exceed the context of %lld\n", (long long) n_ids,
                n_gen, (long long) d.ctx_len);
        exit_code = CLI_EXIT_USAGE;
        goto out;
    }
    logits = malloc((size_t) d.vocab * sizeof(float));
    cands  = malloc((size_t) d.vocab * sizeof(struct cand));
    if (!logits || !cands) { exit_code = CLI_EXIT_RUNTIME; goto out; }
    struct caldera_rng rng;
    caldera_rng_seed(&rng, (uint64_t) seed);
    double t0 = cli_now();
    if ((rc = m.ops->kv_reset(m.inst, need)) < 0 || (rc = m.ops->decode(m.inst, ids, n_ids, logits)) < 0) {
        fprintf(stderr, "caldera-pipe generate: %s\n", caldera_ctx_errmsg(m.ctx));
        exit_code = CLI_EXIT_RUNTIME;
        goto out;
    }
    double t1 = cli_now();
    if (!chat) fputs(prompt, stdout);
    fflush(stdout);
    long long made = 0;
    for (; made < n_gen; made++) {
        int32_t tok = pick(logits, d.vocab, temp, top_p, &rng, cands);
        if (tok == voc.eos || tok == voc.eot) break;
        const char * piece;
        size_t       len;
        int          ctrl = 0;
        if (m.ops->token_piece(m.inst, tok, &piece, &len, &ctrl) == 0 && !ctrl) fwrite(piece, 1, len, stdout);
        fflush(stdout);
        if (made + 1 < n_gen && (rc = m.ops->decode(m.inst, &tok, 1, logits)) < 0) {
            fprintf(stderr, "\ncaldera-pipe generate: %s\n", caldera_ctx_errmsg(m.ctx));
            exit_code = CLI_EXIT_RUNTIME;
            goto out;
        }
    }
    double t2 = cli_now();
    fputc('\n', stdout);
    if (!m.quiet) {
        fprintf(stderr, "prompt: %lld tokens in %.3f s (%.1f tok/s); generated %lld tokens in %.3f s (%.1f tok/s)\n", (long long) n_ids,
                t1 - t0, (double) n_ids / (t1 - t0), made, t2 - t1, made > 0 ? (double) made / (t2 - t1) : 0.0);
    }
out:
    caldera_free(ids);
    free(logits);
    free(cands);
    free(wrapped);
    cli_model_close(&m);
    free(m.paths);
    return exit_code;
}
