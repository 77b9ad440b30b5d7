// SPDX-License-Identifier: MIT
// Checkpoints of a pipeline run (one file per finished weight); see checkpoint.c.
#ifndef CALDERA_CHECKPOINT_H
#define CALDERA_CHECKPOINT_H

#include "internal.h"

struct caldera_ckpt;

struct caldera_ckpt_result {
    double bits, rel_fro, rel_h, seconds;
    int    has_h;
};

/** Open (create, or continue when its config.ini equals @p config) a checkpoint folder. */
int  caldera_ckpt_open(struct caldera_ctx * ctx, const char * dir, const char * config, struct caldera_ckpt ** out);
/** Close; with remove_files the checkpoint's files (and the folder, if then empty) are deleted. */
void caldera_ckpt_close(struct caldera_ckpt * ckpt, int remove_files);
/** Save weight @p index: its pack, its metrics and, if not NULL, its approximation. */
int  caldera_ckpt_save(struct caldera_ckpt * ckpt, int64_t index, const char * name, const struct caldera_pack * pack,
                       const struct caldera_ckpt_result * res, const struct caldera_tensor * w_hat);
/**
 * Load weight @p index into an empty pack (and w_hat, preallocated, if not NULL).
 * CALDERA_ERR_NOT_FOUND when it was not saved; CALDERA_ERR_FORMAT when the file is damaged.
 */
int  caldera_ckpt_load(struct caldera_ckpt * ckpt, int64_t index, const char * name, struct caldera_pack * pack,
                       struct caldera_ckpt_result * res, struct caldera_tensor * w_hat);

#endif
