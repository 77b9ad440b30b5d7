// SPDX-License-Identifier: MIT
// SmolLM2-135M-Instruct against llama.cpp (label `model`): the first 16 windows of WikiText-2 test
// at ctx 512 (llama-perplexity's protocol) within PPL_REL_TOL of llama-perplexity on the same
// f32 weights, and greedy continuations of three prompts equal to llama-cli's (fixtures made by
// fixtures/make_fixtures.sh). Skips (exit 77) when the GGUF is in neither $CALDERA_SMOLLM2_GGUF
// nor $CALDERA_CACHE_DIR.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define SMOL_FILE   "SmolLM2-135M-Instruct.Q4_1.gguf"
#define PPL_REL_TOL 0.003   // the bound: 0.3% of llama-perplexity's value
#define WIKI        CALDERA_SHARED_DATA "/wikitext-2-raw/wiki.test.raw"
#define FIX_PPL     CALDERA_TEST_SRC_DIR "/fixtures/smollm2-ppl-ctx512-16.txt"
#define FIX_GREEDY  CALDERA_TEST_SRC_DIR "/fixtures/smollm2-greedy.txt"

static char smol_path[4096];

static int find_model(void) {
    const char * env = getenv("CALDERA_SMOLLM2_GGUF");
    if (env && access(env, R_OK) == 0) {
        snprintf(smol_path, sizeof(smol_path), "%s", env);
        return 1;
    }
    const char * cache = getenv("CALDERA_CACHE_DIR");
    char         home[2048];
    if (!cache || !cache[0]) {
        snprintf(home, sizeof(home), "%s/.cache/caldera", getenv("HOME") ? getenv("HOME") : "");
        cache = home;
    }
    static const char * sub[] = { "smollm2/", "" };
    for (int i = 0; i < 2; i++) {
        snprintf(smol_path, sizeof(smol_path), "%s/%s%s", cache, sub[i], SMOL_FILE);
        if (access(smol_path, R_OK) == 0) return 1;
    }
    return 0;
}

// next line of a fixture that is not a comment (static buffer); NULL at the end
static char * next_line(FILE * f) {
    static char line[8192];
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#') continue;
        line[strcspn(line, "\n")] = 0;
        return line;
    }
    return NULL;
}

static void unescape(char * s) {
    char * o = s;
    for (char * p = s; *p; p++) {
        if (*p == '\\' && p[1] == 'n') { *o++ = '\n'; p++; }
        else if (*p == '\\' && p[1] == '\\') { *o++ = '\\'; p++; }
        else *o++ = *p;
    }
    *o = 0;
}

static void rstrip_newlines(char * s) {
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '\n') s[--n] = 0;
}

START_TEST(test_smol_llama_cpp) {
    struct caldera_ctx *             ctx = tu_ctx();
    struct caldera_inst *            m = NULL;
    const struct caldera_model_ops * ops;
    int                              rc = caldera_model_open(ctx, smol_path, NULL, &m);
    ck_assert_msg(rc == 0, "%s: %s", smol_path, caldera_ctx_errmsg(ctx));
    ck_assert_int_eq(caldera_model_ops_of(m, &ops), 0);
    // perplexity
    FILE * f = fopen(FIX_PPL, "r");
    ck_assert_msg(f != NULL, "fixture %s is missing (fixtures/make_fixtures.sh)", FIX_PPL);
    double ref_ppl = 0, ref_err = 0;
    char * l = next_line(f);
    ck_assert_ptr_nonnull(l);
    ck_assert_int_eq(sscanf(l, "%lf %lf", &ref_ppl, &ref_err), 2);
    fclose(f);
    char * text = NULL;
    size_t len = 0;
    ck_assert_int_eq(caldera_text_read(ctx, WIKI, CALDERA_TEXT_ROWS, &text, &len), 0);
    struct caldera_ppl_params pp = { .struct_size = sizeof(pp), .protocol = CALDERA_PPL_LLAMACPP, .ctx = 512, .windows = 16 };
    struct caldera_ppl_result res;
    ck_assert_int_eq(caldera_model_perplexity(m, text, len, &pp, &res), 0);
    fprintf(stderr, "SmolLM2 WikiText-2 ctx 512, 16 windows: caldera %.4f +/- %.4f, llama-perplexity %.4f +/- %.4f (%+.3f%%)\n",
            res.ppl, res.ppl_err, ref_ppl, ref_err, 100.0 * (res.ppl / ref_ppl - 1));
    ck_assert_int_eq(res.windows, 16);
    ck_assert_int_eq(res.tokens_scored, 16 * 255);
    ck_assert_msg(fabs(res.ppl / ref_ppl - 1) < PPL_REL_TOL, "perplexity %.4f vs llama-perplexity %.4f", res.ppl, ref_ppl);
    caldera_free(text);
    // greedy
    struct caldera_model_desc  d;
    struct caldera_model_vocab v;
    ck_assert_int_eq(ops->desc(m, &d), 0);
    ck_assert_int_eq(ops->vocab(m, &v), 0);
    f = fopen(FIX_GREEDY, "r");
    ck_assert_msg(f != NULL, "fixture %s is missing (fixtures/make_fixtures.sh)", FIX_GREEDY);
    float * lg = malloc((size_t) d.vocab * sizeof(float));
    int     n_prompts = 0;
    for (char * pl; (pl = next_line(f)) != NULL; n_prompts++) {
        char prompt[8192], want[8192], got[8192] = "";
        snprintf(prompt, sizeof(prompt), "%s", pl);
        char * wl = next_line(f);
        ck_assert_ptr_nonnull(wl);
        snprintf(want, sizeof(want), "%s", wl);
        unescape(want);
        int32_t * ids = NULL;
        int64_t   n = 0;
        ck_assert_int_eq(ops->tokenize(m, prompt, strlen(prompt), v.add_bos, 0, &ids, &n), 0);
        ck_assert_int_eq(ops->kv_reset(m, n + 32), 0);
        ck_assert_int_eq(ops->decode(m, ids, n, lg), 0);
        for (int step = 0; step < 32; step++) {
            int32_t best = 0;
            for (int32_t j = 1; j < d.vocab; j++) best = lg[j] > lg[best] ? j : best;
            if (best == v.eos || best == v.eot) break;
            const char * piece;
            size_t       plen;
            int          ctrl = 0;
            ck_assert_int_eq(ops->token_piece(m, best, &piece, &plen, &ctrl), 0);
            if (!ctrl) strncat(got, piece, plen);
            if (step < 31) ck_assert_int_eq(ops->decode(m, &best, 1, lg), 0);
        }
        rstrip_newlines(got);
        rstrip_newlines(want);
        ck_assert_msg(strcmp(got, want) == 0, "prompt '%s': greedy continuation\n[%s]\nllama.cpp:\n[%s]", prompt, got, want);
        caldera_free(ids);
    }
    ck_assert_int_eq(n_prompts, 3);
    fclose(f);
    free(lg);
    caldera_inst_free(m);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * smol_suite(void) {
    Suite * s  = suite_create("llama-model");
    TCase * tc = tcase_create("smollm2");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, test_smol_llama_cpp);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    if (!find_model()) {
        fprintf(stderr, "test-llama-model: %s not found (set CALDERA_SMOLLM2_GGUF or CALDERA_CACHE_DIR); skipped\n", SMOL_FILE);
        return 77;
    }
    return tu_run(smol_suite());
}
