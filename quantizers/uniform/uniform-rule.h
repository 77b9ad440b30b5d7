// SPDX-License-Identifier: MIT
// uniform-rule.h: the per-weight math of the uniform quantizer (the rule of a scale group, encode,
// decode, the group of a weight), as plain C usable outside the plugin. Every function is
// UNIFORM_FN, `static inline` by default; a CUDA build defines it as `static inline __host__
// __device__` before including this header, so the kernels and the plugin run the same code.
#ifndef CALDERA_UNIFORM_RULE_H
#define CALDERA_UNIFORM_RULE_H

#include <stdint.h>

#ifndef UNIFORM_FN
#define UNIFORM_FN static inline
#endif

enum uniform_gran  { UNI_TENSOR = 0, UNI_ROW = 1, UNI_COLUMN = 2, UNI_GROUP = 3 };

// The quantization rule of one group (shared by encode, decode and the clip search).
struct uniform_rule {
    int   kind;    // 0 = symmetric full (midrise), 1 = symmetric reference, 2 = asymmetric (integer zero),
                   // 3 = asymmetric with a float zero
    int   kmax;    // largest code: 2^b - 1 (full, asym) or 2^b - 2 (reference)
    float half;    // full: 2^(b-1) - 1/2; reference: 2^(b-1) - 1
};

// Round to nearest, ties to even (as rintf and torch.round) for |t| <= 2^22, without a libm
// call: adding and subtracting 1.5 * 2^23 leaves t rounded in the default rounding mode.
// (IEEE arithmetic does not allow folding this to t; -ffast-math would, so do not use it.)
UNIFORM_FN float uniform_rint(float t) {
    const float big = 12582912.0f;
    return (t + big) - big;
}

// Code of x with step d and zero z. d == 0 means a group that was all zero (symmetric) or
// constant (asymmetric): every x gets the level at 0 / at z. t is clamped to the code range
// before rounding, so the conversions below are exact (floor of t >= 0 is truncation).
UNIFORM_FN int uniform_encode(const struct uniform_rule * r, float x, float d, float z) {
    float t;
    switch (r->kind) {
    case 0:  // midrise: level k is (k - half) d; k = floor(x/d + half + 1/2)
        t = d > 0.0f ? x / d + (r->half + 0.5f) : r->half + 0.5f;
        t = t < 0.0f ? 0.0f : t;
        t = t > (float) r->kmax ? (float) r->kmax : t;
        return (int) t;
    case 1:  // mid-tread with a zero level, round half to even (as torch.round)
        t = d > 0.0f ? x / d : 0.0f;
        t = t < -r->half ? -r->half : t;
        t = t > r->half ? r->half : t;
        return (int) uniform_rint(t) + (int) r->half;
    case 3:   // float zero: code = clamp(rint((x - z)/d), 0, kmax)
        t = d > 0.0f ? (x - z) / d : 0.0f;
        t = t < 0.0f ? 0.0f : t;
        t = t > (float) r->kmax ? (float) r->kmax : t;
        return (int) uniform_rint(t);
    default:  // GPTQ: code = clamp(rint(x/d) + z, 0, kmax), z an integer
        t = d > 0.0f ? uniform_rint(x / d) + z : z;
        t = t < 0.0f ? 0.0f : t;
        t = t > (float) r->kmax ? (float) r->kmax : t;
        return (int) t;
    }
}

// The one decode rule: quantize's Ŵ and dequantize both come from here.
UNIFORM_FN float uniform_decode(const struct uniform_rule * r, int k, float d, float z) {
    if (r->kind == 2) {
        return ((float) k - z) * d;
    }
    if (r->kind == 3) {
        return z + (float) k * d;
    }
    return ((float) k - r->half) * d;
}

/** Round x with step d and zero z: writes its code, returns its value (encode, then the one decode). */
UNIFORM_FN float uniform_round(const struct uniform_rule * r, float x, float d, float z, uint8_t * code) {
    int k = uniform_encode(r, x, d, z);
    *code = (uint8_t) k;
    return uniform_decode(r, k, d, z);
}

/** Scale group of weight (i, j) for a granularity; ngr groups per row (group: ceil(cols / group_size)). */
UNIFORM_FN int64_t uniform_gid_of(int granularity, int64_t ngr, int64_t group_size, int64_t i, int64_t j) {
    switch (granularity) {
    case UNI_TENSOR: return 0;
    case UNI_ROW:    return i;
    case UNI_COLUMN: return j;
    default:         return i * ngr + j / group_size;
    }
}

#endif // CALDERA_UNIFORM_RULE_H
