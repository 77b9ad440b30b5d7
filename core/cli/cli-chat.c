// SPDX-License-Identifier: MIT
// cli-chat.c: a user turn in a ChatML chat template, with the template's default system prompt.
// No Jinja interpreter: ChatML templates differ only in whether (and with what text) they open
// with a system turn when the conversation has none; that text is a string literal in the template.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli-chat.h"

#define IM_START "<|im_start|>"
#define IM_END   "<|im_end|>"

// Decode the Jinja string literal that starts at s (s[0] is its quote) into a malloc'd string;
// NULL when it does not end or on no memory.
static char * jinja_literal(const char * s) {
    char   q = s[0];
    size_t n = 0;
    char * out = malloc(strlen(s) + 1);
    if (!out) return NULL;
    for (const char * p = s + 1; *p; p++) {
        if (*p == q) {
            out[n] = '\0';
            return out;
        }
        if (*p == '\\' && p[1]) {
            p++;
            switch (*p) {
            case 'n': out[n++] = '\n'; break;
            case 't': out[n++] = '\t'; break;
            case 'r': out[n++] = '\r'; break;
            default: out[n++] = *p; break;   // \\, \', \"
            }
        } else {
            out[n++] = *p;
        }
    }
    free(out);
    return NULL;
}

// The default system text of a ChatML template (malloc'd), NULL in *out when it has none; -1 when
// a literal is unterminated or memory runs out.
static int default_system(const char * tmpl, char ** out, char * err, size_t errlen) {
    static const char * const openers[] = { "'" IM_START "system", "\"" IM_START "system" };
    *out = NULL;
    for (size_t k = 0; k < sizeof(openers) / sizeof(openers[0]); k++) {
        for (const char * p = strstr(tmpl, openers[k]); p; p = strstr(p + 1, openers[k])) {
            char * lit = jinja_literal(p);
            if (!lit) {
                snprintf(err, errlen, "the chat template's string literal at byte %zu does not end (or no memory)",
                         (size_t) (p - tmpl));
                return -1;
            }
            // '<|im_start|>system\nTEXT<|im_end|>...' is a default turn; '<|im_start|>system\n' + content is not
            const char * body = lit + strlen(IM_START "system");
            const char * end  = strstr(body, IM_END);
            if (body[0] == '\n' && end) {
                size_t len = (size_t) (end - body - 1);
                memmove(lit, body + 1, len);
                lit[len] = '\0';
                *out = lit;
                return 0;
            }
            free(lit);
        }
    }
    return 0;
}

int cli_chat_render(const char * tmpl, const char * system, const char * user, char ** out, char * err, size_t errlen) {
    char * def = NULL;
    *out = NULL;
    if (!tmpl || !strstr(tmpl, IM_START) || !strstr(tmpl, IM_END)) {
        snprintf(err, errlen, "the model declares no ChatML chat template (tokenizer.chat_template with %s ... %s)",
                 IM_START, IM_END);
        return -1;
    }
    if (!system) {
        if (default_system(tmpl, &def, err, errlen) < 0) return -1;
        system = def;
    }
    size_t n = strlen(user) + (system ? strlen(system) : 0) + 3 * (sizeof(IM_START) + sizeof(IM_END)) + 32;
    char * s = malloc(n);
    if (!s) {
        free(def);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t k = 0;
    if (system) k += (size_t) snprintf(s + k, n - k, IM_START "system\n%s" IM_END "\n", system);
    snprintf(s + k, n - k, IM_START "user\n%s" IM_END "\n" IM_START "assistant\n", user);
    free(def);
    *out = s;
    return 0;
}
