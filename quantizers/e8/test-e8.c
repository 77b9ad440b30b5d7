// SPDX-License-Identifier: MIT
// Tests of the E8P codebooks (e8p.h) against their definitions and brute force, and of the
// "e8" quantizer plugin: round trips, exact bits, the codebook level, errors, and E8P 2-bit
// against uniform 2-bit on Gaussian data.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "e8p-batch.h"
#include "testutil.h"

// Squared-distance slack when comparing the fast search with double-precision brute force:
// the search scores in f32, so near-ties may pick the other codeword (relative to ||x||^2).
#define E8P_SEARCH_REL_TOL   2e-6
// Codebook statistics from algorithms.md 3.1.
#define E8P_MEAN_SQ          1.196
#define E8P_MEAN_SQ_TOL      5e-4
// MSE per weight on N(0,1) weights, tensor scale (bench-e8 256 1024 measured 0.0912, 0.0294,
// 0.0096 at 2/3/4 bits; see README): upper bounds with about 5% margin.
#define E8_MSE_MAX_2BIT      0.095
#define E8_MSE_MAX_3BIT      0.031
#define E8_MSE_MAX_4BIT      0.0101
// Uniform 2-bit baselines that E8P 2-bit must beat on the same data.
#define UNIFORM_2BIT_TENSOR_OPTS "tensor"
#define UNIFORM_2BIT_GROUP_SIZE  "64"

static struct e8p_tables * tables(void) {
    static struct e8p_tables t;
    static int built;
    if (!built) {
        e8p_tables_build(&t);
        built = 1;
    }
    return &t;
}

static double sqdist(const float * a, const double * b) {
    double s = 0.0;
    for (int i = 0; i < 8; i++) {
        double d = (double) a[i] - b[i];
        s += d * d;
    }
    return s;
}

// ---------------------------------------------------------------------------------------------
// Codebook construction

START_TEST(test_abs_check_values) {
    const struct e8p_tables * t = tables();
    ck_assert_uint_eq(t->packed[0], 0x99999999u);
    ck_assert_uint_eq(t->packed[1], 0x59999999u);
    ck_assert_uint_eq(t->packed[2], 0xd9999999u);
    ck_assert_uint_eq(t->packed[3], 0x7999b999u);
}
END_TEST

START_TEST(test_abs_patterns) {
    // Independent count: a coordinates 3/2 and b coordinates 5/2 with 2a + 6b <= 8 (163 + 64).
    int n163 = 0, n64 = 0;
    for (int j = 0; j < E8P_NABS; j++) {
        float a[8];
        e8p_abs_pattern(j, a);
        double nn = 0.0;
        int n32 = 0, n12 = 0, n52 = 0;
        for (int i = 0; i < 8; i++) {
            nn += (double) a[i] * a[i];
            n12 += a[i] == 0.5f;
            n32 += a[i] == 1.5f;
            n52 += a[i] == 2.5f;
        }
        if (j < E8P_NABS_D8) {
            ck_assert(nn <= 10.0);
            ck_assert_int_eq(n12 + n32 + n52, 8);
            n163 += n52 == 0;
            n64  += n52 == 1;
            if (j > 0) {  // strictly increasing in lexicographic order
                float b[8];
                e8p_abs_pattern(j - 1, b);
                int k = 0;
                while (k < 8 && a[k] == b[k]) k++;
                ck_assert(k < 8 && a[k] > b[k]);
            }
        } else {
            ck_assert(nn == 12.0);
            ck_assert_int_eq(n32, 5);
            ck_assert_int_eq(n12, 3);
        }
        // tables agree with the pattern
        ck_assert(tables()->norm2[j] == (float) nn);
        for (int i = 0; i < 8; i++) {
            ck_assert(tables()->absv[i][j] == a[i]);
        }
    }
    ck_assert_int_eq(n163, 163);
    ck_assert_int_eq(n64, 64);
    float a[8];
    e8p_abs_pattern(E8P_NABS_D8, a);  // "123": halves at positions 1, 2, 3
    ck_assert(a[0] == 1.5f && a[1] == 0.5f && a[2] == 0.5f && a[3] == 0.5f && a[4] == 1.5f);
    e8p_abs_pattern(E8P_NABS - 1, a);  // "237"
    ck_assert(a[2] == 0.5f && a[3] == 0.5f && a[7] == 0.5f && a[0] == 1.5f && a[6] == 1.5f);
}
END_TEST

static int cmp_vec(const void * pa, const void * pb) {
    return memcmp(pa, pb, 8 * sizeof(float));
}

START_TEST(test_codebook_set) {
    const struct e8p_tables * t = tables();
    float (*cb)[8] = malloc(sizeof(float[8]) * 65536);
    ck_assert_ptr_nonnull(cb);
    double sumsq = 0.0, maxn = 0.0, maxc = 0.0;
    for (uint32_t c = 0; c < 65536; c++) {
        e8p_decode(t, (uint16_t) c, cb[c]);
        // v - shift is an E8 point of the half-integer coset: 2(v - s) odd, coordinate sum even
        double shift = __builtin_parity(c & 0xFF) ? -0.25 : 0.25;
        double nn = 0.0, sum = 0.0;
        for (int i = 0; i < 8; i++) {
            double u = (double) cb[c][i] - shift;
            ck_assert(fabs(2.0 * u - rint(2.0 * u)) == 0.0 && ((int64_t) rint(2.0 * u) & 1));
            sum += u;
            nn += (double) cb[c][i] * cb[c][i];
            sumsq += (double) cb[c][i] * cb[c][i];
            maxc = fmax(maxc, fabs(cb[c][i]));
        }
        ck_assert(fmod(fabs(sum), 2.0) == 0.0);
        maxn = fmax(maxn, nn);
    }
    ck_assert_msg(fabs(sumsq / (65536.0 * 8) - E8P_MEAN_SQ) < E8P_MEAN_SQ_TOL, "mean square %g",
                  sumsq / (65536.0 * 8));
    ck_assert(maxn == 16.5);
    ck_assert(maxc == 2.75);  // 5/2 + 1/4: 7/2 cannot occur with norm^2 <= 10 (algorithms.md says 3.75)
    qsort(cb, 65536, sizeof(float[8]), cmp_vec);
    for (int c = 1; c < 65536; c++) {
        ck_assert_msg(memcmp(cb[c], cb[c - 1], sizeof(float[8])) != 0, "duplicate codeword");
    }
    free(cb);
}
END_TEST

// ---------------------------------------------------------------------------------------------
// Nearest-codeword search against brute force

START_TEST(test_encode_bruteforce) {
    const struct e8p_tables * t = tables();
    double (*cb)[8] = malloc(sizeof(double[8]) * 65536);
    ck_assert_ptr_nonnull(cb);
    for (uint32_t c = 0; c < 65536; c++) {
        float v[8];
        e8p_decode(t, (uint16_t) c, v);
        for (int i = 0; i < 8; i++) cb[c][i] = v[i];
    }
    static const float scales[] = { 0.05f, 0.3f, 1.0f, 1.03f, 2.0f, 4.0f };
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 42);
    int nvec = 0, same = 0, same_s = 0;
    for (int si = 0; si < 6; si++) {
        for (int r = 0; r < 500; r++) {
            float x[8], out[8], dec[8];
            double xx = 0.0;
            for (int i = 0; i < 8; i++) {
                x[i] = (float) (scales[si] * (r & 1 ? caldera_rng_normal(&rng)
                                                    : 6.0 * caldera_rng_uniform(&rng) - 3.0));
                xx += (double) x[i] * x[i];
            }
            float    out_s[8];
            uint16_t code = e8p_encode(t, x, out);
            uint16_t code_s = e8p_encode_simple(t, x, out_s);
            e8p_decode(t, code, dec);
            ck_assert(memcmp(dec, out, sizeof(dec)) == 0);
            e8p_decode(t, code_s, dec);
            ck_assert(memcmp(dec, out_s, sizeof(dec)) == 0);
            double best = INFINITY;
            uint32_t bc = 0;
            double xd[8];
            for (int i = 0; i < 8; i++) xd[i] = x[i];
            for (uint32_t c = 0; c < 65536; c++) {
                double s = 0.0;
                for (int i = 0; i < 8; i++) {
                    double d = xd[i] - cb[c][i];
                    s += d * d;
                }
                if (s < best) {
                    best = s;
                    bc = c;
                }
            }
            double got = 0.0;
            for (int i = 0; i < 8; i++) got += (xd[i] - out[i]) * (xd[i] - out[i]);
            ck_assert_msg(got <= best + E8P_SEARCH_REL_TOL * (1.0 + xx),
                          "vector %d: search %.9g, brute force %.9g (code %u vs %u)", nvec, got, best,
                          code, bc);
            double got_s = 0.0;
            for (int i = 0; i < 8; i++) got_s += (xd[i] - out_s[i]) * (xd[i] - out_s[i]);
            ck_assert_msg(got_s <= best + E8P_SEARCH_REL_TOL * (1.0 + xx),
                          "vector %d: simple search %.9g, brute force %.9g", nvec, got_s, best);
            same += code == bc;
            same_s += code_s == bc;
            nvec++;
        }
    }
    ck_assert_int_ge(same, nvec - 3);  // different codes only on float near-ties
    ck_assert_int_ge(same_s, nvec - 3);
    free(cb);
}
END_TEST

START_TEST(test_encode_fast_vs_simple) {
    // The sorted-match search against the simple 512-candidate search (a second implementation)
    // on 200,000 vectors: same codes except float near-ties, never a worse codeword.
    const struct e8p_tables * t = tables();
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 99);
    int diff = 0;
    for (int r = 0; r < 200000; r++) {
        float x[8], o1[8], o2[8];
        double sc = 0.1 * (1 + r % 40), xx = 0.0;
        for (int i = 0; i < 8; i++) {
            x[i] = (float) (sc * caldera_rng_normal(&rng));
            xx += (double) x[i] * x[i];
        }
        uint16_t c1 = e8p_encode(t, x, o1), c2 = e8p_encode_simple(t, x, o2);
        if (c1 != c2) {
            double e1 = 0.0, e2 = 0.0;
            for (int i = 0; i < 8; i++) {
                e1 += ((double) x[i] - o1[i]) * ((double) x[i] - o1[i]);
                e2 += ((double) x[i] - o2[i]) * ((double) x[i] - o2[i]);
            }
            ck_assert_msg(fabs(e1 - e2) <= E8P_SEARCH_REL_TOL * (1.0 + xx), "vector %d: %g vs %g", r, e1, e2);
            diff++;
        }
    }
    ck_assert_int_le(diff, 20);
}
END_TEST

START_TEST(test_encode8_same_codes) {
    // The 8-lane AVX2 search (e8p-batch.c) against the scalar e8p_encode: bit-identical codes on
    // 400,000 vectors: Gaussian at many scales, vectors with tied magnitudes (the rank's tie rule),
    // zeros, half-integers (exact ties between codewords) and partly filled batches.
    const struct e8p_tables * t = tables();
    static uint8_t key2idx[E8P_NKEYS];
    e8p_key_index_build(t, key2idx);
    if (!e8p_have_avx2()) {
        fprintf(stderr, "test_encode8_same_codes: no AVX2 on this CPU; the scalar batch is checked alone\n");
    }
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 2024);
    int64_t checked = 0;
    for (int r = 0; r < 50000; r++) {
        float x[8][8];
        const int n = 1 + r % 8;
        for (int l = 0; l < 8; l++) {
            const double sc = 0.05 * (1 + (r * 8 + l) % 60);
            for (int i = 0; i < 8; i++) {
                switch ((r + l) % 5) {
                case 0: x[l][i] = (float) (sc * caldera_rng_normal(&rng)); break;
                case 1: x[l][i] = (float) ((i % 3) * 0.5 - 0.5) * (caldera_rng_uniform(&rng) < 0.5 ? -1.0f : 1.0f); break;
                case 2: x[l][i] = (float) (0.25 * (int) (8.0 * caldera_rng_uniform(&rng)) - 1.0); break;
                case 3: x[l][i] = i < 4 ? 0.0f : (float) (sc * caldera_rng_normal(&rng)); break;
                default: x[l][i] = (float) (3.0 * sc * caldera_rng_normal(&rng)); break;
                }
            }
        }
        uint16_t ca[8], cs[8];
        e8p_encode8_scalar(t, key2idx, (const float (*)[8]) x, n, cs);
        if (e8p_have_avx2()) {
            e8p_encode8_avx2(t, key2idx, (const float (*)[8]) x, n, ca);
        } else {
            memcpy(ca, cs, sizeof(ca));
        }
        for (int l = 0; l < n; l++) {
            float out[8];
            ck_assert_uint_eq(cs[l], e8p_encode(t, x[l], out));
            ck_assert_msg(ca[l] == cs[l], "vector %d lane %d: batch code %u, scalar %u", r, l, ca[l], cs[l]);
            checked++;
        }
    }
    ck_assert_int_gt(checked, 200000);
}
END_TEST

START_TEST(test_round8_same_as_scalar) {
    // e8p_round8_avx2 (the e8 plugin's rounding of 8 blocks at once: scaling, both searches, the
    // vector decode and Ŵ) against e8p_round_scaled block by block: bit-identical codes and values
    // for 2 and 4 bits, zero scales (a zero row) and partly filled batches included.
    if (!e8p_have_avx2()) {
        fprintf(stderr, "test_round8_same_as_scalar: no AVX2 on this CPU; skipped\n");
        return;
    }
    const struct e8p_tables * t = tables();
    static uint8_t key2idx[E8P_NKEYS];
    static float   dtab[E8P_NABS * E8P_DIM];
    e8p_key_index_build(t, key2idx);
    e8p_decode_table_build(t, dtab);
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 77);
    int64_t checked = 0;
    for (int r = 0; r < 20000; r++) {
        const int bits = r % 2 ? 4 : 2, n = 1 + r % 8;
        float x[8][8], y[8][8], ys[8][8], s[8];
        const float * xp[8];
        float * yp[8];
        for (int l = 0; l < 8; l++) {
            s[l] = (r + l) % 23 == 0 ? 0.0f : (float) (0.01 + 0.5 * caldera_rng_uniform(&rng));
            const double sd = 0.02 * (1 + (r + 3 * l) % 40);
            for (int i = 0; i < 8; i++) {
                x[l][i] = (r + l) % 7 == 0 ? (float) (0.25 * (int) (8.0 * caldera_rng_uniform(&rng)) - 1.0) * s[l]
                                           : (float) (sd * caldera_rng_normal(&rng));
            }
            xp[l] = x[l];
            yp[l] = y[l];
        }
        uint16_t c1[8], c2[8];
        e8p_round8_avx2(t, key2idx, dtab, bits, xp, s, n, yp, c1, c2);
        for (int l = 0; l < n; l++) {
            uint16_t d1, d2;
            e8p_round_scaled(t, bits, s[l], x[l], ys[l], &d1, &d2);
            ck_assert_msg(c1[l] == d1 && c2[l] == d2, "batch %d lane %d (%d bits): codes %u/%u, scalar %u/%u", r, l,
                          bits, c1[l], c2[l], d1, d2);
            ck_assert_msg(memcmp(y[l], ys[l], sizeof(ys[l])) == 0, "batch %d lane %d: values differ", r, l);
            checked++;
        }
    }
    ck_assert_int_gt(checked, 80000);
}
END_TEST

// The "E8 1-bit" set built from its definition here: E8 points with norm^2 <= 2 (integer
// vectors with even sum from {-1,0,1}^8, and (+-1/2)^8 with even sum) plus +-2e_i but -2e_7.
static int rvq1_reference(double (*set)[8]) {
    int n = 0;
    for (int c = 0; c < 6561; c++) {  // {-1, 0, 1}^8
        double v[8];
        int s = 0, nn = 0, cc = c;
        for (int i = 0; i < 8; i++, cc /= 3) {
            v[i] = (double) (cc % 3 - 1);
            s += cc % 3 - 1;
            nn += (cc % 3 - 1) * (cc % 3 - 1);
        }
        if ((s & 1) == 0 && nn <= 2) memcpy(set[n++], v, sizeof(v));
    }
    for (int m = 0; m < 256; m++) {
        if (__builtin_popcount((unsigned) m) & 1) continue;
        for (int i = 0; i < 8; i++) set[n][i] = (m >> i) & 1 ? -0.5 : 0.5;
        n++;
    }
    for (int i = 0; i < 8; i++) {
        for (int sg = 1; sg >= -1; sg -= 2) {
            if (i == 7 && sg < 0) continue;
            memset(set[n], 0, sizeof(set[n]));
            set[n++][i] = 2.0 * sg;
        }
    }
    return n;
}

START_TEST(test_rvq1_set_and_search) {
    const struct e8p_tables * t = tables();
    double set[300][8];
    int n = rvq1_reference(set);
    ck_assert_int_eq(n, E8P_NRVQ1);
    // every table entry is in the reference set, and the table has no duplicates
    for (int c = 0; c < E8P_NRVQ1; c++) {
        int found = 0;
        for (int k = 0; k < n; k++) found += sqdist(t->rvq1[c], set[k]) == 0.0;
        ck_assert_int_eq(found, 1);
        for (int c2 = 0; c2 < c; c2++) {
            ck_assert(memcmp(t->rvq1[c], t->rvq1[c2], sizeof(t->rvq1[c])) != 0);
        }
    }
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 7);
    static const double scales[] = { 0.2, 0.7, 1.0, 1.5, 3.0 };
    for (int r = 0; r < 5000; r++) {
        float x[8], out[8];
        double xx = 0.0, xd[8];
        for (int i = 0; i < 8; i++) {
            x[i] = (float) (scales[r % 5] * caldera_rng_normal(&rng));
            xd[i] = x[i];
            xx += xd[i] * xd[i];
        }
        uint8_t code = e8p_rvq1_encode(t, x, out);
        ck_assert(memcmp(out, t->rvq1[code], sizeof(out)) == 0);
        double best = INFINITY;
        for (int k = 0; k < n; k++) best = fmin(best, sqdist(x, set[k]));
        double got = 0.0;
        for (int i = 0; i < 8; i++) got += (xd[i] - out[i]) * (xd[i] - out[i]);
        ck_assert_msg(got <= best + E8P_SEARCH_REL_TOL * (1.0 + xx), "vector %d: %g vs %g", r, got, best);
    }
}
END_TEST

START_TEST(test_residual_variants_decode) {
    // The value of a 3- or 4-bit code is v1 + v2/rho with both stages decoded from the codes
    // (not the reference's 3-bit decode that drops the residual).
    const struct e8p_tables * t = tables();
    struct caldera_rng rng;
    caldera_rng_seed(&rng, 3);
    double err2 = 0.0, err3 = 0.0, err4 = 0.0;
    for (int r = 0; r < 2000; r++) {
        float x[8], v[8], v1[8], v2[8];
        for (int i = 0; i < 8; i++) x[i] = (float) caldera_rng_normal(&rng);
        for (int bits = 2; bits <= 4; bits++) {
            uint16_t c1, c2;
            e8p_encode_bits(t, bits, x, &c1, &c2);
            e8p_decode_bits(t, bits, c1, c2, v);
            e8p_decode(t, c1, v1);
            if (bits == 4) e8p_decode(t, c2, v2);
            if (bits == 3) {
                ck_assert_uint_lt(c2, 256);
                memcpy(v2, t->rvq1[c2], sizeof(v2));
            }
            double e = 0.0;
            for (int i = 0; i < 8; i++) {
                float want = bits == 2 ? v1[i] : v1[i] + v2[i] / (bits == 4 ? E8P_RESID_SCALE_4BIT : E8P_RESID_SCALE_3BIT);
                ck_assert(v[i] == want);
                e += ((double) x[i] - v[i]) * ((double) x[i] - v[i]);
            }
            if (bits == 2) err2 += e; else if (bits == 3) err3 += e; else err4 += e;
        }
    }
    ck_assert(err3 < err2 && err4 < err3);  // each residual stage helps on average
}
END_TEST

// ---------------------------------------------------------------------------------------------
// The plugin

static struct caldera_inst * mk(struct caldera_ctx * ctx, const char * bits, const char * mode,
                                const char * dtype) {
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "e8", "q", &q), 0);
    if (bits) ck_assert_int_eq(caldera_inst_set(q, "bits", bits), 0);
    if (mode) ck_assert_int_eq(caldera_inst_set(q, "scale_mode", mode), 0);
    if (dtype) ck_assert_int_eq(caldera_inst_set(q, "scale_dtype", dtype), 0);
    ck_assert_int_eq(caldera_inst_start(q), 0);
    return q;
}

static const struct caldera_quantizer_ops * qops(struct caldera_inst * q) {
    return caldera_inst_plugin(q)->ops;
}

static double mse(const struct caldera_tensor * a, const struct caldera_tensor * b) {
    double s = 0.0;
    for (int64_t i = 0; i < a->ne[0]; i++) {
        for (int64_t j = 0; j < a->ne[1]; j++) {
            double d = (double) ((const float *) a->data)[i * a->ld + j] - ((const float *) b->data)[i * b->ld + j];
            s += d * d;
        }
    }
    return s / (double) (a->ne[0] * a->ne[1]);
}

START_TEST(test_roundtrip_bits) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 64, n = 256;
    struct caldera_tensor w = tu_randn(ctx, m, n, 11);
    static const char * bits[] = { "2", "3", "4" };
    static const double maxmse[] = { E8_MSE_MAX_2BIT * 1.05, E8_MSE_MAX_3BIT * 1.05, E8_MSE_MAX_4BIT * 1.05 };
    for (int b = 0; b < 3; b++) {
        for (int mode = 0; mode < 2; mode++) {
            for (int dt = 0; dt < 2; dt++) {
                struct caldera_inst * q = mk(ctx, bits[b], mode ? "row" : "tensor", dt ? "f32" : "f16");
                struct caldera_pack * pack = NULL;
                struct caldera_tensor wh, wd;
                ck_assert_int_eq(caldera_pack_init(&pack), 0);
                ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &wh), 0);
                ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &wd), 0);
                ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), 0);
                ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &wd), 0);
                ck_assert(memcmp(wh.data, wd.data, (size_t) (m * n) * sizeof(float)) == 0);
                // bits: exactly b per weight plus the scales
                double want = (double) (b + 2) * (double) (m * n) + (mode ? (double) m : 1.0) * (dt ? 32.0 : 16.0);
                ck_assert(qops(q)->bits(q, m, n) == want);
                ck_assert_uint_eq(caldera_pack_bits(pack), (uint64_t) want);
                struct caldera_tensor codes;
                ck_assert_int_eq(caldera_pack_find(pack, "codes", &codes), 0);
                ck_assert_int_eq(codes.dtype, CALDERA_DTYPE_U16);
                ck_assert_int_eq(caldera_pack_find(pack, "codes2", &codes), b == 0 ? CALDERA_ERR_NOT_FOUND : 0);
                double e = mse(&w, &wh);
                ck_assert_msg(e < maxmse[b], "bits %s mode %d dtype %d: mse %g", bits[b], mode, dt, e);
                caldera_tensor_free(&wh);
                caldera_tensor_free(&wd);
                caldera_pack_free(pack);
                caldera_inst_free(q);
            }
        }
    }
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

// Quantize with a fresh instance; returns w_hat and the pack.
static void run_quant(struct caldera_ctx * ctx, const char * bits, const struct caldera_tensor * w,
                      struct caldera_tensor * wh, struct caldera_pack ** pack) {
    struct caldera_inst * q = mk(ctx, bits, NULL, NULL);
    ck_assert_int_eq(caldera_pack_init(pack), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, w->ne[0], w->ne[1], wh), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(q, w, NULL, wh, *pack), 0);
    caldera_inst_free(q);
}

static void assert_packs_equal(const struct caldera_pack * a, const struct caldera_pack * b) {
    ck_assert_int_eq(caldera_pack_count(a), caldera_pack_count(b));
    for (int64_t i = 0; i < caldera_pack_count(a); i++) {
        struct caldera_tensor ta, tb;
        ck_assert_str_eq(caldera_pack_name(a, i), caldera_pack_name(b, i));
        ck_assert_int_eq(caldera_pack_get(a, i, &ta), 0);
        ck_assert_int_eq(caldera_pack_get(b, i, &tb), 0);
        ck_assert_int_eq(ta.dtype, tb.dtype);
        size_t na = 0;
        ck_assert_int_eq(caldera_dtype_nbytes(ta.dtype, caldera_tensor_nelements(&ta), &na), 0);
        ck_assert_int_eq(caldera_tensor_nelements(&ta), caldera_tensor_nelements(&tb));
        ck_assert(memcmp(ta.data, tb.data, na) == 0);
    }
}

START_TEST(test_determinism_threads) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 33, 64, 5);
    for (int b = 2; b <= 4; b++) {
        char bits[2] = { (char) ('0' + b), 0 };
        struct caldera_tensor w1, w2;
        struct caldera_pack * p1, * p2;
        caldera_ctx_set_threads(ctx, 1);
        run_quant(ctx, bits, &w, &w1, &p1);
        caldera_ctx_set_threads(ctx, 2);
        run_quant(ctx, bits, &w, &w2, &p2);
        ck_assert(memcmp(w1.data, w2.data, 33 * 64 * sizeof(float)) == 0);
        assert_packs_equal(p1, p2);
        caldera_tensor_free(&w1);
        caldera_tensor_free(&w2);
        caldera_pack_free(p1);
        caldera_pack_free(p2);
    }
    caldera_tensor_free(&w);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_nan_inf) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 8, 32, 5), wh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 8, 32, &wh), 0);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    struct caldera_inst * q = mk(ctx, "2", NULL, NULL);
    ((float *) w.data)[3 * 32 + 17] = NAN;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "W has a NaN or Inf at (3, 17)"));
    ((float *) w.data)[3 * 32 + 17] = 0.0f;
    ((float *) w.data)[7 * 32 + 31] = -INFINITY;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "at (7, 31)"));
    ck_assert_int_eq(caldera_pack_count(pack), 0);
    caldera_inst_free(q);
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_shape_rejected) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_inst * q = mk(ctx, NULL, NULL, NULL);
    const struct caldera_plugin * pl = caldera_inst_plugin(q);
    ck_assert_int_eq(pl->check_shape(q, 16, 12), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "[q] e8: cols=12 is not a multiple of 8"));
    ck_assert_int_eq(pl->check_shape(q, 16, 4096), 0);
    ck_assert_int_eq(pl->check_shape(q, 0, 8), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "shape 0x8 is empty"));
    struct caldera_tensor w = tu_randn(ctx, 4, 12, 1), wh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 12, &wh), 0);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), CALDERA_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cols=12 is not a multiple of 8"));
    ck_assert_int_eq(qops(q)->dequantize(q, pack, &wh), CALDERA_ERR_UNSUPPORTED);
    // w_hat of another shape
    struct caldera_tensor w16 = tu_randn(ctx, 4, 16, 1);
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w16, NULL, &wh, pack), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "w_hat is 4x12; allowed: 4x16"));
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&w16);
    caldera_tensor_free(&wh);
    caldera_inst_free(q);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_ld_views) {
    // W and w_hat as views with ld > cols give the same result as contiguous tensors, and the
    // padding is neither read (NaN there is fine) nor written.
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 9, n = 24, ldw = 29, ldh = 27;
    struct caldera_tensor w = tu_randn(ctx, m, n, 8), wh, big, bigh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, ldw, &big), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, ldh, &bigh), 0);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < ldw; j++) ((float *) big.data)[i * ldw + j] = j < n ? ((float *) w.data)[i * n + j] : NAN;
        for (int64_t j = 0; j < ldh; j++) ((float *) bigh.data)[i * ldh + j] = -7.0f;
    }
    struct caldera_tensor vw = big, vh = bigh;
    vw.ne[1] = n;
    vh.ne[1] = n;
    struct caldera_pack * p1, * p2;
    run_quant(ctx, "4", &w, &wh, &p1);
    struct caldera_inst * q = mk(ctx, "4", NULL, NULL);
    ck_assert_int_eq(caldera_pack_init(&p2), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(q, &vw, NULL, &vh, p2), 0);
    assert_packs_equal(p1, p2);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < ldh; j++) {
            float got = ((float *) bigh.data)[i * ldh + j];
            ck_assert(j < n ? got == ((float *) wh.data)[i * n + j] : got == -7.0f);
        }
    }
    // dequantize into a strided view
    for (int64_t k = 0; k < m * ldh; k++) ((float *) bigh.data)[k] = -7.0f;
    ck_assert_int_eq(caldera_quantizer_dequantize(q, p2, &vh), 0);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < ldh; j++) {
            float got = ((float *) bigh.data)[i * ldh + j];
            ck_assert(j < n ? got == ((float *) wh.data)[i * n + j] : got == -7.0f);
        }
    }
    caldera_inst_free(q);
    caldera_pack_free(p1);
    caldera_pack_free(p2);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&big);
    caldera_tensor_free(&bigh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_codebook_memo) {
    // cb_round keeps the last narrow call's input and output and skips the search for blocks whose
    // input repeats bit for bit at the same columns: a block column rounded with other input,
    // then half-repeated input, then W's own (in place: x_hat = x), then the rest gives quantize's
    // pack and values exactly.
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 20, n = 48;
    for (int b = 2; b <= 4; b += 2) {
        char bits[2] = { (char) ('0' + b), 0 };
        struct caldera_tensor w = tu_randn(ctx, m, n, 23), wh, xh, junk = tu_randn(ctx, m, 8, 5), mix, mixh, own;
        struct caldera_pack * p1, * p2;
        run_quant(ctx, bits, &w, &wh, &p1);
        struct caldera_inst * q = mk(ctx, bits, NULL, NULL);
        const struct caldera_quantizer_ops * ops = NULL;
        ck_assert_int_eq(caldera_quantizer_codebook(q, &ops), 0);
        struct caldera_cb_state * st = NULL;
        ck_assert_int_eq(ops->cb_begin(q, &w, &st), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &xh), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, 8, &mix), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, 8, &mixh), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, 8, &own), 0);
        for (int64_t r = 0; r < m; r++) {
            for (int64_t k = 0; k < 8; k++) {
                const float wv = ((float *) w.data)[r * n + 16 + k];
                ((float *) mix.data)[r * 8 + k] = r % 2 ? wv : ((float *) junk.data)[r * 8 + k];
                ((float *) own.data)[r * 8 + k] = wv;
            }
        }
        ck_assert_int_eq(ops->cb_round(q, st, 16, &junk, &mixh), 0);
        ck_assert_int_eq(ops->cb_round(q, st, 16, &mix, &mixh), 0);    // even rows repeat junk's
        ck_assert_int_eq(ops->cb_round(q, st, 16, &own, &own), 0);     // odd rows repeat, in place
        for (int64_t r = 0; r < m; r++) {
            ck_assert(memcmp((float *) own.data + r * 8, (float *) wh.data + r * n + 16, 8 * sizeof(float)) == 0);
        }
        struct caldera_tensor x1 = w, y1 = xh, x3 = w, y3 = xh;
        x1.ne[1] = y1.ne[1] = 16;
        x3.data = (float *) w.data + 24;
        y3.data = (float *) xh.data + 24;
        x3.ne[1] = y3.ne[1] = 24;
        ck_assert_int_eq(ops->cb_round(q, st, 0, &x1, &y1), 0);
        ck_assert_int_eq(ops->cb_round(q, st, 24, &x3, &y3), 0);
        ck_assert_int_eq(caldera_pack_init(&p2), 0);
        ck_assert_int_eq(ops->cb_end(q, st, p2), 0);
        assert_packs_equal(p1, p2);
        for (int64_t r = 0; r < m; r++) {
            ck_assert(memcmp((float *) xh.data + r * n, (float *) wh.data + r * n, 16 * sizeof(float)) == 0);
            ck_assert(memcmp((float *) xh.data + r * n + 24, (float *) wh.data + r * n + 24, 24 * sizeof(float)) == 0);
        }
        ops->cb_free(q, st);
        caldera_inst_free(q);
        caldera_pack_free(p1);
        caldera_pack_free(p2);
        caldera_tensor_free(&w); caldera_tensor_free(&wh); caldera_tensor_free(&xh); caldera_tensor_free(&junk);
        caldera_tensor_free(&mix); caldera_tensor_free(&mixh); caldera_tensor_free(&own);
    }
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_codebook_level) {
    // cb_begin + cb_round in pieces (out of order, one block rounded twice) + cb_end gives the
    // pack and values of quantize; rounding a block again with other input overwrites its codes.
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 12, n = 48;
    for (int b = 2; b <= 4; b++) {
        char bits[2] = { (char) ('0' + b), 0 };
        struct caldera_tensor w = tu_randn(ctx, m, n, 21), wh, xh;
        struct caldera_pack * p1, * p2;
        run_quant(ctx, bits, &w, &wh, &p1);
        struct caldera_inst * q = mk(ctx, bits, NULL, NULL);
        const struct caldera_quantizer_ops * ops = NULL;
        ck_assert_int_eq(caldera_quantizer_codebook(q, &ops), 0);
        ck_assert_int_eq(ops->cb_dim(q), 8);
        struct caldera_cb_state * st = NULL;
        ck_assert_int_eq(ops->cb_begin(q, &w, &st), 0);
        ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &xh), 0);
        struct caldera_tensor x1 = w, y1 = xh, x2 = w, y2 = xh, junk = tu_randn(ctx, m, 16, 99);
        x1.ne[1] = y1.ne[1] = 16;
        x2.data = (float *) w.data + 16;
        y2.data = (float *) xh.data + 16;
        x2.ne[1] = y2.ne[1] = 32;
        struct caldera_tensor yj = xh;
        yj.ne[1] = 16;
        ck_assert_int_eq(ops->cb_round(q, st, 0, &junk, &yj), 0);  // later overwritten
        ck_assert_int_eq(ops->cb_round(q, st, 16, &x2, &y2), 0);
        ck_assert_int_eq(ops->cb_round(q, st, 0, &x1, &y1), 0);
        ck_assert_int_eq(caldera_pack_init(&p2), 0);
        ck_assert_int_eq(ops->cb_end(q, st, p2), 0);
        assert_packs_equal(p1, p2);
        ck_assert(memcmp(wh.data, xh.data, (size_t) (m * n) * sizeof(float)) == 0);
        // column ranges that are not whole blocks
        ck_assert_int_eq(ops->cb_round(q, st, 4, &x1, &y1), CALDERA_ERR_INVAL);
        ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "columns [4, 20) are not whole blocks of 8 inside [0, 48)"));
        ck_assert_int_eq(ops->cb_round(q, st, 40, &x1, &y1), CALDERA_ERR_INVAL);
        ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "columns [40, 56)"));
        ops->cb_free(q, st);
        ops->cb_free(q, NULL);
        caldera_inst_free(q);
        caldera_pack_free(p1);
        caldera_pack_free(p2);
        caldera_tensor_free(&w);
        caldera_tensor_free(&wh);
        caldera_tensor_free(&xh);
        caldera_tensor_free(&junk);
    }
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_zero_rows) {
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 6, n = 16;
    struct caldera_tensor w = tu_randn(ctx, m, n, 4), wh;
    for (int64_t j = 0; j < n; j++) ((float *) w.data)[2 * n + j] = 0.0f;  // row 2 is zero
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &wh), 0);
    for (int mode = 0; mode < 2; mode++) {
        struct caldera_inst * q = mk(ctx, "3", mode ? "row" : "tensor", NULL);
        struct caldera_pack * pack = NULL;
        ck_assert_int_eq(caldera_pack_init(&pack), 0);
        ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), 0);
        for (int64_t k = 0; k < m * n; k++) ck_assert(isfinite(((float *) wh.data)[k]));
        if (mode) {  // a zero row has scale 0 and reconstructs exactly
            for (int64_t j = 0; j < n; j++) ck_assert(((float *) wh.data)[2 * n + j] == 0.0f);
        }
        caldera_pack_free(pack);
        caldera_inst_free(q);
    }
    // an all-zero matrix
    memset(w.data, 0, (size_t) (m * n) * sizeof(float));
    struct caldera_inst * q = mk(ctx, "4", NULL, NULL);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), 0);
    for (int64_t k = 0; k < m * n; k++) ck_assert(((float *) wh.data)[k] == 0.0f);
    caldera_pack_free(pack);
    caldera_inst_free(q);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_scale_rules) {
    // tensor scale = rms(W) / opt_scale rounded to the storage type; scale_override replaces opt_scale
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 8, n = 64;
    struct caldera_tensor w = tu_randn(ctx, m, n, 77), wh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &wh), 0);
    double ss = 0.0;
    for (int64_t k = 0; k < m * n; k++) ss += (double) ((float *) w.data)[k] * ((float *) w.data)[k];
    double rms = sqrt(ss / (double) (m * n));
    static const struct { const char * bits, * over; double opt; } cases[] = {
        { "2", NULL, 1.03 }, { "4", NULL, 1.03 }, { "3", NULL, 0.98 }, { "2", "0.9", 0.9 },
    };
    for (int c = 0; c < 4; c++) {
        struct caldera_inst * q = NULL;
        ck_assert_int_eq(caldera_inst_create(ctx, "e8", "q", &q), 0);
        ck_assert_int_eq(caldera_inst_set(q, "bits", cases[c].bits), 0);
        ck_assert_int_eq(caldera_inst_set(q, "scale_dtype", "f32"), 0);
        if (cases[c].over) ck_assert_int_eq(caldera_inst_set(q, "scale_override", cases[c].over), 0);
        ck_assert_int_eq(caldera_inst_start(q), 0);
        struct caldera_pack * pack = NULL;
        struct caldera_tensor sc;
        ck_assert_int_eq(caldera_pack_init(&pack), 0);
        ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), 0);
        ck_assert_int_eq(caldera_pack_find(pack, "scale", &sc), 0);
        ck_assert_int_eq(sc.dtype, CALDERA_DTYPE_F32);
        ck_assert(((float *) sc.data)[0] == (float) (rms / cases[c].opt));
        caldera_pack_free(pack);
        caldera_inst_free(q);
    }
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 4, 16, 1), wh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 16, &wh), 0);
    struct caldera_pack * pack = NULL, * pack2 = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    ck_assert_int_eq(caldera_pack_init(&pack2), 0);
    // options out of range
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "e8", "q", &q), 0);
    ck_assert_int_eq(caldera_inst_set(q, "bits", "5"), CALDERA_ERR_RANGE);
    ck_assert_int_eq(caldera_inst_set(q, "scale_mode", "group"), CALDERA_ERR_INVAL);
    // not started: no tables
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "instance not started"));
    caldera_inst_free(q);
    // f16 scale overflow
    q = mk(ctx, "2", NULL, "f16");
    for (int64_t k = 0; k < 64; k++) ((float *) w.data)[k] *= 1e6f;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), CALDERA_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "does not fit scale_dtype=f16; use scale_dtype=f32"));
    for (int64_t k = 0; k < 64; k++) ((float *) w.data)[k] *= 1e-6f;
    // dequantize: missing tensors, wrong sizes
    ck_assert_int_eq(caldera_quantizer_dequantize(q, pack2, &wh), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "the pack has no tensor 'codes'"));
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), 0);
    struct caldera_tensor w8;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 8, &w8), 0);
    ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &w8), CALDERA_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "tensor 'codes' is u16 with 8 elements; expected u16 with 4"));
    caldera_inst_free(q);
    q = mk(ctx, "4", NULL, NULL);  // a 2-bit pack read by a 4-bit instance
    ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &wh), CALDERA_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "no tensor 'codes2' (bits=4)"));
    // cb_round / cb_end without state, x of the wrong height
    const struct caldera_quantizer_ops * ops = qops(q);
    ck_assert_int_eq(ops->cb_round(q, NULL, 0, &w, &wh), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_round: no state"));
    ck_assert_int_eq(ops->cb_end(q, NULL, pack2), CALDERA_ERR_INVAL);
    struct caldera_cb_state * st = NULL;
    ck_assert_int_eq(ops->cb_begin(q, &w, &st), 0);
    struct caldera_tensor w3 = w;
    w3.ne[0] = 3;
    ck_assert_int_eq(ops->cb_round(q, st, 0, &w3, &wh), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "x is 3x16; allowed: 4x16"));
    ops->cb_free(q, st);
    caldera_inst_free(q);
    caldera_tensor_free(&w8);
    caldera_pack_free(pack);
    caldera_pack_free(pack2);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_beats_uniform_2bit) {
    // E8P 2-bit must beat uniform 2-bit on N(0,1) weights, per tensor and per group of 64.
    struct caldera_ctx * ctx = tu_ctx();
    const int64_t m = 256, n = 1024;
    struct caldera_tensor w = tu_randn(ctx, m, n, 2024), wh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, m, n, &wh), 0);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    struct caldera_inst * q = mk(ctx, "2", NULL, NULL);
    ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), 0);
    double e8 = mse(&w, &wh);
    caldera_inst_free(q);
    caldera_pack_free(pack);
    ck_assert_msg(e8 < E8_MSE_MAX_2BIT, "e8 2-bit mse %g", e8);
    static const char * gran[] = { UNIFORM_2BIT_TENSOR_OPTS, "group" };
    for (int g = 0; g < 2; g++) {
        for (int sym = 0; sym < 2; sym++) {
            ck_assert_int_eq(caldera_inst_create(ctx, "uniform", "u", &q), 0);
            ck_assert_int_eq(caldera_inst_set(q, "bits", "2"), 0);
            ck_assert_int_eq(caldera_inst_set(q, "granularity", gran[g]), 0);
            ck_assert_int_eq(caldera_inst_set(q, "group_size", UNIFORM_2BIT_GROUP_SIZE), 0);
            ck_assert_int_eq(caldera_inst_set(q, "symmetric", sym ? "1" : "0"), 0);
            ck_assert_int_eq(caldera_inst_set(q, "clip_search", "1"), 0);
            ck_assert_int_eq(caldera_inst_start(q), 0);
            ck_assert_int_eq(caldera_pack_init(&pack), 0);
            ck_assert_int_eq(caldera_quantizer_quantize(q, &w, NULL, &wh, pack), 0);
            double u = mse(&w, &wh);
            ck_assert_msg(e8 < u, "e8 %g vs uniform (%s, symmetric=%d) %g", e8, gran[g], sym, u);
            caldera_pack_free(pack);
            caldera_inst_free(q);
        }
    }
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_oom_sweep) {
    // Allocation k of start / quantize / dequantize fails: NOMEM with a message, no leak (ASan).
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 6, 32, 6), wh;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 6, 32, &wh), 0);
    // init: the codebook tables
    struct caldera_inst * q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "e8", "q", &q), 0);
    caldera_alloc_fail_at(1);
    int rc = caldera_inst_start(q);
    caldera_alloc_fail_at(0);
    ck_assert_int_eq(rc, CALDERA_ERR_NOMEM);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "init: cannot allocate"));
    caldera_inst_free(q);
    q = mk(ctx, "4", "row", NULL);
    int dfails = 0;
    int fails = tu_quantizer_oom_sweep(ctx, q, &w, &wh, "[q] e8: ", &dfails);
    ck_assert_int_ge(dfails, 1);
    ck_assert_int_ge(fails, 4);  // state, scales, codes, codes2, pack tensors
    caldera_inst_free(q);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_ctx_free(ctx);
}
END_TEST

START_TEST(test_tensor_errors) {
    struct caldera_ctx * ctx = tu_ctx();
    struct caldera_tensor w = tu_randn(ctx, 4, 16, 1), wh, x3;
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 4, 16, &wh), 0);
    ck_assert_int_eq(caldera_tensor_alloc_f32(ctx, 3, 16, &x3), 0);
    struct caldera_pack * pack = NULL;
    ck_assert_int_eq(caldera_pack_init(&pack), 0);
    struct caldera_inst * q = mk(ctx, "3", NULL, NULL);
    struct caldera_tensor bad = w;
    bad.ndim = 1;
    ck_assert_int_eq(caldera_quantizer_quantize(q, &bad, NULL, &wh, pack), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "quantize: W must be a 2-d f32 CPU tensor with ld >= cols"));
    const struct caldera_quantizer_ops * ops = qops(q);
    struct caldera_cb_state * st = NULL;
    ck_assert_int_eq(ops->cb_begin(q, &w, &st), 0);
    ck_assert_int_eq(ops->cb_round(q, st, 0, &w, &x3), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_round: x_hat is 3x16; allowed: 4x16"));
    ((float *) w.data)[5] = NAN;  // x given to cb_round is checked too
    ck_assert_int_eq(ops->cb_round(q, st, 0, &w, &wh), CALDERA_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_round: x has a NaN or Inf at (0, 5)"));
    ((float *) w.data)[5] = 0.0f;
    ck_assert_int_eq(ops->cb_round(q, st, 0, &w, &wh), 0);
    ck_assert_int_eq(ops->cb_end(q, st, pack), 0);
    ck_assert_int_eq(ops->cb_end(q, st, pack), CALDERA_ERR_INVAL);  // names already taken
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "cb_end: cannot add tensor 'codes' to the pack"));
    ops->cb_free(q, st);
    caldera_inst_free(q);
    q = NULL;
    ck_assert_int_eq(caldera_inst_create(ctx, "e8", "q", &q), 0);  // not started
    ck_assert_int_eq(caldera_quantizer_dequantize(q, pack, &wh), CALDERA_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(caldera_ctx_errmsg(ctx), "dequantize: instance not started"));
    ck_assert_int_eq(qops(q)->cb_begin(q, &w, &st), CALDERA_ERR_INVAL);
    ck_assert_ptr_null(st);
    caldera_inst_free(q);
    caldera_pack_free(pack);
    caldera_tensor_free(&w);
    caldera_tensor_free(&wh);
    caldera_tensor_free(&x3);
    caldera_ctx_free(ctx);
}
END_TEST

static Suite * e8_suite(void) {
    Suite * s = suite_create("e8");
    TCase * tc = tcase_create("codebook");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_abs_check_values);
    tcase_add_test(tc, test_abs_patterns);
    tcase_add_test(tc, test_codebook_set);
    tcase_add_test(tc, test_encode_bruteforce);
    tcase_add_test(tc, test_encode_fast_vs_simple);
    tcase_add_test(tc, test_encode8_same_codes);
    tcase_add_test(tc, test_round8_same_as_scalar);
    tcase_add_test(tc, test_rvq1_set_and_search);
    tcase_add_test(tc, test_residual_variants_decode);
    suite_add_tcase(s, tc);
    tc = tcase_create("plugin");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_roundtrip_bits);
    tcase_add_test(tc, test_determinism_threads);
    tcase_add_test(tc, test_nan_inf);
    tcase_add_test(tc, test_shape_rejected);
    tcase_add_test(tc, test_ld_views);
    tcase_add_test(tc, test_codebook_level);
    tcase_add_test(tc, test_codebook_memo);
    tcase_add_test(tc, test_zero_rows);
    tcase_add_test(tc, test_scale_rules);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_oom_sweep);
    tcase_add_test(tc, test_tensor_errors);
    tcase_add_test(tc, test_beats_uniform_2bit);
    suite_add_tcase(s, tc);
    return s;
}

TU_MAIN(e8_suite)
