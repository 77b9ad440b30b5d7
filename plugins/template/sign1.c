// SPDX-License-Identifier: MIT
// sign1.c: the copy-me template of a caldera quantizer plugin ("sign1"). It is small but real:
// 1 bit per weight, w_hat = sign(w) * s with s = mean |w| over a row or a group of the row
// (the L2-optimal scale for fixed signs, as in XNOR-Net / BinaryConnect). Every part a plugin
// needs is here: private state, an option table, check/check_shape, init/uninit, quantize,
// dequantize, bits, and errors through caldera_error. See README.md for how to copy it.
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-plugin.h"

// Pack layout written by quantize and read by dequantize (names are suffixes of the weight):
//   "codes"  u8  (ceil(rows * cols / 8))  bit k of byte i is the sign of element 8 i + k in
//                                          row-major order; 1 = positive (or zero), 0 = negative
//   "scales" f32 or f16 (rows, groups)     s per group; groups = cols / group_size, or 1
#define SIGN1_FORMAT_VERSION 1

enum sign1_scale_dtype { SIGN1_SCALE_F32 = 0, SIGN1_SCALE_F16 = 1 };

// Host-owned private state: the host allocates it zeroed (priv_size), fills the option fields
// from the table below, and frees it; the plugin owns only what init allocates.
struct sign1_priv {
    int64_t group_size;   // option: weights per scale along a row; 0 = one scale per row
    int     scale_dtype;  // option: enum sign1_scale_dtype
    float * lut;          // (256, 8) ±1 for every code byte: allocated by init, freed by uninit
};

#define OFF(x) offsetof(struct sign1_priv, x)

static const struct caldera_opt_choice sign1_scale_dtypes[] = {
    { .name = "f32", .value = SIGN1_SCALE_F32, .help = "32-bit scales (exact)" },
    { .name = "f16", .value = SIGN1_SCALE_F16, .help = "16-bit scales (half the scale storage)" },
    { .name = NULL },
};

static const struct caldera_option sign1_options[] = {
    { .name = "group_size", .help = "weights per scale along a row; 0 = one scale per row", .offset = OFF(group_size),
      .type = CALDERA_OPT_INT, .def.i64 = 0, .min = 0, .max = 1 << 20 },
    { .name = "scale_dtype", .help = "storage type of the scales", .offset = OFF(scale_dtype),
      .type = CALDERA_OPT_ENUM, .def.i64 = SIGN1_SCALE_F32, .choices = sign1_scale_dtypes },
    { .name = NULL },
};

// Groups per row and the group width for a row of `cols` weights.
static void sign1_groups(const struct sign1_priv * p, int64_t cols, int64_t * ngroups, int64_t * width) {
    *width   = p->group_size > 0 ? p->group_size : cols;
    *ngroups = *width > 0 ? cols / *width : 0;
}

// Option combinations that can never work are rejected before any tensor is read.
static int sign1_check(struct caldera_inst * inst) {
    const struct sign1_priv * p = caldera_inst_priv(inst);
    if (p->group_size == 1) {
        return caldera_error(inst, CALDERA_ERR_INVAL,
                             "group_size = 1 stores a scale per weight (more bits than f16 weights); allowed: 0 or 2 and more");
    }
    return 0;
}

static int sign1_check_shape(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct sign1_priv * p = caldera_inst_priv(inst);
    if (p->group_size > 0 && cols % p->group_size != 0) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "cols=%" PRId64 " is not a multiple of group_size=%" PRId64, cols,
                             p->group_size);
    }
    return 0;
}

// init: the byte -> 8 signs table that dequantize expands codes with.
static int sign1_init(struct caldera_inst * inst) {
    struct sign1_priv * p = caldera_inst_priv(inst);
    p->lut = caldera_malloc(256 * 8 * sizeof(float));
    if (!p->lut) return caldera_error(inst, CALDERA_ERR_NOMEM, "out of memory for the code table");
    for (int b = 0; b < 256; b++) {
        for (int k = 0; k < 8; k++) p->lut[b * 8 + k] = (b >> k) & 1 ? 1.0f : -1.0f;
    }
    return 0;
}

// uninit runs even when init failed half way, so it copes with NULL fields.
static void sign1_uninit(struct caldera_inst * inst) {
    struct sign1_priv * p = caldera_inst_priv(inst);
    caldera_freep(&p->lut);
}

// A scale as stored (rounded to the storage type), so quantize's w_hat equals dequantize's.
static float sign1_stored_scale(const struct sign1_priv * p, double s) {
    return p->scale_dtype == SIGN1_SCALE_F16 ? caldera_f16_to_f32(caldera_f32_to_f16((float) s)) : (float) s;
}

static int sign1_quantize(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                          struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    const struct sign1_priv * p = caldera_inst_priv(inst);
    (void) h;  // a data-free quantizer: the Hessian is not used
    if (w->dtype != CALDERA_DTYPE_F32 || w->ndim != 2 || w_hat->dtype != CALDERA_DTYPE_F32 || w_hat->ne[0] != w->ne[0] ||
        w_hat->ne[1] != w->ne[1]) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "quantize needs 2-d f32 w and w_hat of the same shape");
    }
    int64_t rows = w->ne[0], cols = w->ne[1], ngroups, width;
    int rc = sign1_check_shape(inst, rows, cols);
    if (rc < 0) return rc;
    int64_t bad;
    if (caldera_tensor_check_finite(w, &bad) < 0) {
        return caldera_error(inst, CALDERA_ERR_NUMERIC, "weight (%" PRId64 ", %" PRId64 ") is NaN or Inf", bad / cols, bad % cols);
    }
    sign1_groups(p, cols, &ngroups, &width);

    // Codes: one bit per weight over the whole matrix, row-major.
    const int64_t ne_codes[1] = { (rows * cols + 7) / 8 };
    const int64_t ne_scales[2] = { rows, ngroups };
    uint8_t * codes = NULL;
    void *    scales = NULL;
    if ((rc = caldera_pack_add(pack, "codes", CALDERA_DTYPE_U8, 1, ne_codes, (void **) &codes)) < 0) {
        return caldera_error(inst, rc, "cannot add tensor 'codes' to the pack");
    }
    enum caldera_dtype sdt = p->scale_dtype == SIGN1_SCALE_F16 ? CALDERA_DTYPE_F16 : CALDERA_DTYPE_F32;
    if ((rc = caldera_pack_add(pack, "scales", sdt, 2, ne_scales, &scales)) < 0) {
        return caldera_error(inst, rc, "cannot add tensor 'scales' to the pack");
    }
    // caldera_pack_add zero-fills, so only the 1 bits are set below.
    for (int64_t r = 0; r < rows; r++) {
        const float * wr = (const float *) w->data + r * w->ld;
        float *       hr = (float *) w_hat->data + r * w_hat->ld;
        for (int64_t g = 0; g < ngroups; g++) {
            const float * wg = wr + g * width;
            double        sum = 0;
            for (int64_t j = 0; j < width; j++) sum += fabs((double) wg[j]);
            float s = sign1_stored_scale(p, sum / (double) width);
            if (sdt == CALDERA_DTYPE_F16) ((uint16_t *) scales)[r * ngroups + g] = caldera_f32_to_f16(s);
            else ((float *) scales)[r * ngroups + g] = s;
            for (int64_t j = 0; j < width; j++) {
                int64_t idx = r * cols + g * width + j;  // element index in row-major order
                int     pos = wg[j] >= 0.0f;
                if (pos) codes[idx >> 3] |= (uint8_t) (1u << (idx & 7));
                hr[g * width + j] = pos ? s : -s;
            }
        }
    }
    return 0;
}

static int sign1_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    const struct sign1_priv * p = caldera_inst_priv(inst);
    if (!p->lut) return caldera_error(inst, CALDERA_ERR_BUG, "dequantize called before init");
    if (w_hat->dtype != CALDERA_DTYPE_F32 || w_hat->ndim != 2) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "dequantize needs a 2-d f32 w_hat");
    }
    int64_t rows = w_hat->ne[0], cols = w_hat->ne[1], ngroups, width;
    int rc = sign1_check_shape(inst, rows, cols);
    if (rc < 0) return rc;
    sign1_groups(p, cols, &ngroups, &width);
    struct caldera_tensor codes, scales;
    if ((rc = caldera_pack_find(pack, "codes", &codes)) < 0) return caldera_error(inst, rc, "the pack has no tensor 'codes'");
    if ((rc = caldera_pack_find(pack, "scales", &scales)) < 0) return caldera_error(inst, rc, "the pack has no tensor 'scales'");
    if (codes.dtype != CALDERA_DTYPE_U8 || caldera_tensor_nelements(&codes) != (rows * cols + 7) / 8 ||
        (scales.dtype != CALDERA_DTYPE_F32 && scales.dtype != CALDERA_DTYPE_F16) || scales.ndim != 2 ||
        scales.ne[0] != rows || scales.ne[1] != ngroups) {
        return caldera_error(inst, CALDERA_ERR_FORMAT,
                             "pack does not match a %" PRId64 "x%" PRId64 " weight with %" PRId64 " scale group(s) per row", rows,
                             cols, ngroups);
    }
    const uint8_t * c = codes.data;
    for (int64_t r = 0; r < rows; r++) {
        float * hr = (float *) w_hat->data + r * w_hat->ld;
        for (int64_t g = 0; g < ngroups; g++) {
            int64_t k = r * ngroups + g;
            float   s = scales.dtype == CALDERA_DTYPE_F16 ? caldera_f16_to_f32(((const uint16_t *) scales.data)[k])
                                                          : ((const float *) scales.data)[k];
            for (int64_t j = 0; j < width; j++) {
                int64_t idx = r * cols + g * width + j;
                hr[g * width + j] = s * p->lut[c[idx >> 3] * 8 + (idx & 7)];
            }
        }
    }
    return 0;
}

// Storage in bits: one per weight plus the scales.
static double sign1_bits(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct sign1_priv * p = caldera_inst_priv(inst);
    int64_t ngroups, width;
    sign1_groups(p, cols, &ngroups, &width);
    double scale_bits = p->scale_dtype == SIGN1_SCALE_F16 ? 16.0 : 32.0;
    return (double) rows * (double) cols + (double) rows * (double) ngroups * scale_bits;
}

static const struct caldera_quantizer_ops sign1_ops = {
    .struct_size = sizeof(struct caldera_quantizer_ops),
    .quantize    = sign1_quantize,
    .dequantize  = sign1_dequantize,
    .bits        = sign1_bits,
    .cb_dim      = NULL,  // no codebook interface: ldlq cannot wrap this quantizer
    .cb_begin    = NULL,
    .cb_round    = NULL,
    .cb_end      = NULL,
    .cb_free     = NULL,
};

static const struct caldera_plugin sign1_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_QUANTIZER,
    .name           = "sign1",
    .description    = "1-bit sign quantizer, w = sign(w) * mean|w| per row or group (template plugin)",
    .version        = CALDERA_VERSION_INT(1, 0, 0),
    .format_version = SIGN1_FORMAT_VERSION,
    .priv_size      = sizeof(struct sign1_priv),
    .options        = sign1_options,
    .probe          = NULL,  // runs anywhere
    .check          = sign1_check,
    .check_shape    = sign1_check_shape,
    .init           = sign1_init,
    .uninit         = sign1_uninit,
    .ops            = &sign1_ops,
};

#ifdef CALDERA_PLUGIN_SHARED
// The shared-object entry point defined below has no prototype of its own.
CALDERA_EXPORT const struct caldera_plugin * caldera_plugin_entry(uint32_t host_abi_version);
#endif
CALDERA_PLUGIN_DEFINE(sign1_plugin)
