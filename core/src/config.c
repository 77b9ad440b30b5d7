// SPDX-License-Identifier: MIT
// INI configuration: parsed with the system inih through a line-counting reader (so every key
// keeps its file and line), command-line overrides, and a list of diagnostics in the form
// "file:line: [section] plugin: what; allowed" — all problems are collected, not only the first.
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"

// Pipeline files are small (a few KB). Larger text is refused before parsing: every key costs
// a few hundred bytes of memory, and every bad line a message.
#define CFG_MAX_TEXT  (1 << 20)
#define CFG_MAX_DIAGS 100

int caldera_config_init(struct caldera_ctx * ctx, struct caldera_config ** out) {
    struct caldera_config * cfg = caldera_calloc(1, sizeof(*cfg));
    if (!cfg) return CALDERA_ERR_NOMEM;
    cfg->ctx = ctx;
    *out = cfg;
    return 0;
}

void caldera_config_free(struct caldera_config * cfg) {
    if (!cfg) return;
    for (int64_t i = 0; i < cfg->n_entries; i++) {
        struct cfg_entry * e = &cfg->entries[i];
        caldera_free(e->section); caldera_free(e->key); caldera_free(e->value); caldera_free(e->file);
    }
    for (int64_t i = 0; i < cfg->n_sections; i++) {
        caldera_free(cfg->sections[i].name);
        caldera_free(cfg->sections[i].file);
    }
    for (int64_t i = 0; i < cfg->n_diags; i++) caldera_free(cfg->diags[i]);
    caldera_free_unaligned(cfg->entries);
    caldera_free_unaligned(cfg->sections);
    caldera_free_unaligned(cfg->diags);
    caldera_free(cfg->cur_file);
    caldera_free(cfg->main_file);
    caldera_free(cfg);
}

int caldera_config_diagf(struct caldera_config * cfg, const char * file, int line, const char * section, const char * plugin,
                         const char * fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char where[600] = "";
    size_t n = 0;
    if (file) n += (size_t) snprintf(where + n, sizeof(where) - n, line > 0 ? "%s:%d: " : "%s: ", file, line);
    if (section && n < sizeof(where)) n += (size_t) snprintf(where + n, sizeof(where) - n, "[%s] ", section);
    if (plugin && n < sizeof(where)) snprintf(where + n, sizeof(where) - n, "%s: ", plugin);
    // A file of a million bad lines must not cost a million messages: after CFG_MAX_DIAGS the rest
    // are counted in one last line (the return code is the same).
    if (cfg->n_diags > CFG_MAX_DIAGS) return CALDERA_ERR_CONFIG;
    char * d = cfg->n_diags == CFG_MAX_DIAGS
                   ? caldera_asprintf("%s: too many errors; only the first %d are reported", file ? file : "configuration",
                                      CFG_MAX_DIAGS)
                   : caldera_asprintf("%s%s", where, msg);
    if (!d) return CALDERA_ERR_NOMEM;
    if (cfg->n_diags == cfg->cap_diags) {
        int64_t cap = cfg->cap_diags ? cfg->cap_diags * 2 : 16;
        char ** nd = caldera_realloc(cfg->diags, (size_t) cap * sizeof(char *));
        if (!nd) {
            caldera_free(d);
            return CALDERA_ERR_NOMEM;
        }
        cfg->diags = nd;
        cfg->cap_diags = cap;
    }
    cfg->diags[cfg->n_diags++] = d;
    caldera_log(cfg->ctx, CALDERA_LOG_DEBUG, "config: %s", d);
    return CALDERA_ERR_CONFIG;
}

int64_t caldera_config_ndiag(const struct caldera_config * cfg) { return cfg->n_diags; }

const char * caldera_config_diag(const struct caldera_config * cfg, int64_t i) {
    return (i >= 0 && i < cfg->n_diags) ? cfg->diags[i] : NULL;
}

struct cfg_section * caldera_config_find_section(struct caldera_config * cfg, const char * name) {
    for (int64_t i = 0; i < cfg->n_sections; i++) {
        if (strcmp(cfg->sections[i].name, name) == 0) return &cfg->sections[i];
    }
    return NULL;
}

static struct cfg_section * add_section(struct caldera_config * cfg, const char * name, const char * file, int line) {
    struct cfg_section * s = caldera_config_find_section(cfg, name);
    if (s) return s;
    if (cfg->n_sections == cfg->cap_sections) {
        int64_t cap = cfg->cap_sections ? cfg->cap_sections * 2 : 16;
        struct cfg_section * ns = caldera_realloc(cfg->sections, (size_t) cap * sizeof(*ns));
        if (!ns) return NULL;
        cfg->sections = ns;
        cfg->cap_sections = cap;
    }
    s = &cfg->sections[cfg->n_sections];
    memset(s, 0, sizeof(*s));
    s->name = caldera_strdup(name);
    s->file = caldera_strdup(file);
    s->line = line;
    if (!s->name || !s->file) {
        caldera_free(s->name);
        caldera_free(s->file);
        return NULL;
    }
    cfg->n_sections++;
    return s;
}

struct cfg_entry * caldera_config_find(struct caldera_config * cfg, const char * section, const char * key) {
    for (int64_t i = 0; i < cfg->n_entries; i++) {
        if (strcmp(cfg->entries[i].section, section) == 0 && strcmp(cfg->entries[i].key, key) == 0) return &cfg->entries[i];
    }
    return NULL;
}

static int add_entry(struct caldera_config * cfg, const char * section, const char * key, const char * value,
                     const char * file, int line, int override) {
    struct cfg_entry * e = caldera_config_find(cfg, section, key);
    if (e && !override) {
        return caldera_config_diagf(cfg, file, line, section, NULL, "duplicate key '%s' (first set at line %d)", key, e->line);
    }
    if (!add_section(cfg, section, file, line)) return CALDERA_ERR_NOMEM;
    if (e) {   // --set replaces the value, and the place it came from
        char * v = caldera_strdup(value), * f = caldera_strdup(file);
        if (!v || !f) {
            caldera_free(v); caldera_free(f);
            return CALDERA_ERR_NOMEM;
        }
        caldera_free(e->value); caldera_free(e->file);
        e->value = v;
        e->file = f;
        e->line = line;
        return 0;
    }
    if (cfg->n_entries == cfg->cap_entries) {
        int64_t cap = cfg->cap_entries ? cfg->cap_entries * 2 : 32;
        struct cfg_entry * ne = caldera_realloc(cfg->entries, (size_t) cap * sizeof(*ne));
        if (!ne) return CALDERA_ERR_NOMEM;
        cfg->entries = ne;
        cfg->cap_entries = cap;
    }
    e = &cfg->entries[cfg->n_entries];
    memset(e, 0, sizeof(*e));
    e->section = caldera_strdup(section);
    e->key = caldera_strdup(key);
    e->value = caldera_strdup(value);
    e->file = caldera_strdup(file);
    e->line = line;
    if (!e->section || !e->key || !e->value || !e->file) {
        caldera_free(e->section); caldera_free(e->key); caldera_free(e->value); caldera_free(e->file);
        return CALDERA_ERR_NOMEM;
    }
    cfg->n_entries++;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// inih glue: our reader hands inih one line at a time and counts lines; it also finds section
// headers (inih only reports keys) and syntax errors on every line (inih reports only the first).

struct reader_state {
    struct caldera_config * cfg;
    const char *            text;   // string input
    size_t                  pos, len;
    FILE *                  fp;     // or file input
    int                     line;
    char                    section[256];
    char                    last_key[256];
    int                     last_key_line;
};

static char * trim(char * s) {
    while (isspace((unsigned char) *s)) s++;
    char * e = s + strlen(s);
    while (e > s && isspace((unsigned char) e[-1])) *--e = 0;
    return s;
}

// Returns 1 when the line must not reach inih (it was reported here).
static int check_line(struct reader_state * rs, char * raw) {
    struct caldera_config * cfg = rs->cfg;
    char buf[4096];
    caldera_strlcpy(buf, raw, sizeof(buf));
    char * s = trim(buf);
    if (!*s || *s == ';' || *s == '#') return 0;
    if (*s == '[') {
        char * close = strchr(s, ']');
        if (!close) {
            caldera_config_diagf(cfg, cfg->cur_file, rs->line, NULL, NULL, "section header without ']'");
            return 1;
        }
        *close = 0;
        char * name = trim(s + 1);
        if (!caldera_name_valid(name)) {
            caldera_config_diagf(cfg, cfg->cur_file, rs->line, NULL, NULL,
                                 "invalid section name '%s'; allowed: [a-z][a-z0-9_]*, at most 31 characters", name);
        }
        if (caldera_config_find_section(cfg, name)) {
            caldera_config_diagf(cfg, cfg->cur_file, rs->line, name, NULL, "section defined twice (first at line %d)",
                                 caldera_config_find_section(cfg, name)->line);
        } else {
            add_section(cfg, name, cfg->cur_file, rs->line);
        }
        caldera_strlcpy(rs->section, name, sizeof(rs->section));
        rs->last_key[0] = 0;
        return 0;
    }
    if (isspace((unsigned char) raw[0]) && rs->last_key[0]) {
        caldera_config_diagf(cfg, cfg->cur_file, rs->line, rs->section[0] ? rs->section : NULL, NULL,
                             "indented line continues '%s' (line %d); multi-line values are not supported: put the value on one line",
                             rs->last_key, rs->last_key_line);
        return 1;
    }
    if (!strchr(s, '=') && !strchr(s, ':')) {
        caldera_config_diagf(cfg, cfg->cur_file, rs->line, rs->section[0] ? rs->section : NULL, NULL,
                             "expected 'key = value', '[section]' or a comment; got '%s'", s);
        return 1;
    }
    return 0;
}

static char * reader_fn(char * str, int num, void * stream) {
    struct reader_state * rs = stream;
    char * line = NULL;
    size_t cap = 0;
    ssize_t n;
    if (rs->fp) {
        n = getline(&line, &cap, rs->fp);
        if (n < 0) {
            free(line);
            return NULL;
        }
    } else {
        if (rs->pos >= rs->len) return NULL;
        const char * start = rs->text + rs->pos;
        const char * nl = memchr(start, '\n', rs->len - rs->pos);
        size_t l = nl ? (size_t) (nl - start) + 1 : rs->len - rs->pos;
        line = malloc(l + 1);
        if (!line) return NULL;
        memcpy(line, start, l);
        line[l] = 0;
        n = (ssize_t) l;
        rs->pos += l;
    }
    rs->line++;
    // strip CR LF
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    if (n >= num - 1) {
        caldera_config_diagf(rs->cfg, rs->cfg->cur_file, rs->line, rs->section[0] ? rs->section : NULL, NULL,
                             "line is %zd characters long; allowed: at most %d", n, num - 2);
        str[0] = '\n';
        str[1] = 0;
    } else if (check_line(rs, line)) {
        str[0] = '\n';
        str[1] = 0;
    } else {
        memcpy(str, line, (size_t) n);
        str[n] = '\n';
        str[n + 1] = 0;
    }
    free(line);
    return str;
}

static int handler_fn(void * user, const char * section, const char * name, const char * value) {
    struct reader_state * rs = user;
    struct caldera_config * cfg = rs->cfg;
    if (!name) return 1;   // a section header alone (INI_CALL_HANDLER_ON_NEW_SECTION builds)
    if (!section || !*section) {
        caldera_config_diagf(cfg, cfg->cur_file, rs->line, NULL, NULL, "key '%s' appears before any [section]", name);
        return 1;
    }
    if (strcmp(rs->last_key, name) == 0 && rs->last_key_line == rs->line) return 1;  // continuation, reported by check_line
    caldera_strlcpy(rs->last_key, name, sizeof(rs->last_key));
    rs->last_key_line = rs->line;
    add_entry(cfg, section, name, value ? value : "", cfg->cur_file, rs->line, 0);
    return 1;
}

static int parse_with(struct caldera_config * cfg, struct reader_state * rs, const char * name) {
    caldera_free(cfg->cur_file);
    cfg->cur_file = caldera_strdup(name);
    if (!cfg->cur_file) return CALDERA_ERR_NOMEM;
    int64_t before = cfg->n_diags;
    int r = ini_parse_stream(reader_fn, rs, handler_fn, rs);
    if (r == -2) return caldera_ctx_error(cfg->ctx, CALDERA_ERR_NOMEM, "%s: out of memory while parsing", name);
    return cfg->n_diags > before ? CALDERA_ERR_CONFIG : 0;
}

int caldera_config_parse_file(struct caldera_config * cfg, const char * path) {
    FILE * fp = fopen(path, "rb");
    if (!fp) {
        int e = errno;
        caldera_config_diagf(cfg, path, 0, NULL, NULL, "cannot open pipeline file: %s", strerror(e));
        return caldera_ctx_error(cfg->ctx, e == ENOENT ? CALDERA_ERR_NOT_FOUND : CALDERA_ERR_IO, "%s: cannot open: %s", path,
                                 strerror(e));
    }
    struct stat st;
    if (fstat(fileno(fp), &st) == 0 && st.st_size > CFG_MAX_TEXT) {
        fclose(fp);
        caldera_config_diagf(cfg, path, 0, NULL, NULL, "pipeline file of %lld bytes; at most %d are read", (long long) st.st_size,
                             CFG_MAX_TEXT);
        return caldera_ctx_error(cfg->ctx, CALDERA_ERR_CONFIG, "%s: pipeline file of %lld bytes; at most %d are read", path,
                                 (long long) st.st_size, CFG_MAX_TEXT);
    }
    struct reader_state rs = { .cfg = cfg, .fp = fp };
    int rc = parse_with(cfg, &rs, path);
    fclose(fp);
    if (!cfg->main_file) cfg->main_file = caldera_strdup(path);
    return rc;
}

int caldera_config_parse_string(struct caldera_config * cfg, const char * name, const char * text) {
    struct reader_state rs = { .cfg = cfg, .text = text, .len = strlen(text) };
    if (rs.len > CFG_MAX_TEXT) {
        return caldera_config_diagf(cfg, name, 0, NULL, NULL, "pipeline text of %zu bytes; at most %d are read", rs.len,
                                    CFG_MAX_TEXT);
    }
    int rc = parse_with(cfg, &rs, name);
    if (!cfg->main_file) cfg->main_file = caldera_strdup(name);
    return rc;
}

int caldera_config_set(struct caldera_config * cfg, const char * assignment) {
    cfg->n_overrides++;
    const char * eq = strchr(assignment, '=');
    const char * dot = strchr(assignment, '.');
    if (!eq || !dot || dot > eq || dot == assignment || eq == dot + 1) {
        return caldera_config_diagf(cfg, "--set", cfg->n_overrides, NULL, NULL,
                                    "'%s' is not an assignment; allowed: section.key=value", assignment);
    }
    char section[256], key[256];
    size_t sl = (size_t) (dot - assignment), kl = (size_t) (eq - dot - 1);
    if (sl >= sizeof(section) || kl >= sizeof(key)) {
        return caldera_config_diagf(cfg, "--set", cfg->n_overrides, NULL, NULL, "'%s': name too long", assignment);
    }
    memcpy(section, assignment, sl);
    section[sl] = 0;
    memcpy(key, dot + 1, kl);
    key[kl] = 0;
    char * s = trim(section), * k = trim(key);
    char * v = caldera_strdup(eq + 1);
    if (!v) return CALDERA_ERR_NOMEM;
    int rc = add_entry(cfg, s, k, trim(v), "--set", cfg->n_overrides, 1);
    caldera_free(v);
    return rc;
}
