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

/** dtab (E8P_NABS, 8): pattern a's stored values (nibble − 8)/2 in output coordinate order, for
 *  e8p_round8_avx2's decode (the values e8p_decode starts from, before signs and shift). */
void e8p_decode_table_build(const struct e8p_tables * t, float * dtab);
/**
 * Round n <= 8 blocks of 8 weights, block l at x[l] with scale s[l] (0: a zero row), with the 2- or
 * 4-bit variant: codes into c1[l] (and c2[l] for 4 bits; 0 for 2 bits) and the value
 * s[l] · decode into y[l]. Exactly what e8p_round_scaled gives block by block (the same float
 * operations in the same order, lane-wise), with the searches of e8p_encode8_avx2. AVX2 only.
 */
void e8p_round8_avx2(const struct e8p_tables * t, const uint8_t * key2idx, const float * dtab, int bits,
                     const float * const x[8], const float s[8], int n, float * const y[8], uint16_t c1[8],
                     uint16_t c2[8]);

#endif // CALDERA_E8P_BATCH_H
