// SPDX-License-Identifier: MIT
// ldlq.c: LDLQ (QuIP's adaptive rounding, GPTQ in block form) as a matrix quantizer that wraps
// any codebook quantizer (uniform, e8): block LDL of the damped Hessian, error feedback from the
// last column block to the first in lazy GEMM batches, then optional Gauss-Seidel tune passes
// (algorithms.md §2). Codes and scales are the wrapped codebook's; ldlq adds no tensors.
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "caldera/caldera-kernels.h"
#include "caldera/caldera-plugin.h"
#include "ldlq-step.h"

struct ldlq_priv {
    struct caldera_inst * codebook;    // REF: a quantizer with the cb_* ops
    double                damp;        // H + damp * mean(diag H) * I
    int64_t               tune_iters;  // block coordinate descent passes after LDLQ
    int64_t               buffer_cols; // lazy batch width (a multiple of the block)
    int64_t               block;       // LDL block size; 0 = the codebook's cb_dim
    int                   tune_guard;  // keep a row's old codeword if the rounded step is worse
};

#define OFF(x) offsetof(struct ldlq_priv, x)

static const struct caldera_option ldlq_options[] = {
    { .name = "codebook", .offset = OFF(codebook), .type = CALDERA_OPT_REF,
      .ref_kind = CALDERA_PLUGIN_KIND_QUANTIZER,
      .help = "codebook quantizer to round with (a [section] whose plugin has cb_* ops: uniform, e8)" },
    { .name = "damp", .offset = OFF(damp), .type = CALDERA_OPT_DOUBLE, .def.dbl = 0.01, .min = 0.0, .max = 100.0,
      .help = "relative diagonal damping: H + damp * mean(diag H) * I" },
    { .name = "tune_iters", .offset = OFF(tune_iters), .type = CALDERA_OPT_INT, .def.i64 = 0, .min = 0, .max = 1000,
      .help = "block coordinate descent passes after LDLQ (0 = pure LDLQ/GPTQ; CALDERA uses 10)" },
    { .name = "buffer_cols", .offset = OFF(buffer_cols), .type = CALDERA_OPT_INT, .def.i64 = 512, .min = 1,
      .max = 1048576, .help = "lazy batch width in columns (a multiple of the block); results do not depend on it" },
    { .name = "block", .offset = OFF(block), .type = CALDERA_OPT_INT, .def.i64 = 0, .min = 0, .max = 4096,
      .help = "LDL block size, a multiple of the codebook's cb_dim; 0 = cb_dim (8 for e8, 1 for uniform)",
      .flags = CALDERA_OPT_EXPERT },
    { .name = "tune_guard", .offset = OFF(tune_guard), .type = CALDERA_OPT_BOOL, .def.i64 = 1,
      .help = "in tune passes keep a row's codeword when the rounded block minimiser would raise its loss "
              "(only possible for blocks > 1), so passes never increase the proxy loss",
      .flags = CALDERA_OPT_EXPERT },
    { .name = NULL }
};

// ---------------------------------------------------------------------------------------------
// Helpers

// A (rows, cols) view into a row-major f32 matrix at (r0, c0) with leading dimension ld.
static struct caldera_tensor sub(float * base, int64_t ld, int64_t r0, int64_t c0, int64_t rows, int64_t cols) {
    struct caldera_tensor t = { .data = base + r0 * ld + c0, .dtype = CALDERA_DTYPE_F32,
                                .device = CALDERA_DEVICE_CPU, .ndim = 2, .ne = { rows, cols }, .ld = ld };
    return t;
}

static int64_t ldof(const struct caldera_tensor * t) {
    return t->ld ? t->ld : t->ne[1];
}


// The codebook's ops and the effective LDL block size; a message names the problem.
static int ldlq_codebook(struct caldera_inst * inst, const struct caldera_quantizer_ops ** ops, int64_t * block) {
    struct ldlq_priv * p = caldera_inst_priv(inst);
    if (!p->codebook) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "option 'codebook' is not set; allowed: a codebook quantizer "
                             "[section] (uniform, e8)");
    }
    const struct caldera_plugin * cp = caldera_inst_plugin(p->codebook);
    if (caldera_quantizer_codebook(p->codebook, ops) < 0) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED,
                             "option 'codebook' = [%s] (plugin %s) has no codebook interface (cb_dim, cb_begin, "
                             "cb_round, cb_end, cb_free); allowed: a codebook quantizer such as uniform or e8",
                             caldera_inst_name(p->codebook), cp->name);
    }
    int64_t d = (*ops)->cb_dim(p->codebook);
    if (d < 1) {
        return caldera_error(inst, CALDERA_ERR_BUG, "codebook [%s] reports cb_dim = %" PRId64 "; allowed: >= 1",
                             caldera_inst_name(p->codebook), d);
    }
    int64_t b = p->block ? p->block : d;
    if (b % d != 0) {
        return caldera_error(inst, CALDERA_ERR_RANGE,
                             "option 'block' = %" PRId64 " is not a multiple of the codebook's cb_dim %" PRId64
                             "; allowed: 0 (= cb_dim) or a multiple of %" PRId64, b, d, d);
    }
    if (p->buffer_cols % b != 0) {
        return caldera_error(inst, CALDERA_ERR_RANGE,
                             "option 'buffer_cols' = %" PRId64 " is not a multiple of the block size %" PRId64
                             "; allowed: a multiple of %" PRId64, p->buffer_cols, b, b);
    }
    *block = b;
    return 0;
}

static int ldlq_check(struct caldera_inst * inst) {
    const struct caldera_quantizer_ops * ops;
    int64_t b;
    return ldlq_codebook(inst, &ops, &b);
}

static int ldlq_check_shape(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    const struct caldera_quantizer_ops * ops;
    int64_t b;
    int rc = ldlq_codebook(inst, &ops, &b);
    if (rc < 0) {
        return rc;
    }
    if (rows < 1 || cols < 1) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "shape %" PRId64 "x%" PRId64 " is empty; allowed: "
                             "rows, cols >= 1", rows, cols);
    }
    if (cols % b != 0) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED,
                             "cols=%" PRId64 " is not a multiple of the block size %" PRId64
                             "; allowed: cols %% %" PRId64 " == 0 (pad, e.g. with the rht transform)", cols, b, b);
    }
    struct ldlq_priv * p = caldera_inst_priv(inst);
    const struct caldera_plugin * cp = caldera_inst_plugin(p->codebook);
    return cp->check_shape ? cp->check_shape(p->codebook, rows, cols) : 0;
}

static double ldlq_bits(struct caldera_inst * inst, int64_t rows, int64_t cols) {
    struct ldlq_priv * p = caldera_inst_priv(inst);
    const struct caldera_quantizer_ops * ops;
    if (!p->codebook || caldera_quantizer_codebook(p->codebook, &ops) < 0 || !ops->bits) {
        return 0.0;
    }
    return ops->bits(p->codebook, rows, cols);
}

// ---------------------------------------------------------------------------------------------
// LDLQ pass. Convention (algorithms.md §2): H = L D Lᵀ with L unit block-LOWER triangular,
// column blocks processed from the last (j = n/b - 1) to the first:
//     X_j = W_j + Σ_{i>j} (W_i - Ŵ_i) L[i-block, j-block],   Ŵ_j = round(X_j).
// Then tr((W-Ŵ) H (W-Ŵ)ᵀ) = Σ_j (X_j - Ŵ_j) D_j (X_j - Ŵ_j)ᵀ.
// Lazy batches (GPTQ): buffers [c0, c1) of buffer_cols columns, aligned at column 0 and taken from
// the last. X is held transposed (each column a contiguous row of m floats). Inside a buffer,
// inner blocks of 16 columns: a block's feedback goes to its inner block only (rank b), each
// finished inner block updates the rest of the buffer (rank 16), and each finished buffer updates
// every column on its left with one GEMM Xᵀ[0:c0] += L[B, 0:c0]ᵀ Δ_Bᵀ (c0×|B| by |B|×m).
// Cost: Σ_j m·b·j0 = m·n·(n-b)/2 multiply-adds, i.e. ≈ m·n² FLOPs per matrix, almost all in
// the per-buffer GEMMs. The result does not depend on buffer_cols (up to f32 summation order).

struct ldlq_work {
    struct caldera_inst *                inst;
    struct caldera_inst *                cb;
    const struct caldera_quantizer_ops * ops;
    struct caldera_cb_state *            st;
    struct caldera_ctx *                 ctx;
    int64_t                              m, n, b, bc;
};

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (cache-blocked).
static void transpose(float * dst, int64_t ldd, const float * src, int64_t lds, int64_t rows, int64_t cols) {
    const int64_t tb = 32;
    for (int64_t r0 = 0; r0 < rows; r0 += tb) {
        const int64_t r1 = r0 + tb < rows ? r0 + tb : rows;
        for (int64_t c0 = 0; c0 < cols; c0 += tb) {
            const int64_t c1 = c0 + tb < cols ? c0 + tb : cols;
            for (int64_t r = r0; r < r1; r++) {
                for (int64_t c = c0; c < c1; c++) {
                    dst[c * ldd + r] = src[r * lds + c];
                }
            }
        }
    }
}

static int ldlq_pass(const struct ldlq_work * wk, const struct caldera_tensor * w, struct caldera_tensor * w_hat,
                     const float * lmat, const float * dblk, double * loss_out) {
    // lmat (n, n) unit block-lower L; dblk (n/b, b, b) diagonal blocks of D
    const int64_t m = wk->m, n = wk->n, b = wk->b, bc = wk->bc;
    const int64_t ib = b * (b < 16 ? 16 / b : 1);   // inner block: rank-ib updates inside a buffer
    const size_t  bufsz = (size_t) bc * (size_t) m * sizeof(float);
    float * xt  = NULL;  // (n, m)  Xᵀ: W plus the feedback so far, transposed
    float * wt  = NULL;  // (n, m)  Wᵀ
    float * hbt = NULL;  // (bc, m) Ŵ of the current buffer, transposed
    float * dbt = NULL;  // (bc, m) Δ = W - Ŵ of the current buffer, transposed
    float * xj  = NULL;  // (m, b)  block j as the codebook takes it
    float * qj  = NULL;  // (m, b)  its rounding
    double  loss = 0.0;
    int     rc = 0;

    xt  = caldera_malloc((size_t) m * (size_t) n * sizeof(float));
    wt  = caldera_malloc((size_t) m * (size_t) n * sizeof(float));
    hbt = caldera_malloc(bufsz);
    dbt = caldera_malloc(bufsz);
    xj  = caldera_malloc((size_t) m * (size_t) b * sizeof(float));
    qj  = caldera_malloc((size_t) m * (size_t) b * sizeof(float));
    if (!xt || !wt || !hbt || !dbt || !xj || !qj) {
        rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "quantize: out of memory for %" PRId64 "x%" PRId64
                           " work matrices", m, n);
        goto fail;
    }
    transpose(wt, m, w->data, ldof(w), m, n);
    memcpy(xt, wt, (size_t) m * (size_t) n * sizeof(float));
    for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
        c0 = ((c1 - 1) / bc) * bc;
        const int64_t nb = c1 - c0;
        for (int64_t i1 = c1, i0; i1 > c0; i1 = i0) {
            i0 = c0 + ((i1 - c0 - 1) / ib) * ib;
            for (int64_t j0 = i1 - b; j0 >= i0; j0 -= b) {
                const int64_t jl = j0 - c0;
                for (int64_t k = 0; k < b; k++) {
                    for (int64_t r = 0; r < m; r++) {
                        ldlq_gather(k, r, xt, m, j0, b, xj);
                    }
                }
                struct caldera_tensor xq = sub(xj, b, 0, 0, m, b), qt = sub(qj, b, 0, 0, m, b);
                if ((rc = wk->ops->cb_round(wk->cb, wk->st, j0, &xq, &qt)) < 0) {
                    goto fail;
                }
                for (int64_t k = 0; k < b; k++) {
                    for (int64_t r = 0; r < m; r++) {
                        ldlq_scatter(k, r, qj, wt, m, j0, jl, b, hbt, dbt);
                    }
                }
                // loss of block j: Σ_rows (X_j - Ŵ_j) D_j (X_j - Ŵ_j)ᵀ
                const float * dj = dblk + (j0 / b) * b * b;
                for (int64_t r = 0; r < m; r++) {
                    loss += ldlq_row_loss(r, xj, qj, dj, b);
                }
                if (j0 > i0) {   // Xᵀ[i0:j0] += L[j, i0:j0]ᵀ Δ_jᵀ  (rank b, inside the inner block)
                    struct caldera_tensor lj = sub((float *) lmat, n, j0, i0, b, j0 - i0);
                    struct caldera_tensor dj_t = sub(dbt, m, jl, 0, b, m);
                    struct caldera_tensor xl = sub(xt, m, i0, 0, j0 - i0, m);
                    if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &lj, &dj_t, 1.0f,
                                                  &xl)) < 0) {
                        goto fail;
                    }
                }
            }
            if (i0 > c0) {   // Xᵀ[c0:i0] += L[i0:i1, c0:i0]ᵀ Δ_{i0:i1}ᵀ  (rank ib, rest of the buffer)
                struct caldera_tensor li = sub((float *) lmat, n, i0, c0, i1 - i0, i0 - c0);
                struct caldera_tensor di = sub(dbt, m, i0 - c0, 0, i1 - i0, m);
                struct caldera_tensor xl = sub(xt, m, c0, 0, i0 - c0, m);
                if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &li, &di, 1.0f,
                                              &xl)) < 0) {
                    goto fail;
                }
            }
        }
        transpose((float *) w_hat->data + c0, ldof(w_hat), hbt, m, nb, m);
        if (c0 > 0) {   // Xᵀ[0:c0] += L[B, 0:c0]ᵀ Δ_Bᵀ  (rank |B|, every column on the left)
            struct caldera_tensor lb = sub((float *) lmat, n, c0, 0, nb, c0);
            struct caldera_tensor db = sub(dbt, m, 0, 0, nb, m);
            struct caldera_tensor xl = sub(xt, m, 0, 0, c0, m);
            if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &lb, &db, 1.0f,
                                          &xl)) < 0) {
                goto fail;
            }
        }
    }
    *loss_out = loss;
fail:
    caldera_free(xt);
    caldera_free(wt);
    caldera_free(hbt);
    caldera_free(dbt);
    caldera_free(xj);
    caldera_free(qj);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Tune passes (algorithms.md §2): Gauss-Seidel block coordinate descent on
// f(Ŵ) = tr((W-Ŵ) H (W-Ŵ)ᵀ), blocks from last to first. Step for block j: the exact unconstrained
// minimiser X_j = Ŵ_j + Δ H[:, j] H_jj⁻¹ (Δ = W - Ŵ, current), rounded to the codebook.
// BLAS-3, transposed layout (n, m): per buffer B, G_Bᵀ = H[B, :] Δᵀ is one GEMM (|B|×n by n×m);
// inside the buffer a change of Ŵ_j updates G_Bᵀ[c0:j0] += H[j, c0:j0]ᵀ (Ŵ_j,old - Ŵ_j,new)ᵀ.
// Cost ≈ m·n² multiply-adds (2·m·n² FLOPs) per pass.
// Guard (tune_guard): for b > 1 the nearest codeword in the Euclidean norm can be farther from the
// minimiser in the H_jj norm than the current codeword, and the step would raise that row's loss
// (seen with E8P); such rows keep their codeword, so a pass never increases the proxy loss.

static int ldlq_tune(const struct ldlq_work * wk, const struct caldera_tensor * w, struct caldera_tensor * w_hat,
                     const float * hd, const float * hinv, int64_t iters, int guard, int64_t * iters_run) {
    // hd (n, n) damped H; hinv (n/b, b, b) inverses of its diagonal blocks
    const int64_t m = wk->m, n = wk->n, b = wk->b, bc = wk->bc;
    const size_t  big = (size_t) m * (size_t) n * sizeof(float);
    float * wt  = NULL;  // (n, m)  Wᵀ
    float * ht  = NULL;  // (n, m)  Ŵᵀ
    float * dt  = NULL;  // (n, m)  Δᵀ = (W - Ŵ)ᵀ
    float * gt  = NULL;  // (bc, m) (Δ H[:, B])ᵀ
    float * old = NULL;  // (m, b)  current Ŵ_j
    float * gj  = NULL;  // (m, b)  G_j
    float * xs  = NULL;  // (m, b)  unconstrained minimiser of block j
    float * q   = NULL;  // (m, b)  its rounding
    float * dqt = NULL;  // (b, m)  (Ŵ_j,old - Ŵ_j,new)ᵀ
    double * hjt = NULL; // (b, b)  H_jjᵀ (guard)
    double * sv = NULL;  // (5, b)  per-row sums: sv, dn, dol, tn, to
    int rc = 0;

    wt  = caldera_malloc(big);
    ht  = caldera_malloc(big);
    dt  = caldera_malloc(big);
    gt  = caldera_malloc((size_t) bc * (size_t) m * sizeof(float));
    old = caldera_malloc((size_t) m * (size_t) b * sizeof(float));
    gj  = caldera_malloc((size_t) m * (size_t) b * sizeof(float));
    xs  = caldera_malloc((size_t) m * (size_t) b * sizeof(float));
    q   = caldera_malloc((size_t) m * (size_t) b * sizeof(float));
    dqt = caldera_malloc((size_t) m * (size_t) b * sizeof(float));
    hjt = caldera_malloc((size_t) b * (size_t) b * sizeof(double));
    sv  = caldera_malloc(5 * (size_t) b * sizeof(double));
    if (!wt || !ht || !dt || !gt || !old || !gj || !xs || !q || !dqt || !hjt || !sv) {
        rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "quantize: out of memory for tune passes (%" PRId64 "x%"
                           PRId64 ")", m, n);
        goto fail;
    }
    transpose(wt, m, w->data, ldof(w), m, n);
    transpose(ht, m, w_hat->data, ldof(w_hat), m, n);
    for (int64_t i = 0; i < m * n; i++) {
        dt[i] = wt[i] - ht[i];
    }
    struct caldera_tensor dtt = sub(dt, m, 0, 0, n, m);
    double * dn = sv + b, * dol = sv + 2 * b, * tn = sv + 3 * b, * to = sv + 4 * b;
    *iters_run = 0;
    for (int64_t it = 0; it < iters; it++) {
        int64_t kept = 0, changed = 0;
        for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
            c0 = ((c1 - 1) / bc) * bc;
            const int64_t nb = c1 - c0;
            struct caldera_tensor gtt = sub(gt, m, 0, 0, nb, m);
            struct caldera_tensor hb  = sub((float *) hd, n, c0, 0, nb, n);
            if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &hb, &dtt, 0.0f,
                                          &gtt)) < 0) {
                goto fail;
            }
            for (int64_t j0 = c1 - b; j0 >= c0; j0 -= b) {
                const int64_t jl = j0 - c0;
                const float * hi = hinv + (j0 / b) * b * b;
                const float * hjj = hd + j0 * n + j0;
                for (int64_t k = 0; k < b; k++) {
                    const float * hr = ht + (j0 + k) * m, * gr = gt + (jl + k) * m;
                    for (int64_t r = 0; r < m; r++) {
                        old[r * b + k] = hr[r];
                        gj[r * b + k] = gr[r];
                    }
                }
                // xs = Ŵ_j + G_j H_jj⁻¹ (f64, each sum in order of l; the loops are ordered so that
                // they vectorise over k)
                for (int64_t r = 0; r < m; r++) {
                    for (int64_t k = 0; k < b; k++) {
                        sv[k] = old[r * b + k];
                    }
                    for (int64_t l = 0; l < b; l++) {
                        const double g = gj[r * b + l];
                        for (int64_t k = 0; k < b; k++) {
                            sv[k] += g * hi[l * b + k];
                        }
                    }
                    for (int64_t k = 0; k < b; k++) {
                        xs[r * b + k] = (float) sv[k];
                    }
                }
                struct caldera_tensor xt = sub(xs, b, 0, 0, m, b), qt = sub(q, b, 0, 0, m, b);
                if ((rc = wk->ops->cb_round(wk->cb, wk->st, j0, &xt, &qt)) < 0) {
                    goto fail;
                }
                if (guard && b > 1) {
                    // a row's loss as a function of block j's value v: (v - xs) H_jj (v - xs)ᵀ + const;
                    // hjt = H_jjᵀ in f64 so that t = H_jj (v - xs) is summed over l in order, vectorised over k
                    for (int64_t k = 0; k < b; k++) {
                        for (int64_t l = 0; l < b; l++) {
                            hjt[l * b + k] = hjj[k * n + l];
                        }
                    }
                    int64_t nkeep = 0;
                    for (int64_t r = 0; r < m; r++) {
                        for (int64_t k = 0; k < b; k++) {
                            dn[k] = (double) q[r * b + k] - xs[r * b + k];
                            dol[k] = (double) old[r * b + k] - xs[r * b + k];
                            tn[k] = 0.0;
                            to[k] = 0.0;
                        }
                        for (int64_t l = 0; l < b; l++) {
                            for (int64_t k = 0; k < b; k++) {
                                tn[k] += hjt[l * b + k] * dn[l];
                                to[k] += hjt[l * b + k] * dol[l];
                            }
                        }
                        double lnew = 0.0, lold = 0.0;
                        for (int64_t k = 0; k < b; k++) {
                            lnew += tn[k] * dn[k];
                            lold += to[k] * dol[k];
                        }
                        if (lnew > lold) {
                            memcpy(xs + r * b, old + r * b, (size_t) b * sizeof(float));
                            nkeep++;
                        }
                    }
                    if (nkeep > 0) {   // round again so the codebook records the kept codes
                        if ((rc = wk->ops->cb_round(wk->cb, wk->st, j0, &xt, &qt)) < 0) {
                            goto fail;
                        }
                        kept += nkeep;
                    }
                }
                for (int64_t k = 0; k < b; k++) {
                    float * hr = ht + (j0 + k) * m, * dr = dt + (j0 + k) * m, * qr = dqt + k * m;
                    const float * wr = wt + (j0 + k) * m;
                    for (int64_t r = 0; r < m; r++) {
                        float v = q[r * b + k];
                        changed += hr[r] != v;
                        qr[r] = hr[r] - v;
                        hr[r] = v;
                        dr[r] = wr[r] - v;
                    }
                }
                if (jl > 0) {   // G_Bᵀ[c0:j0] += H[j, c0:j0]ᵀ (old - new)ᵀ
                    struct caldera_tensor hj  = sub((float *) hd, n, j0, c0, b, jl);
                    struct caldera_tensor dq  = sub(dqt, m, 0, 0, b, m);
                    struct caldera_tensor gl  = sub(gt, m, 0, 0, jl, m);
                    if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &hj, &dq, 1.0f,
                                                  &gl)) < 0) {
                        goto fail;
                    }
                }
            }
        }
        caldera_inst_log(wk->inst, CALDERA_LOG_DEBUG, "tune pass %" PRId64 "/%" PRId64 ": %" PRId64
                         " row-blocks kept by the guard, %" PRId64 " weights changed", it + 1, iters, kept, changed);
        *iters_run = it + 1;
        // Fixed point: a pass is a function of W, Ŵ and H alone, so a pass that changed no weight
        // would repeat itself in every later pass; stopping here gives the same result as running
        // them all (measured on SmolLM2: passes stop changing after 3 to 6 of 10).
        if (changed == 0) {
            break;
        }
    }
    transpose(w_hat->data, ldof(w_hat), ht, m, n, m);
fail:
    caldera_free(wt);
    caldera_free(ht);
    caldera_free(dt);
    caldera_free(gt);
    caldera_free(old);
    caldera_free(gj);
    caldera_free(xs);
    caldera_free(q);
    caldera_free(dqt);
    caldera_free(hjt);
    caldera_free(sv);
    return rc;
}

// ---------------------------------------------------------------------------------------------

static int ldlq_quantize(struct caldera_inst * inst, const struct caldera_tensor * w, const struct caldera_tensor * h,
                         struct caldera_tensor * w_hat, struct caldera_pack * pack) {
    struct ldlq_priv * p = caldera_inst_priv(inst);
    struct caldera_ctx * ctx = caldera_inst_ctx(inst);
    const struct caldera_quantizer_ops * ops = NULL;
    struct caldera_cb_state * st = NULL;
    struct caldera_tensor hd = { 0 }, lt = { 0 }, dt = { 0 };  // (n, n) damped H, L, D
    float * dblk = NULL;   // (n/b, b, b) diagonal blocks of D
    float * hinv = NULL;   // (n/b, b, b) inverses of the diagonal blocks of the damped H
    int64_t b;
    int rc;

    if ((rc = ldlq_codebook(inst, &ops, &b)) < 0 || (rc = caldera_check_matrix(inst, "quantize", "W", w, -1, -1)) < 0) {
        return rc;
    }
    if (!pack) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "quantize: pack is NULL; allowed: a pack from caldera_pack_init");
    }
    const int64_t m = w->ne[0], n = w->ne[1];
    if ((rc = caldera_check_matrix(inst, "quantize", "w_hat", w_hat, m, n)) < 0 || (h && (rc = caldera_check_matrix(inst, "quantize", "H", h, n, n)) < 0)) {
        return rc;
    }
    if (m < 1 || n < 1 || n % b != 0) {
        return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "quantize: W is %" PRId64 "x%" PRId64 "; allowed: "
                             "rows >= 1 and cols a positive multiple of the block size %" PRId64, m, n, b);
    }
    if ((rc = caldera_check_finite(inst, "quantize", "W", w)) < 0 || (h && (rc = caldera_check_finite(inst, "quantize", "H", h)) < 0)) {
        return rc;
    }
    struct ldlq_work wk = { .inst = inst, .cb = p->codebook, .ops = ops, .ctx = ctx, .m = m, .n = n, .b = b,
                            .bc = p->buffer_cols < n ? p->buffer_cols : n };
    if (wk.bc % b != 0) {
        wk.bc = n;   // n itself is a multiple of b
    }
    // Scales are chosen from W, and from H too when the codebook can use it (uniform's clip search).
    rc = CALDERA_OPS_HAS(ops, struct caldera_quantizer_ops, cb_begin_h) ? ops->cb_begin_h(p->codebook, w, h, &st)
                                                                         : ops->cb_begin(p->codebook, w, &st);
    if (rc < 0) {
        goto fail;
    }
    wk.st = st;

    if (!h) {
        // H = I: L = I and every X_j = W_j, so LDLQ is round-to-nearest; tune passes cannot move.
        if ((rc = ops->cb_round(p->codebook, st, 0, w, w_hat)) < 0) {
            goto fail;
        }
    } else {
        // Damped copy of H: H + damp * mean(diag H) * I.
        if ((rc = caldera_tensor_alloc_f32(ctx, n, n, &hd)) < 0 || (rc = caldera_tensor_alloc_f32(ctx, n, n, &lt)) < 0 ||
            (rc = caldera_tensor_alloc_f32(ctx, n, n, &dt)) < 0) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "quantize: out of memory for %" PRId64 "x%" PRId64
                               " Hessian factors", n, n);
            goto fail;
        }
        float * hdd = hd.data;
        double mean = 0.0;
        for (int64_t i = 0; i < n; i++) {
            memcpy(hdd + i * n, (const float *) h->data + i * ldof(h), (size_t) n * sizeof(float));
            mean += hdd[i * n + i];
        }
        mean /= (double) n;
        for (int64_t i = 0; i < n; i++) {
            hdd[i * n + i] += (float) (p->damp * mean);
        }
        rc = caldera_linalg_block_ldl(ctx, &hd, b, &lt, &dt);
        if (rc == CALDERA_ERR_NUMERIC) {
            rc = caldera_error(inst, CALDERA_ERR_NUMERIC, "quantize: the damped Hessian H + %g * mean(diag H) * I "
                               "(mean(diag H) = %g, n = %" PRId64 ") is not positive definite; allowed: a positive "
                               "semi-definite H with damp > 0, or a positive definite H", p->damp, mean, n);
            goto fail;
        }
        if (rc < 0) {
            goto fail;
        }
        // keep only the diagonal blocks of D (for the loss), then free D
        dblk = caldera_malloc((size_t) n * (size_t) b * sizeof(float));
        if (!dblk) {
            rc = caldera_error(inst, CALDERA_ERR_NOMEM, "quantize: out of memory");
            goto fail;
        }
        for (int64_t j0 = 0; j0 < n; j0 += b) {
            for (int64_t k = 0; k < b; k++) {
                memcpy(dblk + j0 * b + k * b, (const float *) dt.data + (j0 + k) * n + j0, (size_t) b * sizeof(float));
            }
        }
        caldera_tensor_free(&dt);
        double loss = 0.0;
        if ((rc = ldlq_pass(&wk, w, w_hat, lt.data, dblk, &loss)) < 0) {
            goto fail;
        }
        caldera_tensor_free(&lt);
        caldera_meta_set_float(caldera_pack_meta(pack), "ldlq.loss_ldlq", CALDERA_META_F64, loss);
        if (p->tune_iters > 0) {
            hinv = caldera_malloc((size_t) n * (size_t) b * sizeof(float));
            if (!hinv) {
                rc = caldera_error(inst, CALDERA_ERR_NOMEM, "quantize: out of memory");
                goto fail;
            }
            for (int64_t j0 = 0; j0 < n; j0 += b) {
                float * hi = hinv + j0 * b;
                for (int64_t k = 0; k < b; k++) {
                    memcpy(hi + k * b, hdd + (j0 + k) * n + j0, (size_t) b * sizeof(float));
                }
                struct caldera_tensor ht = sub(hi, b, 0, 0, b, b);
                if ((rc = caldera_linalg_spd_inverse(ctx, &ht)) < 0) {
                    rc = caldera_error(inst, CALDERA_ERR_NUMERIC, "quantize: diagonal block %" PRId64 " of the damped "
                                       "Hessian is not invertible", j0 / b);
                    goto fail;
                }
            }
            int64_t run = 0;
            if ((rc = ldlq_tune(&wk, w, w_hat, hdd, hinv, p->tune_iters, p->tune_guard, &run)) < 0) {
                goto fail;
            }
            caldera_meta_set_int(caldera_pack_meta(pack), "ldlq.tune_iters_run", CALDERA_META_I64, run);
        }
    }
    if ((rc = ops->cb_end(p->codebook, st, pack)) < 0) {
        goto fail;
    }
    caldera_meta_set_int(caldera_pack_meta(pack), "ldlq.tune_iters", CALDERA_META_I64, h ? p->tune_iters : 0);
fail:
    caldera_free(hinv);
    caldera_free(dblk);
    caldera_tensor_free(&hd);
    caldera_tensor_free(&lt);
    caldera_tensor_free(&dt);
    if (ops && st) {
        ops->cb_free(p->codebook, st);
    }
    return rc;
}

static int ldlq_dequantize(struct caldera_inst * inst, const struct caldera_pack * pack, struct caldera_tensor * w_hat) {
    struct ldlq_priv * p = caldera_inst_priv(inst);
    if (!p->codebook) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "dequantize: option 'codebook' is not set");
    }
    return caldera_quantizer_dequantize(p->codebook, pack, w_hat);
}

// Fused layer: the codes are the codebook's, so its fused form is ldlq's.
static int ldlq_linear_init(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows, int64_t cols,
                            void ** state) {
    struct ldlq_priv * p = caldera_inst_priv(inst);
    *state = NULL;
    if (!p->codebook) {
        return caldera_error(inst, CALDERA_ERR_INVAL, "linear_init: option 'codebook' is not set");
    }
    return caldera_quantizer_linear_init(p->codebook, pack, rows, cols, state);
}

static int ldlq_linear_apply(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                             struct caldera_tensor * y, unsigned flags) {
    return caldera_quantizer_linear_apply(((struct ldlq_priv *) caldera_inst_priv(inst))->codebook, state, x, y, flags);
}

static void ldlq_linear_free(struct caldera_inst * inst, void * state) {
    caldera_quantizer_linear_free(((struct ldlq_priv *) caldera_inst_priv(inst))->codebook, state);
}

static const struct caldera_quantizer_ops ldlq_ops = {
    .struct_size = sizeof(struct caldera_quantizer_ops),
    .quantize    = ldlq_quantize,
    .dequantize  = ldlq_dequantize,
    .bits        = ldlq_bits,
    .cb_dim      = NULL,
    .cb_begin    = NULL,
    .cb_round    = NULL,
    .cb_end      = NULL,
    .cb_free     = NULL,
    .cb_begin_h  = NULL,
    .linear_init  = ldlq_linear_init,
    .linear_apply = ldlq_linear_apply,
    .linear_free  = ldlq_linear_free,
};

static const struct caldera_plugin ldlq_plugin = {
    .abi_version    = CALDERA_PLUGIN_ABI_VERSION,
    .struct_size    = sizeof(struct caldera_plugin),
    .kind           = CALDERA_PLUGIN_KIND_QUANTIZER,
    .name           = "ldlq",
    .description    = "LDLQ / GPTQ adaptive rounding with the calibration Hessian, over any codebook quantizer",
    .version        = CALDERA_VERSION_INT(0, 1, 0),
    .format_version = 1,
    .priv_size      = sizeof(struct ldlq_priv),
    .options        = ldlq_options,
    .probe          = NULL,
    .check          = ldlq_check,
    .check_shape    = ldlq_check_shape,
    .init           = NULL,
    .uninit         = NULL,
    .ops            = &ldlq_ops,
};

CALDERA_PLUGIN_DEFINE(ldlq_plugin)
