// SPDX-License-Identifier: MIT
// caldera-pipe generate --chat (core/cli/cli-chat.c): a user turn, with or without a system turn,
// rendered as Jinja2 renders four ChatML templates (SmolLM2-135M-Instruct's from its GGUF, Qwen2's,
// plain ChatML, a double-quoted one) with add_generation_prompt; the expected text is
// fixtures/chat/chat-templates.txt, made by fixtures/chat/make_chat_fixtures.py with Jinja2.
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/cli/cli-chat.h"

// Undo the fixture's escapes (\\ and \n) in place.
static void unescape(char * s) {
    char * o = s;
    for (const char * p = s; *p; p++) {
        if (*p == '\\' && (p[1] == 'n' || p[1] == '\\')) {
            *o++ = p[1] == 'n' ? '\n' : '\\';
            p++;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
}

// The value of a fixture line "key value\n" (unescaped, malloc'd), or NULL at the end of the file.
static char * field(FILE * f, const char * key) {
    static char line[1 << 16];
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#') continue;
        size_t n = strlen(line), k = strlen(key);
        ck_assert_msg(n > 0 && line[n - 1] == '\n', "fixture line longer than %zu bytes", sizeof(line));
        line[n - 1] = '\0';
        ck_assert_msg(!strncmp(line, key, k) && line[k] == ' ', "fixture: expected '%s ...', got '%.40s'", key, line);
        unescape(line + k + 1);
        char * v = strdup(line + k + 1);
        ck_assert_ptr_nonnull(v);
        return v;
    }
    return NULL;
}

START_TEST(test_chat_fixture) {
    const char * path = CALDERA_TEST_SRC_DIR "/fixtures/chat/chat-templates.txt";
    FILE *       f    = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    int  cases = 0, defaults = 0;
    char err[256];
    for (char * tmpl; (tmpl = field(f, "template")) != NULL; cases++) {
        char * sys = field(f, "system"), * user = field(f, "user"), * expect = field(f, "expect"), * got = NULL;
        ck_assert_msg(sys && user && expect, "%s: record %d is incomplete", path, cases);
        int none = !strcmp(sys, "-");
        defaults += none && strstr(expect, "<|im_start|>system") != NULL;
        ck_assert_msg(cli_chat_render(tmpl, none ? NULL : sys, user, &got, err, sizeof(err)) == 0, "record %d: %s", cases, err);
        ck_assert_msg(!strcmp(got, expect), "record %d (system %s): got\n%s\nexpected\n%s", cases, sys, got, expect);
        free(tmpl), free(sys), free(user), free(expect), free(got);
    }
    fclose(f);
    ck_assert_int_eq(cases, 24);    // 4 templates x 2 prompts x 3 system choices
    ck_assert_int_eq(defaults, 6);  // SmolLM2's, Qwen2's and the double-quoted template put a default system turn
}
END_TEST

START_TEST(test_chat_errors) {
    char   err[256];
    char * out = (char *) 1;
    ck_assert_int_eq(cli_chat_render(NULL, NULL, "hi", &out, err, sizeof(err)), -1);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(err, "no ChatML chat template"));
    ck_assert_int_eq(cli_chat_render("{{ bos_token }}[INST] {{ m }} [/INST]", NULL, "hi", &out, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "no ChatML chat template"));
    // a default system literal that never ends
    ck_assert_int_eq(cli_chat_render("{{ '<|im_start|>system\\nunterminated<|im_end|>", NULL, "hi", &out, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "does not end"));
    // with --system the literal is not needed
    ck_assert_int_eq(cli_chat_render("{{ '<|im_start|>system\\nunterminated<|im_end|>", "S", "hi", &out, err, sizeof(err)), 0);
    ck_assert_str_eq(out, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
}
END_TEST

static Suite * chat_suite(void) {
    Suite * s  = suite_create("chat");
    TCase * tc = tcase_create("render");
    tcase_add_test(tc, test_chat_fixture);
    tcase_add_test(tc, test_chat_errors);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(chat_suite)
