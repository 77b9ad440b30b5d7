// SPDX-License-Identifier: MIT
// Plugin instances: host-owned private state with options bound from typed tables, and the
// lifecycle check -> init -> uninit (uninit runs even after a failed init).
#include <string.h>

#include "internal.h"

void *                        caldera_inst_priv(const struct caldera_inst * inst) { return inst->priv; }
struct caldera_ctx *          caldera_inst_ctx(const struct caldera_inst * inst) { return inst->ctx; }
const char *                  caldera_inst_name(const struct caldera_inst * inst) { return inst->name; }
const struct caldera_plugin * caldera_inst_plugin(const struct caldera_inst * inst) { return inst->plugin; }

int caldera_inst_create(struct caldera_ctx * ctx, const char * plugin, const char * name, struct caldera_inst ** out) {
    *out = NULL;
    const struct caldera_plugin * p = caldera_registry_find(ctx, plugin);
    if (!p) return caldera_ctx_error(ctx, CALDERA_ERR_NOT_FOUND, "no plugin named '%s' (caldera-pipe --list-plugins lists them)", plugin);
    struct caldera_inst * inst = caldera_calloc(1, sizeof(*inst));
    if (!inst) return CALDERA_ERR_NOMEM;
    inst->ctx = ctx;
    inst->plugin = p;
    inst->n_options = caldera_options_count(p->options);
    inst->name = caldera_strdup(name ? name : p->name);
    inst->priv = caldera_calloc(1, p->priv_size ? p->priv_size : 1);
    inst->is_set = caldera_calloc((size_t) (inst->n_options + 1), sizeof(bool));
    int rc = 0;
    if (!inst->name || !inst->priv || !inst->is_set) rc = CALDERA_ERR_NOMEM;
    for (int64_t i = 0; rc == 0 && i < inst->n_options; i++) rc = caldera_option_set_default(&p->options[i], inst->priv);
    if (rc < 0) {
        caldera_inst_free(inst);
        return caldera_ctx_error(ctx, rc, "out of memory creating [%s] %s", name ? name : plugin, plugin);
    }
    *out = inst;
    return 0;
}

int caldera_inst_set(struct caldera_inst * inst, const char * key, const char * value) {
    int64_t idx;
    const struct caldera_option * o = caldera_options_find(inst->plugin->options, key, &idx);
    if (!o) {
        const char * s = caldera_options_suggest(inst->plugin->options, key);
        if (s) return caldera_error(inst, CALDERA_ERR_NOT_FOUND, "unknown option '%s'; did you mean '%s'?", key, s);
        return caldera_error(inst, CALDERA_ERR_NOT_FOUND, "unknown option '%s' (caldera-pipe --help-plugin %s lists them)", key,
                             inst->plugin->name);
    }
    char err[512];
    int rc = caldera_option_parse(o, inst->priv, value, err, sizeof(err));
    if (rc < 0) return rc == CALDERA_ERR_NOMEM ? rc : caldera_error(inst, rc, "%s", err);
    if (o->flags & CALDERA_OPT_DEPRECATED) caldera_inst_log(inst, CALDERA_LOG_WARN, "option '%s' is deprecated", key);
    inst->is_set[idx] = true;
    return 0;
}

int caldera_inst_set_ref(struct caldera_inst * inst, const char * key, struct caldera_inst * ref) {
    int64_t idx;
    const struct caldera_option * o = caldera_options_find(inst->plugin->options, key, &idx);
    if (!o || o->type != CALDERA_OPT_REF) {
        return caldera_error(inst, CALDERA_ERR_NOT_FOUND, "no reference option '%s'", key);
    }
    if (ref && ref->plugin->kind != o->ref_kind) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "option '%s' = [%s] is a %s (%s); allowed: a %s", key, ref->name,
                             caldera_plugin_kind_name(ref->plugin->kind), ref->plugin->name,
                             caldera_plugin_kind_name(o->ref_kind));
    }
    *(struct caldera_inst **) ((char *) inst->priv + o->offset) = ref;
    inst->is_set[idx] = ref != NULL;
    return 0;
}

int caldera_inst_start(struct caldera_inst * inst) {
    const struct caldera_plugin * p = inst->plugin;
    for (int64_t i = 0; i < inst->n_options; i++) {
        const struct caldera_option * o = &p->options[i];
        if ((o->flags & CALDERA_OPT_REQUIRED) && !inst->is_set[i]) {
            return caldera_error(inst, CALDERA_ERR_INVAL, "required option '%s' is not set", o->name);
        }
        if (o->type == CALDERA_OPT_REF && !(o->flags & CALDERA_OPT_OPTIONAL_REF) &&
            !*(struct caldera_inst **) ((char *) inst->priv + o->offset)) {
            return caldera_error(inst, CALDERA_ERR_INVAL, "option '%s' must name a [section] of kind %s", o->name,
                                 caldera_plugin_kind_name(o->ref_kind));
        }
    }
    int rc = p->check ? p->check(inst) : 0;
    if (rc < 0) return rc;
    if (inst->started) return 0;
    inst->started = true;   // uninit is due even if init fails half way
    return p->init ? p->init(inst) : 0;
}

void caldera_inst_free(struct caldera_inst * inst) {
    if (!inst) return;
    if (inst->started && inst->plugin->uninit) inst->plugin->uninit(inst);
    if (inst->on_free) inst->on_free(inst->on_free_arg);
    for (int64_t i = 0; inst->priv && i < inst->n_options; i++) caldera_option_free_value(&inst->plugin->options[i], inst->priv);
    caldera_free(inst->priv);
    caldera_free(inst->is_set);
    caldera_free(inst->name);
    caldera_free(inst);
}

void caldera_inst_on_free(struct caldera_inst * inst, void (*fn)(void *), void * arg) {
    inst->on_free     = fn;
    inst->on_free_arg = arg;
}

char * caldera_inst_get_text(const struct caldera_inst * inst, const char * key) {
    const struct caldera_option * o = caldera_options_find(inst->plugin->options, key, NULL);
    return o ? caldera_option_format(o, inst->priv) : NULL;
}

// ---------------------------------------------------------------------------------------------
// Calls through a REF

int caldera_quantizer_codebook(struct caldera_inst * q, const struct caldera_quantizer_ops ** ops) {
    if (!q || q->plugin->kind != CALDERA_PLUGIN_KIND_QUANTIZER) {
        return caldera_error(q, CALDERA_ERR_INVAL, "not a quantizer");
    }
    const struct caldera_quantizer_ops * o = q->plugin->ops;
    if (!o->cb_dim || !o->cb_begin || !o->cb_round || !o->cb_end || !o->cb_free) {
        return caldera_error(q, CALDERA_ERR_UNSUPPORTED,
                             "quantizer '%s' has no codebook interface (cb_*), so it cannot be wrapped; allowed: a codebook "
                             "quantizer such as uniform or e8", q->plugin->name);
    }
    *ops = o;
    return 0;
}

int caldera_quantizer_quantize(struct caldera_inst * q, const struct caldera_tensor * w, const struct caldera_tensor * h,
                               struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    if (!q || q->plugin->kind != CALDERA_PLUGIN_KIND_QUANTIZER) return CALDERA_ERR_INVAL;
    return ((const struct caldera_quantizer_ops *) q->plugin->ops)->quantize(q, w, h, w_hat, pack);
}

int caldera_quantizer_dequantize(struct caldera_inst * q, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    if (!q || q->plugin->kind != CALDERA_PLUGIN_KIND_QUANTIZER) return CALDERA_ERR_INVAL;
    return ((const struct caldera_quantizer_ops *) q->plugin->ops)->dequantize(q, pack, w_hat);
}
