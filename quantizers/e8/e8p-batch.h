// SPDX-License-Identifier: MIT
// e8p-batch.h: E8P12 encoding of up to 8 vectors per call (AVX2 when the CPU has it), with codes
// bit-identical to e8p_encode's (e8p.h). Used by the e8 plugin's rounding of rows.
#ifndef CALDERA_E8P_BATCH_H
#define CALDERA_E8P_BATCH_H

#include "e8p.h"

#define E8P_NKEYS 65536   // base-4 keys of 8 digits (e8p_tables.key)

/** key2idx (E8P_NKEYS bytes): the index of the norm^2 <= 10 pattern with each key (0 for others). */
void e8p_key_index_build(const struct e8p_tables * t, uint8_t * key2idx);
/** 1 when e8p_encode8_avx2 may run on this CPU. */
int  e8p_have_avx2(void);
/** codes[l] = e8p_encode(t, x[l]) for l < n (n <= 8), 8 lanes of AVX2 (call only if e8p_have_avx2). */
void e8p_encode8_avx2(const struct e8p_tables * t, const uint8_t * key2idx, const float x[8][E8P_DIM], int n,
                      uint16_t codes[8]);
/** The same with the scalar e8p_encode, one vector at a time. */
void e8p_encode8_scalar(const struct e8p_tables * t, const uint8_t * key2idx, const float x[8][E8P_DIM], int n,
                        uint16_t codes[8]);

#endif // CALDERA_E8P_BATCH_H
