// SPDX-License-Identifier: MIT
// Typed option tables (FFmpeg AVOption style): validation, defaults, parsing from text with
// range and choice checks, formatting back to text, and nearest-name suggestions.
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

const char * caldera_opt_type_name(enum caldera_opt_type t) {
    static const char * n[] = { "bool", "int", "double", "string", "enum", "path", "int list", "reference" };
    return (unsigned) t <= CALDERA_OPT_REF ? n[t] : "?";
}

int64_t caldera_options_count(const struct caldera_option * opts) {
    int64_t n = 0;
    while (opts && opts[n].name) n++;
    return n;
}

const struct caldera_option * caldera_options_find(const struct caldera_option * opts, const char * name, int64_t * index) {
    for (int64_t i = 0; opts && opts[i].name; i++) {
        if (strcmp(opts[i].name, name) == 0) {
            if (index) *index = i;
            return &opts[i];
        }
    }
    return NULL;
}

static int has_range(const struct caldera_option * o) { return o->min <= o->max; }

static void range_text(const struct caldera_option * o, char * buf, size_t n) {
    if (has_range(o)) snprintf(buf, n, "[%.15g, %.15g]", o->min, o->max);
    else snprintf(buf, n, "any");
}

static void choices_text(const struct caldera_option * o, char * buf, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    for (const struct caldera_opt_choice * c = o->choices; c && c->name; c++) {
        len += (size_t) snprintf(buf + len, len < n ? n - len : 0, "%s%s", c == o->choices ? "" : ", ", c->name);
        if (len >= n) break;
    }
}

static int parse_int_list_text(const struct caldera_option * o, const char * text, struct caldera_int_list * out, char * err,
                               size_t errlen);

int caldera_options_validate(const struct caldera_option * opts, char * err, size_t errlen) {
    for (int64_t i = 0; opts[i].name; i++) {
        const struct caldera_option * o = &opts[i];
        if (!caldera_name_valid(o->name)) {
            snprintf(err, errlen, "option %lld: invalid name '%s'; allowed: [a-z][a-z0-9_]*", (long long) i, o->name);
            return CALDERA_ERR_INVAL;
        }
        if (!o->help) {
            snprintf(err, errlen, "option '%s' has no help text", o->name);
            return CALDERA_ERR_INVAL;
        }
        if ((unsigned) o->type > CALDERA_OPT_REF) {
            snprintf(err, errlen, "option '%s' has invalid type %d", o->name, (int) o->type);
            return CALDERA_ERR_INVAL;
        }
        for (int64_t j = 0; j < i; j++) {
            if (strcmp(opts[j].name, o->name) == 0) {
                snprintf(err, errlen, "option '%s' is declared twice", o->name);
                return CALDERA_ERR_INVAL;
            }
        }
        if (o->type == CALDERA_OPT_ENUM) {
            if (!o->choices || !o->choices[0].name) {
                snprintf(err, errlen, "enum option '%s' has no choices", o->name);
                return CALDERA_ERR_INVAL;
            }
            int found = 0;
            for (const struct caldera_opt_choice * c = o->choices; c->name; c++) found |= c->value == o->def.i64;
            if (!found && !(o->flags & CALDERA_OPT_REQUIRED)) {
                snprintf(err, errlen, "enum option '%s': default %lld is not one of its choices", o->name, (long long) o->def.i64);
                return CALDERA_ERR_INVAL;
            }
        }
        if (o->type == CALDERA_OPT_INT && has_range(o) && !(o->flags & CALDERA_OPT_REQUIRED) &&
            ((double) o->def.i64 < o->min || (double) o->def.i64 > o->max)) {
            snprintf(err, errlen, "option '%s': default %lld outside its range [%g, %g]", o->name, (long long) o->def.i64, o->min, o->max);
            return CALDERA_ERR_INVAL;
        }
        if (o->type == CALDERA_OPT_DOUBLE && has_range(o) && !(o->flags & CALDERA_OPT_REQUIRED) &&
            (o->def.dbl < o->min || o->def.dbl > o->max)) {
            snprintf(err, errlen, "option '%s': default %g outside its range [%g, %g]", o->name, o->def.dbl, o->min, o->max);
            return CALDERA_ERR_INVAL;
        }
        if (o->type == CALDERA_OPT_INT_LIST && o->def.str) {
            // A default that does not parse would make every instance creation fail later.
            struct caldera_int_list l = { NULL, 0 };
            char e2[160];
            int rc = parse_int_list_text(o, o->def.str, &l, e2, sizeof(e2));
            caldera_free(l.v);
            if (rc == CALDERA_ERR_NOMEM) {
                snprintf(err, errlen, "out of memory");
                return rc;
            }
            if (rc < 0) {
                snprintf(err, errlen, "option '%s': default '%s' is not valid: %s", o->name, o->def.str, e2);
                return CALDERA_ERR_INVAL;
            }
        }
        if (o->type == CALDERA_OPT_REF && (unsigned) o->ref_kind >= CALDERA_PLUGIN_KIND_COUNT) {
            snprintf(err, errlen, "reference option '%s' has invalid kind %d", o->name, (int) o->ref_kind);
            return CALDERA_ERR_INVAL;
        }
    }
    return 0;
}

#define FIELD(priv, o, T) ((T *) ((char *) (priv) + (o)->offset))

void caldera_option_free_value(const struct caldera_option * o, void * priv) {
    switch (o->type) {
    case CALDERA_OPT_STRING:
    case CALDERA_OPT_PATH: caldera_freep(FIELD(priv, o, char *)); break;
    case CALDERA_OPT_INT_LIST: {
        struct caldera_int_list * l = FIELD(priv, o, struct caldera_int_list);
        caldera_freep(&l->v);
        l->n = 0;
        break;
    }
    default: break;
    }
}

int caldera_option_set_default(const struct caldera_option * o, void * priv) {
    caldera_option_free_value(o, priv);
    switch (o->type) {
    case CALDERA_OPT_BOOL: *FIELD(priv, o, int) = o->def.i64 != 0; return 0;
    case CALDERA_OPT_ENUM: *FIELD(priv, o, int) = (int) o->def.i64; return 0;
    case CALDERA_OPT_INT: *FIELD(priv, o, int64_t) = o->def.i64; return 0;
    case CALDERA_OPT_DOUBLE: *FIELD(priv, o, double) = o->def.dbl; return 0;
    case CALDERA_OPT_STRING:
    case CALDERA_OPT_PATH:
        if (o->def.str) {
            char * s = caldera_strdup(o->def.str);
            if (!s) return CALDERA_ERR_NOMEM;
            *FIELD(priv, o, char *) = s;
        }
        return 0;
    case CALDERA_OPT_INT_LIST: {
        if (!o->def.str) return 0;
        char err[64];
        return parse_int_list_text(o, o->def.str, FIELD(priv, o, struct caldera_int_list), err, sizeof(err));
    }
    case CALDERA_OPT_REF: *FIELD(priv, o, struct caldera_inst *) = NULL; return 0;
    }
    return 0;
}

static int parse_i64(const char * s, int64_t * out) {
    while (isspace((unsigned char) *s)) s++;
    if (!*s) return -1;
    // Decimal, or hexadecimal with 0x: never octal, so "010" is ten and "08" is eight (base 0
    // would read the first as 8 and reject the second).
    const char * digits = (*s == '-' || *s == '+') ? s + 1 : s;
    int base = (digits[0] == '0' && (digits[1] == 'x' || digits[1] == 'X')) ? 16 : 10;
    errno = 0;
    char * end;
    long long v = strtoll(s, &end, base);
    while (isspace((unsigned char) *end)) end++;
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static int parse_int_list_text(const struct caldera_option * o, const char * text, struct caldera_int_list * out, char * err,
                               size_t errlen) {
    int64_t n = 0, cap = 8;
    int64_t * v = caldera_malloc((size_t) cap * sizeof(int64_t));
    if (!v) return CALDERA_ERR_NOMEM;
    char * copy = caldera_strdup(text);
    if (!copy) {
        caldera_free(v);
        return CALDERA_ERR_NOMEM;
    }
    int rc = 0;
    for (char * save = NULL, * tok = strtok_r(copy, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        int64_t x;
        if (parse_i64(tok, &x) < 0) {
            snprintf(err, errlen, "'%s' is not an integer; allowed: a comma-separated list of integers", tok);
            rc = CALDERA_ERR_INVAL;
            break;
        }
        if (has_range(o) && ((double) x < o->min || (double) x > o->max)) {
            char r[64];
            range_text(o, r, sizeof(r));
            snprintf(err, errlen, "list element %lld out of range %s", (long long) x, r);
            rc = CALDERA_ERR_RANGE;
            break;
        }
        if (n == cap) {
            cap *= 2;
            int64_t * nv = caldera_malloc((size_t) cap * sizeof(int64_t));
            if (!nv) { rc = CALDERA_ERR_NOMEM; break; }
            memcpy(nv, v, (size_t) n * sizeof(int64_t));
            caldera_free(v);
            v = nv;
        }
        v[n++] = x;
    }
    caldera_free(copy);
    if (rc < 0) {
        caldera_free(v);
        return rc;
    }
    caldera_free(out->v);
    out->v = v;
    out->n = n;
    return 0;
}

int caldera_option_parse(const struct caldera_option * o, void * priv, const char * text, char * err, size_t errlen) {
    char r[128];
    switch (o->type) {
    case CALDERA_OPT_BOOL: {
        static const char * t[] = { "true", "yes", "on", "1" }, * f[] = { "false", "no", "off", "0" };
        for (int i = 0; i < 4; i++) {
            if (strcasecmp(text, t[i]) == 0) { *FIELD(priv, o, int) = 1; return 0; }
            if (strcasecmp(text, f[i]) == 0) { *FIELD(priv, o, int) = 0; return 0; }
        }
        snprintf(err, errlen, "option '%s' = '%s' is not a boolean; allowed: true, false, yes, no, on, off, 1, 0", o->name, text);
        return CALDERA_ERR_INVAL;
    }
    case CALDERA_OPT_INT: {
        int64_t v;
        if (parse_i64(text, &v) < 0) {
            range_text(o, r, sizeof(r));
            snprintf(err, errlen, "option '%s' = '%s' is not an integer; allowed: an integer%s%s", o->name, text,
                     has_range(o) ? " in " : "", has_range(o) ? r : "");
            return CALDERA_ERR_INVAL;
        }
        if (has_range(o) && ((double) v < o->min || (double) v > o->max)) {
            range_text(o, r, sizeof(r));
            snprintf(err, errlen, "option '%s' = %lld out of range %s", o->name, (long long) v, r);
            return CALDERA_ERR_RANGE;
        }
        *FIELD(priv, o, int64_t) = v;
        return 0;
    }
    case CALDERA_OPT_DOUBLE: {
        errno = 0;
        char * end;
        double v = strtod(text, &end);
        while (isspace((unsigned char) *end)) end++;
        if (errno || *end || end == text || !isfinite(v)) {
            range_text(o, r, sizeof(r));
            snprintf(err, errlen, "option '%s' = '%s' is not a finite number; allowed: a number%s%s", o->name, text,
                     has_range(o) ? " in " : "", has_range(o) ? r : "");
            return CALDERA_ERR_INVAL;
        }
        if (has_range(o) && (v < o->min || v > o->max)) {
            range_text(o, r, sizeof(r));
            snprintf(err, errlen, "option '%s' = %g out of range %s", o->name, v, r);
            return CALDERA_ERR_RANGE;
        }
        *FIELD(priv, o, double) = v;
        return 0;
    }
    case CALDERA_OPT_STRING:
    case CALDERA_OPT_PATH: {
        char * s = caldera_strdup(text);
        if (!s) return CALDERA_ERR_NOMEM;
        caldera_free(*FIELD(priv, o, char *));
        *FIELD(priv, o, char *) = s;
        return 0;
    }
    case CALDERA_OPT_ENUM:
        for (const struct caldera_opt_choice * c = o->choices; c && c->name; c++) {
            if (strcmp(c->name, text) == 0) {
                *FIELD(priv, o, int) = (int) c->value;
                return 0;
            }
        }
        choices_text(o, r, sizeof(r));
        snprintf(err, errlen, "option '%s' = '%s' is not a valid choice; allowed: %s", o->name, text, r);
        return CALDERA_ERR_INVAL;
    case CALDERA_OPT_INT_LIST: {
        char e2[160];
        int rc = parse_int_list_text(o, text, FIELD(priv, o, struct caldera_int_list), e2, sizeof(e2));
        if (rc < 0 && rc != CALDERA_ERR_NOMEM) snprintf(err, errlen, "option '%s': %s", o->name, e2);
        return rc;
    }
    case CALDERA_OPT_REF:
        snprintf(err, errlen, "option '%s' is a reference; it is resolved by the configuration", o->name);
        return CALDERA_ERR_INVAL;
    }
    return CALDERA_ERR_INVAL;
}

// The shortest of %.15g, %.16g, %.17g that reads back as the same double (0.7, not
// 0.69999999999999996); %.17g always does.
static char * format_double(double v) {
    char buf[40];
    for (int digits = 15; digits < 17; digits++) {
        snprintf(buf, sizeof(buf), "%.*g", digits, v);
        if (strtod(buf, NULL) == v) return caldera_strdup(buf);
    }
    return caldera_asprintf("%.17g", v);
}

char * caldera_option_format(const struct caldera_option * o, const void * priv) {
    switch (o->type) {
    case CALDERA_OPT_BOOL: return caldera_strdup(*FIELD(priv, o, int) ? "true" : "false");
    case CALDERA_OPT_INT: return caldera_asprintf("%lld", (long long) *FIELD(priv, o, int64_t));
    case CALDERA_OPT_DOUBLE: return format_double(*FIELD(priv, o, double));
    case CALDERA_OPT_STRING:
    case CALDERA_OPT_PATH: {
        const char * s = *FIELD(priv, o, char *);
        return caldera_strdup(s ? s : "");
    }
    case CALDERA_OPT_ENUM:
        for (const struct caldera_opt_choice * c = o->choices; c && c->name; c++) {
            if (c->value == *FIELD(priv, o, int)) return caldera_strdup(c->name);
        }
        return caldera_asprintf("%d", *FIELD(priv, o, int));
    case CALDERA_OPT_INT_LIST: {
        const struct caldera_int_list * l = FIELD(priv, o, struct caldera_int_list);
        size_t cap = 24 * (size_t) (l->n + 1);
        char * s = caldera_malloc(cap);
        if (!s) return NULL;
        size_t len = 0;
        s[0] = 0;
        for (int64_t i = 0; i < l->n; i++) len += (size_t) snprintf(s + len, cap - len, "%s%lld", i ? ", " : "", (long long) l->v[i]);
        return s;
    }
    case CALDERA_OPT_REF: {
        const struct caldera_inst * r = *FIELD(priv, o, struct caldera_inst * const);
        return caldera_strdup(r ? caldera_inst_name(r) : "");
    }
    }
    return NULL;
}

const char * caldera_options_suggest(const struct caldera_option * opts, const char * key) {
    const char * best = NULL;
    int bd = 1 << 30;
    for (int64_t i = 0; opts && opts[i].name; i++) {
        int d = caldera_edit_distance(opts[i].name, key);
        if (d < bd) { bd = d; best = opts[i].name; }
    }
    size_t kl = strlen(key);
    int limit = kl <= 4 ? 1 : (kl <= 8 ? 2 : 3);
    return bd <= limit ? best : NULL;
}

static int print_help(const struct caldera_plugin * p, FILE * out, int show_expert);

int caldera_plugin_print_help(const struct caldera_plugin * p, FILE * out) { return print_help(p, out, 0); }
int caldera_plugin_print_help_full(const struct caldera_plugin * p, FILE * out) { return print_help(p, out, 1); }

static int print_help(const struct caldera_plugin * p, FILE * out, int show_expert) {
    fprintf(out, "%s (%s plugin, version %u.%u.%u): %s\n", p->name, caldera_plugin_kind_name(p->kind), p->version >> 16,
            (p->version >> 8) & 0xff, p->version & 0xff, p->description ? p->description : "");
    if (!p->options || !p->options[0].name) {
        fprintf(out, "  (no options)\n");
        return 0;
    }
    fprintf(out, "options:\n");
    int hidden = 0;
    for (const struct caldera_option * o = p->options; o->name; o++) {
        if ((o->flags & CALDERA_OPT_EXPERT) && !show_expert) {
            hidden++;
            continue;
        }
        char def[160] = "", r[160] = "";
        switch (o->type) {
        case CALDERA_OPT_BOOL: snprintf(def, sizeof(def), "%s", o->def.i64 ? "true" : "false"); break;
        case CALDERA_OPT_INT: snprintf(def, sizeof(def), "%lld", (long long) o->def.i64); range_text(o, r, sizeof(r)); break;
        case CALDERA_OPT_DOUBLE: snprintf(def, sizeof(def), "%g", o->def.dbl); range_text(o, r, sizeof(r)); break;
        case CALDERA_OPT_STRING:
        case CALDERA_OPT_PATH: snprintf(def, sizeof(def), "%s", o->def.str ? o->def.str : ""); break;
        case CALDERA_OPT_INT_LIST:  // the range applies to every element
            snprintf(def, sizeof(def), "%s", o->def.str ? o->def.str : "");
            range_text(o, r, sizeof(r));
            break;
        case CALDERA_OPT_ENUM:
            for (const struct caldera_opt_choice * c = o->choices; c->name; c++) {
                if (c->value == o->def.i64) snprintf(def, sizeof(def), "%s", c->name);
            }
            choices_text(o, r, sizeof(r));
            break;
        case CALDERA_OPT_REF: snprintf(r, sizeof(r), "a [section] of kind %s", caldera_plugin_kind_name(o->ref_kind)); break;
        }
        fprintf(out, "  %-18s %-9s %s\n", o->name, caldera_opt_type_name(o->type), o->help);
        if (o->flags & CALDERA_OPT_REQUIRED) fprintf(out, "  %-18s           required", "");
        else fprintf(out, "  %-18s           default: %s", "", def[0] ? def : "(none)");
        if (r[0] && strcmp(r, "any") != 0) fprintf(out, "; allowed: %s", r);
        fprintf(out, "\n");
        if (o->type == CALDERA_OPT_ENUM) {
            for (const struct caldera_opt_choice * c = o->choices; c->name; c++) {
                if (c->help) fprintf(out, "  %-18s             %-12s %s\n", "", c->name, c->help);
            }
        }
    }
    if (hidden) fprintf(out, "  (%d expert option%s not shown: --help-plugin %s -v)\n", hidden, hidden == 1 ? "" : "s", p->name);
    return 0;
}
