// SPDX-License-Identifier: MIT
// caldera-pipe compare: run several pipelines on one model (one calibration cache: each [calib]
// cache is keyed by its content, so pipelines with the same settings share the Hessians) and print
// one table, also written as Markdown, CSV and JSON, and optionally a gnuplot plot of perplexity
// against bits per parameter.
//
// Every pipeline is first resolved in-process (caldera_config_* + caldera_pipeline_init: a dry
// run) so that configuration errors and differing evaluation settings are refused before anything
// runs; then each runs as a child process (this executable, re-executed) so that its peak memory
// (getrusage of the child, wait4) and its wall time are its own. Writers go to a temporary folder.
//
// Peers (--peer FILE): model files made elsewhere (llama.cpp's own quantizations) in the same table.
// Each is opened in-process before anything runs (a file the runtime cannot read, or of another
// architecture, is refused then), and after the pipelines it is scored by `caldera-pipe eval --json`
// in a child process with the pipelines' [eval] protocol.
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "caldera/caldera.h"
#include "cli-model.h"

#define CMP_EVAL_KEYS 6   // the [eval] options that define the protocol (the rest: batch, cache, original)
static const char * const eval_keys[CMP_EVAL_KEYS] = { "text", "layout", "ctx", "windows", "protocol", "stride" };

struct cmp_pipe {
    const char * ini;
    char *       name;                    // basename without .ini
    char *       writer[2], * wpath[2];   // [caldera] writer / dense_writer section names and their outputs (tmp)
    char *       eval[CMP_EVAL_KEYS];     // protocol settings (NULL: the pipeline does not evaluate)
    json_t *     rep;                     // its report
    double       wall;                    // seconds of the child
    long         maxrss_kib;              // peak resident memory of the child
    double       file_bytes;              // size of the writer's output (-1: none)
    struct caldera_model_desc desc;       // the model it reads (have_desc: described)
    int          have_desc;
};

struct cmp_peer {
    char *       label;       // --peer LABEL=FILE, or FILE's basename without its extension
    const char * path;
    json_t *     res;         // its `caldera-pipe eval --json` result
    double       wall;        // seconds of the child
    long         maxrss_kib;  // peak resident memory of the child
};

static void compare_usage(FILE * out) {
    fprintf(out,
            "usage: caldera-pipe compare A.ini B.ini ... [options]\n"
            "       caldera-pipe compare --from SAVED.json [--md FILE] [--csv FILE] [--json FILE] [--plot FILE.png]\n"
            "Run every pipeline (each in its own process, writers redirected to a temporary folder) and print\n"
            "one Markdown table: method, bits per parameter (the compressed weights' stored bits over their\n"
            "parameters; the whole output file's bits over all the model's parameters), mean and worst relative and data-aware error, perplexity ± (the pipelines' [eval] settings\n"
            "must agree; the original model is its own row), calibration (computed or from the cache),\n"
            "compression and wall time, peak memory of the process.\n"
            "options:\n"
            "  --set SECTION.KEY=VALUE  override one option in every pipeline (repeatable)\n"
            "  --md FILE                also write the table as Markdown\n"
            "  --csv FILE               ... as CSV\n"
            "  --json FILE              ... as JSON\n"
            "  --plot FILE.png          perplexity against bits per parameter (gnuplot; skipped with a message\n"
            "                           when gnuplot is not installed)\n"
            "  --from FILE.json         render the table, CSV, JSON and plot of a saved --json output again (no\n"
            "                           pipeline runs; give no pipelines, --peer, --set, --threads or --plugin-path)\n"
            "  --peer [LABEL=]FILE      a model made elsewhere (e.g. a GGUF from llama-quantize) as a row of its own\n"
            "                           (repeatable; LABEL defaults to FILE's name without its extension): checked\n"
            "                           before anything runs (the runtime must read every tensor; the same architecture\n"
            "                           as the pipelines' model), then scored by `caldera-pipe eval` in its own process\n"
            "                           with the pipelines' [eval] protocol (at least one pipeline must evaluate); its\n"
            "                           bits: stored bits of the blocks' linear weights over their parameters, the\n"
            "                           file's bits over all the model's parameters; calibration column 'peer'\n"
            "  --threads N              threads of each pipeline and peer evaluation (0: all cores)\n"
            "  --plugin-path PATH       load plugins from a .so or a directory (repeatable)\n"
            "Exit: 0 success, 1 a pipeline failed, 2 usage or configuration error (nothing written).\n");
}

// Value of KEY in [SECTION] of caldera_pipeline_print_config's output (malloc'd, NULL when absent).
static char * cfg_value(const char * text, const char * section, const char * key) {
    char   head[256];
    size_t kl = strlen(key);
    snprintf(head, sizeof(head), "[%s]\n", section);
    const char * p = strstr(text, head);
    if (p != text && p && p[-1] != '\n') p = NULL;
    if (!p) return NULL;
    for (p += strlen(head); *p && *p != '['; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : p + strlen(p)) {
        if (!strncmp(p, key, kl) && !strncmp(p + kl, " = ", 3)) {
            const char * v = p + kl + 3;
            return strndup(v, strcspn(v, "\n"));
        }
    }
    return NULL;
}

// Resolve one pipeline in-process (parse, --set, init: a dry run) and read what compare needs.
// Returns 0, or an exit code with the message printed.
static int resolve(struct caldera_ctx * ctx, struct cmp_pipe * cp, const char ** sets, int nsets) {
    struct caldera_config *   cfg = NULL;
    struct caldera_pipeline * pl = NULL;
    char *                    text = NULL;
    size_t                    tlen = 0;
    int                       code = 0, rc;
    if (access(cp->ini, R_OK) != 0) {
        fprintf(stderr, "caldera-pipe compare: %s: cannot read: %s\n", cp->ini, strerror(errno));
        return CLI_EXIT_USAGE;
    }
    if (caldera_config_init(ctx, &cfg) < 0) return CLI_EXIT_RUNTIME;
    rc = caldera_config_parse_file(cfg, cp->ini);
    for (int i = 0; i < nsets; i++) caldera_config_set(cfg, sets[i]);
    if (rc != CALDERA_ERR_NOT_FOUND && rc != CALDERA_ERR_IO && caldera_config_ndiag(cfg) == 0) rc = caldera_pipeline_init(ctx, cfg, &pl);
    if (caldera_config_ndiag(cfg) > 0 || rc < 0) {
        for (int64_t i = 0; i < caldera_config_ndiag(cfg); i++) fprintf(stderr, "%s\n", caldera_config_diag(cfg, i));
        if (caldera_config_ndiag(cfg) == 0) fprintf(stderr, "%s: %s\n", cp->ini, caldera_ctx_errmsg(ctx));
        fprintf(stderr, "caldera-pipe compare: %s: configuration error\n", cp->ini);
        code = CLI_EXIT_USAGE;
        goto out;
    }
    FILE * ms = open_memstream(&text, &tlen);
    if (!ms) { code = CLI_EXIT_RUNTIME; goto out; }
    caldera_pipeline_print_config(pl, ms);
    fclose(ms);
    cp->have_desc = caldera_pipeline_model_desc(pl, &cp->desc) == 0;
    static const char * const wkeys[2] = { "writer", "dense_writer" };
    for (int w = 0; w < 2; w++) {
        char * sec = cfg_value(text, "caldera", wkeys[w]);
        if (sec && *sec) {
            char * path = cfg_value(text, sec, "path");
            if (path && *path) cp->writer[w] = sec, sec = NULL;
            free(path);
        }
        free(sec);
    }
    char * ev = cfg_value(text, "caldera", "eval");
    if (ev && *ev) {
        for (int k = 0; k < CMP_EVAL_KEYS; k++) cp->eval[k] = cfg_value(text, ev, eval_keys[k]);
        // A relative text is relative to the pipeline file's folder: make the comparison see that.
        char * t = cp->eval[0];
        if (t && *t && t[0] != '/' && t[0] != '$') {
            const char * slash = strrchr(cp->ini, '/');
            char *       abs = NULL;
            if (slash && asprintf(&abs, "%.*s/%s", (int) (slash - cp->ini), cp->ini, t) >= 0) free(t), cp->eval[0] = abs;
        }
    }
    free(ev);
out:
    free(text);
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    return code;
}

static int rm_entry(const char * path, const struct stat * st, int flag, struct FTW * ftw) {
    (void) st, (void) flag, (void) ftw;
    return remove(path);
}

// Run this executable with @p av (stdout to /dev/null: the table replaces the child's own text) and
// wait for it: its wall time, peak memory and wait status. 0, or an exit code (message printed).
static int child_spawn(char ** av, double * wall, long * maxrss_kib, int * status) {
    fflush(NULL);
    double t0 = cli_now();
    pid_t  pid = fork();
    if (pid < 0) {
        fprintf(stderr, "caldera-pipe compare: cannot start a process: %s\n", strerror(errno));
        return CLI_EXIT_RUNTIME;
    }
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stdout)) _exit(127);
        execv("/proc/self/exe", av);
        fprintf(stderr, "caldera-pipe compare: cannot run /proc/self/exe: %s\n", strerror(errno));
        _exit(127);
    }
    struct rusage ru;
    while (wait4(pid, status, 0, &ru) < 0) {
        if (errno != EINTR) return CLI_EXIT_RUNTIME;
    }
    *wall = cli_now() - t0;
    *maxrss_kib = ru.ru_maxrss;
    return 0;
}

// Run one pipeline as a child process; 0 or an exit code (message printed).
static int run_child(struct cmp_pipe * cp, int idx, const char * tmp, const char ** sets, int nsets, const char * threads,
                     const char ** paths, int npaths) {
    char *  report = NULL, * wset[2] = { NULL, NULL }, * rset = NULL;
    char ** av = calloc((size_t) (2 * nsets + 2 * npaths + 16), sizeof(char *));
    int     n = 0, code = 0;
    if (!av || asprintf(&report, "%s/%d-%s.json", tmp, idx, cp->name) < 0) { code = CLI_EXIT_RUNTIME; goto out; }
    if (asprintf(&rset, "caldera.report=%s", report) < 0) { code = CLI_EXIT_RUNTIME; goto out; }
    av[n++] = "caldera-pipe";
    av[n++] = (char *) cp->ini;
    av[n++] = "-q";
    for (int i = 0; i < nsets; i++) av[n++] = "--set", av[n++] = (char *) sets[i];
    for (int i = 0; i < npaths; i++) av[n++] = "--plugin-path", av[n++] = (char *) paths[i];
    if (threads) av[n++] = "--threads", av[n++] = (char *) threads;
    for (int w = 0; w < 2; w++) {
        if (!cp->writer[w]) continue;
        if (asprintf(&cp->wpath[w], "%s/%d-%s.%s.out", tmp, idx, cp->name, cp->writer[w]) < 0 ||
            asprintf(&wset[w], "%s.path=%s", cp->writer[w], cp->wpath[w]) < 0) { code = CLI_EXIT_RUNTIME; goto out; }
        av[n++] = "--set", av[n++] = wset[w];
    }
    av[n++] = "--set", av[n++] = rset;
    int status;
    if ((code = child_spawn(av, &cp->wall, &cp->maxrss_kib, &status)) != 0) goto out;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "caldera-pipe compare: %s failed (%s %d)\n", cp->ini, WIFEXITED(status) ? "exit" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        code = WIFEXITED(status) && WEXITSTATUS(status) == CLI_EXIT_USAGE ? CLI_EXIT_USAGE : CLI_EXIT_RUNTIME;
        goto out;
    }
    json_error_t jerr;
    if (!(cp->rep = json_load_file(report, 0, &jerr)) || !json_is_object(json_object_get(cp->rep, "summary"))) {
        fprintf(stderr, "caldera-pipe compare: %s: its report %s: %s\n", cp->ini, report, cp->rep ? "no summary" : jerr.text);
        code = CLI_EXIT_RUNTIME;
        goto out;
    }
    cp->file_bytes = -1;
    struct stat st;
    if (cp->wpath[0] && stat(cp->wpath[0], &st) == 0 && S_ISREG(st.st_mode)) cp->file_bytes = (double) st.st_size;
    for (int w = 0; w < 2; w++) {
        if (cp->wpath[w]) nftw(cp->wpath[w], rm_entry, 8, FTW_DEPTH | FTW_PHYS);   // one output at a time on disk
    }
out:
    free(report);
    free(rset);
    free(wset[0]);
    free(wset[1]);
    free(av);
    return code;
}

// One row of the table; NAN prints as "-" (Markdown), empty (CSV), null (JSON).
struct cmp_row {
    const char * method, * calib;
    double       v[11];
    int          is_peer;   // a --peer row (its own point style in the plot)
};
enum { C_BITS, C_FBITS, C_REL, C_RELW, C_RELH, C_RELHW, C_PPL, C_PPLE, C_COMP, C_WALL, C_MEM };
static const char * const col_md[11] = { "bits/param (compressed weights)", "bits/param (whole file, all params)", "rel. err mean", "rel. err worst",
                                         "data-aware mean", "data-aware worst", "perplexity", "±", "compress (s)", "wall (s)",
                                         "peak MiB" };
static const char * const col_key[11] = { "bits_per_param", "file_bits_per_model_param", "mean_rel_err", "worst_rel_err",
                                          "mean_rel_err_h", "worst_rel_err_h", "ppl", "ppl_err", "compress_seconds",
                                          "wall_seconds", "peak_rss_mib" };
static const int col_prec[11] = { 4, 4, 5, 5, 5, 5, 4, 4, 2, 2, 1 };

static double jnum(json_t * o, const char * k) {
    json_t * v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static void put_md(FILE * f, const struct cmp_row * rows, int n) {
    fprintf(f, "| method |");
    for (int c = 0; c < 11; c++) fprintf(f, " %s |", col_md[c]);
    fprintf(f, " calibration |\n|---|");
    for (int c = 0; c < 11; c++) fprintf(f, "---:|");
    fprintf(f, "---|\n");
    for (int r = 0; r < n; r++) {
        fprintf(f, "| %s |", rows[r].method);
        for (int c = 0; c < 11; c++) {
            if (isnan(rows[r].v[c])) fprintf(f, " - |");
            else fprintf(f, " %.*f |", col_prec[c], rows[r].v[c]);
        }
        fprintf(f, " %s |\n", rows[r].calib);
    }
}

static void put_csv(FILE * f, const struct cmp_row * rows, int n) {
    fprintf(f, "method");
    for (int c = 0; c < 11; c++) fprintf(f, ",%s", col_key[c]);
    fprintf(f, ",calibration\n");
    for (int r = 0; r < n; r++) {
        fprintf(f, "%s", rows[r].method);
        for (int c = 0; c < 11; c++) {
            if (isnan(rows[r].v[c])) fprintf(f, ",");
            else fprintf(f, ",%.*f", col_prec[c] + 2, rows[r].v[c]);
        }
        fprintf(f, ",%s\n", rows[r].calib);
    }
}

static json_t * rows_json(const struct cmp_row * rows, int n, json_t * eval, const struct cmp_peer * peers, int npeers) {
    json_t * arr = json_array(), * pa = json_array();
    for (int r = 0; r < n; r++) {
        json_t * o = json_pack("{s:s, s:s}", "method", rows[r].method, "calibration", rows[r].calib);
        for (int c = 0; c < 11; c++) json_object_set_new(o, col_key[c], isnan(rows[r].v[c]) ? json_null() : json_real(rows[r].v[c]));
        json_array_append_new(arr, o);
    }
    for (int i = 0; i < npeers; i++) {   // each peer's own evaluation result (its storage: types, counts, file)
        json_t * o = json_deep_copy(peers[i].res);
        if (o) json_object_set_new(o, "label", json_string(peers[i].label));
        json_array_append_new(pa, o ? o : json_null());
    }
    return json_pack("{s:o, s:O, s:o}", "rows", arr, "eval", eval ? eval : json_null(), "peers", pa);
}

static int write_file(const char * path, const char * what, const char * text) {
    FILE * f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "caldera-pipe compare: %s %s: cannot write: %s\n", what, path, strerror(errno));
        if (f) fclose(f);
        return CLI_EXIT_RUNTIME;
    }
    return 0;
}

static int has_gnuplot(void) {
    const char * path = getenv("PATH");
    if (!path) return 0;
    char * dup = strdup(path), * save = NULL;
    int    found = 0;
    for (char * d = strtok_r(dup, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        char exe[4096];
        snprintf(exe, sizeof(exe), "%s/gnuplot", d);
        found = access(exe, X_OK) == 0;
    }
    free(dup);
    return found;
}

// Perplexity against bits per parameter (over the compressed weights), the original as a line.
// Every row is its own series with its own mark and an entry in the key (filled marks for
// pipelines, open ones for peers): labels beside the points overlapped where several methods
// fall within half a bit (the 4-bit rows of the SmolLM2 comparison).
static int plot(const char * png, const char * tmp, const struct cmp_row * rows, int n) {
    static const int filled[] = { 7, 5, 9, 11, 13, 15 }, open[] = { 6, 4, 8, 10, 12, 14 };
    static const char * const colors[8] = { "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#1f78b4", "#444444" };
    char * dat = NULL, * gp = NULL;
    int    code = 0, series = 0;
    double orig = NAN;
    if (asprintf(&dat, "%s/plot.dat", tmp) < 0 || asprintf(&gp, "%s/plot.gp", tmp) < 0) { code = CLI_EXIT_RUNTIME; goto out; }
    FILE * f = fopen(dat, "w");
    if (!f) { code = CLI_EXIT_RUNTIME; goto out; }
    for (int r = 0; r < n; r++) {   // one data block per point: gnuplot's `index`
        if (!strcmp(rows[r].method, "original") && !rows[r].is_peer) orig = rows[r].v[C_PPL];
        else if (!isnan(rows[r].v[C_PPL]) && !isnan(rows[r].v[C_BITS])) {
            fprintf(f, "%s%.6f %.6f %.6f\n", series ? "\n\n" : "", rows[r].v[C_BITS], rows[r].v[C_PPL], rows[r].v[C_PPLE]);
            series++;
        }
    }
    fclose(f);
    double lo = orig, hi = orig;   // the y range: the points with their error bars and the original, a margin on a log scale
    for (int r = 0; r < n; r++) {
        if ((!strcmp(rows[r].method, "original") && !rows[r].is_peer) || isnan(rows[r].v[C_PPL]) || isnan(rows[r].v[C_BITS])) continue;
        double e = isnan(rows[r].v[C_PPLE]) ? 0 : rows[r].v[C_PPLE], a = rows[r].v[C_PPL] - e, b = rows[r].v[C_PPL] + e;
        lo = isnan(lo) || a < lo ? a : lo;
        hi = isnan(hi) || b > hi ? b : hi;
    }
    if (series == 0) {
        fprintf(stderr, "caldera-pipe compare: --plot: no pipeline evaluates perplexity; no plot written\n");
        goto out;
    }
    if (!(f = fopen(gp, "w"))) { code = CLI_EXIT_RUNTIME; goto out; }
    fprintf(f, "set terminal pngcairo noenhanced size 1000,600\nset output '%s'\nset xlabel 'bits per parameter (compressed weights)'\n"
               "set ylabel 'perplexity (log scale)'\nset logscale y\nset grid\nset key outside right top box\n"
               "set offsets graph 0.05, graph 0.05, 0, 0\nset pointsize 1.5\n", png);
    if (lo > 0 && hi >= lo) {   // the range, and tics at 1, 1.5, 2, 3, 5, 7 × 10^k inside it (a range within one decade has no 10^k)
        static const double mant[] = { 1, 1.5, 2, 3, 5, 7 };
        double a = lo / 1.1, b = hi * 1.1;
        int    nt = 0;
        fprintf(f, "set yrange [%.6g:%.6g]\nset ytics (", a, b);
        for (int e = (int) floor(log10(a)); e <= (int) ceil(log10(b)); e++) {
            for (int k = 0; k < 6; k++) {
                double t = mant[k] * pow(10.0, e);
                if (t >= a && t <= b) fprintf(f, "%s%.6g", nt++ ? ", " : "", t);
            }
        }
        fprintf(f, ")\n");
    }
    fprintf(f, "plot 1/0 notitle");   // a first clause that always exists
    for (int r = 0, k = 0, kc = 0, kp = 0; r < n; r++) {
        if ((!strcmp(rows[r].method, "original") && !rows[r].is_peer) || isnan(rows[r].v[C_PPL]) || isnan(rows[r].v[C_BITS])) continue;
        int pt = rows[r].is_peer ? open[kp++ % 6] : filled[kc++ % 6], idx = k++;
        fprintf(f, ", '%s' index %d using 1:2:3 with yerrorbars pt %d lc rgb '%s' title '", dat, idx, pt, colors[idx % 8]);
        for (const char * c = rows[r].method; *c; c++) fputs(*c == '\'' ? "''" : (char[2]) { *c, 0 }, f);
        fprintf(f, "%s'", rows[r].is_peer ? " (peer)" : "");
    }
    if (!isnan(orig)) fprintf(f, ", %.6f title 'original (%.2f)' with lines dt 2 lc rgb 'gray40'", orig, orig);
    fprintf(f, "\n");
    fclose(f);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", gp, (char *) NULL);
        _exit(127);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "caldera-pipe compare: --plot: gnuplot failed; no plot written\n");
        remove(png);
        code = CLI_EXIT_RUNTIME;
    }
out:
    free(dat);
    free(gp);
    return code;
}

// --peer [LABEL=]FILE: the label (malloc'd) and the file; 0, or CLI_EXIT_USAGE with a message.
static int peer_parse(const char * arg, struct cmp_peer * pe) {
    const char * eq = strchr(arg, '='), * slash = strchr(arg, '/');
    if (eq && (!slash || slash > eq)) {   // LABEL=FILE (a label has no '/')
        pe->label = strndup(arg, (size_t) (eq - arg));
        pe->path = eq + 1;
    } else {
        const char * base = strrchr(arg, '/'), * dot;
        base = base ? base + 1 : arg;
        dot = strrchr(base, '.');
        pe->label = strndup(base, dot && dot > base ? (size_t) (dot - base) : strlen(base));
        pe->path = arg;
    }
    if (!pe->label) return CLI_EXIT_RUNTIME;
    if (!pe->path[0] || !pe->label[0] || strpbrk(pe->label, "|,\"\n")) {
        fprintf(stderr, "caldera-pipe compare: --peer '%s': %s; allowed: FILE or LABEL=FILE, a label without '|', ',', '\"'\n",
                arg, !pe->path[0] ? "no file" : "invalid label");
        return CLI_EXIT_USAGE;
    }
    return 0;
}

static void desc_print(char * buf, size_t n, const struct caldera_model_desc * d) {
    snprintf(buf, n, "%s, %lld layers, hidden %lld, FFN %lld, %lld heads, %lld KV heads, vocab %lld", d->arch, (long long) d->n_layers,
             (long long) d->hidden, (long long) d->ffn, (long long) d->n_heads, (long long) d->n_kv_heads, (long long) d->vocab);
}

// Open a peer as `eval` will (every tensor read by the runtime) and check it is the pipelines'
// model; 0, or an exit code with the message printed. Nothing has run yet.
static int peer_check(struct caldera_ctx * ctx, const struct cmp_peer * pe, const struct caldera_model_desc * want,
                      const char * want_from) {
    struct caldera_inst *            model = NULL;
    const struct caldera_model_ops * mops = NULL;
    struct caldera_model_desc        d;
    int                              code = 0;
    struct caldera_model_open_params mp = { .struct_size = sizeof(mp), .weights = "f16" };   // half the memory: a check only
    if (caldera_model_open(ctx, pe->path, &mp, &model) < 0) {
        fprintf(stderr, "caldera-pipe compare: --peer %s: %s\n  the runtime cannot evaluate this peer; nothing was run\n", pe->path,
                caldera_ctx_errmsg(ctx));
        return CLI_EXIT_USAGE;
    }
    if (caldera_model_ops_of(model, &mops) < 0 || mops->desc(model, &d) < 0) {
        fprintf(stderr, "caldera-pipe compare: --peer %s: %s\n", pe->path, caldera_ctx_errmsg(ctx));
        code = CLI_EXIT_USAGE;
        goto out;
    }
    if (strcmp(d.arch, want->arch) || d.n_layers != want->n_layers || d.hidden != want->hidden || d.ffn != want->ffn ||
        d.n_heads != want->n_heads || d.n_kv_heads != want->n_kv_heads || d.vocab != want->vocab) {
        char a[256], b[256];
        desc_print(a, sizeof(a), &d);
        desc_print(b, sizeof(b), want);
        fprintf(stderr, "caldera-pipe compare: --peer %s is another model (%s) than the pipelines' (%s, read by %s); peers must "
                        "be the same model stored otherwise; nothing was run\n", pe->path, a, b, want_from);
        code = CLI_EXIT_USAGE;
    }
out:
    caldera_inst_free(model);
    return code;
}

// Score one peer with `caldera-pipe eval --json` in a child process, with the protocol of @p eval
// (a pipeline report's "eval" object); 0 or an exit code (message printed).
static int run_peer(struct cmp_peer * pe, int idx, const char * tmp, json_t * eval, const char * threads, const char ** paths,
                    int npaths) {
    char *  js = NULL, ctx_s[32], win_s[32], stride_s[32];
    char ** av = calloc((size_t) (2 * npaths + 32), sizeof(char *));
    int     n = 0, code = 0;
    if (!av || asprintf(&js, "%s/peer-%d.json", tmp, idx) < 0) { js = NULL; code = CLI_EXIT_RUNTIME; goto out; }
    snprintf(ctx_s, sizeof(ctx_s), "%lld", (long long) json_integer_value(json_object_get(eval, "ctx")));
    snprintf(win_s, sizeof(win_s), "%lld", (long long) json_integer_value(json_object_get(eval, "windows")));
    snprintf(stride_s, sizeof(stride_s), "%lld", (long long) json_integer_value(json_object_get(eval, "stride")));
    av[n++] = "caldera-pipe";
    av[n++] = "eval";
    av[n++] = "-q";
    av[n++] = "--model", av[n++] = (char *) pe->path;
    av[n++] = "--text", av[n++] = (char *) json_string_value(json_object_get(eval, "text"));
    av[n++] = "--layout", av[n++] = (char *) json_string_value(json_object_get(eval, "layout"));
    av[n++] = "--protocol", av[n++] = (char *) json_string_value(json_object_get(eval, "protocol"));
    av[n++] = "--ctx", av[n++] = ctx_s;
    av[n++] = "--windows", av[n++] = win_s;
    if (strcmp(stride_s, "0") != 0) av[n++] = "--stride", av[n++] = stride_s;   // 0: eval's default, ctx / 2
    av[n++] = "--json", av[n++] = js;
    for (int i = 0; i < npaths; i++) av[n++] = "--plugin-path", av[n++] = (char *) paths[i];
    if (threads) av[n++] = "--threads", av[n++] = (char *) threads;
    for (int i = 0; i < n; i++) {
        if (!av[i]) {
            fprintf(stderr, "caldera-pipe compare: the pipelines' evaluation settings are incomplete; cannot score the peers\n");
            code = CLI_EXIT_RUNTIME;
            goto out;
        }
    }
    int status;
    if ((code = child_spawn(av, &pe->wall, &pe->maxrss_kib, &status)) != 0) goto out;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "caldera-pipe compare: --peer %s: its evaluation failed (%s %d)\n", pe->path,
                WIFEXITED(status) ? "exit" : "signal", WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        code = CLI_EXIT_RUNTIME;
        goto out;
    }
    json_error_t jerr;
    if (!(pe->res = json_load_file(js, 0, &jerr)) || !json_is_number(json_object_get(pe->res, "ppl"))) {
        fprintf(stderr, "caldera-pipe compare: --peer %s: its result %s: %s\n", pe->path, js, pe->res ? "no perplexity" : jerr.text);
        code = CLI_EXIT_RUNTIME;
    }
out:
    free(js);
    free(av);
    return code;
}

static const char * eval_desc(const struct cmp_pipe * cp, char * buf, size_t n) {
    size_t l = 0;
    buf[0] = 0;
    for (int k = 0; k < CMP_EVAL_KEYS && l < n; k++) l += (size_t) snprintf(buf + l, n - l, "%s%s = %s", k ? ", " : "", eval_keys[k],
                                                                            cp->eval[k] ? cp->eval[k] : "");
    return buf;
}

// --from FILE.json: the rows, protocol and peers of a saved `compare --json` output, to render the
// table, CSV and plot again without running anything. Rows point into *saved (kept until the end).
static int load_saved(const char * path, json_t ** saved, struct cmp_row ** rows, int * nrows, struct cmp_peer ** peers,
                      int * npeers, json_t ** eval) {
    json_error_t jerr;
    json_t *     j = json_load_file(path, 0, &jerr), * ra, * pa;
    *saved = j;
    if (!j) {
        if (jerr.line > 0) {
            fprintf(stderr, "caldera-pipe compare: --from %s: line %d: %s; allowed: the --json output of caldera-pipe compare\n",
                    path, jerr.line, jerr.text);
        } else {
            fprintf(stderr, "caldera-pipe compare: --from %s: %s\n", path, jerr.text);
        }
        return CLI_EXIT_USAGE;
    }
    if (!json_is_array(ra = json_object_get(j, "rows")) || json_array_size(ra) == 0) {
        fprintf(stderr, "caldera-pipe compare: --from %s: no \"rows\" array (or an empty one); allowed: the --json output of "
                        "caldera-pipe compare\n", path);
        return CLI_EXIT_USAGE;
    }
    pa = json_object_get(j, "peers");
    size_t nr = json_array_size(ra), npa = json_is_array(pa) ? json_array_size(pa) : 0;
    struct cmp_row *  r = calloc(nr, sizeof(*r));
    struct cmp_peer * pe = calloc(npa + 1, sizeof(*pe));
    if (!r || !pe) {
        free(r);
        free(pe);
        return CLI_EXIT_RUNTIME;
    }
    free(*rows);
    free(*peers);
    *rows = r, *peers = pe;
    for (size_t i = 0; i < nr; i++) {
        json_t * o = json_array_get(ra, i);
        const char * m = json_string_value(json_object_get(o, "method")), * c = json_string_value(json_object_get(o, "calibration"));
        if (!m || !c) {
            fprintf(stderr, "caldera-pipe compare: --from %s: rows[%zu]: no \"method\" or \"calibration\" string\n", path, i);
            return CLI_EXIT_USAGE;
        }
        r[i].method = m;
        r[i].calib = c;
        r[i].is_peer = !strcmp(c, "peer");
        for (int k = 0; k < 11; k++) {
            json_t * v = json_object_get(o, col_key[k]);
            if (v && !json_is_null(v) && !json_is_number(v)) {
                fprintf(stderr, "caldera-pipe compare: --from %s: rows[%zu].%s is not a number or null\n", path, i, col_key[k]);
                return CLI_EXIT_USAGE;
            }
            r[i].v[k] = json_is_number(v) ? json_number_value(v) : NAN;
        }
        (*nrows)++;
    }
    for (size_t i = 0; i < npa; i++) {
        json_t * o = json_array_get(pa, i);
        const char * l = json_string_value(json_object_get(o, "label"));
        if (!l) {
            fprintf(stderr, "caldera-pipe compare: --from %s: peers[%zu]: no \"label\" string\n", path, i);
            return CLI_EXIT_USAGE;
        }
        if (!(pe[i].label = strdup(l))) return CLI_EXIT_RUNTIME;
        pe[i].res = json_incref(o);
        (*npeers)++;
    }
    *eval = json_is_object(json_object_get(j, "eval")) ? json_incref(json_object_get(j, "eval")) : NULL;
    return 0;
}

int cli_compare(int argc, char ** argv) {
    const char ** sets = calloc((size_t) argc, sizeof(char *)), ** paths = calloc((size_t) argc, sizeof(char *));
    const char *  md = NULL, * csv = NULL, * js = NULL, * png = NULL, * threads = NULL, * from = NULL;
    json_t *      saved = NULL;
    struct cmp_pipe * cps = calloc((size_t) argc, sizeof(struct cmp_pipe));
    struct cmp_row *  rows = calloc((size_t) argc + 1, sizeof(struct cmp_row));
    struct cmp_peer * peers = calloc((size_t) argc, sizeof(struct cmp_peer));
    int               npeers = 0;
    struct caldera_ctx * ctx = NULL;
    json_t *          eval = NULL, * out_json = NULL;
    char              tmp[] = "/tmp/caldera-compare-XXXXXX", * mdtext = NULL, * csvtext = NULL, * jstext = NULL;
    size_t            mdlen = 0, csvlen = 0;
    int               nsets = 0, npaths = 0, np = 0, nrows = 0, code = 0, have_tmp = 0, ref = -1;
    if (!sets || !paths || !cps || !rows || !peers) { code = CLI_EXIT_RUNTIME; goto out; }
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i], * next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { compare_usage(stdout); goto out; }
        int valued = !strcmp(a, "--set") || !strcmp(a, "--md") || !strcmp(a, "--csv") || !strcmp(a, "--json") || !strcmp(a, "--plot") ||
                     !strcmp(a, "--threads") || !strcmp(a, "--plugin-path") || !strcmp(a, "--peer") || !strcmp(a, "--from");
        if (a[0] == '-' && !valued) {
            fprintf(stderr, "caldera-pipe compare: unknown option '%s' (see compare --help)\n", a);
            code = CLI_EXIT_USAGE;
            goto out;
        }
        if (!valued) { cps[np++].ini = a; continue; }
        if (!next) {
            fprintf(stderr, "caldera-pipe compare: %s needs a value\n", a);
            code = CLI_EXIT_USAGE;
            goto out;
        }
        i++;
        if (!strcmp(a, "--set")) sets[nsets++] = next;
        else if (!strcmp(a, "--plugin-path")) paths[npaths++] = next;
        else if (!strcmp(a, "--peer")) {
            if ((code = peer_parse(next, &peers[npeers++])) != 0) goto out;
        }
        else if (!strcmp(a, "--md")) md = next;
        else if (!strcmp(a, "--csv")) csv = next;
        else if (!strcmp(a, "--json")) js = next;
        else if (!strcmp(a, "--plot")) png = next;
        else if (!strcmp(a, "--from")) from = next;
        else {
            long long t;
            if (cli_parse_int("compare", a, next, 0, 4096, &t) < 0) { code = CLI_EXIT_USAGE; goto out; }
            threads = next;
        }
    }
    if (from) {   // render a saved table again: nothing runs
        if (np || npeers || nsets || threads || npaths) {
            fprintf(stderr, "caldera-pipe compare: --from %s renders a saved table again; give no pipelines, --peer, --set, "
                            "--threads or --plugin-path with it\n", from);
            code = CLI_EXIT_USAGE;
            goto out;
        }
        if ((code = load_saved(from, &saved, &rows, &nrows, &peers, &npeers, &eval)) != 0) goto out;
        if (png && !has_gnuplot()) {
            fprintf(stderr, "caldera-pipe compare: --plot %s: gnuplot is not installed (Debian: apt-get install gnuplot-nox); "
                            "the plot will be skipped\n", png);
            png = NULL;
        }
        if (png && !mkdtemp(tmp)) {
            fprintf(stderr, "caldera-pipe compare: cannot create a temporary folder: %s\n", strerror(errno));
            code = CLI_EXIT_RUNTIME;
            goto out;
        }
        have_tmp = png != NULL;
        goto render;
    }
    if (np == 0) {
        compare_usage(stderr);
        code = CLI_EXIT_USAGE;
        goto out;
    }
    // Resolve every pipeline before running any: configuration errors and differing protocols refused.
    if (caldera_ctx_init(&ctx) < 0) { code = CLI_EXIT_RUNTIME; goto out; }
    caldera_ctx_set_log_level(ctx, CALDERA_LOG_WARN);
    for (int i = 0; i < npaths; i++) {
        struct stat st;
        int r = (stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode)) ? caldera_registry_load_dir(ctx, paths[i]) : caldera_registry_load(ctx, paths[i]);
        if (r < 0) { fprintf(stderr, "caldera-pipe compare: --plugin-path: %s\n", caldera_ctx_errmsg(ctx)); code = CLI_EXIT_USAGE; goto out; }
    }
    if (caldera_registry_load_default(ctx) < 0) {
        fprintf(stderr, "caldera-pipe compare: %s\n", caldera_ctx_errmsg(ctx));
        code = CLI_EXIT_USAGE;
        goto out;
    }
    for (int p = 0; p < np; p++) {
        const char * base = strrchr(cps[p].ini, '/');
        base = base ? base + 1 : cps[p].ini;
        size_t bl = strlen(base);
        cps[p].name = strndup(base, bl > 4 && !strcmp(base + bl - 4, ".ini") ? bl - 4 : bl);
        if ((code = resolve(ctx, &cps[p], sets, nsets)) != 0) goto out;
        if (!cps[p].eval[0]) continue;
        if (ref < 0) { ref = p; continue; }
        for (int k = 0; k < CMP_EVAL_KEYS; k++) {
            if (strcmp(cps[p].eval[k] ? cps[p].eval[k] : "", cps[ref].eval[k] ? cps[ref].eval[k] : "") != 0) {
                char a[1024], b[1024];
                fprintf(stderr, "caldera-pipe compare: %s and %s evaluate differently (%s: '%s' against '%s'); one protocol for all:\n"
                                "  %s: %s\n  %s: %s\n  give them the same [eval] settings (or --set SECTION.%s=VALUE)\n",
                        cps[ref].ini, cps[p].ini, eval_keys[k], cps[ref].eval[k] ? cps[ref].eval[k] : "",
                        cps[p].eval[k] ? cps[p].eval[k] : "", cps[ref].ini, eval_desc(&cps[ref], a, sizeof(a)), cps[p].ini,
                        eval_desc(&cps[p], b, sizeof(b)), eval_keys[k]);
                code = CLI_EXIT_USAGE;
                goto out;
            }
        }
    }
    // Peers: every one readable and of the pipelines' model, before anything runs.
    if (npeers > 0) {
        struct caldera_model_desc want = { 0 };
        const char *              want_from = NULL;
        for (int i = 0; i < npeers; i++) {
            if (access(peers[i].path, R_OK) != 0) {
                fprintf(stderr, "caldera-pipe compare: --peer %s: cannot read: %s\n", peers[i].path, strerror(errno));
                code = CLI_EXIT_USAGE;
                goto out;
            }
        }
        if (ref < 0) {
            fprintf(stderr, "caldera-pipe compare: --peer: no pipeline evaluates perplexity; peers are scored with the "
                            "pipelines' [eval] protocol: give a pipeline [caldera] eval = SECTION (see docs/user-guide.md)\n");
            code = CLI_EXIT_USAGE;
            goto out;
        }
        for (int p = 0; p < np && !want_from; p++) {   // the model the evaluating pipelines read
            if (cps[p].eval[0] && cps[p].have_desc) want = cps[p].desc, want_from = cps[p].ini;
        }
        if (!want_from) {
            fprintf(stderr, "caldera-pipe compare: --peer: %s reads no model description to check the peers against\n", cps[ref].ini);
            code = CLI_EXIT_USAGE;
            goto out;
        }
        for (int i = 0; i < npeers; i++) {
            for (int j = 0; j < i + np; j++) {
                const char * other = j < np ? cps[j].name : peers[j - np].label;
                if (!strcmp(peers[i].label, other) || !strcmp(peers[i].label, "original")) {
                    fprintf(stderr, "caldera-pipe compare: --peer %s: the label '%s' is taken; give another with --peer LABEL=FILE\n",
                            peers[i].path, peers[i].label);
                    code = CLI_EXIT_USAGE;
                    goto out;
                }
            }
            if ((code = peer_check(ctx, &peers[i], &want, want_from)) != 0) goto out;
        }
    }
    caldera_ctx_free(ctx);
    ctx = NULL;
    if (png && !has_gnuplot()) {
        fprintf(stderr, "caldera-pipe compare: --plot %s: gnuplot is not installed (Debian: apt-get install gnuplot-nox); "
                        "the plot will be skipped\n", png);
        png = NULL;
    }
    if (!mkdtemp(tmp)) {
        fprintf(stderr, "caldera-pipe compare: cannot create a temporary folder: %s\n", strerror(errno));
        code = CLI_EXIT_RUNTIME;
        goto out;
    }
    have_tmp = 1;
    for (int p = 0; p < np; p++) {
        fprintf(stderr, "compare: [%d/%d] %s\n", p + 1, np, cps[p].ini);
        if ((code = run_child(&cps[p], p, tmp, sets, nsets, threads, paths, npaths)) != 0) goto out;
    }
    json_t * peer_eval = NULL;   // the protocol the pipelines evaluated with (their reports' "eval")
    for (int p = 0; p < np && !peer_eval; p++) {
        json_t * ev = json_object_get(cps[p].rep, "eval");
        if (json_is_object(ev)) peer_eval = ev;
    }
    for (int i = 0; i < npeers; i++) {
        fprintf(stderr, "compare: [peer %d/%d] %s (%s)\n", i + 1, npeers, peers[i].label, peers[i].path);
        if (!peer_eval) {
            fprintf(stderr, "caldera-pipe compare: no pipeline report holds its evaluation settings; cannot score the peers\n");
            code = CLI_EXIT_RUNTIME;
            goto out;
        }
        if ((code = run_peer(&peers[i], i, tmp, peer_eval, threads, paths, npaths)) != 0) goto out;
    }
    // Rows: the original model first (one protocol, one model: every report must agree on it).
    for (int p = 0; p < np; p++) {
        json_t * ev = json_object_get(cps[p].rep, "eval"), * o = json_object_get(ev, "original");
        if (!json_is_object(ev)) continue;
        if (!eval) {
            eval = json_deep_copy(ev);
            json_object_del(eval, "compressed");
            json_object_del(eval, "original");
            if (json_is_object(o)) {
                struct cmp_row * r = &rows[nrows++];
                for (int c = 0; c < 11; c++) r->v[c] = NAN;
                r->method = "original";
                r->calib = "-";
                r->v[C_PPL] = jnum(o, "ppl");
                r->v[C_PPLE] = jnum(o, "ppl_err");
            }
            ref = p;
        } else if (strcmp(json_string_value(json_object_get(ev, "text")), json_string_value(json_object_get(eval, "text"))) ||
                   (json_is_object(o) && nrows > 0 && jnum(o, "ppl") != rows[0].v[C_PPL])) {
            fprintf(stderr, "caldera-pipe compare: %s and %s evaluate different texts or models (the original's perplexity %.4f "
                            "against %.4f); compare pipelines of one model\n", cps[ref].ini, cps[p].ini, nrows ? rows[0].v[C_PPL] : NAN,
                    jnum(o, "ppl"));
            code = CLI_EXIT_USAGE;
            goto out;
        }
    }
    for (int p = 0; p < np; p++) {
        struct cmp_row * r = &rows[nrows++];
        json_t * s = json_object_get(cps[p].rep, "summary"), * cal = json_object_get(cps[p].rep, "calibration");
        json_t * c = json_object_get(json_object_get(cps[p].rep, "eval"), "compressed");
        r->method = cps[p].name;
        r->calib = !json_is_object(cal) ? "-" : json_is_true(json_object_get(cal, "cache_hit")) ? "cached" : "computed";
        r->v[C_BITS] = jnum(s, "bits_per_param");
        double model_params = jnum(s, "model_params");   // compressed and copied: the file holds them all
        r->v[C_FBITS] = cps[p].file_bytes >= 0 && model_params > 0 ? cps[p].file_bytes * 8.0 / model_params : NAN;
        r->v[C_REL] = jnum(s, "mean_rel_err");
        r->v[C_RELW] = jnum(s, "worst_rel_err");
        int with_h = json_integer_value(json_object_get(s, "weights_with_hessian")) > 0;
        r->v[C_RELH] = with_h ? jnum(s, "mean_rel_err_h") : NAN;
        r->v[C_RELHW] = with_h ? jnum(s, "worst_rel_err_h") : NAN;
        r->v[C_PPL] = json_is_object(c) ? jnum(c, "ppl") : NAN;
        r->v[C_PPLE] = json_is_object(c) ? jnum(c, "ppl_err") : NAN;
        r->v[C_COMP] = jnum(s, "seconds");
        r->v[C_WALL] = cps[p].wall;
        r->v[C_MEM] = (double) cps[p].maxrss_kib / 1024.0;
    }
    for (int i = 0; i < npeers; i++) {
        struct cmp_row * r = &rows[nrows++];
        json_t * st = json_object_get(peers[i].res, "storage");
        for (int c = 0; c < 11; c++) r->v[c] = NAN;
        r->method = peers[i].label;
        r->calib = "peer";
        r->is_peer = 1;
        r->v[C_BITS] = jnum(st, "bits_per_param");
        r->v[C_FBITS] = jnum(st, "file_bits_per_model_param");
        r->v[C_PPL] = jnum(peers[i].res, "ppl");
        r->v[C_PPLE] = jnum(peers[i].res, "ppl_err");
        r->v[C_WALL] = peers[i].wall;
        r->v[C_MEM] = (double) peers[i].maxrss_kib / 1024.0;
    }
render:;
    FILE * f = open_memstream(&mdtext, &mdlen);
    if (!f) { code = CLI_EXIT_RUNTIME; goto out; }
    put_md(f, rows, nrows);
    fclose(f);
    if (!(f = open_memstream(&csvtext, &csvlen))) { code = CLI_EXIT_RUNTIME; goto out; }
    put_csv(f, rows, nrows);
    fclose(f);
    out_json = rows_json(rows, nrows, eval, peers, npeers);
    if (!out_json || !(jstext = json_dumps(out_json, JSON_INDENT(2) | JSON_REAL_PRECISION(10)))) { code = CLI_EXIT_RUNTIME; goto out; }
    fputs(mdtext, stdout);
    if (eval) {
        printf("\nperplexity: %s protocol, ctx %lld, %lld windows (0: all) of %s\n", json_string_value(json_object_get(eval, "protocol")),
               (long long) json_integer_value(json_object_get(eval, "ctx")), (long long) json_integer_value(json_object_get(eval, "windows")),
               json_string_value(json_object_get(eval, "text")));
    }
    printf("bits/param (compressed weights): their stored bits (codes, scales, factors, side data) over their parameters; "
           "bits/param (whole file, all params): the writer's output file size in bits (copied tensors, headers and metadata "
           "included) over every parameter of the model (compressed and copied); peak MiB: the "
           "pipeline process's maximum resident set\n");
    if (npeers > 0) {
        printf("peers (calibration 'peer'): scored by `caldera-pipe eval` with the same protocol; bits/param (compressed weights): "
               "the stored bits of the transformer blocks' linear weights over their parameters (types:");
        for (int i = 0; i < npeers; i++) {
            printf(" %s %s%s", peers[i].label, json_string_value(json_object_get(json_object_get(peers[i].res, "storage"), "linear_types")),
                   i + 1 < npeers ? ";" : ")");
        }
        printf("; whole file: the file's bits over all its tensors' elements; peak MiB: the evaluation process's maximum resident set\n");
    }
    if (md && (code = write_file(md, "--md", mdtext)) != 0) goto out;
    if (csv && (code = write_file(csv, "--csv", csvtext)) != 0) goto out;
    if (js) {
        size_t l = strlen(jstext);
        jstext = realloc(jstext, l + 2);
        if (!jstext) { code = CLI_EXIT_RUNTIME; goto out; }
        memcpy(jstext + l, "\n", 2);
        if ((code = write_file(js, "--json", jstext)) != 0) goto out;
    }
    if (png) code = plot(png, tmp, rows, nrows);
out:
    if (have_tmp) nftw(tmp, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    for (int p = 0; cps && p < np; p++) {
        free(cps[p].name);
        for (int w = 0; w < 2; w++) free(cps[p].writer[w]), free(cps[p].wpath[w]);
        for (int k = 0; k < CMP_EVAL_KEYS; k++) free(cps[p].eval[k]);
        json_decref(cps[p].rep);
    }
    for (int i = 0; peers && i < npeers; i++) {
        free(peers[i].label);
        json_decref(peers[i].res);
    }
    free(peers);
    json_decref(saved);
    json_decref(eval);
    json_decref(out_json);
    caldera_ctx_free(ctx);
    free(mdtext);
    free(csvtext);
    free(jstext);
    free(cps);
    free(rows);
    free(sets);
    free(paths);
    return code;
}
