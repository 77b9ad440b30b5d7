// SPDX-License-Identifier: MIT
// Status strings, dtype and kind tables, version, and small string helpers.
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

const char * caldera_version(void) { return CALDERA_VERSION_STRING; }

const char * caldera_status_str(int status) {
    switch (status) {
    case CALDERA_OK:              return "success";
    case CALDERA_ERR_NOMEM:       return "out of memory";
    case CALDERA_ERR_INVAL:       return "invalid argument";
    case CALDERA_ERR_RANGE:       return "value out of range";
    case CALDERA_ERR_NOT_FOUND:   return "not found";
    case CALDERA_ERR_PLUGIN_LOAD: return "plugin load failed";
    case CALDERA_ERR_PLUGIN_DUP:  return "duplicate plugin";
    case CALDERA_ERR_ABI:         return "plugin ABI mismatch";
    case CALDERA_ERR_IO:          return "input/output error";
    case CALDERA_ERR_FORMAT:      return "malformed file";
    case CALDERA_ERR_UNSUPPORTED: return "unsupported";
    case CALDERA_ERR_NUMERIC:     return "numerical failure";
    case CALDERA_ERR_DEVICE:      return "device error";
    case CALDERA_ERR_CANCELLED:   return "cancelled";
    case CALDERA_ERR_BUG:         return "internal error";
    case CALDERA_ERR_CONFIG:      return "configuration error";
    default:                      return "unknown status";
    }
}

struct dtype_desc {
    const char * name;
    int64_t      block_elems;
    size_t       block_bytes;
};

// Block sizes of the ggml types are from the GGUF specification (QK4_0 = 32, QK_K = 256).
static const struct dtype_desc dtypes[CALDERA_DTYPE_COUNT] = {
    [CALDERA_DTYPE_F32]     = { "f32",     1, 4 },
    [CALDERA_DTYPE_F64]     = { "f64",     1, 8 },
    [CALDERA_DTYPE_F16]     = { "f16",     1, 2 },
    [CALDERA_DTYPE_BF16]    = { "bf16",    1, 2 },
    [CALDERA_DTYPE_F8_E4M3] = { "f8_e4m3", 1, 1 },
    [CALDERA_DTYPE_F8_E5M2] = { "f8_e5m2", 1, 1 },
    [CALDERA_DTYPE_I8]      = { "i8",      1, 1 },
    [CALDERA_DTYPE_U8]      = { "u8",      1, 1 },
    [CALDERA_DTYPE_I16]     = { "i16",     1, 2 },
    [CALDERA_DTYPE_U16]     = { "u16",     1, 2 },
    [CALDERA_DTYPE_I32]     = { "i32",     1, 4 },
    [CALDERA_DTYPE_U32]     = { "u32",     1, 4 },
    [CALDERA_DTYPE_I64]     = { "i64",     1, 8 },
    [CALDERA_DTYPE_U64]     = { "u64",     1, 8 },
    [CALDERA_DTYPE_BOOL]    = { "bool",    1, 1 },
    [CALDERA_DTYPE_Q4_0]    = { "q4_0",   32, 18 },
    [CALDERA_DTYPE_Q4_1]    = { "q4_1",   32, 20 },
    [CALDERA_DTYPE_Q5_0]    = { "q5_0",   32, 22 },
    [CALDERA_DTYPE_Q5_1]    = { "q5_1",   32, 24 },
    [CALDERA_DTYPE_Q8_0]    = { "q8_0",   32, 34 },
    [CALDERA_DTYPE_Q8_1]    = { "q8_1",   32, 36 },
    [CALDERA_DTYPE_Q2_K]    = { "q2_k",  256, 84 },
    [CALDERA_DTYPE_Q3_K]    = { "q3_k",  256, 110 },
    [CALDERA_DTYPE_Q4_K]    = { "q4_k",  256, 144 },
    [CALDERA_DTYPE_Q5_K]    = { "q5_k",  256, 176 },
    [CALDERA_DTYPE_Q6_K]    = { "q6_k",  256, 210 },
    [CALDERA_DTYPE_Q8_K]    = { "q8_k",  256, 292 },
};

const char * caldera_dtype_name(enum caldera_dtype type) {
    return (unsigned) type < CALDERA_DTYPE_COUNT ? dtypes[type].name : "?";
}

int caldera_dtype_from_name(const char * name, enum caldera_dtype * out) {
    for (int i = 0; i < CALDERA_DTYPE_COUNT; i++) {
        if (name && strcasecmp(name, dtypes[i].name) == 0) {
            *out = (enum caldera_dtype) i;
            return 0;
        }
    }
    return CALDERA_ERR_NOT_FOUND;
}

int64_t caldera_dtype_block_elems(enum caldera_dtype type) {
    return (unsigned) type < CALDERA_DTYPE_COUNT ? dtypes[type].block_elems : 0;
}

size_t caldera_dtype_block_bytes(enum caldera_dtype type) {
    return (unsigned) type < CALDERA_DTYPE_COUNT ? dtypes[type].block_bytes : 0;
}

int caldera_dtype_nbytes(enum caldera_dtype type, int64_t n, size_t * out) {
    if ((unsigned) type >= CALDERA_DTYPE_COUNT || n < 0) return CALDERA_ERR_INVAL;
    int64_t be = dtypes[type].block_elems;
    if (n % be) return CALDERA_ERR_INVAL;
    uint64_t blocks = (uint64_t) (n / be);
    if (blocks > SIZE_MAX / dtypes[type].block_bytes) return CALDERA_ERR_RANGE;
    *out = (size_t) blocks * dtypes[type].block_bytes;
    return 0;
}

const char * caldera_plugin_kind_name(enum caldera_plugin_kind kind) {
    static const char * names[CALDERA_PLUGIN_KIND_COUNT] = {
        "format", "transform", "quantizer", "decomposer", "model",
    };
    return (unsigned) kind < CALDERA_PLUGIN_KIND_COUNT ? names[kind] : "?";
}

// Plugin and section names: [a-z][a-z0-9_]{0,30}.
int caldera_name_valid(const char * name) {
    if (!name || !(name[0] >= 'a' && name[0] <= 'z')) return 0;
    size_t n = 0;
    for (const char * p = name; *p; p++, n++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return 0;
    }
    return n <= 31;
}

size_t caldera_strlcpy(char * dst, const char * src, size_t n) {
    size_t len = strlen(src);
    if (n) {
        size_t c = len < n - 1 ? len : n - 1;
        memcpy(dst, src, c);
        dst[c] = 0;
    }
    return len;
}

char * caldera_asprintf(const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char * s = caldera_malloc((size_t) n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t) n + 1, fmt, ap);
    va_end(ap);
    return s;
}

int caldera_edit_distance(const char * a, const char * b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63) return 64;
    int d[64][64];
    for (size_t i = 0; i <= la; i++) d[i][0] = (int) i;
    for (size_t j = 0; j <= lb; j++) d[0][j] = (int) j;
    for (size_t i = 1; i <= la; i++) {
        for (size_t j = 1; j <= lb; j++) {
            int c = d[i - 1][j - 1] + (tolower((unsigned char) a[i - 1]) != tolower((unsigned char) b[j - 1]));
            if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && tolower((unsigned char) a[i - 1]) == tolower((unsigned char) b[j - 2]) &&
                tolower((unsigned char) a[i - 2]) == tolower((unsigned char) b[j - 1]) && d[i - 2][j - 2] + 1 < c) {
                c = d[i - 2][j - 2] + 1;   // a transposition is one edit (optimal string alignment)
            }
            d[i][j] = c;
        }
    }
    return d[la][lb];
}
