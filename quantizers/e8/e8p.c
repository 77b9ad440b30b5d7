// SPDX-License-Identifier: MIT
// e8p.c: builds the E8P tables of e8p.h from their definitions (algorithms.md 3.1, 3.2):
// the 227 + 29 abs patterns, their packed form, the search tables, and the 256-point
// "E8 1-bit" residual set. No table is copied from elsewhere.
#include "e8p.h"

#include <string.h>

// The 29 norm-12 patterns (five 3/2 and three 1/2), as the positions of their 1/2 entries, in
// the order the codebook appends them.
static const char * const e8p_norm12_halves[E8P_NABS - E8P_NABS_D8] = {
    "123", "023", "013", "012", "367", "357", "347", "356", "346", "345",
    "267", "257", "247", "256", "246", "245", "167", "157", "147", "156",
    "146", "045", "067", "057", "047", "056", "046", "014", "237",
};

void e8p_abs_pattern(int idx, float out[E8P_DIM]) {
    if (idx >= E8P_NABS_D8) {
        const char * h = e8p_norm12_halves[idx - E8P_NABS_D8];
        for (int i = 0; i < E8P_DIM; i++) {
            out[i] = 1.5f;
        }
        for (int k = 0; k < 3; k++) {
            out[h[k] - '0'] = 0.5f;
        }
        return;
    }
    // All of {1/2, 3/2, 5/2, 7/2}^8 with squared norm <= 10, in lexicographic order: count
    // through the base-4 numbers with coordinate 0 as the most significant digit.
    int n = 0;
    for (uint32_t c = 0; c < (1u << 16); c++) {
        int sq = 0;  // sum of (2 v)^2, v = d + 1/2
        for (int i = 0; i < E8P_DIM; i++) {
            int d = (int) (c >> (2 * (7 - i))) & 3;
            sq += (2 * d + 1) * (2 * d + 1);
        }
        if (sq > 40) {
            continue;
        }
        if (n++ == idx) {
            for (int i = 0; i < E8P_DIM; i++) {
                out[i] = (float) ((c >> (2 * (7 - i))) & 3) + 0.5f;
            }
            return;
        }
    }
}

void e8p_tables_build(struct e8p_tables * t) {
    static const int perm[E8P_DIM] = { 0, 2, 4, 6, 1, 3, 5, 7 };
    memset(t, 0, sizeof(*t));

    // abs patterns 0..226 in one pass (e8p_abs_pattern(idx) alone would be quadratic)
    float pat[E8P_NABS][E8P_DIM];
    int   n = 0;
    for (uint32_t c = 0; c < (1u << 16) && n < E8P_NABS_D8; c++) {
        int sq = 0;
        for (int i = 0; i < E8P_DIM; i++) {
            int d = (int) (c >> (2 * (7 - i))) & 3;
            sq += (2 * d + 1) * (2 * d + 1);
        }
        if (sq <= 40) {
            for (int i = 0; i < E8P_DIM; i++) {
                pat[n][i] = (float) ((c >> (2 * (7 - i))) & 3) + 0.5f;
            }
            n++;
        }
    }
    for (int j = E8P_NABS_D8; j < E8P_NABS; j++) {
        e8p_abs_pattern(j, pat[j]);
    }

    for (int j = 0; j < E8P_NABS; j++) {
        float sum = 0.0f, nn = 0.0f;
        for (int i = 0; i < E8P_DIM; i++) {
            sum += pat[j][i];
            nn  += pat[j][i] * pat[j][i];
        }
        int odd = ((int) sum) & 1;  // sums of eight half-integers are integers (exact in f32)
        uint32_t word = 0;
        for (int k = 0; k < E8P_DIM; k++) {
            float v = pat[j][perm[k]];
            if (k == 7 && odd) {
                v = -v;  // make the stored pattern an E8 point (even coordinate sum)
            }
            word |= (uint32_t) (int) (2.0f * v + 8.0f) << (4 * k);
        }
        t->packed[j]   = word;
        t->norm2[j]    = nn;
        t->aneg[j]     = (uint8_t) odd;
        t->pen_even[j] = odd ? 4.0f : 0.0f;
        t->pen_odd[j]  = odd ? 0.0f : 4.0f;
        for (int i = 0; i < E8P_DIM; i++) {
            t->absv[i][j] = pat[j][i];
        }
        if (j < E8P_NABS_D8) {
            uint32_t key = 0;
            for (int i = 0; i < E8P_DIM; i++) {
                key = key << 2 | (uint32_t) (pat[j][i] - 0.5f);
            }
            t->key[j] = (uint16_t) key;
        }
    }

    // "E8 1-bit": zero; +-e_i +-e_j; (+-1/2)^8 with even sum; +-2 e_i without -2 e_7.
    int k = 1;
    for (int i = 0; i < E8P_DIM; i++) {
        for (int j = i + 1; j < E8P_DIM; j++) {
            for (int s = 0; s < 4; s++) {
                t->rvq1[k][i] = (s & 2) ? -1.0f : 1.0f;
                t->rvq1[k][j] = (s & 1) ? -1.0f : 1.0f;
                k++;
            }
        }
    }
    for (uint32_t h = 0; h < 128; h++) {
        uint32_t m = (h << 1) | (uint32_t) __builtin_parity(h);  // even number of minus signs
        for (int i = 0; i < E8P_DIM; i++) {
            t->rvq1[k][i] = ((m >> i) & 1u) ? -0.5f : 0.5f;
        }
        k++;
    }
    for (int i = 0; i < E8P_DIM; i++) {
        for (int s = 0; s < 2; s++) {
            if (i == 7 && s == 1) {
                continue;
            }
            t->rvq1[k][i] = s ? -2.0f : 2.0f;
            k++;
        }
    }
}
