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

#define LDLQ_TUNE_COLS 64   // widest buffer of a tune pass (ldlq_tune)

struct ldlq_work {
    struct caldera_inst *                inst;
    struct caldera_inst *                cb;
    const struct caldera_quantizer_ops * ops;
    struct caldera_cb_state *            st;
    struct caldera_ctx *                 ctx;
    int64_t                              m, n, b, bc;
    enum caldera_device                  dev;   // where the LDLQ pass keeps its work matrices
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

// A (rows, cols) view of a dense work matrix t at (r0, c0), on t's device.
static struct caldera_tensor subt(const struct caldera_tensor * t, int64_t r0, int64_t c0, int64_t rows, int64_t cols) {
    struct caldera_tensor v = sub(t->data, t->ne[1], r0, c0, rows, cols);
    v.device = t->device;
    return v;
}

// A zeroed (rows, cols) f32 work matrix on the work device.
static int work_alloc(const struct ldlq_work * wk, int64_t rows, int64_t cols, struct caldera_tensor * t) {
    const int64_t ne[2] = { rows, cols };
    return wk->dev == CALDERA_DEVICE_CPU ? caldera_tensor_alloc(wk->ctx, CALDERA_DTYPE_F32, 2, ne, t)
                                         : caldera_tensor_alloc_device(wk->ctx, wk->dev, CALDERA_DTYPE_F32, 2, ne, t);
}

// The work matrix t (on the work device) filled from host memory (rows × cols, ld = cols).
static int work_upload(const struct ldlq_work * wk, const float * host, int64_t rows, int64_t cols,
                       struct caldera_tensor * t) {
    int rc = work_alloc(wk, rows, cols, t);
    if (rc < 0) {
        return rc;
    }
    struct caldera_tensor h = caldera_tensor_view_f32((float *) host, rows, cols);
    return caldera_tensor_copy(wk->ctx, t, &h);
}

// The block loop runs where its work matrices are: on the CPU, or under device = cuda (and a
// codebook that rounds device tensors) on the GPU, where each step is a kernel of the core
// (caldera_ldlq_gather / _scatter / _loss, the codebook's caldera_round_*) and the feedback a
// cuBLAS GEMM; only W, L, the diagonal blocks of D (once) and each finished buffer (to write Ŵ)
// cross the bus.
static int ldlq_pass(const struct ldlq_work * wk, const struct caldera_tensor * w, struct caldera_tensor * w_hat,
                     const float * lmat, const float * dblk, double * loss_out) {
    // lmat (n, n) unit block-lower L; dblk (n/b, b, b) diagonal blocks of D (host)
    const int64_t m = wk->m, n = wk->n, b = wk->b, bc = wk->bc;
    const int64_t ib = b * (b < 16 ? 16 / b : 1);   // inner block: rank-ib updates inside a buffer
    const int     on_dev = wk->dev != CALDERA_DEVICE_CPU;
    struct caldera_tensor xt  = { 0 };  // (n, m)  Xᵀ: W plus the feedback so far, transposed
    struct caldera_tensor wt  = { 0 };  // (n, m)  Wᵀ
    struct caldera_tensor hbt = { 0 };  // (bc, m) Ŵ of the current buffer, transposed
    struct caldera_tensor dbt = { 0 };  // (bc, m) Δ = W - Ŵ of the current buffer, transposed
    struct caldera_tensor xj  = { 0 };  // (m, b)  block j as the codebook takes it
    struct caldera_tensor qj  = { 0 };  // (m, b)  its rounding
    struct caldera_tensor lt  = { 0 };  // (n, n)  L on the device (on the CPU a view of lmat)
    struct caldera_tensor dbd = { 0 };  // (n, b)  the diagonal blocks of D on the device (CPU: a view of dblk)
    float * host = NULL;                // (n, m)  Wᵀ on the host, then Ŵ of a buffer (device only)
    double  loss = 0.0;
    int     rc = 0;

    if (!on_dev) {
        if ((rc = work_alloc(wk, n, m, &xt)) < 0 || (rc = work_alloc(wk, n, m, &wt)) < 0 ||
            (rc = work_alloc(wk, bc, m, &hbt)) < 0 || (rc = work_alloc(wk, bc, m, &dbt)) < 0 ||
            (rc = work_alloc(wk, m, b, &xj)) < 0 || (rc = work_alloc(wk, m, b, &qj)) < 0) {
            rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "quantize: out of memory for %" PRId64 "x%" PRId64
                               " work matrices", m, n);
            goto fail;
        }
        transpose(wt.data, m, w->data, ldof(w), m, n);
        memcpy(xt.data, wt.data, (size_t) m * (size_t) n * sizeof(float));
        lt  = sub((float *) lmat, n, 0, 0, n, n);
        dbd = sub((float *) dblk, b, 0, 0, n, b);
    } else {
        if (!(host = caldera_malloc((size_t) m * (size_t) n * sizeof(float)))) {
            rc = caldera_error(wk->inst, CALDERA_ERR_NOMEM, "quantize: out of memory for %" PRId64 "x%" PRId64
                               " work matrices", m, n);
            goto fail;
        }
        transpose(host, m, w->data, ldof(w), m, n);
        if ((rc = work_upload(wk, host, n, m, &wt)) < 0 || (rc = work_upload(wk, host, n, m, &xt)) < 0 ||
            (rc = work_upload(wk, lmat, n, n, &lt)) < 0 || (rc = work_upload(wk, dblk, n, b, &dbd)) < 0 ||
            (rc = work_alloc(wk, bc, m, &hbt)) < 0 || (rc = work_alloc(wk, bc, m, &dbt)) < 0 ||
            (rc = work_alloc(wk, m, b, &xj)) < 0 || (rc = work_alloc(wk, m, b, &qj)) < 0) {
            rc = caldera_error(wk->inst, rc, "quantize: cannot set up the work matrices for %" PRId64 "x%" PRId64
                               " on the GPU: %s", m, n, caldera_ctx_errmsg(wk->ctx));
            goto fail;
        }
    }
    for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
        c0 = ((c1 - 1) / bc) * bc;
        const int64_t nb = c1 - c0;
        for (int64_t i1 = c1, i0; i1 > c0; i1 = i0) {
            i0 = c0 + ((i1 - c0 - 1) / ib) * ib;
            for (int64_t j0 = i1 - b; j0 >= i0; j0 -= b) {
                const int64_t jl = j0 - c0;
                if ((rc = caldera_ldlq_gather(wk->ctx, &xt, j0, &xj)) < 0) {
                    goto step_fail;
                }
                if ((rc = wk->ops->cb_round(wk->cb, wk->st, j0, &xj, &qj)) < 0) {
                    goto fail;
                }
                // loss of block j: Σ_rows (X_j - Ŵ_j) D_j (X_j - Ŵ_j)ᵀ
                struct caldera_tensor dj = subt(&dbd, j0, 0, b, b);
                if ((rc = caldera_ldlq_scatter(wk->ctx, &qj, &wt, j0, jl, &hbt, &dbt)) < 0 ||
                    (rc = caldera_ldlq_loss(wk->ctx, &xj, &qj, &dj, &loss)) < 0) {
                    goto step_fail;
                }
                if (j0 > i0) {   // Xᵀ[i0:j0] += L[j, i0:j0]ᵀ Δ_jᵀ  (rank b, inside the inner block)
                    struct caldera_tensor lj = subt(&lt, j0, i0, b, j0 - i0);
                    struct caldera_tensor dj_t = subt(&dbt, jl, 0, b, m);
                    struct caldera_tensor xl = subt(&xt, i0, 0, j0 - i0, m);
                    if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &lj, &dj_t, 1.0f,
                                                  &xl)) < 0) {
                        goto fail;
                    }
                }
            }
            if (i0 > c0) {   // Xᵀ[c0:i0] += L[i0:i1, c0:i0]ᵀ Δ_{i0:i1}ᵀ  (rank ib, rest of the buffer)
                struct caldera_tensor li = subt(&lt, i0, c0, i1 - i0, i0 - c0);
                struct caldera_tensor di = subt(&dbt, i0 - c0, 0, i1 - i0, m);
                struct caldera_tensor xl = subt(&xt, c0, 0, i0 - c0, m);
                if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &li, &di, 1.0f,
                                              &xl)) < 0) {
                    goto fail;
                }
            }
        }
        const float * hb = hbt.data;
        if (on_dev) {   // the buffer's Ŵᵀ to the host
            struct caldera_tensor src = subt(&hbt, 0, 0, nb, m), dst = sub(host, m, 0, 0, nb, m);
            if ((rc = caldera_tensor_copy(wk->ctx, &dst, &src)) < 0) {
                goto step_fail;
            }
            hb = host;
        }
        transpose((float *) w_hat->data + c0, ldof(w_hat), hb, m, nb, m);
        if (c0 > 0) {   // Xᵀ[0:c0] += L[B, 0:c0]ᵀ Δ_Bᵀ  (rank |B|, every column on the left)
            struct caldera_tensor lb = subt(&lt, c0, 0, nb, c0);
            struct caldera_tensor db = subt(&dbt, 0, 0, nb, m);
            struct caldera_tensor xl = subt(&xt, 0, 0, c0, m);
            if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &lb, &db, 1.0f,
                                          &xl)) < 0) {
                goto fail;
            }
        }
    }
    *loss_out = loss;
    goto fail;
step_fail:
    rc = caldera_error(wk->inst, rc, "quantize: LDLQ step: %s", caldera_ctx_errmsg(wk->ctx));
fail:
    caldera_tensor_free(&xt);
    caldera_tensor_free(&wt);
    caldera_tensor_free(&hbt);
    caldera_tensor_free(&dbt);
    caldera_tensor_free(&xj);
    caldera_tensor_free(&qj);
    if (on_dev) {
        caldera_tensor_free(&lt);
        caldera_tensor_free(&dbd);
    }
    caldera_free(host);
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

// Like the pass, the tune passes run where the work matrices are (the CPU, or the GPU under
// device = cuda): each step is a core kernel (gathers, target, guard, update), the codebook's
// rounding, and the GEMMs; Ŵᵀ is downloaded once at the end.
static int ldlq_tune(const struct ldlq_work * wk, const struct caldera_tensor * w, struct caldera_tensor * w_hat,
                     const float * hd, const float * hinv, int64_t iters, int guard, int64_t * iters_run) {
    // hd (n, n) damped H; hinv (n/b, b, b) inverses of its diagonal blocks (host)
    // Buffers of at most LDLQ_TUNE_COLS columns: a pass costs the per-buffer GEMMs (2·m·n² FLOPs
    // whatever the width) plus the in-buffer rank-b updates (≈ m·n·width, at rank-b GEMM speed,
    // each rewriting a width×m block), so narrow buffers do less work; 64 keeps the GEMMs' M large
    // enough to run at full rate.
    const int64_t m = wk->m, n = wk->n, b = wk->b;
    const int64_t tcols = LDLQ_TUNE_COLS - LDLQ_TUNE_COLS % b, bc = wk->bc < tcols || tcols < b ? wk->bc : tcols;
    const int     on_dev = wk->dev != CALDERA_DEVICE_CPU;
    struct caldera_tensor wt  = { 0 };  // (n, m)  Wᵀ
    struct caldera_tensor ht  = { 0 };  // (n, m)  Ŵᵀ
    struct caldera_tensor dt  = { 0 };  // (n, m)  Δᵀ = (W - Ŵ)ᵀ
    struct caldera_tensor gt  = { 0 };  // (bc, m) (Δ H[:, B])ᵀ
    struct caldera_tensor old = { 0 };  // (m, b)  current Ŵ_j
    struct caldera_tensor gj  = { 0 };  // (m, b)  G_j
    struct caldera_tensor xs  = { 0 };  // (m, b)  unconstrained minimiser of block j
    struct caldera_tensor q   = { 0 };  // (m, b)  its rounding
    struct caldera_tensor dqt = { 0 };  // (b, m)  (Ŵ_j,old - Ŵ_j,new)ᵀ
    struct caldera_tensor hdt = { 0 };  // (n, n)  damped H on the work device (CPU: a view of hd)
    struct caldera_tensor hit = { 0 };  // (n, b)  the inverses on the work device (CPU: a view of hinv)
    float * host = NULL;                // (3, n, m) Wᵀ, Ŵᵀ, Δᵀ on the host before the upload (device only)
    int rc = 0;

    if ((rc = work_alloc(wk, n, m, &wt)) < 0 || (rc = work_alloc(wk, n, m, &ht)) < 0 ||
        (rc = work_alloc(wk, n, m, &dt)) < 0 || (rc = work_alloc(wk, bc, m, &gt)) < 0 ||
        (rc = work_alloc(wk, m, b, &old)) < 0 || (rc = work_alloc(wk, m, b, &gj)) < 0 ||
        (rc = work_alloc(wk, m, b, &xs)) < 0 || (rc = work_alloc(wk, m, b, &q)) < 0 ||
        (rc = work_alloc(wk, b, m, &dqt)) < 0 ||
        (on_dev && !(host = caldera_malloc(3 * (size_t) m * (size_t) n * sizeof(float))))) {
        rc = caldera_error(wk->inst, on_dev && rc < 0 ? rc : CALDERA_ERR_NOMEM, "quantize: %s for tune passes (%" PRId64
                           "x%" PRId64 ")%s%s", on_dev && rc < 0 ? "cannot set up the work matrices" : "out of memory",
                           m, n, on_dev && rc < 0 ? ": " : "", on_dev && rc < 0 ? caldera_ctx_errmsg(wk->ctx) : "");
        goto fail;
    }
    {
        float * wh = on_dev ? host : wt.data, * hh = on_dev ? host + m * n : ht.data, * dh = on_dev ? host + 2 * m * n : dt.data;
        transpose(wh, m, w->data, ldof(w), m, n);
        transpose(hh, m, w_hat->data, ldof(w_hat), m, n);
        for (int64_t i = 0; i < m * n; i++) {
            dh[i] = wh[i] - hh[i];
        }
        if (on_dev) {
            struct caldera_tensor hw = sub(wh, m, 0, 0, n, m), hhv = sub(hh, m, 0, 0, n, m), hdv = sub(dh, m, 0, 0, n, m);
            if ((rc = caldera_tensor_copy(wk->ctx, &wt, &hw)) < 0 || (rc = caldera_tensor_copy(wk->ctx, &ht, &hhv)) < 0 ||
                (rc = caldera_tensor_copy(wk->ctx, &dt, &hdv)) < 0 || (rc = work_upload(wk, hd, n, n, &hdt)) < 0 ||
                (rc = work_upload(wk, hinv, n, b, &hit)) < 0) {
                goto step_fail;
            }
        } else {
            hdt = sub((float *) hd, n, 0, 0, n, n);
            hit = sub((float *) hinv, b, 0, 0, n, b);
        }
    }
    *iters_run = 0;
    for (int64_t it = 0; it < iters; it++) {
        int64_t kept = 0, changed = 0;
        for (int64_t c1 = n, c0; c1 > 0; c1 = c0) {
            c0 = ((c1 - 1) / bc) * bc;
            const int64_t nb = c1 - c0;
            struct caldera_tensor gtt = subt(&gt, 0, 0, nb, m);
            struct caldera_tensor hb  = subt(&hdt, c0, 0, nb, n);
            if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_NO_TRANS, CALDERA_NO_TRANS, 1.0f, &hb, &dt, 0.0f,
                                          &gtt)) < 0) {
                goto fail;
            }
            for (int64_t j0 = c1 - b; j0 >= c0; j0 -= b) {
                const int64_t jl = j0 - c0;
                struct caldera_tensor hi = subt(&hit, j0, 0, b, b);
                struct caldera_tensor hjj = hdt;   // (b, b) view with ld n
                hjj.data = (float *) hdt.data + j0 * n + j0;
                hjj.ne[0] = hjj.ne[1] = b;
                hjj.ld = n;
                // xs = Ŵ_j + G_j H_jj⁻¹
                if ((rc = caldera_ldlq_gather(wk->ctx, &ht, j0, &old)) < 0 ||
                    (rc = caldera_ldlq_gather(wk->ctx, &gt, jl, &gj)) < 0 ||
                    (rc = caldera_ldlq_tune_target(wk->ctx, &old, &gj, &hi, &xs)) < 0) {
                    goto step_fail;
                }
                if ((rc = wk->ops->cb_round(wk->cb, wk->st, j0, &xs, &q)) < 0) {
                    goto fail;
                }
                if (guard && b > 1) {
                    int64_t nkeep = 0;
                    if ((rc = caldera_ldlq_tune_guard(wk->ctx, &q, &old, &hjj, &xs, &nkeep)) < 0) {
                        goto step_fail;
                    }
                    if (nkeep > 0) {   // round again so the codebook records the kept codes
                        if ((rc = wk->ops->cb_round(wk->cb, wk->st, j0, &xs, &q)) < 0) {
                            goto fail;
                        }
                        kept += nkeep;
                    }
                }
                if ((rc = caldera_ldlq_tune_update(wk->ctx, &q, &wt, j0, &ht, &dt, &dqt)) < 0) {
                    goto step_fail;
                }
                for (int64_t k = 0; !on_dev && !changed && k < b; k++) {   // (old - new) of the block
                    const float * dr = (const float *) dqt.data + k * ldof(&dqt);
                    for (int64_t r = 0; r < m; r++) {
                        changed += dr[r] != 0.0f;
                    }
                }
                if (jl > 0) {   // G_Bᵀ[c0:j0] += H[j, c0:j0]ᵀ (old - new)ᵀ
                    struct caldera_tensor hj  = subt(&hdt, j0, c0, b, jl);
                    struct caldera_tensor gl  = subt(&gt, 0, 0, jl, m);
                    if ((rc = caldera_linalg_gemm(wk->ctx, CALDERA_TRANS, CALDERA_NO_TRANS, 1.0f, &hj, &dqt, 1.0f,
                                                  &gl)) < 0) {
                        goto fail;
                    }
                }
            }
        }
        caldera_inst_log(wk->inst, CALDERA_LOG_DEBUG, "tune pass %" PRId64 "/%" PRId64 ": %" PRId64
                         " row-blocks kept by the guard%s", it + 1, iters, kept, on_dev || changed ? "" : ", no weight changed");
        *iters_run = it + 1;
        // Fixed point (CPU): a pass is a function of W, Ŵ and H alone, so a pass that changed no
        // weight would repeat itself in every later pass; stopping here gives the same result as
        // running them all (on SmolLM2 the passes stop changing after a few of 10).
        if (!on_dev && changed == 0) {
            break;
        }
    }
    if (on_dev) {   // Ŵᵀ to the host
        struct caldera_tensor hh = sub(host, m, 0, 0, n, m);
        if ((rc = caldera_tensor_copy(wk->ctx, &hh, &ht)) < 0) {
            goto step_fail;
        }
        transpose(w_hat->data, ldof(w_hat), host, m, n, m);
    } else {
        transpose(w_hat->data, ldof(w_hat), ht.data, m, n, m);
    }
    goto fail;
step_fail:
    rc = caldera_error(wk->inst, rc, "quantize: LDLQ tune step: %s", caldera_ctx_errmsg(wk->ctx));
fail:
    caldera_tensor_free(&wt);
    caldera_tensor_free(&ht);
    caldera_tensor_free(&dt);
    caldera_tensor_free(&gt);
    caldera_tensor_free(&old);
    caldera_tensor_free(&gj);
    caldera_tensor_free(&xs);
    caldera_tensor_free(&q);
    caldera_tensor_free(&dqt);
    if (on_dev) {
        caldera_tensor_free(&hdt);
        caldera_tensor_free(&hit);
    }
    caldera_free(host);
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
    // Under device = cuda the LDLQ pass runs on the GPU when the codebook rounds device tensors.
    wk.dev = CALDERA_DEVICE_CPU;
    if (caldera_ctx_device(ctx) == CALDERA_DEVICE_CUDA) {
        if (CALDERA_OPS_HAS_FLAG(ops, struct caldera_quantizer_ops, cb_device)) {
            wk.dev = CALDERA_DEVICE_CUDA;
        } else {
            caldera_inst_log(inst, CALDERA_LOG_INFO, "codebook [%s] rounds host tensors only: the LDLQ pass runs on "
                             "the CPU (its large GEMMs on the GPU)", caldera_inst_name(p->codebook));
        }
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
