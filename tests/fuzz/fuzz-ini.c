// SPDX-License-Identifier: MIT
// fuzz-ini: the INI pipeline parser through the public API, as `caldera-pipe --dry-run` uses it:
// caldera_config_parse_string, then caldera_pipeline_init (plugins resolved, options bound and
// range-checked, references and stages checked, the reader's headers read) and the effective
// configuration printed. Nothing is run or written. Paths in the input may name real files: the
// seeds use the synthetic model, which needs none. Inputs that mention plugin_path are skipped:
// it makes pipeline_init dlopen() whatever shared objects a path names (constructors of arbitrary
// system libraries would run inside the fuzzer); the loader has its own tests.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static FILE * devnull;
    if (!devnull && !(devnull = fopen("/dev/null", "w"))) abort();
    if (size > (1 << 16) || memmem(data, size, "plugin_path", 11)) return 0;
    char * text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = 0;
    struct caldera_ctx *      ctx = fz_ctx();
    struct caldera_config *   cfg = NULL;
    struct caldera_pipeline * pl  = NULL;
    if (caldera_config_init(ctx, &cfg) < 0) abort();
    if (caldera_config_parse_string(cfg, "fuzz.ini", text) == 0 && caldera_pipeline_init(ctx, cfg, &pl) == 0) {
        caldera_pipeline_print_config(pl, devnull);
    }
    for (int64_t i = 0; i < caldera_config_ndiag(cfg); i++) {
        if (!caldera_config_diag(cfg, i)) abort();
        if (getenv("CALDERA_FUZZ_VERBOSE")) fprintf(stderr, "%s\n", caldera_config_diag(cfg, i));
    }
    caldera_pipeline_free(pl);
    caldera_config_free(cfg);
    free(text);
    return 0;
}
