// SPDX-License-Identifier: MIT
// hd.h: per-element math of the core that the CPU code and the CUDA kernels share. Every
// function is `static inline`, and `__host__ __device__` when nvcc compiles it, so the CPU build
// and its tests run exactly the code the kernels run (the kernels are built with -fmad=false and
// IEEE division, so results are the same bits). Plain C17 otherwise; no libm, no globals.
#ifndef CALDERA_HD_H
#define CALDERA_HD_H

#include <stdint.h>

#ifdef __CUDACC__
#define CALDERA_HD static inline __host__ __device__
#else
#define CALDERA_HD static inline
#endif

/**
 * Butterfly @p t (0 .. n/2 - 1) of the fast Walsh–Hadamard stage of half-width @p h (a power of
 * two) on one row x: pairs (j, j + h) with j = the t-th index whose bit h is clear. The pairs of
 * a stage are disjoint, so running them in any order (a CPU loop, one GPU thread each) gives the
 * same bits; stages h = 1, 2, 4, ... n/2 in turn give the unnormalised Sylvester-order transform.
 */
CALDERA_HD void caldera_hd_fwht_pair(float * x, int64_t h, int64_t t) {
    int64_t j = ((t & ~(h - 1)) << 1) | (t & (h - 1));
    float   u = x[j], v = x[j + h];
    x[j]     = u + v;
    x[j + h] = u - v;
}

#endif // CALDERA_HD_H
