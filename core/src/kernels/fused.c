// SPDX-License-Identifier: MIT
// fused.c: calling a quantizer instance's fused-layer ops (linear_*) through the core, with the
// presence checks (CALDERA_OPS_HAS: members appended to the ABI) and one error wording.
#include "caldera/caldera-kernels.h"

static const struct caldera_quantizer_ops * fused_qops(struct caldera_inst * q) {
    const struct caldera_plugin * p = q ? caldera_inst_plugin(q) : NULL;
    if (!p || p->kind != CALDERA_PLUGIN_KIND_QUANTIZER) {
        return NULL;
    }
    const struct caldera_quantizer_ops * o = p->ops;
    if (!CALDERA_OPS_HAS(o, struct caldera_quantizer_ops, linear_init) ||
        !CALDERA_OPS_HAS(o, struct caldera_quantizer_ops, linear_apply) ||
        !CALDERA_OPS_HAS(o, struct caldera_quantizer_ops, linear_free)) {
        return NULL;
    }
    return o;
}

int caldera_quantizer_linear_init(struct caldera_inst * q, const struct caldera_pack * pack, int64_t rows,
                                  int64_t cols, void ** state) {
    const struct caldera_quantizer_ops * o = fused_qops(q);
    *state = NULL;
    if (!o) {
        if (!q) {
            return CALDERA_ERR_INVAL;
        }
        return caldera_error(q, CALDERA_ERR_UNSUPPORTED, "plugin '%s' declares no fused layer (linear_init, "
                             "linear_apply, linear_free); allowed: a quantizer with them, e.g. e8 or uniform",
                             caldera_inst_plugin(q)->name);
    }
    return o->linear_init(q, pack, rows, cols, state);
}

int caldera_quantizer_linear_apply(struct caldera_inst * q, void * state, const struct caldera_tensor * x,
                                   struct caldera_tensor * y, unsigned flags) {
    const struct caldera_quantizer_ops * o = fused_qops(q);
    if (!o) {
        return q ? caldera_error(q, CALDERA_ERR_UNSUPPORTED, "linear_apply: no fused layer") : CALDERA_ERR_INVAL;
    }
    return o->linear_apply(q, state, x, y, flags);
}

void caldera_quantizer_linear_free(struct caldera_inst * q, void * state) {
    const struct caldera_quantizer_ops * o = fused_qops(q);
    if (o && state) {
        o->linear_free(q, state);
    }
}
