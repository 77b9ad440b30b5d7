// SPDX-License-Identifier: MIT
// caldera-pipe: run a compression pipeline described by an INI file.
// Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error.
#include <jansson.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "caldera/caldera.h"
#include "cli-model.h"

static struct caldera_ctx * g_ctx;
static int                  g_progress_pending;
static int                  g_tty;

static void usage(FILE * out) {
    fprintf(out,
            "usage: caldera-pipe PIPELINE.ini [options]\n"
            "       caldera-pipe eval --model PATH [--text FILE] [--ctx N] [--windows N] [--protocol llamacpp|strided]\n"
            "       caldera-pipe generate --model PATH --prompt TEXT [--tokens N] [--temperature T] [--chat]\n"
            "       caldera-pipe compare A.ini B.ini ... [--set S.K=V] [--md F] [--csv F] [--json F] [--plot F.png]\n"
            "       caldera-pipe --list-plugins | --help-plugin NAME | --help | --version\n"
            "\n"
            "Compress the weights of a model as the pipeline file describes.\n"
            "\n"
            "options:\n"
            "  --set SECTION.KEY=VALUE  override one option (repeatable)\n"
            "  --dry-run                parse, resolve, bind and check (reads model headers only); no compute\n"
            "  --print-config           print the effective configuration (every option, defaults filled in)\n"
            "  --threads N              threads for BLAS and the core (0: all cores)\n"
            "  --plugin-path PATH       load plugins from a .so file or a directory (repeatable)\n"
            "  -v, --verbose            more log output (debug)\n"
            "  -q, --quiet              warnings and errors only\n"
            "  --list-plugins           list the plugins that are available\n"
            "  --config-reference       print the Markdown reference of every option (docs/config-reference.md)\n"
            "  --help-plugin NAME       describe a plugin and its options ('caldera' for the [caldera] section,\n"
            "                           'calibration' and 'eval' for the sections they name;\n"
            "                           with -v also its expert options)\n"
            "  --help                   this text\n"
            "  --version                print the version\n"
            "\n"
            "Plugins are loaded from --plugin-path, the absolute directories in CALDERA_PLUGIN_PATH and the\n"
            "default directory <libdir>/caldera/plugins next to libcaldera (-v prints each directory searched),\n"
            "never from the current directory; a plugin name found twice is taken from the earlier of these\n"
            "places, with a notice. CALDERA_LOG=error|warn|info|debug sets the log level.\n");
}

static void log_cb(enum caldera_log_level level, const char * msg, void * user) {
    (void) user;
    static const char * tags[] = { "error", "warning", "", "debug" };
    int progress = g_tty && level == CALDERA_LOG_INFO && msg[0] == '[' && strstr(msg, "ETA");
    if (g_progress_pending && !progress) {
        fputc('\n', stderr);
        g_progress_pending = 0;
    }
    if (progress) {
        fprintf(stderr, "\r\033[K%s", msg);
        g_progress_pending = 1;
    } else if (level == CALDERA_LOG_INFO) {
        fprintf(stderr, "%s\n", msg);
    } else {
        fprintf(stderr, "%s: %s\n", tags[level], msg);
    }
    fflush(stderr);
}

static void on_signal(int sig) {
    (void) sig;
    if (g_ctx) caldera_ctx_cancel(g_ctx);
}

static int list_plugins(struct caldera_ctx * ctx) {
    int w = 6;
    for (int64_t i = 0; i < caldera_registry_count(ctx); i++) {
        int l = (int) strlen(caldera_registry_origin(ctx, i));
        if (l > w) w = l;
    }
    printf("%-14s %-11s %-8s %-*s %s\n", "NAME", "KIND", "VERSION", w, "ORIGIN", "DESCRIPTION");
    for (int64_t i = 0; i < caldera_registry_count(ctx); i++) {
        const struct caldera_plugin * p = caldera_registry_get(ctx, i);
        char ver[32];
        snprintf(ver, sizeof(ver), "%u.%u.%u", p->version >> 16, (p->version >> 8) & 0xff, p->version & 0xff);
        printf("%-14s %-11s %-8s %-*s %s\n", p->name, caldera_plugin_kind_name(p->kind), ver, w, caldera_registry_origin(ctx, i),
               p->description ? p->description : "");
    }
    return 0;
}

// Markdown reference of every option of the [caldera] section and of every plugin, generated from
// the option tables (docs/config-reference.md is this output; a test keeps it current).
static void md_plugin(const struct caldera_plugin * p, const char * title) {
    printf("## %s\n\n%s\n\n", title, p->description ? p->description : "");
    if (!p->options || !p->options[0].name) {
        printf("No options.\n\n");
        return;
    }
    printf("| option | type | default | allowed | meaning |\n|---|---|---|---|---|\n");
    for (const struct caldera_option * o = p->options; o->name; o++) {
        char def[128] = "", allowed[512] = "";
        static const char * tn[] = { "bool", "int", "double", "string", "enum", "path", "int list", "reference" };
        switch (o->type) {
        case CALDERA_OPT_BOOL: snprintf(def, sizeof(def), "%s", o->def.i64 ? "true" : "false"); break;
        case CALDERA_OPT_INT: snprintf(def, sizeof(def), "%lld", (long long) o->def.i64); break;
        case CALDERA_OPT_DOUBLE: snprintf(def, sizeof(def), "%g", o->def.dbl); break;
        case CALDERA_OPT_ENUM:
            for (const struct caldera_opt_choice * c = o->choices; c->name; c++) {
                if (c->value == o->def.i64) snprintf(def, sizeof(def), "%s", c->name);
                size_t n = strlen(allowed);
                snprintf(allowed + n, sizeof(allowed) - n, "%s`%s`", n ? ", " : "", c->name);
            }
            break;
        case CALDERA_OPT_REF: snprintf(allowed, sizeof(allowed), "a %s section", caldera_plugin_kind_name(o->ref_kind)); break;
        default: snprintf(def, sizeof(def), "%s", o->def.str ? o->def.str : ""); break;
        }
        if ((o->type == CALDERA_OPT_INT || o->type == CALDERA_OPT_DOUBLE || o->type == CALDERA_OPT_INT_LIST) && o->min <= o->max) {
            snprintf(allowed, sizeof(allowed), "[%.15g, %.15g]", o->min, o->max);
        }
        if (o->flags & CALDERA_OPT_REQUIRED) snprintf(def, sizeof(def), "(required)");
        printf("| `%s` | %s | %s%s%s | %s | %s |\n", o->name, tn[o->type], def[0] ? "`" : "", def[0] ? def : "", def[0] ? "`" : "",
               allowed, o->help);
    }
    printf("\n");
}

// The first-party plugins: built in, or modules in the default directory (not --plugin-path or
// CALDERA_PLUGIN_PATH ones), by kind then name, so both build configurations give the same text.
static int first_party_cmp(const void * a, const void * b) {
    const struct caldera_plugin * p = *(const struct caldera_plugin * const *) a, * q = *(const struct caldera_plugin * const *) b;
    return p->kind != q->kind ? (p->kind < q->kind ? -1 : 1) : strcmp(p->name, q->name);
}

static int config_reference(struct caldera_ctx * ctx) {
    char * dir = caldera_plugin_dir_default();
    int64_t n = 0, count = caldera_registry_count(ctx);
    const struct caldera_plugin ** list = calloc((size_t) count + 1, sizeof(*list));
    if (!dir || !list) {
        caldera_free(dir);
        free(list);
        fprintf(stderr, "caldera-pipe: out of memory\n");
        return 1;
    }
    size_t dl = strlen(dir);
    for (int64_t i = 0; i < count; i++) {
        const char * o = caldera_registry_origin(ctx, i);
        if (strcmp(o, "built-in") == 0 || (strncmp(o, dir, dl) == 0 && o[dl] == '/' && !strchr(o + dl + 1, '/'))) {
            list[n++] = caldera_registry_get(ctx, i);
        }
    }
    caldera_free(dir);
    qsort(list, (size_t) n, sizeof(*list), first_party_cmp);
    printf("# Configuration reference\n\n"
           "Generated by `caldera-pipe --config-reference` from the option tables of caldera %s; do not edit by hand\n"
           "(the test `config-reference` fails when this file and the tables disagree).\n\n"
           "A pipeline file has one `[caldera]` section and one section per plugin instance, each with `plugin = NAME`.\n"
           "Reference options name another section. Path options expand `${VAR}` and `${VAR:-default}`.\n\n",
           caldera_version());
    md_plugin(caldera_pipeline_descriptor(), "[caldera]: the pipeline");
    md_plugin(caldera_calibration_descriptor(), "calibration: the section named by [caldera] calibration");
    md_plugin(caldera_eval_descriptor(), "eval: the section named by [caldera] eval");
    for (int64_t i = 0; i < n; i++) {
        char title[96];
        snprintf(title, sizeof(title), "%s (%s)", list[i]->name, caldera_plugin_kind_name(list[i]->kind));
        md_plugin(list[i], title);
    }
    free(list);
    return 0;
}

static void print_report(const char * json_text) {
    json_error_t err;
    json_t * rep = json_loads(json_text, 0, &err);
    if (!rep) return;
    json_t * tensors = json_object_get(rep, "tensors");
    printf("%-52s %-12s %8s %9s %9s %8s\n", "weight", "shape", "bits/par", "rel.err", "rel.err.H", "time/s");
    size_t i;
    json_t * t;
    json_array_foreach(tensors, i, t) {
        json_t * shape = json_object_get(t, "shape");
        char sh[32], herr[32] = "-";
        snprintf(sh, sizeof(sh), "%lldx%lld", (long long) json_integer_value(json_array_get(shape, 0)),
                 (long long) json_integer_value(json_array_get(shape, 1)));
        if (json_is_true(json_object_get(t, "data_aware"))) {
            snprintf(herr, sizeof(herr), "%.5f", json_real_value(json_object_get(t, "rel_err_h")));
        }
        printf("%-52s %-12s %8.4f %9.5f %9s %8.2f\n", json_string_value(json_object_get(t, "name")), sh,
               json_real_value(json_object_get(t, "bits_per_param")), json_real_value(json_object_get(t, "rel_err")), herr,
               json_real_value(json_object_get(t, "seconds")));
    }
    json_t * s = json_object_get(rep, "summary");
    printf("summary: %lld weights, %.0f parameters, %.4f bits/param, rel. error mean %.5f worst %.5f",
           (long long) json_integer_value(json_object_get(s, "weights")), json_real_value(json_object_get(s, "params")),
           json_real_value(json_object_get(s, "bits_per_param")), json_real_value(json_object_get(s, "mean_rel_err")),
           json_real_value(json_object_get(s, "worst_rel_err")));
    if (json_integer_value(json_object_get(s, "weights_with_hessian")) > 0) {
        printf(", data-aware (%lld with H) mean %.5f worst %.5f", (long long) json_integer_value(json_object_get(s, "weights_with_hessian")),
               json_real_value(json_object_get(s, "mean_rel_err_h")), json_real_value(json_object_get(s, "worst_rel_err_h")));
    }
    printf(", %.1f s\n", json_real_value(json_object_get(s, "seconds")));
    json_t * cal = json_object_get(rep, "calibration");
    if (cal) {
        printf("calibration: %lld windows x %lld tokens, seed %lld, bos %s, Hessians %s%s\n",
               (long long) json_integer_value(json_object_get(cal, "sequences")), (long long) json_integer_value(json_object_get(cal, "length")),
               (long long) json_integer_value(json_object_get(cal, "seed")), json_string_value(json_object_get(cal, "bos")),
               json_is_true(json_object_get(cal, "cache_hit")) ? "from the cache " : "computed",
               json_is_true(json_object_get(cal, "cache_hit")) ? json_string_value(json_object_get(cal, "cache")) : "");
    }
    json_t * ev = json_object_get(rep, "eval");
    if (ev) {
        json_t * c = json_object_get(ev, "compressed"), * o = json_object_get(ev, "original");
        printf("%-20s %12s %10s %14s %8s\n", "perplexity", "ppl", "±", "tokens scored", "time/s");
        printf("%-20s %12.4f %10.4f %14lld %8.1f\n", "compressed", json_real_value(json_object_get(c, "ppl")),
               json_real_value(json_object_get(c, "ppl_err")), (long long) json_integer_value(json_object_get(c, "tokens_scored")),
               json_real_value(json_object_get(c, "seconds")));
        if (json_is_object(o)) {
            printf("%-20s %12.4f %10.4f %14lld %8s\n", json_is_true(json_object_get(o, "cached")) ? "original (cached)" : "original",
                   json_real_value(json_object_get(o, "ppl")), json_real_value(json_object_get(o, "ppl_err")),
                   (long long) json_integer_value(json_object_get(o, "tokens_scored")), "");
        }
        long long nw = (long long) json_integer_value(json_object_get(ev, "windows"));
        char wtxt[64] = "every window";
        if (nw > 0) snprintf(wtxt, sizeof(wtxt), "the first %lld windows", nw);
        printf("eval: %s protocol, ctx %lld, %s of %s\n", json_string_value(json_object_get(ev, "protocol")),
               (long long) json_integer_value(json_object_get(ev, "ctx")), wtxt, json_string_value(json_object_get(ev, "text")));
    }
    json_t * ph = json_object_get(rep, "phase_seconds");
    if (ph) {
        printf("phases: calibrate %.1f s, compress %.1f s, evaluate %.1f s\n", json_real_value(json_object_get(ph, "calibrate")),
               json_real_value(json_object_get(ph, "compress")), json_real_value(json_object_get(ph, "evaluate")));
    }
    json_t * pc = json_object_get(rep, "phase_cpu_seconds");
    if (pc) {
        printf("phases (CPU): calibrate %.1f s, compress %.1f s, evaluate %.1f s\n", json_real_value(json_object_get(pc, "calibrate")),
               json_real_value(json_object_get(pc, "compress")), json_real_value(json_object_get(pc, "evaluate")));
    }
    json_decref(rep);
}

int main(int argc, char ** argv) {
    // Weights are allocated and freed one after another. glibc's dynamic mmap threshold would
    // move them onto the brk heap after the first large free, where freed memory stays resident
    // (SmolLM2, RTN: 556 MB peak RSS; with a fixed 1 MiB threshold: 243 MB). A fixed threshold
    // keeps every tensor-sized block in its own mapping, returned to the system on free.
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    if (argc > 1 && !strcmp(argv[1], "eval")) return cli_eval(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "generate")) return cli_generate(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "compare")) return cli_compare(argc - 1, argv + 1);
    const char * ini = NULL, * help_plugin = NULL;
    int dry_run = 0, print_config = 0, list = 0, threads = -1, verbosity = 0, rc = 0;
    const char ** sets = calloc((size_t) argc, sizeof(char *));
    const char ** paths = calloc((size_t) argc, sizeof(char *));
    int nsets = 0, npaths = 0;
    if (!sets || !paths) return 1;
    for (int i = 1; i < argc; i++) {
        const char * a = argv[i];
        const char * next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); free(sets); free(paths); return 0; }
        else if (!strcmp(a, "--version")) {
            printf("caldera-pipe %s (plugin ABI %d)\n", caldera_version(), CALDERA_PLUGIN_ABI_VERSION);
            free(sets);
            free(paths);
            return 0;
        }
        else if (!strcmp(a, "--dry-run")) dry_run = 1;
        else if (!strcmp(a, "--print-config")) print_config = 1;
        else if (!strcmp(a, "--list-plugins")) list = 1;
        else if (!strcmp(a, "--config-reference")) list = 2;
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) verbosity++;
        else if (!strcmp(a, "-vv")) verbosity += 2;
        else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) verbosity = -1;
        else if ((!strcmp(a, "--set") || !strcmp(a, "--threads") || !strcmp(a, "--plugin-path") || !strcmp(a, "--help-plugin")) && !next) {
            fprintf(stderr, "caldera-pipe: %s needs a value\n", a);
            { free(sets); free(paths); return 2; }
        } else if (!strcmp(a, "--set")) sets[nsets++] = argv[++i];
        else if (!strcmp(a, "--plugin-path")) paths[npaths++] = argv[++i];
        else if (!strcmp(a, "--help-plugin")) help_plugin = argv[++i];
        else if (!strcmp(a, "--threads")) {
            char * end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 0 || v > 4096) {
                fprintf(stderr, "caldera-pipe: --threads '%s'; allowed: an integer in [0, 4096]\n", argv[i]);
                { free(sets); free(paths); return 2; }
            }
            threads = (int) v;
        } else if (a[0] == '-') {
            fprintf(stderr, "caldera-pipe: unknown option '%s' (see --help)\n", a);
            { free(sets); free(paths); return 2; }
        } else if (!ini) ini = a;
        else {
            fprintf(stderr, "caldera-pipe: more than one pipeline file ('%s' and '%s')\n", ini, a);
            { free(sets); free(paths); return 2; }
        }
    }
    if (!ini && !list && !help_plugin) {
        usage(stderr);
        { free(sets); free(paths); return 2; }
    }
    g_tty = isatty(2);
    struct caldera_ctx * ctx = NULL;
    struct caldera_config * cfg = NULL;
    struct caldera_pipeline * pl = NULL;
    if ((rc = caldera_ctx_init(&ctx)) < 0) {
        fprintf(stderr, "caldera-pipe: cannot initialise: %s\n", caldera_status_str(rc));
        return 1;
    }
    g_ctx = ctx;
    caldera_ctx_set_log(ctx, log_cb, NULL);
    caldera_ctx_set_log_level(ctx, verbosity < 0 ? CALDERA_LOG_WARN : verbosity > 0 ? CALDERA_LOG_DEBUG : CALDERA_LOG_INFO);
    if (threads >= 0) caldera_ctx_set_threads(ctx, threads);
    int exit_code = 0;
    for (int i = 0; i < npaths; i++) {
        struct stat st;
        int r = (stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode)) ? caldera_registry_load_dir(ctx, paths[i])
                                                                   : caldera_registry_load(ctx, paths[i]);
        if (r < 0) {
            fprintf(stderr, "caldera-pipe: --plugin-path: %s\n", caldera_ctx_errmsg(ctx));
            exit_code = 2;
            goto out;
        }
    }
    if (caldera_registry_load_default(ctx) < 0) {
        fprintf(stderr, "caldera-pipe: %s\n", caldera_ctx_errmsg(ctx));
        exit_code = 2;
        goto out;
    }
    if (list == 1) {
        list_plugins(ctx);
        goto out;
    }
    if (list == 2) {
        exit_code = config_reference(ctx);
        goto out;
    }
    if (help_plugin) {
        const struct caldera_plugin * p = strcmp(help_plugin, "caldera") == 0       ? caldera_pipeline_descriptor()
                                          : strcmp(help_plugin, "calibration") == 0 ? caldera_calibration_descriptor()
                                          : strcmp(help_plugin, "eval") == 0        ? caldera_eval_descriptor()
                                                                                    : caldera_registry_find(ctx, help_plugin);
        if (!p) {
            fprintf(stderr, "caldera-pipe: no plugin named '%s' (see --list-plugins)\n", help_plugin);
            exit_code = 2;
            goto out;
        }
        if (verbosity > 0) caldera_plugin_print_help_full(p, stdout);
        else caldera_plugin_print_help(p, stdout);
        goto out;
    }
    if ((rc = caldera_config_init(ctx, &cfg)) < 0) { exit_code = 1; goto out; }
    rc = caldera_config_parse_file(cfg, ini);
    for (int i = 0; i < nsets; i++) caldera_config_set(cfg, sets[i]);
    if (rc != CALDERA_ERR_NOT_FOUND && rc != CALDERA_ERR_IO && caldera_config_ndiag(cfg) == 0) {
        rc = caldera_pipeline_init(ctx, cfg, &pl);
    }
    if (caldera_config_ndiag(cfg) > 0) {
        for (int64_t i = 0; i < caldera_config_ndiag(cfg); i++) fprintf(stderr, "%s\n", caldera_config_diag(cfg, i));
        fprintf(stderr, "caldera-pipe: %lld configuration error(s)\n", (long long) caldera_config_ndiag(cfg));
        exit_code = 2;
        goto out;
    }
    if (rc < 0) {
        fprintf(stderr, "caldera-pipe: error: %s\n", caldera_ctx_errmsg(ctx));
        exit_code = rc == CALDERA_ERR_CONFIG ? 2 : 1;
        goto out;
    }
    if (print_config) caldera_pipeline_print_config(pl, stdout);
    if (dry_run || print_config) {
        if (dry_run) fprintf(stderr, "%s: configuration OK\n", ini);
        goto out;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    rc = caldera_pipeline_run(pl);
    if (g_progress_pending) fputc('\n', stderr);
    if (rc < 0) {
        fprintf(stderr, "caldera-pipe: error: %s\n", caldera_ctx_errmsg(ctx));
        exit_code = 1;
        goto out;
    }
    if (caldera_pipeline_report_json(pl)) print_report(caldera_pipeline_report_json(pl));
out:
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    caldera_ctx_free(ctx);
    free(sets);
    free(paths);
    return exit_code;
}
