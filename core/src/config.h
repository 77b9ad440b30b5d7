// SPDX-License-Identifier: MIT
// Internal layout of a parsed configuration (used by config.c and pipeline.c).
#ifndef CALDERA_CONFIG_INTERNAL_H
#define CALDERA_CONFIG_INTERNAL_H

#include "internal.h"

struct cfg_entry {
    char * section;
    char * key;
    char * value;
    char * file;   // file name, or "--set"
    int    line;   // line, or index of the --set
    int    used;
};

struct cfg_section {
    char * name;
    char * file;
    int    line;
    int    referenced;
};

struct caldera_config {
    struct caldera_ctx * ctx;
    struct cfg_entry *   entries;
    int64_t              n_entries, cap_entries;
    struct cfg_section * sections;
    int64_t              n_sections, cap_sections;
    char **              diags;
    int64_t              n_diags, cap_diags;
    char *               cur_file;
    char *               main_file;
    int                  n_overrides;
};

int caldera_config_diagf(struct caldera_config * cfg, const char * file, int line, const char * section, const char * plugin,
                         const char * fmt, ...) CALDERA_PRINTF(6, 7);
struct cfg_entry *   caldera_config_find(struct caldera_config * cfg, const char * section, const char * key);
struct cfg_section * caldera_config_find_section(struct caldera_config * cfg, const char * name);

#endif
