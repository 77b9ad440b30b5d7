// SPDX-License-Identifier: MIT
// scale.c: an example plugin built out of tree, against the installed caldera-plugin.h and
// caldera.pc only. It is a transform that multiplies W by a constant `factor` on the way in
// and divides by it on the way out. It is too simple to be useful, but it shows the whole
// contract of a shared-object plugin: descriptor, option table, check, the kind's ops, and
// errors through the core.
#include <inttypes.h>
#include <stddef.h>

#include <caldera/caldera-plugin.h>

// CALDERA_PLUGIN_DEFINE exports this entry point under -DCALDERA_PLUGIN_SHARED; declare it
// first so -Wmissing-prototypes stays quiet.
CALDERA_EXPORT const struct caldera_plugin * caldera_plugin_entry(uint32_t host_abi_version);

struct scale_priv {
    double factor;  // option: W is multiplied by this
};

static const struct caldera_option scale_options[] = {
    { .name = "factor", .help = "multiply W by this before compression (and divide after)",
      .offset = offsetof(struct scale_priv, factor), .type = CALDERA_OPT_DOUBLE, .def.dbl = 2.0, .min = -1e6, .max = 1e6 },
    { .name = NULL },
};

// Reject what can never work before any tensor is read.
static int scale_check(struct caldera_inst * inst) {
    const struct scale_priv * p = caldera_inst_priv(inst);
    if (p->factor == 0.0) return caldera_error(inst, CALDERA_ERR_INVAL, "factor = 0 cannot be undone; allowed: any non-zero number");
    return 0;
}

// out = f * in, for 2-d f32 tensors of the same shape (either may be a strided view).
static void scale_rows(const struct caldera_tensor * in, struct caldera_tensor * out, float f) {
    for (int64_t i = 0; i < in->ne[0]; i++) {
        const float * a = (const float *) in->data + i * in->ld;
        float *       b = (float *) out->data + i * out->ld;
        for (int64_t j = 0; j < in->ne[1]; j++) b[j] = f * a[j];
    }
}

static int scale_forward(struct caldera_inst * inst, const char * tensor_name, const struct caldera_tensor * w,
                         const struct caldera_tensor * h, struct caldera_tensor * w_out, struct caldera_tensor * h_out,
                         struct caldera_pack * pack, void ** state) {
    const struct scale_priv * p = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    (void) tensor_name;
    *state = NULL;  // everything inverse needs is in the options
    if (w->dtype != CALDERA_DTYPE_F32 || w->ndim != 2) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "forward needs a 2-d f32 weight");
    }
    int rc = caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], w_out);
    if (rc < 0) return caldera_error(inst, rc, "out of memory for a %" PRId64 "x%" PRId64 " weight", w->ne[0], w->ne[1]);
    scale_rows(w, w_out, (float) p->factor);
    // h_out is NULL when there is no Hessian. Scaling W leaves the input statistics (H)
    // unchanged, so H passes through as a copy.
    if (h && h_out) {
        if ((rc = caldera_tensor_alloc_f32(ctx, h->ne[0], h->ne[1], h_out)) < 0 || (rc = caldera_tensor_copy(ctx, h_out, h)) < 0) {
            caldera_tensor_free(w_out);
            caldera_tensor_free(h_out);
            return caldera_error(inst, rc, "cannot copy the Hessian");
        }
    }
    // Record the factor with the compressed weight, so a reader can undo it.
    float * f = NULL;
    const int64_t ne[1] = { 1 };
    if ((rc = caldera_pack_add(pack, "factor", CALDERA_DTYPE_F32, 1, ne, (void **) &f)) < 0) {
        caldera_tensor_free(w_out);
        if (h && h_out) caldera_tensor_free(h_out);
        return caldera_error(inst, rc, "cannot add tensor 'factor' to the pack");
    }
    *f = (float) p->factor;
    return 0;
}

static int scale_inverse(struct caldera_inst * inst, void * state, const struct caldera_tensor * w_t,
                         struct caldera_tensor * w_out) {
    const struct scale_priv * p = caldera_inst_priv(inst);
    (void) state;
    int rc = caldera_tensor_alloc_f32(caldera_inst_ctx(inst), w_t->ne[0], w_t->ne[1], w_out);
    if (rc < 0) return caldera_error(inst, rc, "out of memory for a %" PRId64 "x%" PRId64 " weight", w_t->ne[0], w_t->ne[1]);
    scale_rows(w_t, w_out, (float) (1.0 / p->factor));
    return 0;
}

static void scale_free_state(struct caldera_inst * inst, void * state) {
    (void) inst;
    (void) state;  // forward keeps no state
}

static const struct caldera_transform_ops scale_ops = {
    .struct_size = sizeof(struct caldera_transform_ops),
    .forward     = scale_forward,
    .inverse     = scale_inverse,
    .free_state  = scale_free_state,
};

static const struct caldera_plugin scale_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_TRANSFORM,
    .name           = "scale",
    .description    = "example out-of-tree transform: W times a constant",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct scale_priv),
    .options        = scale_options,
    .check          = scale_check,
    .ops            = &scale_ops,
};

CALDERA_PLUGIN_DEFINE(scale_plugin)
