// SPDX-License-Identifier: MIT
// backend.c: the CUDA backend module (caldera-cuda.so): caldera_linalg_* over cuBLAS and cuSOLVER
// on row-major device tensors, and the launchers of the element-wise kernels. libcaldera loads it
// with dlopen (cuda.c); it uses no symbol of libcaldera, so its only allocation is its device
// struct (calloc). cuBLAS and cuSOLVER are column-major: a row-major (r × c) matrix with leading
// dimension ld is the column-major (c × r) matrix Aᵀ with the same ld, so
//   row-major C = op(A) op(B)      is  column-major Cᵀ = op(B)ᵀ op(A)ᵀ  (swap the operands),
//   row-major lower triangle       is  the column-major upper one,
//   row-major X = op(T)⁻¹ B (left) is  column-major Xᵀ = Bᵀ op(T)⁻ᵀ   (right side, other triangle).
// FP32 throughout, default math mode (no TF32), every status checked and named in the message.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda-backend.h"
#include "e8p.h"
#include "kernels.h"
#include "uniform-rule.h"

struct ccu_dev {
    int                 index;
    char                name[192];
    cudaStream_t        stream;
    cublasHandle_t      blas;
    cusolverDnHandle_t  sol;
    int *               info;       // device int: cuSOLVER's devInfo
    struct e8p_tables * tab;        // device copy of the last E8P tables (NULL until used)
    struct e8p_tables   tab_host;   // what tab holds
    char                err[1024];
};

#define LD(t) ((t)->ld ? (t)->ld : (t)->ne[1])
#define ROWS(t) ((t)->ne[0])
#define COLS(t) ((t)->ne[1])
#define F(t) ((float *) (t)->data)
#define CF(t) ((const float *) (t)->data)
#define LDI(t) ((int) (LD(t) > 0 ? LD(t) : 1))

static const char * cusolver_status_name(cusolverStatus_t s) {
    switch (s) {
    case CUSOLVER_STATUS_SUCCESS:                   return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED:           return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED:              return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE:             return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH:             return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_MAPPING_ERROR:             return "CUSOLVER_STATUS_MAPPING_ERROR";
    case CUSOLVER_STATUS_EXECUTION_FAILED:          return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR:            return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED:             return "CUSOLVER_STATUS_NOT_SUPPORTED";
    case CUSOLVER_STATUS_ZERO_PIVOT:                return "CUSOLVER_STATUS_ZERO_PIVOT";
    case CUSOLVER_STATUS_INVALID_LICENSE:           return "CUSOLVER_STATUS_INVALID_LICENSE";
    case CUSOLVER_STATUS_INVALID_WORKSPACE:         return "CUSOLVER_STATUS_INVALID_WORKSPACE";
    default:                                        return "CUSOLVER_STATUS_(unknown)";
    }
}

// Each failure: "<call> failed: <STATUS_NAME> (<text>) on cuda:N (<name>)", CALDERA_ERR_DEVICE.
static int fail_cuda(struct ccu_dev * d, const char * call, cudaError_t e) {
    snprintf(d->err, sizeof(d->err), "%s failed: %s (%s) on %s", call, cudaGetErrorName(e), cudaGetErrorString(e),
             d->name);
    return CALDERA_ERR_DEVICE;
}

static int fail_blas(struct ccu_dev * d, const char * call, cublasStatus_t s) {
    snprintf(d->err, sizeof(d->err), "%s failed: %s (%s) on %s", call, cublasGetStatusName(s), cublasGetStatusString(s),
             d->name);
    return CALDERA_ERR_DEVICE;
}

static int fail_solver(struct ccu_dev * d, const char * call, cusolverStatus_t s) {
    snprintf(d->err, sizeof(d->err), "%s failed: %s on %s", call, cusolver_status_name(s), d->name);
    return CALDERA_ERR_DEVICE;
}

static int fail_numeric(struct ccu_dev * d, const char * what) {
    snprintf(d->err, sizeof(d->err), "%s (on %s)", what, d->name);
    return CALDERA_ERR_NUMERIC;
}

// Checked calls: on failure set rc and jump to the function's one cleanup label.
#define CU(fn, args)                                                   \
    do {                                                               \
        cudaError_t e_ = fn args;                                      \
        if (e_ != cudaSuccess) { rc = fail_cuda(d, #fn, e_); goto fail; } \
    } while (0)
#define CB(fn, args)                                                   \
    do {                                                               \
        cublasStatus_t s_ = fn args;                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) { rc = fail_blas(d, #fn, s_); goto fail; } \
    } while (0)
#define CS(fn, args)                                                   \
    do {                                                               \
        cusolverStatus_t s_ = fn args;                                 \
        if (s_ != CUSOLVER_STATUS_SUCCESS) { rc = fail_solver(d, #fn, s_); goto fail; } \
    } while (0)
#define CK(fn, args)                                                   \
    do {                                                               \
        int e_ = fn args;                                              \
        if (e_ != 0) { rc = fail_cuda(d, #fn " (kernel launch)", (cudaError_t) e_); goto fail; } \
    } while (0)
#define ENTER() CU(cudaSetDevice, (d->index))

// A dense (rows × cols) device scratch matrix, stream-ordered.
static int scratch(struct ccu_dev * d, int64_t rows, int64_t cols, struct caldera_tensor * t) {
    int rc = 0;
    memset(t, 0, sizeof(*t));
    void * p = NULL;
    size_t bytes = (size_t) (rows > 0 ? rows : 1) * (size_t) (cols > 0 ? cols : 1) * sizeof(float);
    CU(cudaMallocAsync, (&p, bytes, d->stream));
    t->data = p;
    t->dtype = CALDERA_DTYPE_F32;
    t->device = CALDERA_DEVICE_CUDA;
    t->ndim = 2;
    t->ne[0] = rows;
    t->ne[1] = cols;
    t->ld = cols;
fail:
    return rc;
}

static void scratch_free(struct ccu_dev * d, void * p) {
    if (p) cudaFreeAsync(p, d->stream);
}

static int dev_alloc(struct ccu_dev * d, size_t bytes, void ** out) {
    int rc = 0;
    *out = NULL;
    CU(cudaMallocAsync, (out, bytes ? bytes : 1, d->stream));
fail:
    return rc;
}

// A view of rows [r0, r0 + nr) and columns [c0, c0 + nc) of t.
static struct caldera_tensor sub(const struct caldera_tensor * t, int64_t r0, int64_t c0, int64_t nr, int64_t nc) {
    struct caldera_tensor v = *t;
    v.data = (float *) t->data + r0 * LD(t) + c0;
    v.ne[0] = nr;
    v.ne[1] = nc;
    v.ld = LD(t);
    return v;
}

static int copy_mat(struct ccu_dev * d, struct caldera_tensor * dst, const struct caldera_tensor * src) {
    int rc = 0;
    if (ROWS(src) == 0 || COLS(src) == 0) return 0;
    CU(cudaMemcpy2DAsync, (dst->data, (size_t) LD(dst) * sizeof(float), src->data, (size_t) LD(src) * sizeof(float),
                           (size_t) COLS(src) * sizeof(float), (size_t) ROWS(src), cudaMemcpyDeviceToDevice, d->stream));
fail:
    return rc;
}

static int download(struct ccu_dev * d, void * host, const void * dev, size_t bytes) {
    int rc = 0;
    CU(cudaMemcpyAsync, (host, dev, bytes, cudaMemcpyDeviceToHost, d->stream));
    CU(cudaStreamSynchronize, (d->stream));
fail:
    return rc;
}

// Row-major transpose dst (c × r) = srcᵀ (src r × c), out of place.
static int transpose(struct ccu_dev * d, struct caldera_tensor * dst, const struct caldera_tensor * src) {
    int rc = 0;
    const float one = 1.0f, zero = 0.0f;
    if (ROWS(src) == 0 || COLS(src) == 0) return 0;
    // dst doubles as geam's B with beta = 0: clear it so that no NaN left in scratch memory can leak in
    CU(cudaMemset2DAsync, (dst->data, (size_t) LD(dst) * sizeof(float), 0, (size_t) COLS(dst) * sizeof(float),
                           (size_t) ROWS(dst), d->stream));
    // column-major: dstᵀ (r × c) = (srcᵀ (c × r))ᵀ
    CB(cublasSgeam, (d->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int) ROWS(src), (int) COLS(src), &one, CF(src), LDI(src), &zero,
                     F(dst), LDI(dst), F(dst), LDI(dst)));
fail:
    return rc;
}

static int count_nonfinite_dev(struct ccu_dev * d, const struct caldera_tensor * a, int64_t * out) {
    int rc = 0;
    unsigned long long * cnt = NULL, host = 0;
    *out = 0;
    if ((rc = dev_alloc(d, sizeof(*cnt), (void **) &cnt))) goto fail;
    CU(cudaMemsetAsync, (cnt, 0, sizeof(*cnt), d->stream));
    CK(ccu_k_count_nonfinite, (d->stream, CF(a), ROWS(a), COLS(a), LD(a), cnt));
    if ((rc = download(d, &host, cnt, sizeof(host)))) goto fail;
    *out = (int64_t) host;
fail:
    scratch_free(d, cnt);
    return rc;
}

static int refuse_nonfinite(struct ccu_dev * d, const struct caldera_tensor * a, const char * what) {
    int64_t n = 0;
    int rc = count_nonfinite_dev(d, a, &n);
    if (rc == 0 && n > 0) rc = fail_numeric(d, what);
    return rc;
}

static int solver_info(struct ccu_dev * d, int * info) {
    return download(d, info, d->info, sizeof(int));
}

// ---------------------------------------------------------------------------------------------
// Device, memory

static int be_device_count(int * count, char * msg, size_t msglen) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    *count = 0;
    if (e != cudaSuccess) {
        snprintf(msg, msglen, "cudaGetDeviceCount: %s (%s)", cudaGetErrorName(e), cudaGetErrorString(e));
        cudaGetLastError();   // clear the sticky-free error so later probes start clean
        return 0;
    }
    if (n == 0) snprintf(msg, msglen, "cudaGetDeviceCount: no CUDA device");
    *count = n;
    return 0;
}

static void be_close(struct ccu_dev * d) {
    if (!d) return;
    cudaSetDevice(d->index);
    if (d->stream) cudaStreamSynchronize(d->stream);
    if (d->tab) cudaFree(d->tab);
    if (d->info) cudaFree(d->info);
    if (d->sol) cusolverDnDestroy(d->sol);
    if (d->blas) cublasDestroy(d->blas);
    if (d->stream) cudaStreamDestroy(d->stream);
    free(d);
}

static int be_open(int index, struct ccu_dev ** out, char * msg, size_t msglen) {
    int rc = 0;
    *out = NULL;
    struct ccu_dev * d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(msg, msglen, "out of memory opening cuda:%d", index);
        return CALDERA_ERR_NOMEM;
    }
    d->index = index;
    snprintf(d->name, sizeof(d->name), "cuda:%d", index);
    struct cudaDeviceProp prop;
    CU(cudaSetDevice, (index));
    CU(cudaGetDeviceProperties, (&prop, index));
    snprintf(d->name, sizeof(d->name), "cuda:%d (%.120s, sm_%d%d)", index, prop.name, prop.major, prop.minor);
    CU(cudaStreamCreateWithFlags, (&d->stream, cudaStreamNonBlocking));
    CB(cublasCreate, (&d->blas));
    CB(cublasSetStream, (d->blas, d->stream));
    CB(cublasSetMathMode, (d->blas, CUBLAS_DEFAULT_MATH));   // FP32, no TF32
    CS(cusolverDnCreate, (&d->sol));
    CS(cusolverDnSetStream, (d->sol, d->stream));
    CU(cudaMalloc, ((void **) &d->info, sizeof(int)));
    *out = d;
    return 0;
fail:
    snprintf(msg, msglen, "%s", d->err);
    be_close(d);
    return rc;
}

static const char * be_err(const struct ccu_dev * d) { return d->err; }
static const char * be_name(const struct ccu_dev * d) { return d->name; }

static int be_dmalloc(struct ccu_dev * d, size_t bytes, void ** out) {
    int rc = 0;
    *out = NULL;
    ENTER();
    CU(cudaMalloc, (out, bytes ? bytes : 1));
    CU(cudaMemset, (*out, 0, bytes ? bytes : 1));
fail:
    return rc;
}

static void be_dfree(void * p) {
    if (p) cudaFree(p);   // synchronous: work queued on the stream that uses p is done first
}

static int be_copy2d(struct ccu_dev * d, void * dst, size_t dpitch, const void * src, size_t spitch, size_t width,
                     size_t rows, int kind) {
    int rc = 0;
    static const enum cudaMemcpyKind kinds[] = { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
    if (width == 0 || rows == 0) return 0;
    ENTER();
    CU(cudaMemcpy2DAsync, (dst, dpitch, src, spitch, width, rows, kinds[kind], d->stream));
    CU(cudaStreamSynchronize, (d->stream));
fail:
    return rc;
}

static int be_sync(struct ccu_dev * d) {
    int rc = 0;
    ENTER();
    CU(cudaStreamSynchronize, (d->stream));
fail:
    return rc;
}

// ---------------------------------------------------------------------------------------------
// BLAS-3

static int gemm_dev(struct ccu_dev * d, int ta, int tb, float alpha, const struct caldera_tensor * a,
                    const struct caldera_tensor * b, float beta, struct caldera_tensor * c) {
    int rc = 0;
    int64_t m = ROWS(c), n = COLS(c), k = ta ? ROWS(a) : COLS(a);
    if (m == 0 || n == 0) return 0;
    CB(cublasSgemm, (d->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int) n, (int) m, (int) k,
                     &alpha, CF(b), LDI(b), CF(a), LDI(a), &beta, F(c), LDI(c)));
fail:
    return rc;
}

static int be_gemm(struct ccu_dev * d, int ta, int tb, float alpha, const struct caldera_tensor * a,
                   const struct caldera_tensor * b, float beta, struct caldera_tensor * c) {
    int rc = 0;
    ENTER();
    rc = gemm_dev(d, ta, tb, alpha, a, b, beta, c);
fail:
    return rc;
}

static int be_syrk(struct ccu_dev * d, int trans, float alpha, const struct caldera_tensor * a, float beta,
                   struct caldera_tensor * c) {
    int rc = 0;
    int64_t n = ROWS(c), k = trans ? ROWS(a) : COLS(a);
    ENTER();
    if (n == 0) return 0;
    // row-major A Aᵀ (A n × k) is column-major Acᵀ Ac (Ac = Aᵀ, k × n): OP_T; Aᵀ A is Ac Acᵀ: OP_N.
    // The column-major upper triangle is the row-major lower one; mirror it after.
    CB(cublasSsyrk, (d->blas, CUBLAS_FILL_MODE_UPPER, trans ? CUBLAS_OP_N : CUBLAS_OP_T, (int) n, (int) k, &alpha, CF(a),
                     LDI(a), &beta, F(c), LDI(c)));
    CK(ccu_k_mirror_lower, (d->stream, F(c), n, LD(c)));
fail:
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Factorisations and solves

static int cholesky_dev(struct ccu_dev * d, struct caldera_tensor * a) {
    int rc = 0, lwork = 0, info = 0;
    float * work = NULL;
    int64_t n = ROWS(a);
    if (n == 0) return 0;
    if ((rc = refuse_nonfinite(d, a, "cholesky: matrix has NaN or Inf entries"))) goto fail;
    CS(cusolverDnSpotrf_bufferSize, (d->sol, CUBLAS_FILL_MODE_UPPER, (int) n, F(a), LDI(a), &lwork));
    if ((rc = dev_alloc(d, (size_t) (lwork > 0 ? lwork : 1) * sizeof(float), (void **) &work))) goto fail;
    CS(cusolverDnSpotrf, (d->sol, CUBLAS_FILL_MODE_UPPER, (int) n, F(a), LDI(a), work, lwork, d->info));
    if ((rc = solver_info(d, &info))) goto fail;
    if (info > 0) {
        char what[160];
        snprintf(what, sizeof(what), "cholesky: matrix (%lld x %lld) is not positive definite (leading minor %d)",
                 (long long) n, (long long) n, info);
        rc = fail_numeric(d, what);
        goto fail;
    }
    if (info < 0) {
        rc = fail_solver(d, "cusolverDnSpotrf (devInfo < 0: an invalid argument)", CUSOLVER_STATUS_INVALID_VALUE);
        goto fail;
    }
    CK(ccu_k_zero_upper, (d->stream, F(a), n, LD(a)));
fail:
    scratch_free(d, work);
    return rc;
}

static int be_cholesky(struct ccu_dev * d, struct caldera_tensor * a) {
    int rc = 0;
    ENTER();
    rc = cholesky_dev(d, a);
fail:
    return rc;
}

static int trsm_dev(struct ccu_dev * d, int right, int lower, int trans, int unit_diag, float alpha,
                    const struct caldera_tensor * t, struct caldera_tensor * b) {
    int rc = 0;
    if (ROWS(b) == 0 || COLS(b) == 0) return 0;
    CB(cublasStrsm, (d->blas, right ? CUBLAS_SIDE_LEFT : CUBLAS_SIDE_RIGHT,
                     lower ? CUBLAS_FILL_MODE_UPPER : CUBLAS_FILL_MODE_LOWER, trans ? CUBLAS_OP_T : CUBLAS_OP_N,
                     unit_diag ? CUBLAS_DIAG_UNIT : CUBLAS_DIAG_NON_UNIT, (int) COLS(b), (int) ROWS(b), &alpha, CF(t),
                     LDI(t), F(b), LDI(b)));
fail:
    return rc;
}

static int be_trsm(struct ccu_dev * d, int right, int lower, int trans, int unit_diag, float alpha,
                   const struct caldera_tensor * t, struct caldera_tensor * b) {
    int rc = 0;
    ENTER();
    rc = trsm_dev(d, right, lower, trans, unit_diag, alpha, t, b);
fail:
    return rc;
}

static int be_spd_inverse(struct ccu_dev * d, struct caldera_tensor * a) {
    int rc = 0, lwork = 0, info = 0;
    float * work = NULL;
    int64_t n = ROWS(a);
    ENTER();
    if ((rc = cholesky_dev(d, a)) || n == 0) goto fail;
    CS(cusolverDnSpotri_bufferSize, (d->sol, CUBLAS_FILL_MODE_UPPER, (int) n, F(a), LDI(a), &lwork));
    if ((rc = dev_alloc(d, (size_t) (lwork > 0 ? lwork : 1) * sizeof(float), (void **) &work))) goto fail;
    CS(cusolverDnSpotri, (d->sol, CUBLAS_FILL_MODE_UPPER, (int) n, F(a), LDI(a), work, lwork, d->info));
    if ((rc = solver_info(d, &info))) goto fail;
    if (info != 0) {
        char what[96];
        snprintf(what, sizeof(what), "spd_inverse: inversion failed (info %d)", info);
        rc = fail_numeric(d, what);
        goto fail;
    }
    CK(ccu_k_mirror_lower, (d->stream, F(a), n, LD(a)));
fail:
    scratch_free(d, work);
    return rc;
}

static int be_spd_solve(struct ccu_dev * d, const struct caldera_tensor * a, struct caldera_tensor * b) {
    int rc = 0;
    struct caldera_tensor f = { 0 };
    int64_t n = ROWS(a);
    ENTER();
    if (n == 0 || COLS(b) == 0) return 0;
    if ((rc = refuse_nonfinite(d, b, "spd_solve: right-hand side has NaN or Inf entries"))) goto fail;
    if ((rc = scratch(d, n, n, &f)) || (rc = copy_mat(d, &f, a)) || (rc = cholesky_dev(d, &f))) goto fail;
    // A = L Lᵀ: L Y = B, then Lᵀ X = Y
    if ((rc = trsm_dev(d, 0, 1, 0, 0, 1.0f, &f, b)) || (rc = trsm_dev(d, 0, 1, 1, 0, 1.0f, &f, b))) goto fail;
fail:
    scratch_free(d, f.data);
    return rc;
}

static int be_block_ldl(struct ccu_dev * d, const struct caldera_tensor * h, int64_t b, struct caldera_tensor * l,
                        struct caldera_tensor * dd) {
    int rc = 0;
    int64_t n = ROWS(h), nb = b > 0 ? n / b : 0;
    const float one = 1.0f, zero = 0.0f;
    ENTER();
    if (n == 0) return 0;
    // M = chol(H) in L; D_j = M_jj M_jjᵀ (all blocks in one strided batch); then
    // L[rows below block j, block j] = M[...] M_jj⁻¹ (a right triangular solve), identity on the diagonal.
    if ((rc = copy_mat(d, l, h)) || (rc = cholesky_dev(d, l))) goto fail;
    CU(cudaMemset2DAsync, (dd->data, (size_t) LD(dd) * sizeof(float), 0, (size_t) n * sizeof(float), (size_t) n, d->stream));
    {
        long long sl = (long long) (b * LD(l) + b), sd = (long long) (b * LD(dd) + b);
        CB(cublasSgemmStridedBatched, (d->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int) b, (int) b, (int) b, &one, CF(l), LDI(l),
                                       sl, CF(l), LDI(l), sl, &zero, F(dd), LDI(dd), sd, (int) nb));
    }
    for (int64_t j = 0; j + 1 < nb; j++) {
        int64_t j0 = j * b;
        struct caldera_tensor mjj = sub(l, j0, j0, b, b), below = sub(l, j0 + b, j0, n - j0 - b, b);
        if ((rc = trsm_dev(d, 1, 1, 0, 0, 1.0f, &mjj, &below))) goto fail;
    }
    CK(ccu_k_identity_blocks, (d->stream, F(l), n, LD(l), b));
    rc = refuse_nonfinite(d, l, "block_ldl: factor has NaN or Inf");
fail:
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Eigen- and singular value decompositions

static int be_eigh(struct ccu_dev * d, const struct caldera_tensor * a, float * w, struct caldera_tensor * v) {
    int rc = 0, lwork = 0, info = 0;
    float * work = NULL, * wd = NULL;
    struct caldera_tensor t = { 0 };
    int64_t n = ROWS(a);
    ENTER();
    if (n == 0) return 0;
    if ((rc = refuse_nonfinite(d, a, "eigh: matrix has NaN or Inf entries"))) goto fail;
    // A is symmetric, so its column-major view is A; the eigenvectors come back as the columns of
    // the column-major result, i.e. as rows of the row-major one: transpose into V.
    if ((rc = scratch(d, n, n, &t)) || (rc = copy_mat(d, &t, a))) goto fail;
    if ((rc = dev_alloc(d, (size_t) n * sizeof(float), (void **) &wd))) goto fail;
    CS(cusolverDnSsyevd_bufferSize, (d->sol, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, (int) n, F(&t), (int) n, wd,
                                     &lwork));
    if ((rc = dev_alloc(d, (size_t) (lwork > 0 ? lwork : 1) * sizeof(float), (void **) &work))) goto fail;
    CS(cusolverDnSsyevd, (d->sol, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, (int) n, F(&t), (int) n, wd, work,
                          lwork, d->info));
    if ((rc = solver_info(d, &info))) goto fail;
    if (info != 0) {
        char what[96];
        snprintf(what, sizeof(what), "eigh: eigensolver did not converge (info %d)", info);
        rc = fail_numeric(d, what);
        goto fail;
    }
    if ((rc = transpose(d, v, &t)) || (rc = download(d, w, wd, (size_t) n * sizeof(float)))) goto fail;
fail:
    scratch_free(d, work);
    scratch_free(d, wd);
    scratch_free(d, t.data);
    return rc;
}

// Thin SVD with s on the device (k = min(m, n) entries); u, vt may be NULL.
static int svd_dev(struct ccu_dev * d, const struct caldera_tensor * a, struct caldera_tensor * u, float * sd,
                   struct caldera_tensor * vt) {
    int rc = 0, lwork = 0, info = 0;
    float * work = NULL;
    struct caldera_tensor t = { 0 }, uc = { 0 }, vc = { 0 };
    int64_t m = ROWS(a), n = COLS(a), k = m < n ? m : n;
    if (k == 0) return 0;
    if ((rc = refuse_nonfinite(d, a, "svd: matrix has NaN or Inf entries"))) goto fail;
    if (m <= n) {
        // column-major Ac = Aᵀ (n × m, n >= m) = Uc S VTc  =>  A = VTcᵀ S Ucᵀ: the row-major U (m × k)
        // is the column-major VTc (k × m) and the row-major Vt (k × n) is the column-major Uc (n × k).
        if ((rc = scratch(d, m, n, &t)) || (rc = copy_mat(d, &t, a))) goto fail;
        CS(cusolverDnSgesvd_bufferSize, (d->sol, (int) n, (int) m, &lwork));
        if ((rc = dev_alloc(d, (size_t) (lwork > 0 ? lwork : 1) * sizeof(float), (void **) &work))) goto fail;
        CS(cusolverDnSgesvd, (d->sol, vt ? 'S' : 'N', u ? 'S' : 'N', (int) n, (int) m, F(&t), (int) n, sd,
                              vt ? F(vt) : NULL, vt ? LDI(vt) : 1, u ? F(u) : NULL, u ? LDI(u) : 1, work, lwork, NULL,
                              d->info));
    } else {
        // m > n: the column-major A (m × n) by a transpose; U and Vᵀ come back column-major and are
        // transposed into the row-major outputs.
        if ((rc = scratch(d, n, m, &t)) || (rc = transpose(d, &t, a))) goto fail;
        if ((rc = scratch(d, k, m, &uc)) || (rc = scratch(d, n, k, &vc))) goto fail;
        CS(cusolverDnSgesvd_bufferSize, (d->sol, (int) m, (int) n, &lwork));
        if ((rc = dev_alloc(d, (size_t) (lwork > 0 ? lwork : 1) * sizeof(float), (void **) &work))) goto fail;
        CS(cusolverDnSgesvd, (d->sol, u ? 'S' : 'N', vt ? 'S' : 'N', (int) m, (int) n, F(&t), (int) m, sd, F(&uc),
                              (int) m, F(&vc), (int) k, work, lwork, NULL, d->info));
    }
    if ((rc = solver_info(d, &info))) goto fail;
    if (info != 0) {
        char what[128];
        snprintf(what, sizeof(what), "svd: %lld x %lld SVD did not converge (info %d)", (long long) m, (long long) n, info);
        rc = fail_numeric(d, what);
        goto fail;
    }
    if (m > n) {
        // uc holds column-major U (m × k, ld m) = row-major (k × m); vc column-major Vᵀ (k × n, ld k) = row-major (n × k)
        if (u && (rc = transpose(d, u, &uc))) goto fail;
        if (vt && (rc = transpose(d, vt, &vc))) goto fail;
    }
fail:
    scratch_free(d, work);
    scratch_free(d, t.data);
    scratch_free(d, uc.data);
    scratch_free(d, vc.data);
    return rc;
}

static int be_svd(struct ccu_dev * d, const struct caldera_tensor * a, struct caldera_tensor * u, float * s,
                  struct caldera_tensor * vt) {
    int rc = 0;
    float * sd = NULL;
    int64_t m = ROWS(a), n = COLS(a), k = m < n ? m : n;
    ENTER();
    if (k == 0) return 0;
    if ((rc = dev_alloc(d, (size_t) k * sizeof(float), (void **) &sd))) goto fail;
    if ((rc = svd_dev(d, a, u, sd, vt)) || (rc = download(d, s, sd, (size_t) k * sizeof(float)))) goto fail;
fail:
    scratch_free(d, sd);
    return rc;
}

// Orthonormalise the columns of a row-major dense y (rows × l) in place: Householder QR of its
// column-major copy, then back.
static int orthonormalize(struct ccu_dev * d, struct caldera_tensor * y) {
    int rc = 0, lw1 = 0, lw2 = 0, info = 0;
    int64_t rows = ROWS(y), l = COLS(y);
    struct caldera_tensor q = { 0 };
    float * tau = NULL, * work = NULL;
    if ((rc = scratch(d, l, rows, &q)) || (rc = transpose(d, &q, y))) goto fail;   // column-major (rows × l)
    if ((rc = dev_alloc(d, (size_t) l * sizeof(float), (void **) &tau))) goto fail;
    CS(cusolverDnSgeqrf_bufferSize, (d->sol, (int) rows, (int) l, F(&q), (int) rows, &lw1));
    CS(cusolverDnSorgqr_bufferSize, (d->sol, (int) rows, (int) l, (int) l, F(&q), (int) rows, tau, &lw2));
    if (lw2 > lw1) lw1 = lw2;
    if ((rc = dev_alloc(d, (size_t) (lw1 > 0 ? lw1 : 1) * sizeof(float), (void **) &work))) goto fail;
    CS(cusolverDnSgeqrf, (d->sol, (int) rows, (int) l, F(&q), (int) rows, tau, work, lw1, d->info));
    if ((rc = solver_info(d, &info))) goto fail;
    if (info == 0) {
        CS(cusolverDnSorgqr, (d->sol, (int) rows, (int) l, (int) l, F(&q), (int) rows, tau, work, lw1, d->info));
        if ((rc = solver_info(d, &info))) goto fail;
    }
    if (info != 0) {
        char what[64];
        snprintf(what, sizeof(what), "svd_trunc: QR failed (info %d)", info);
        rc = fail_numeric(d, what);
        goto fail;
    }
    rc = transpose(d, y, &q);
fail:
    scratch_free(d, q.data);
    scratch_free(d, tau);
    scratch_free(d, work);
    return rc;
}

static int be_svd_rand(struct ccu_dev * d, const struct caldera_tensor * a, int64_t k, int64_t l, int power_iters,
                       const float * omega, struct caldera_tensor * u, float * s, struct caldera_tensor * vt) {
    int rc = 0;
    int64_t m = ROWS(a), n = COLS(a);
    struct caldera_tensor om = { 0 }, y = { 0 }, z = { 0 }, bm = { 0 }, ub = { 0 }, vb = { 0 };
    float * sd = NULL;
    ENTER();
    if ((rc = refuse_nonfinite(d, a, "svd_trunc: matrix has NaN or Inf entries"))) goto fail;
    // the range finder of the CPU code (Halko et al. 2011, Alg. 4.4), the same Ω
    if ((rc = scratch(d, n, l, &om)) || (rc = scratch(d, m, l, &y)) || (rc = scratch(d, n, l, &z)) ||
        (rc = scratch(d, l, n, &bm)) || (rc = scratch(d, l, l, &ub)) || (rc = scratch(d, l, n, &vb))) {
        goto fail;
    }
    if ((rc = dev_alloc(d, (size_t) l * sizeof(float), (void **) &sd))) goto fail;
    CU(cudaMemcpyAsync, (om.data, omega, (size_t) (n * l) * sizeof(float), cudaMemcpyHostToDevice, d->stream));
    if ((rc = gemm_dev(d, 0, 0, 1.0f, a, &om, 0.0f, &y)) || (rc = orthonormalize(d, &y))) goto fail;
    for (int it = 0; it < power_iters; it++) {
        if ((rc = gemm_dev(d, 1, 0, 1.0f, a, &y, 0.0f, &z)) || (rc = orthonormalize(d, &z))) goto fail;
        if ((rc = gemm_dev(d, 0, 0, 1.0f, a, &z, 0.0f, &y)) || (rc = orthonormalize(d, &y))) goto fail;
    }
    if ((rc = gemm_dev(d, 1, 0, 1.0f, &y, a, 0.0f, &bm)) || (rc = svd_dev(d, &bm, &ub, sd, &vb))) goto fail;
    if ((rc = download(d, s, sd, (size_t) k * sizeof(float)))) goto fail;
    if (u) {   // U = Y · Ub[:, :k]
        struct caldera_tensor ubk = sub(&ub, 0, 0, l, k);
        if ((rc = gemm_dev(d, 0, 0, 1.0f, &y, &ubk, 0.0f, u))) goto fail;
    }
    if (vt) {
        struct caldera_tensor vbk = sub(&vb, 0, 0, k, n);
        if ((rc = copy_mat(d, vt, &vbk))) goto fail;
    }
    CU(cudaStreamSynchronize, (d->stream));   // omega is the caller's host memory
fail:
    if (rc) cudaStreamSynchronize(d->stream);
    scratch_free(d, om.data);
    scratch_free(d, y.data);
    scratch_free(d, z.data);
    scratch_free(d, bm.data);
    scratch_free(d, ub.data);
    scratch_free(d, vb.data);
    scratch_free(d, sd);
    return rc;
}

static int be_lstsq(struct ccu_dev * d, const struct caldera_tensor * a, const struct caldera_tensor * b,
                    struct caldera_tensor * x) {
    int rc = 0;
    int64_t m = ROWS(a), n = COLS(a), p = COLS(b), k = m < n ? m : n;
    struct caldera_tensor u = { 0 }, vt = { 0 }, t = { 0 };
    float * sd = NULL, * si = NULL;
    ENTER();
    if (n == 0 || p == 0) return 0;
    if (m == 0) {   // no equations: the minimum-norm solution is 0
        CU(cudaMemset2DAsync, (x->data, (size_t) LD(x) * sizeof(float), 0, (size_t) p * sizeof(float), (size_t) n, d->stream));
        return 0;
    }
    if ((rc = refuse_nonfinite(d, b, "lstsq: NaN or Inf in input"))) goto fail;
    // minimum-norm least squares by the SVD: X = V diag(1/s, cut at eps · s_max) Uᵀ B (LAPACK's
    // gelsd rule with rcond < 0, eps = FLT_EPSILON / 2)
    if ((rc = scratch(d, m, k, &u)) || (rc = scratch(d, k, n, &vt)) || (rc = scratch(d, k, p, &t))) goto fail;
    if ((rc = dev_alloc(d, (size_t) k * sizeof(float), (void **) &sd)) ||
        (rc = dev_alloc(d, (size_t) k * sizeof(float), (void **) &si))) {
        goto fail;
    }
    if ((rc = svd_dev(d, a, &u, sd, &vt))) goto fail;
    CK(ccu_k_pinv_diag, (d->stream, sd, si, k, FLT_EPSILON / 2));
    if ((rc = gemm_dev(d, 1, 0, 1.0f, &u, b, 0.0f, &t))) goto fail;
    CK(ccu_k_scale_rows, (d->stream, F(&t), k, p, p, si));
    rc = gemm_dev(d, 1, 0, 1.0f, &vt, &t, 0.0f, x);
fail:
    scratch_free(d, u.data);
    scratch_free(d, vt.data);
    scratch_free(d, t.data);
    scratch_free(d, sd);
    scratch_free(d, si);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// FWHT, trace, checks

static int be_fwht(struct ccu_dev * d, struct caldera_tensor * a) {
    int rc = 0;
    ENTER();
    CK(ccu_k_fwht, (d->stream, F(a), ROWS(a), COLS(a), LD(a)));
fail:
    return rc;
}

static int be_trace_quad(struct ccu_dev * d, const struct caldera_tensor * a, const struct caldera_tensor * h,
                         double * out) {
    int rc = 0;
    int64_t m = ROWS(a), n = COLS(a);
    struct caldera_tensor ah = { 0 };
    double * rows = NULL;
    ENTER();
    *out = 0;
    if (m == 0 || n == 0) return 0;
    if ((rc = scratch(d, m, n, &ah)) || (rc = dev_alloc(d, (size_t) (m + 1) * sizeof(double), (void **) &rows))) goto fail;
    if ((rc = gemm_dev(d, 0, 0, 1.0f, a, h, 0.0f, &ah))) goto fail;
    CK(ccu_k_row_dot, (d->stream, CF(a), LD(a), CF(&ah), n, m, n, rows));
    CK(ccu_k_sum, (d->stream, rows, m, rows + m));
    rc = download(d, out, rows + m, sizeof(double));
fail:
    scratch_free(d, ah.data);
    scratch_free(d, rows);
    return rc;
}

static int be_count_nonfinite(struct ccu_dev * d, const struct caldera_tensor * a, int64_t * out) {
    int rc = 0;
    ENTER();
    rc = count_nonfinite_dev(d, a, out);
fail:
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Quantizer kernels

static int be_e8p_round(struct ccu_dev * d, const struct e8p_tables * tab, int bits, const struct caldera_tensor * x,
                        const float * scale, int64_t nscale, uint16_t * c1, uint16_t * c2, int64_t ldc,
                        struct caldera_tensor * x_hat) {
    int rc = 0;
    ENTER();
    if (!d->tab) CU(cudaMalloc, ((void **) &d->tab, sizeof(*d->tab)));
    if (memcmp(&d->tab_host, tab, sizeof(*tab)) != 0) {   // upload once per contents
        CU(cudaMemcpyAsync, (d->tab, tab, sizeof(*tab), cudaMemcpyHostToDevice, d->stream));
        CU(cudaStreamSynchronize, (d->stream));
        memcpy(&d->tab_host, tab, sizeof(*tab));
    }
    CK(ccu_k_e8p_round, (d->stream, d->tab, bits, CF(x), LD(x), ROWS(x), COLS(x), scale, nscale, c1, bits > 2 ? c2 : NULL,
                         ldc, F(x_hat), LD(x_hat)));
fail:
    return rc;
}

static int be_uniform_round(struct ccu_dev * d, const struct uniform_rule * r, int granularity, int64_t ngr,
                            int64_t group_size, int64_t col0, const struct caldera_tensor * x, const float * scale,
                            const float * zero, uint8_t * codes, int64_t ldc, struct caldera_tensor * x_hat) {
    int rc = 0;
    ENTER();
    CK(ccu_k_uniform_round, (d->stream, r, granularity, ngr, group_size, col0, CF(x), LD(x), ROWS(x), COLS(x), scale,
                             zero, codes, ldc, F(x_hat), LD(x_hat)));
fail:
    return rc;
}

static int be_ldlq_gather(struct ccu_dev * d, const float * xt, int64_t m, int64_t j0, int64_t b, float * xj) {
    int rc = 0;
    ENTER();
    CK(ccu_k_ldlq_gather, (d->stream, xt, m, j0, b, xj));
fail:
    return rc;
}

static int be_ldlq_scatter(struct ccu_dev * d, const float * qj, const float * wt, int64_t m, int64_t j0, int64_t jl,
                           int64_t b, float * hbt, float * dbt) {
    int rc = 0;
    ENTER();
    CK(ccu_k_ldlq_scatter, (d->stream, qj, wt, m, j0, jl, b, hbt, dbt));
fail:
    return rc;
}

static int be_ldlq_loss(struct ccu_dev * d, const float * xj, const float * qj, const float * dj, int64_t m, int64_t b,
                        double * loss) {
    int rc = 0;
    double * rows = NULL;
    ENTER();
    *loss = 0;
    if (m == 0) return 0;
    if ((rc = dev_alloc(d, (size_t) (m + 1) * sizeof(double), (void **) &rows))) goto fail;
    CK(ccu_k_ldlq_row_loss, (d->stream, xj, qj, dj, m, b, rows));
    CK(ccu_k_sum, (d->stream, rows, m, rows + m));
    rc = download(d, loss, rows + m, sizeof(double));
fail:
    scratch_free(d, rows);
    return rc;
}

static int be_ldlq_tune_target(struct ccu_dev * d, const float * old, const float * gj, const float * hi, int64_t m,
                               int64_t b, float * xs) {
    int rc = 0;
    ENTER();
    CK(ccu_k_ldlq_tune_target, (d->stream, old, gj, hi, m, b, xs));
fail:
    return rc;
}

static int be_ldlq_tune_guard(struct ccu_dev * d, const float * q, const float * old, const float * hjj, int64_t ldh,
                              int64_t m, int64_t b, float * xs, int64_t * kept) {
    int rc = 0;
    unsigned long long * cnt = NULL, host = 0;
    ENTER();
    *kept = 0;
    if ((rc = dev_alloc(d, sizeof(*cnt), (void **) &cnt))) goto fail;
    CU(cudaMemsetAsync, (cnt, 0, sizeof(*cnt), d->stream));
    CK(ccu_k_ldlq_tune_guard, (d->stream, q, old, hjj, ldh, m, b, xs, cnt));
    if ((rc = download(d, &host, cnt, sizeof(host)))) goto fail;
    *kept = (int64_t) host;
fail:
    scratch_free(d, cnt);
    return rc;
}

static int be_ldlq_tune_update(struct ccu_dev * d, const float * q, int64_t m, int64_t j0, int64_t b, float * ht,
                               float * dt, const float * wt, float * dqt) {
    int rc = 0;
    ENTER();
    CK(ccu_k_ldlq_tune_update, (d->stream, q, m, j0, b, ht, dt, wt, dqt));
fail:
    return rc;
}

static int be_kw_decode(struct ccu_dev * d, const struct caldera_kw * w, float * dst, int64_t ld) {
    int rc = 0;
    ENTER();
    CK(ccu_k_kw_decode, (d->stream, w, dst, ld));
fail:
    return rc;
}

static const struct caldera_cuda_backend backend = {
    .version         = CALDERA_CUDA_BACKEND_VERSION,
    .size            = sizeof(struct caldera_cuda_backend),
    .device_count    = be_device_count,
    .open            = be_open,
    .close           = be_close,
    .err             = be_err,
    .name            = be_name,
    .dmalloc         = be_dmalloc,
    .dfree           = be_dfree,
    .copy2d          = be_copy2d,
    .sync            = be_sync,
    .gemm            = be_gemm,
    .syrk            = be_syrk,
    .cholesky        = be_cholesky,
    .trsm            = be_trsm,
    .spd_inverse     = be_spd_inverse,
    .spd_solve       = be_spd_solve,
    .block_ldl       = be_block_ldl,
    .eigh            = be_eigh,
    .svd             = be_svd,
    .svd_rand        = be_svd_rand,
    .lstsq           = be_lstsq,
    .fwht            = be_fwht,
    .trace_quad      = be_trace_quad,
    .count_nonfinite = be_count_nonfinite,
    .e8p_round       = be_e8p_round,
    .uniform_round   = be_uniform_round,
    .ldlq_gather     = be_ldlq_gather,
    .ldlq_scatter    = be_ldlq_scatter,
    .ldlq_loss       = be_ldlq_loss,
    .ldlq_tune_target = be_ldlq_tune_target,
    .ldlq_tune_guard  = be_ldlq_tune_guard,
    .ldlq_tune_update = be_ldlq_tune_update,
    .kw_decode        = be_kw_decode,
};

__attribute__((visibility("default"))) const struct caldera_cuda_backend * caldera_cuda_backend(void);
const struct caldera_cuda_backend * caldera_cuda_backend(void) { return &backend; }
