// SPDX-License-Identifier: MIT
// caldera-plugin.h: the plugin ABI of caldera, and the only header a plugin needs.
// A plugin is one const descriptor (struct caldera_plugin) returned by one exported entry
// symbol; it calls the core for memory, logging, errors, tensors, linear algebra and threads.
// Structs marked "ABI" grow only at the end; incompatible changes bump
// CALDERA_PLUGIN_ABI_VERSION (see docs/plugin-authoring.md).
#ifndef CALDERA_PLUGIN_H
#define CALDERA_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#pragma GCC visibility push(default) // the public API is exported from libcaldera
#endif

#define CALDERA_PLUGIN_ABI_VERSION 1

#if defined(_WIN32)
#define CALDERA_EXPORT __declspec(dllexport)
#else
#define CALDERA_EXPORT __attribute__((visibility("default")))
#endif

#if defined(__GNUC__)
#define CALDERA_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CALDERA_PRINTF(a, b)
#endif

// ---------------------------------------------------------------------------------------------
// Status codes: 0 is success, failures are negative.

enum caldera_status {
    CALDERA_OK              =   0,
    CALDERA_ERR_NOMEM       =  -1, ///< an allocation failed
    CALDERA_ERR_INVAL       =  -2, ///< invalid argument (a caller's bug, or bad configuration)
    CALDERA_ERR_RANGE       =  -3, ///< a value out of its allowed range
    CALDERA_ERR_NOT_FOUND   =  -4, ///< a plugin, section, key, tensor or file does not exist
    CALDERA_ERR_PLUGIN_LOAD =  -5, ///< a shared object could not be loaded as a plugin
    CALDERA_ERR_PLUGIN_DUP  =  -6, ///< a plugin of that name is already registered
    CALDERA_ERR_ABI         =  -7, ///< plugin built for another ABI version
    CALDERA_ERR_IO          =  -8, ///< read, write, mmap or rename failed
    CALDERA_ERR_FORMAT      =  -9, ///< malformed file contents
    CALDERA_ERR_UNSUPPORTED = -10, ///< valid, but not something this plugin can do
    CALDERA_ERR_NUMERIC     = -11, ///< NaN/Inf, not positive definite, no convergence
    CALDERA_ERR_DEVICE      = -12, ///< CUDA / cuBLAS / cuSOLVER failure
    CALDERA_ERR_CANCELLED   = -13, ///< stopped on request
    CALDERA_ERR_BUG         = -14, ///< a broken internal invariant
    CALDERA_ERR_CONFIG      = -15, ///< configuration errors were reported (see diagnostics)
};

/** Human-readable name of a status code; never NULL. */
const char * caldera_status_str(int status);

// ---------------------------------------------------------------------------------------------
// Opaque handles owned by the core.

struct caldera_ctx;   ///< library context: plugins, threads, log, last error
struct caldera_inst;  ///< one configured instance of a plugin ([section] of an INI)
struct caldera_meta;  ///< typed key/value store (GGUF-like): model metadata, per-tensor info
struct caldera_pack;  ///< named tensors that make up one compressed weight

// ---------------------------------------------------------------------------------------------
// Memory. Every allocation of the core and of plugins goes through these (so tests can make
// the Nth allocation fail). caldera_malloc memory is 64-byte aligned.

void * caldera_malloc(size_t size);
void * caldera_calloc(size_t n, size_t size);
void * caldera_realloc(void * ptr, size_t size);  ///< not aligned beyond malloc's 16 bytes
void   caldera_free(void * ptr);                  ///< NULL is a no-op; pairs with malloc/calloc
void   caldera_free_unaligned(void * ptr);        ///< pairs with caldera_realloc
void   caldera_freep(void * pptr);                ///< frees *(void **)pptr and sets it to NULL
char * caldera_strdup(const char * s);            ///< free with caldera_free

/** Test hook: make the n-th allocation from now fail (n >= 1); 0 turns it off. */
void    caldera_alloc_fail_at(int64_t n);
/** Number of allocations made since the process started (for OOM sweeps). */
int64_t caldera_alloc_count(void);

// ---------------------------------------------------------------------------------------------
// Logging and errors. Plugins never print or exit.

enum caldera_log_level {
    CALDERA_LOG_ERROR = 0,
    CALDERA_LOG_WARN  = 1,
    CALDERA_LOG_INFO  = 2,
    CALDERA_LOG_DEBUG = 3,
};

void caldera_log(struct caldera_ctx * ctx, enum caldera_log_level level, const char * fmt, ...)
    CALDERA_PRINTF(3, 4);
/** Log with the instance prefix "[section] plugin: ". */
void caldera_inst_log(const struct caldera_inst * inst, enum caldera_log_level level,
                      const char * fmt, ...) CALDERA_PRINTF(3, 4);
/**
 * Record the context's last error message "[section] plugin: <text>" and return @p code,
 * so plugins write `return caldera_error(inst, CALDERA_ERR_UNSUPPORTED, "...");`.
 */
int caldera_error(const struct caldera_inst * inst, int code, const char * fmt, ...)
    CALDERA_PRINTF(3, 4);
/** The same for core code without an instance. */
int caldera_ctx_error(struct caldera_ctx * ctx, int code, const char * fmt, ...)
    CALDERA_PRINTF(3, 4);
/** Last error message of the context ("" if none); valid until the next error. */
const char * caldera_ctx_errmsg(const struct caldera_ctx * ctx);

// ---------------------------------------------------------------------------------------------
// Data types and tensors.

enum caldera_dtype {
    CALDERA_DTYPE_F32 = 0,
    CALDERA_DTYPE_F64,
    CALDERA_DTYPE_F16,
    CALDERA_DTYPE_BF16,
    CALDERA_DTYPE_F8_E4M3,
    CALDERA_DTYPE_F8_E5M2,
    CALDERA_DTYPE_I8,
    CALDERA_DTYPE_U8,
    CALDERA_DTYPE_I16,
    CALDERA_DTYPE_U16,
    CALDERA_DTYPE_I32,
    CALDERA_DTYPE_U32,
    CALDERA_DTYPE_I64,
    CALDERA_DTYPE_U64,
    CALDERA_DTYPE_BOOL,
    // ggml block-quantized storage types (read by the gguf plugin; dequantized there).
    CALDERA_DTYPE_Q4_0,
    CALDERA_DTYPE_Q4_1,
    CALDERA_DTYPE_Q5_0,
    CALDERA_DTYPE_Q5_1,
    CALDERA_DTYPE_Q8_0,
    CALDERA_DTYPE_Q8_1,
    CALDERA_DTYPE_Q2_K,
    CALDERA_DTYPE_Q3_K,
    CALDERA_DTYPE_Q4_K,
    CALDERA_DTYPE_Q5_K,
    CALDERA_DTYPE_Q6_K,
    CALDERA_DTYPE_Q8_K,
    CALDERA_DTYPE_COUNT
};

/** Name of a dtype ("f32", "bf16", "q4_k", ...); "?" for an invalid value. */
const char * caldera_dtype_name(enum caldera_dtype type);
/** Parse a dtype name (case-insensitive); CALDERA_ERR_NOT_FOUND if unknown. */
int caldera_dtype_from_name(const char * name, enum caldera_dtype * out);
/** Elements per storage block (1 for plain types, 32 or 256 for ggml block types). */
int64_t caldera_dtype_block_elems(enum caldera_dtype type);
/** Bytes per storage block (the element size for plain types). */
size_t  caldera_dtype_block_bytes(enum caldera_dtype type);
/**
 * Bytes for n elements of @p type; CALDERA_ERR_INVAL if n is not a multiple of the block, and
 * CALDERA_ERR_RANGE if the size overflows.
 */
int caldera_dtype_nbytes(enum caldera_dtype type, int64_t n, size_t * out);

enum caldera_device {
    CALDERA_DEVICE_CPU  = 0,
    CALDERA_DEVICE_CUDA = 1,
};

#define CALDERA_MAX_DIMS 4

/**
 * A view of an n-d array; it never owns memory. Row-major: ne[0] is the slowest dimension
 * (PyTorch order, so a weight is (out_features, in_features)). For 2-d views, @ref ld is the
 * distance in elements between consecutive rows (>= ne[1]); other ranks are contiguous.
 */
struct caldera_tensor {
    void *              data;     ///< first element
    enum caldera_dtype  dtype;
    enum caldera_device device;
    int32_t             ndim;     ///< 1 .. CALDERA_MAX_DIMS
    int64_t             ne[CALDERA_MAX_DIMS];
    int64_t             ld;       ///< 2-d row stride in elements
};

/** A contiguous 2-d f32 view over caller memory: (rows, cols), ld = cols. */
struct caldera_tensor caldera_tensor_view_f32(float * data, int64_t rows, int64_t cols);
/** Number of elements (product of ne[0..ndim-1]). */
int64_t caldera_tensor_nelements(const struct caldera_tensor * t);
/**
 * Checked element count of a shape read from untrusted bytes: *n = ne[0]·…·ne[ndim−1]. Returns 0,
 * or -1 when a dimension is negative or when the product of the non-zero dimensions overflows
 * int64_t, whatever the order: a shape such as (2^56, 256, 0) has no elements but is refused,
 * since code that multiplies some of its dimensions (rows = ne[0]·ne[1]) would overflow.
 * On -1, *bad_dim (if not NULL) is the dimension at which the check failed.
 */
int caldera_shape_nelements(int32_t ndim, const int64_t * ne, int64_t * n, int32_t * bad_dim);
/**
 * Allocate an owning CPU tensor (zero-filled, 64-byte aligned): the result's data is freed with
 * caldera_tensor_free. ne has ndim entries.
 */
int  caldera_tensor_alloc(struct caldera_ctx * ctx, enum caldera_dtype dtype, int32_t ndim,
                          const int64_t * ne, struct caldera_tensor * out);
/**
 * The same on a device: CALDERA_DEVICE_CUDA allocates device memory (zero-filled, plain dtypes
 * only) on the context's GPU, CALDERA_ERR_DEVICE without one, CALDERA_ERR_UNSUPPORTED in a build
 * without CUDA. caldera_tensor_copy moves data between host and device tensors (same dtype);
 * caldera_linalg_* take device tensors and then run on the GPU.
 */
int  caldera_tensor_alloc_device(struct caldera_ctx * ctx, enum caldera_device device, enum caldera_dtype dtype,
                                 int32_t ndim, const int64_t * ne, struct caldera_tensor * out);
/** Convenience: a (rows, cols) f32 CPU tensor. */
int  caldera_tensor_alloc_f32(struct caldera_ctx * ctx, int64_t rows, int64_t cols,
                              struct caldera_tensor * out);
/** Free what caldera_tensor_alloc allocated and zero the struct; safe on a zeroed struct. */
void caldera_tensor_free(struct caldera_tensor * t);
/** Copy src to dst (same shape; dtype converted where a conversion exists). */
int  caldera_tensor_copy(struct caldera_ctx * ctx, struct caldera_tensor * dst,
                         const struct caldera_tensor * src);
/** CALDERA_ERR_NUMERIC if any element of an f32/f64 tensor is NaN or Inf (first index reported). */
int  caldera_tensor_check_finite(const struct caldera_tensor * t, int64_t * first_bad);

/**
 * Check a plugin's matrix argument: a 2-d f32 CPU tensor with ld >= cols and shape (rows, cols),
 * where -1 accepts any size. CALDERA_ERR_INVAL with "<where>: <what> ..." (what is wrong and
 * what is allowed) in the context otherwise.
 */
int caldera_check_matrix(const struct caldera_inst * inst, const char * where, const char * what,
                         const struct caldera_tensor * t, int64_t rows, int64_t cols);
/** CALDERA_ERR_NUMERIC "<where>: <what> has a NaN or Inf at (row, col)" if a 2-d f32 t is not finite. */
int caldera_check_finite(const struct caldera_inst * inst, const char * where, const char * what,
                         const struct caldera_tensor * t);

/**
 * Convert n elements of a plain (non-block) dtype to f32 / from f32 (round to nearest even).
 * Returns CALDERA_ERR_UNSUPPORTED for block types.
 */
int   caldera_convert_to_f32(enum caldera_dtype type, const void * src, int64_t n, float * dst);
int   caldera_convert_from_f32(enum caldera_dtype type, const float * src, int64_t n, void * dst);
float    caldera_f16_to_f32(uint16_t h);
uint16_t caldera_f32_to_f16(float f);
float    caldera_bf16_to_f32(uint16_t h);
uint16_t caldera_f32_to_bf16(float f);

// ---------------------------------------------------------------------------------------------
// Typed key/value metadata (GGUF's value model: scalars, strings and arrays of them).

enum caldera_meta_type {
    CALDERA_META_U8 = 0, CALDERA_META_I8, CALDERA_META_U16, CALDERA_META_I16,
    CALDERA_META_U32, CALDERA_META_I32, CALDERA_META_F32, CALDERA_META_BOOL,
    CALDERA_META_STRING, CALDERA_META_ARRAY, CALDERA_META_U64, CALDERA_META_I64,
    CALDERA_META_F64,
    CALDERA_META_COUNT
};  // the values match GGUF's gguf_type

int  caldera_meta_init(struct caldera_meta ** out);
void caldera_meta_free(struct caldera_meta * meta);
int  caldera_meta_copy(struct caldera_meta * dst, const struct caldera_meta * src); ///< adds/overwrites
/** Set a scalar of integer type @p type (U8..I64, BOOL) from v; replaces an existing key. */
int  caldera_meta_set_int(struct caldera_meta * meta, const char * key, enum caldera_meta_type type,
                          int64_t v);
int  caldera_meta_set_uint64(struct caldera_meta * meta, const char * key, uint64_t v);
int  caldera_meta_set_float(struct caldera_meta * meta, const char * key, enum caldera_meta_type type,
                            double v); ///< F32 or F64
int  caldera_meta_set_string(struct caldera_meta * meta, const char * key, const char * v);
int  caldera_meta_set_string_n(struct caldera_meta * meta, const char * key, const char * v, size_t len);
/**
 * Set an array. For numeric element types @p data holds n packed elements of that type; for
 * STRING it is `const char * const *` (NUL-terminated strings). Nested arrays: not supported.
 */
int  caldera_meta_set_array(struct caldera_meta * meta, const char * key,
                            enum caldera_meta_type elem_type, int64_t n, const void * data);
/** Set a STRING array from (pointer, length) pairs, for strings that are not NUL-terminated. */
int  caldera_meta_set_string_array_n(struct caldera_meta * meta, const char * key, int64_t n,
                                     const char * const * strs, const size_t * lens);

int64_t      caldera_meta_count(const struct caldera_meta * meta);
const char * caldera_meta_key(const struct caldera_meta * meta, int64_t i);          ///< insertion order
int          caldera_meta_find(const struct caldera_meta * meta, const char * key);  ///< index or -1
enum caldera_meta_type caldera_meta_type_of(const struct caldera_meta * meta, int64_t i);
/** Getters convert between numeric types (an integer read as double, etc.); a missing key is
 *  CALDERA_ERR_NOT_FOUND, a string asked as a number CALDERA_ERR_INVAL. */
int  caldera_meta_get_int(const struct caldera_meta * meta, const char * key, int64_t * out);
int  caldera_meta_get_float(const struct caldera_meta * meta, const char * key, double * out);
int  caldera_meta_get_string(const struct caldera_meta * meta, const char * key, const char ** out);
/** A string with its byte length (strings may hold NUL bytes, e.g. GGUF tokens). */
int  caldera_meta_get_string_n(const struct caldera_meta * meta, const char * key, const char ** out, size_t * len);
/** A STRING array with the byte length of every element. */
int  caldera_meta_get_string_array_n(const struct caldera_meta * meta, const char * key, int64_t * n,
                                     const char * const ** strs, const size_t ** lens);
/** An unsigned 64-bit value (U64 beyond INT64_MAX included); CALDERA_ERR_RANGE for negative values. */
int  caldera_meta_get_uint64(const struct caldera_meta * meta, const char * key, uint64_t * out);
/** Array access: element type, length, and the packed data (numeric) or `char **` (STRING). */
int  caldera_meta_get_array(const struct caldera_meta * meta, const char * key,
                            enum caldera_meta_type * elem_type, int64_t * n, const void ** data);

// ---------------------------------------------------------------------------------------------
// Typed options. Plugins declare a static const table; the core parses INI values into the
// instance's private struct at `offset`:
//   BOOL -> int, INT -> int64_t, DOUBLE -> double, STRING/PATH -> char * (core-owned),
//   ENUM -> int, INT_LIST -> struct caldera_int_list, REF -> struct caldera_inst *.

enum caldera_opt_type {
    CALDERA_OPT_BOOL = 0,
    CALDERA_OPT_INT,
    CALDERA_OPT_DOUBLE,
    CALDERA_OPT_STRING,
    CALDERA_OPT_ENUM,
    CALDERA_OPT_PATH,
    CALDERA_OPT_INT_LIST,
    CALDERA_OPT_REF,
};

enum caldera_plugin_kind {
    CALDERA_PLUGIN_KIND_FORMAT = 0,
    CALDERA_PLUGIN_KIND_TRANSFORM,
    CALDERA_PLUGIN_KIND_QUANTIZER,
    CALDERA_PLUGIN_KIND_DECOMPOSER,
    CALDERA_PLUGIN_KIND_MODEL,
    CALDERA_PLUGIN_KIND_COUNT
};

/** "format", "transform", ...; "?" for an invalid kind. */
const char * caldera_plugin_kind_name(enum caldera_plugin_kind kind);

enum caldera_opt_flags {
    CALDERA_OPT_REQUIRED   = 1u << 0, ///< no default: must be set
    CALDERA_OPT_DEPRECATED = 1u << 1, ///< accepted with a warning
    CALDERA_OPT_EXPERT     = 1u << 2, ///< hidden from short help
    CALDERA_OPT_OPTIONAL_REF = 1u << 3, ///< REF that may be left empty (NULL)
};

struct caldera_opt_choice {
    const char * name;
    int64_t      value;
    const char * help;
};

struct caldera_int_list {
    int64_t * v;  ///< core-owned
    int64_t   n;
};

/** One option (ABI). A table ends with an entry whose name is NULL. */
struct caldera_option {
    const char *                      name;     ///< INI key, [a-z][a-z0-9_]*
    const char *                      help;     ///< one line
    size_t                            offset;   ///< offsetof(priv struct, field)
    enum caldera_opt_type             type;
    union { int64_t i64; double dbl; const char * str; } def; ///< default (ENUM: a value)
    double                            min, max; ///< inclusive, INT/DOUBLE/INT_LIST elements; min > max: no range
    const struct caldera_opt_choice * choices;  ///< ENUM only, ends with a NULL name
    enum caldera_plugin_kind          ref_kind; ///< REF only
    uint32_t                          flags;    ///< enum caldera_opt_flags
};

// ---------------------------------------------------------------------------------------------
// Instances.

void *                         caldera_inst_priv(const struct caldera_inst * inst);  ///< priv_size bytes
struct caldera_ctx *           caldera_inst_ctx(const struct caldera_inst * inst);
const char *                   caldera_inst_name(const struct caldera_inst * inst);  ///< section name
const struct caldera_plugin *  caldera_inst_plugin(const struct caldera_inst * inst);

// ---------------------------------------------------------------------------------------------
// Threads and randomness.

/** Number of threads the context may use (>= 1). */
int caldera_ctx_threads(const struct caldera_ctx * ctx);
/** Device new work should run on. */
enum caldera_device caldera_ctx_device(const struct caldera_ctx * ctx);

/**
 * Run fn(arg, i0, i1) over [0, n) split into contiguous chunks on the context's threads.
 * Chunks are at least @p grain items. fn must not call BLAS-3 linalg (that is threaded already).
 */
void caldera_parallel_for(struct caldera_ctx * ctx, int64_t n, int64_t grain,
                          void (*fn)(void * arg, int64_t i0, int64_t i1), void * arg);

/**
 * caldera_parallel_for whose fn may call the linalg functions: BLAS runs single-threaded inside
 * it (one call per thread at a time; the context's BLAS threads are restored after), so that
 * many small independent products run one per thread instead of each split over the threads.
 * Serial (fn(arg, 0, n)) when the context's device is not the CPU.
 */
void caldera_parallel_for_blas(struct caldera_ctx * ctx, int64_t n, int64_t grain,
                               void (*fn)(void * arg, int64_t i0, int64_t i1), void * arg);

/**
 * Run the n tasks [0, n) on the context's threads, fn(arg, i, i + 1) for each (fn(arg, 0, n) when
 * serial), for a few unequal pieces of work (the products of one decoded token). Unlike inside
 * caldera_parallel_for, a caldera_parallel_for or caldera_parallel_tasks called from a task is
 * split over the threads that run out of tasks (they help with its chunks) instead of running
 * serially. fn must not call BLAS-3 linalg.
 */
void caldera_parallel_tasks(struct caldera_ctx * ctx, int64_t n, void (*fn)(void * arg, int64_t i0, int64_t i1),
                            void * arg);

/** xoshiro256** generator seeded with splitmix64; identical streams on every platform. */
struct caldera_rng { uint64_t s[4]; };
void     caldera_rng_seed(struct caldera_rng * rng, uint64_t seed);
uint64_t caldera_rng_u64(struct caldera_rng * rng);
double   caldera_rng_uniform(struct caldera_rng * rng);  ///< [0, 1)
double   caldera_rng_normal(struct caldera_rng * rng);   ///< N(0, 1)
/** A seed derived from a base seed and a string (e.g. a tensor name): FNV-1a mixed. */
uint64_t caldera_seed_mix(uint64_t seed, const char * str);

// ---------------------------------------------------------------------------------------------
// Linear algebra on f32 2-d tensors (CPU: OpenBLAS + LAPACKE; CUDA: cuBLAS + cuSOLVER).
// All return 0 or a negative status; factorisations of matrices that are not positive
// definite, and SVD / eigensolver failures, return CALDERA_ERR_NUMERIC with a message.

enum caldera_trans { CALDERA_NO_TRANS = 0, CALDERA_TRANS = 1 };

/** C = alpha op(A) op(B) + beta C. */
int caldera_linalg_gemm(struct caldera_ctx * ctx, enum caldera_trans ta, enum caldera_trans tb,
                        float alpha, const struct caldera_tensor * a, const struct caldera_tensor * b,
                        float beta, struct caldera_tensor * c);
/** C = alpha A Aᵀ + beta C (trans = NO) or alpha Aᵀ A + beta C (TRANS); both triangles written. */
int caldera_linalg_syrk(struct caldera_ctx * ctx, enum caldera_trans trans, float alpha,
                        const struct caldera_tensor * a, float beta, struct caldera_tensor * c);
/** In place lower Cholesky A = L Lᵀ (the upper triangle is zeroed). */
int caldera_linalg_cholesky(struct caldera_ctx * ctx, struct caldera_tensor * a);
/**
 * Solve with a triangular matrix: B ← alpha op(T)⁻¹ B (left) or B ← alpha B op(T)⁻¹ (right).
 * @p lower says which triangle of T is used; @p unit_diag treats the diagonal as ones.
 */
int caldera_linalg_trsm(struct caldera_ctx * ctx, int right, int lower, enum caldera_trans trans,
                        int unit_diag, float alpha, const struct caldera_tensor * t,
                        struct caldera_tensor * b);
/** Inverse of a symmetric positive definite matrix, in place (via Cholesky). */
int caldera_linalg_spd_inverse(struct caldera_ctx * ctx, struct caldera_tensor * a);
/** Solve A X = B for symmetric positive definite A (A untouched; B overwritten by X). */
int caldera_linalg_spd_solve(struct caldera_ctx * ctx, const struct caldera_tensor * a,
                             struct caldera_tensor * b);
/**
 * Block LDL of a symmetric positive definite n×n H with block size b (n % b == 0):
 * H = L D Lᵀ, L unit block-lower-triangular (n×n), D block diagonal stored as n×n.
 * (algorithms.md §2: M = chol(H), D_j = M_jj M_jjᵀ, L = M blockdiag(M_jj)⁻¹).
 */
int caldera_linalg_block_ldl(struct caldera_ctx * ctx, const struct caldera_tensor * h, int64_t b,
                             struct caldera_tensor * l, struct caldera_tensor * d);
/** Symmetric eigendecomposition A = V diag(w) Vᵀ, w ascending (n), V (n×n) columns = vectors. */
int caldera_linalg_eigh(struct caldera_ctx * ctx, const struct caldera_tensor * a, float * w,
                        struct caldera_tensor * v);
/**
 * Thin SVD A = U diag(s) Vᵀ, A (m×n), k = min(m, n): U (m×k), s (k, descending), vt (k×n).
 * Any of u / vt may be NULL when not needed.
 */
int caldera_linalg_svd(struct caldera_ctx * ctx, const struct caldera_tensor * a,
                       struct caldera_tensor * u, float * s, struct caldera_tensor * vt);
/**
 * Rank-k truncated SVD: exact (via the full thin SVD) when oversample < 0, otherwise the
 * randomized range finder (Halko et al.) with @p oversample extra columns and @p power_iters
 * power iterations seeded by @p seed. u (m×k), s (k), vt (k×n); u or vt may be NULL.
 */
int caldera_linalg_svd_trunc(struct caldera_ctx * ctx, const struct caldera_tensor * a, int64_t k,
                             int64_t oversample, int power_iters, uint64_t seed,
                             struct caldera_tensor * u, float * s, struct caldera_tensor * vt);
/** Least squares: X = argmin ‖A X − B‖_F, A (m×n, m ≥ n full rank or not: SVD-based), B (m×p) → X (n×p). */
int caldera_linalg_lstsq(struct caldera_ctx * ctx, const struct caldera_tensor * a,
                         const struct caldera_tensor * b, struct caldera_tensor * x);
/**
 * In-place unnormalised fast Walsh–Hadamard transform (natural / Sylvester order) of every
 * row of a (rows × n) tensor; n must be a power of two. O(rows · n log n).
 */
int caldera_linalg_fwht(struct caldera_ctx * ctx, struct caldera_tensor * a);
/** tr(A H Aᵀ) for A (m×n), H (n×n) symmetric; in double precision. */
int caldera_linalg_trace_quad(struct caldera_ctx * ctx, const struct caldera_tensor * a,
                              const struct caldera_tensor * h, double * out);

// ---------------------------------------------------------------------------------------------
// Packs: the named tensors (codes, scales, factors, seeds) that one compressed weight is
// stored as, plus per-tensor metadata. Names are suffixes appended to the weight's name.
// Nested plugins (a decomposer calling a quantizer) push a prefix so their names don't clash.

/** Create an empty pack; free with caldera_pack_free (NULL is a no-op). */
int  caldera_pack_init(struct caldera_pack ** out);
void caldera_pack_free(struct caldera_pack * pack);
/**
 * Add a zero-filled tensor "<prefix><suffix>" and return a pointer to its data (CPU).
 * CALDERA_ERR_INVAL on a duplicate name.
 */
int  caldera_pack_add(struct caldera_pack * pack, const char * suffix, enum caldera_dtype dtype,
                      int32_t ndim, const int64_t * ne, void ** data);
/**
 * Add a view of t under "<prefix><suffix>": no copy, the pack does not own t's data (e.g. a
 * tensor mmapped by a format reader), which must outlive the pack. CALDERA_ERR_INVAL on a
 * duplicate name.
 */
int  caldera_pack_add_view(struct caldera_pack * pack, const char * suffix, const struct caldera_tensor * t);
/** Add a copy of tensor t under "<prefix><suffix>" (converted to @p dtype). */
int  caldera_pack_add_tensor(struct caldera_pack * pack, const char * suffix,
                             enum caldera_dtype dtype, const struct caldera_tensor * t);
/** Prefix stack for nested plugins ("Q.", "L.", ...). */
int  caldera_pack_push_prefix(struct caldera_pack * pack, const char * prefix);
void caldera_pack_pop_prefix(struct caldera_pack * pack);
/** Look up "<prefix><suffix>"; CALDERA_ERR_NOT_FOUND if absent. The view stays valid while the pack lives. */
int  caldera_pack_find(const struct caldera_pack * pack, const char * suffix, struct caldera_tensor * out);
int64_t      caldera_pack_count(const struct caldera_pack * pack);
const char * caldera_pack_name(const struct caldera_pack * pack, int64_t i);   ///< full name
int          caldera_pack_get(const struct caldera_pack * pack, int64_t i, struct caldera_tensor * out);
/** Per-weight metadata (plugin, parameters, errors); keys are written with the weight's name. */
struct caldera_meta * caldera_pack_meta(struct caldera_pack * pack);
/** Storage size of all tensors in the pack, in bits: the honest numerator of bits/parameter. */
uint64_t caldera_pack_bits(const struct caldera_pack * pack);

// ---------------------------------------------------------------------------------------------
// Kind-specific operations (ABI structs: each begins with its size).

/** Tensor listing entry of a format reader. */
struct caldera_tensor_info {
    const char *       name;      ///< name in the file
    const char *       hf_name;   ///< canonical Hugging Face name (== name if no mapping)
    enum caldera_dtype dtype;     ///< storage type (may be a block type)
    int32_t            ndim;
    int64_t            ne[CALDERA_MAX_DIMS]; ///< row-major, PyTorch order
    size_t             nbytes;    ///< bytes of stored data
};

/** Architecture hyper-parameters, common to every format (0 / "" when unknown). */
struct caldera_model_desc {
    char    arch[32];           ///< "llama", ...
    int64_t n_layers;
    int64_t hidden;             ///< embedding width
    int64_t ffn;                ///< feed-forward width
    int64_t n_heads;
    int64_t n_kv_heads;
    int64_t head_dim;
    int64_t vocab;
    int64_t ctx_len;
    double  rope_theta;
    char    rope_scaling[16];   ///< "" / "linear" / "yarn" ...
    double  rope_scaling_factor;
    double  norm_eps;
    int     tied_embeddings;    ///< output projection shares the token embedding
};

struct caldera_format_ops {
    uint32_t struct_size;  // sizeof(struct caldera_format_ops) the plugin was built with
    // (optional) 0..100 how likely path is this format (by magic/extension); NULL = never guessed
    int     (*probe_path)(const char * path);
    // open path for reading: headers only, data mmapped or read on demand
    int     (*open)(struct caldera_inst * inst, const char * path);
    // number of tensors of the open model
    int64_t (*n_tensors)(struct caldera_inst * inst);
    // info of tensor i (pointers stay valid until close)
    int     (*tensor_info)(struct caldera_inst * inst, int64_t i, struct caldera_tensor_info * out);
    // tensor i as @want (F32 for compute): a view when the stored dtype matches (then *owned = 0),
    // else a converted copy the caller frees with caldera_tensor_free (*owned = 1)
    int     (*read_tensor)(struct caldera_inst * inst, int64_t i, enum caldera_dtype want,
                           struct caldera_tensor * out, int * owned);
    // (optional) file metadata, tokenizer keys under GGUF names (tokenizer.ggml.*); NULL = none
    const struct caldera_meta * (*meta)(struct caldera_inst * inst);
    // (optional) architecture description; NULL = unknown
    int     (*model_desc)(struct caldera_inst * inst, struct caldera_model_desc * out);
    // (optional) release what open allocated; NULL = nothing to do (uninit runs anyway)
    void    (*close)(struct caldera_inst * inst);
    // (optional, writers) begin writing path (to a temporary name) with file metadata
    int     (*create)(struct caldera_inst * inst, const char * path, const struct caldera_meta * meta);
    // (optional, writers) add one tensor (any plain dtype)
    int     (*write_tensor)(struct caldera_inst * inst, const char * name, const struct caldera_tensor * t);
    // (optional, writers) commit != 0: complete the file and rename it into place; 0: remove it
    int     (*finish)(struct caldera_inst * inst, int commit);
    // (optional, writers) replace the file metadata given to create (called before finish(1),
    // e.g. with per-tensor results); NULL = the metadata given to create is final
    int     (*update_meta)(struct caldera_inst * inst, const struct caldera_meta * meta);
};

struct caldera_transform_ops {
    uint32_t struct_size;
    // W (m×n) and H (n×n, may be NULL) to the transformed domain: allocates w_out, h_out
    // (they may be larger when padding is needed), stores what inverse needs in pack and *state
    int  (*forward)(struct caldera_inst * inst, const char * tensor_name,
                    const struct caldera_tensor * w, const struct caldera_tensor * h,
                    struct caldera_tensor * w_out, struct caldera_tensor * h_out,
                    struct caldera_pack * pack, void ** state);
    // transformed-domain approximation w_t back to the original domain (allocates w_out, m×n)
    int  (*inverse)(struct caldera_inst * inst, void * state, const struct caldera_tensor * w_t,
                    struct caldera_tensor * w_out);
    // release state from forward; NULL state is a no-op
    void (*free_state)(struct caldera_inst * inst, void * state);
    // ---- (optional, appended) the transform on activations, for fused layers (caldera-kernels.h):
    // W x = out(W̃ in(x)) with W̃ the transformed weight as stored, never touching W̃ itself ----
    // from the tensors forward wrote to pack (same prefix) for a weight of rows × cols: state, and
    // the transformed weight's shape *rows_t × *cols_t (padding included); NULL = no activation form
    int  (*act_init)(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows, int64_t cols,
                     void ** state, int64_t * rows_t, int64_t * cols_t);
    // x (B × cols, f32) → x_t (B × cols_t, f32, preallocated): what W̃ multiplies
    int  (*act_in)(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                   struct caldera_tensor * x_t);
    // y_t (B × rows_t, f32; overwritten as scratch) → y (B × rows), or y += when accumulate
    int  (*act_out)(struct caldera_inst * inst, void * state, struct caldera_tensor * y_t,
                    struct caldera_tensor * y, int accumulate);
    // release state from act_init; NULL state is a no-op
    void (*act_free)(struct caldera_inst * inst, void * state);
};

/** Flags of linear_apply (fused layers). */
enum caldera_linear_flags {
    CALDERA_LINEAR_ACCUMULATE = 1u << 0,  ///< y += x Ŵᵀ instead of y = x Ŵᵀ
    CALDERA_LINEAR_TRANSPOSE  = 1u << 1,  ///< y = x Ŵ: x is B × rows, y is B × cols
};

/** Codebook state for column-wise rounding (scales computed from the full matrix). */
struct caldera_cb_state;

struct caldera_quantizer_ops {
    uint32_t struct_size;
    // W (m×n, f32) → w_hat (m×n, preallocated, the dequantized values) and codes/scales into
    // pack; h (n×n) is the calibration Hessian, or NULL (H = I) for quantizers that use it
    int     (*quantize)(struct caldera_inst * inst, const struct caldera_tensor * w,
                        const struct caldera_tensor * h, struct caldera_tensor * w_hat,
                        struct caldera_pack * pack);
    // pack (as produced by quantize, same prefix) → w_hat (m×n, preallocated)
    int     (*dequantize)(struct caldera_inst * inst, const struct caldera_pack * pack,
                          struct caldera_tensor * w_hat);
    // (optional) storage bits for an m×n matrix (codes + scales), for planning and reports
    double  (*bits)(struct caldera_inst * inst, int64_t rows, int64_t cols);
    // ---- codebook level: (optional) lets a matrix quantizer (ldlq) wrap this one ----
    // codeword dimension along a row (8 for E8P, 1 for scalar)
    int64_t (*cb_dim)(struct caldera_inst * inst);
    // choose scales from the whole W (m×n) and allocate the code store
    int     (*cb_begin)(struct caldera_inst * inst, const struct caldera_tensor * w,
                        struct caldera_cb_state ** state);
    // round columns [col0, col0 + x.ne[1]) given as x (m × c, c a multiple of cb_dim) to x_hat
    // (m × c) and remember their codes (a later call for the same columns overwrites them)
    int     (*cb_round)(struct caldera_inst * inst, struct caldera_cb_state * state, int64_t col0,
                        const struct caldera_tensor * x, struct caldera_tensor * x_hat);
    // write codes and scales to pack (the same layout quantize writes)
    int     (*cb_end)(struct caldera_inst * inst, struct caldera_cb_state * state,
                      struct caldera_pack * pack);
    // release state; NULL is a no-op
    void    (*cb_free)(struct caldera_inst * inst, struct caldera_cb_state * state);
    // (optional, appended) cb_begin that also gets the calibration Hessian h (n×n, or NULL), so
    // scales can be chosen H-aware (e.g. a diag(H)-weighted clip search); NULL = cb_begin is used
    int     (*cb_begin_h)(struct caldera_inst * inst, const struct caldera_tensor * w,
                          const struct caldera_tensor * h, struct caldera_cb_state ** state);
    // ---- (optional, appended) fused layer: Y = X Ŵᵀ straight from the pack, Ŵ never expanded ----
    // state for Ŵ (rows × cols) as dequantize would read it from pack (same prefix); the pack's
    // tensors are used in place (views into a mapped file are fine) and must outlive the state.
    // NULL = no fused form: the runtime dequantizes to a dense matrix instead
    int     (*linear_init)(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows,
                           int64_t cols, void ** state);
    // y (B × rows, f32) = x (B × cols, f32) Ŵᵀ (2-d views with ld); flags (CALDERA_LINEAR_*):
    // ACCUMULATE: y += instead of =; TRANSPOSE: y (B × cols) = x (B × rows) Ŵ instead
    int     (*linear_apply)(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                            struct caldera_tensor * y, unsigned flags);
    // release state; NULL state is a no-op
    void    (*linear_free)(struct caldera_inst * inst, void * state);
    // (optional, appended) nonzero: cb_round also takes x and x_hat as device tensors on the
    // context's device (it rounds through caldera_round_e8p / caldera_round_uniform), so a wrapper
    // (ldlq) may keep its block loop there; 0 = host tensors only. Check with CALDERA_OPS_HAS_FLAG.
    int     cb_device;
};

/**
 * True when an ops struct (of any kind) has the member, i.e. the plugin was built with a header
 * that already had it (struct_size covers it) and set it. Check before calling a member that was
 * appended after the ABI's first version: update_meta, cb_begin_h, linear_*, act_*.
 */
#define CALDERA_OPS_HAS(ops, type, member) \
    ((ops)->struct_size >= offsetof(type, member) + sizeof((ops)->member) && (ops)->member != NULL)
/** The same for an appended integer member (a flag): nonzero when present and set. */
#define CALDERA_OPS_HAS_FLAG(ops, type, member) \
    ((ops)->struct_size >= offsetof(type, member) + sizeof((ops)->member) && (ops)->member != 0)

struct caldera_decomposer_ops {
    uint32_t struct_size;
    // W (m×n) with Hessian h (n×n, or NULL) → w_hat (m×n, preallocated) and pack
    int (*decompose)(struct caldera_inst * inst, const struct caldera_tensor * w,
                     const struct caldera_tensor * h, struct caldera_tensor * w_hat,
                     struct caldera_pack * pack);
    // pack → w_hat (m×n, preallocated)
    int (*reconstruct)(struct caldera_inst * inst, const struct caldera_pack * pack,
                       struct caldera_tensor * w_hat);
    // (optional, appended) fused layer, as in caldera_quantizer_ops: state for Ŵ (rows × cols)
    // from pack, tensors used in place; NULL = the runtime reconstructs a dense matrix instead
    int  (*linear_init)(struct caldera_inst * inst, const struct caldera_pack * pack, int64_t rows,
                        int64_t cols, void ** state);
    // y (B × rows) = x (B × cols) Ŵᵀ; flags as in caldera_quantizer_ops
    int  (*linear_apply)(struct caldera_inst * inst, void * state, const struct caldera_tensor * x,
                         struct caldera_tensor * y, unsigned flags);
    // release state; NULL state is a no-op
    void (*linear_free)(struct caldera_inst * inst, void * state);
};

/**
 * One linear layer of a loaded model (Y = X Wᵀ, W of shape rows × cols = out × in).
 * Layers that see the same input (q/k/v; gate/up; o; down of one block) share an input group,
 * so calibration computes one Hessian H = Σ x xᵀ per group.
 */
struct caldera_model_linear {
    const char * name;        ///< Hugging Face weight name, "model.layers.3.self_attn.q_proj.weight"
    int64_t      layer;       ///< transformer block index (0-based); -1 outside the blocks (lm_head)
    int64_t      rows;        ///< out_features
    int64_t      cols;        ///< in_features
    int64_t      group;       ///< input group index, 0 .. n_groups - 1 (dense, in forward order)
    const char * group_key;   ///< input group key, "model.layers.3.attn_in" / ".attn_out" / ".mlp_in" / ".mlp_out"
};

/**
 * Observer of linear inputs during a forward pass: called once per input group and block of
 * tokens, before the group's linears run, with @p x the input rows (tokens × cols, f32, a view
 * valid during the call; rows are the batch's tokens in order, sequence-major). @p linear is the
 * first linear of the group. Return 0 to continue, a negative status to stop the forward pass
 * (which then returns that status).
 */
typedef int (*caldera_model_observe_fn)(void * user, int64_t group, int64_t linear,
                                        const struct caldera_tensor * x);

/**
 * Receiver of logits: rows for positions [pos0, pos0 + logits->ne[0]) of sequence @p seq,
 * logits (n × vocab, f32, a view valid during the call). Chunks arrive in order of seq, then pos;
 * a model may deliver one position range in several chunks. Return 0 or a negative status.
 */
typedef int (*caldera_model_logits_fn)(void * user, int64_t seq, int64_t pos0,
                                       const struct caldera_tensor * logits);

/**
 * A batch forward pass (ABI: grows at the end; set struct_size = sizeof). Every sequence starts
 * at position 0 with an empty context; the KV cache of decode is neither used nor changed.
 */
struct caldera_model_forward_args {
    uint32_t                 struct_size;
    const int32_t *          tokens;        ///< n_seq × n_tok token ids, row-major
    int64_t                  n_seq;
    int64_t                  n_tok;         ///< 1 .. the model's context length
    caldera_model_observe_fn observe;       ///< NULL: no observer
    void *                   observe_user;
    // Logits of positions [logits_from, logits_to) of every sequence go to on_logits. With
    // on_logits NULL or an empty range the output head is not computed at all (calibration).
    caldera_model_logits_fn  on_logits;
    void *                   logits_user;
    int64_t                  logits_from;
    int64_t                  logits_to;
    // > 0: stop after this many transformer blocks (no head is computed then); 0: all blocks.
    // Calibration of the first k blocks does not need the rest.
    int64_t                  n_layers;
};

/**
 * An opaque implementation of one linear layer (e.g. a fused kernel over compressed codes).
 * apply computes Y = X Wᵀ for a block of token rows: x (n × cols, f32, ld >= cols), y (n × rows,
 * f32, preallocated, ld >= rows, overwritten). It may use the context's thread pool and BLAS.
 * The applies of different layers may run at the same time on the pool's threads (the llama
 * model runs the layers that share one decoded token's input as parallel tasks; a parallel loop
 * inside such a task runs serially), so state shared between layers must be read-only in apply.
 */
struct caldera_linear_impl {
    uint32_t struct_size;     ///< sizeof(struct caldera_linear_impl) the caller was built with
    void *   state;           ///< passed to apply and free
    int      (*apply)(void * state, struct caldera_ctx * ctx, const struct caldera_tensor * x,
                      struct caldera_tensor * y);
    // (optional) release state when the layer is replaced again or the model released; NULL = caller owns state
    void     (*free)(void * state);
};

/** Token ids and strings of the model's tokenizer. */
struct caldera_model_vocab {
    int64_t      n_vocab;
    int32_t      bos;            ///< -1 if none
    int32_t      eos;            ///< -1 if none
    int32_t      eot;            ///< token ending a chat turn (e.g. <|im_end|>), else eos; -1 if none
    int          add_bos;        ///< the model expects a BOS first by default
    const char * chat_template;  ///< tokenizer.chat_template (Jinja text) or NULL
};

/**
 * Model architectures: forward pass, calibration hooks, layer replacement, tokenizer, decoding.
 * A model instance is bound to one model at a time (load ... release); every member but
 * struct_size and load requires a loaded model and returns CALDERA_ERR_INVAL otherwise.
 */
struct caldera_model_ops {
    uint32_t struct_size;
    // Bind the model from an open format reader instance (a started format inst on which open()
    // succeeded; its tensors with HF names, model_desc and meta are read here; weights are copied,
    // so the reader may be closed afterwards). Refuses architectures it cannot run, naming what
    // is missing or unsupported (CALDERA_ERR_UNSUPPORTED). Without tokenizer keys in meta the
    // model loads, and the tokenizer members return CALDERA_ERR_NOT_FOUND.
    int     (*load)(struct caldera_inst * inst, struct caldera_inst * reader);
    // Release what load allocated (replaced layers included); safe when nothing is loaded.
    void    (*release)(struct caldera_inst * inst);
    // Architecture of the loaded model.
    int     (*desc)(struct caldera_inst * inst, struct caldera_model_desc * out);

    // ---- linear layers (calibration, compression, replacement) ----
    int64_t (*n_linears)(struct caldera_inst * inst);
    int64_t (*n_groups)(struct caldera_inst * inst);
    // Linear i in forward order (pointers valid until release).
    int     (*linear_info)(struct caldera_inst * inst, int64_t i, struct caldera_model_linear * out);
    // Index of the linear with HF weight name @p name, or -1.
    int64_t (*linear_find)(struct caldera_inst * inst, const char * name);
    // Replace linear i by a dense f32 weight w (rows × cols). owned != 0: w was allocated by
    // caldera_tensor_alloc, the model takes its memory and zeroes *w; owned == 0: copied.
    int     (*set_linear_weight)(struct caldera_inst * inst, int64_t i, struct caldera_tensor * w,
                                 int owned);
    // Replace linear i by an opaque implementation (copied; impl->state is owned by the model when
    // impl->free is set). The dense weight is released.
    int     (*set_linear_impl)(struct caldera_inst * inst, int64_t i,
                               const struct caldera_linear_impl * impl);

    // ---- batch forward ----
    int     (*forward)(struct caldera_inst * inst, const struct caldera_model_forward_args * args);

    // ---- tokenizer ----
    int     (*vocab)(struct caldera_inst * inst, struct caldera_model_vocab * out);
    // Encode UTF-8 text (len bytes); add_bos prepends the BOS; parse_special turns special-token
    // text ("<|im_start|>") into ids. *ids from caldera_malloc (caller frees with caldera_free).
    int     (*tokenize)(struct caldera_inst * inst, const char * text, size_t len, int add_bos,
                        int parse_special, int32_t ** ids, int64_t * n);
    // The bytes token id stands for (valid while the model is loaded); *is_control (may be NULL)
    // is set to 1 for control tokens that decoded text normally hides.
    int     (*token_piece)(struct caldera_inst * inst, int32_t id, const char ** piece, size_t * len,
                           int * is_control);

    // ---- decoding with a KV cache (one sequence) ----
    // Allocate (or reuse) a cache of n_ctx positions (0: the model's context length) and empty it.
    int     (*kv_reset)(struct caldera_inst * inst, int64_t n_ctx);
    // Positions held in the cache.
    int64_t (*kv_pos)(struct caldera_inst * inst);
    // Feed n tokens at the next positions; logits (vocab floats, may be NULL) receives the logits
    // of the last one. CALDERA_ERR_RANGE when the cache would overflow.
    int     (*decode)(struct caldera_inst * inst, const int32_t * tokens, int64_t n, float * logits);
};

// ---------------------------------------------------------------------------------------------
// The plugin descriptor (ABI).

struct caldera_plugin {
    uint32_t                      abi_version;   ///< CALDERA_PLUGIN_ABI_VERSION, checked first
    uint32_t                      struct_size;   ///< sizeof(struct caldera_plugin) at build time
    enum caldera_plugin_kind      kind;
    const char *                  name;          ///< [a-z][a-z0-9_]{0,30}, unique
    const char *                  description;   ///< one line
    uint32_t                      version;       ///< CALDERA_VERSION_INT(major, minor, patch)
    uint32_t                      format_version;///< version of the data this plugin writes
    size_t                        priv_size;     ///< bytes of private state the host allocates (zeroed)
    const struct caldera_option * options;       ///< NULL or a table ending with a NULL name
    // (optional) > 0 when usable on this machine (e.g. a GPU present); NULL = always usable
    int  (*probe)(struct caldera_ctx * ctx);
    // (optional) reject impossible option combinations before any work; NULL = accept
    int  (*check)(struct caldera_inst * inst);
    // (optional) reject a weight shape (rows = out, cols = in) this plugin cannot take; NULL = any
    int  (*check_shape)(struct caldera_inst * inst, int64_t rows, int64_t cols);
    // (optional) set up after options are bound; NULL = nothing
    int  (*init)(struct caldera_inst * inst);
    // (optional) release everything; runs even after a failed init; NULL = nothing
    void (*uninit)(struct caldera_inst * inst);
    const void *                  ops;           ///< struct caldera_<kind>_ops of this kind
};

#define CALDERA_VERSION_INT(a, b, c) ((uint32_t)(a) << 16 | (uint32_t)(b) << 8 | (uint32_t)(c))

/**
 * Signature of the one exported entry symbol of a plugin shared object.
 * Note for users of instances: call caldera_inst_start() before using a plugin's ops; an
 * instance that was never started is freed without uninit (init never ran).
 */
typedef const struct caldera_plugin * (*caldera_plugin_entry_fn)(uint32_t host_abi_version);
#define CALDERA_PLUGIN_ENTRY_SYMBOL "caldera_plugin_entry"

/**
 * Define the entry point for descriptor @p desc (a `static const struct caldera_plugin`).
 * Compiled with CALDERA_PLUGIN_SHARED it exports caldera_plugin_entry() for dlopen; otherwise
 * it defines caldera_builtin_<desc>() that the generated built-in list calls.
 */
#ifdef CALDERA_PLUGIN_SHARED
#define CALDERA_PLUGIN_DEFINE(desc)                                                           \
    CALDERA_EXPORT const struct caldera_plugin * caldera_plugin_entry(uint32_t host_abi_version); \
    CALDERA_EXPORT const struct caldera_plugin * caldera_plugin_entry(uint32_t host_abi_version) { \
        (void) host_abi_version;                                                              \
        return &(desc);                                                                       \
    }
#else
#define CALDERA_PLUGIN_DEFINE(desc)                                                           \
    const struct caldera_plugin * caldera_builtin_##desc(void);                              \
    const struct caldera_plugin * caldera_builtin_##desc(void) { return &(desc); }
#endif

// ---------------------------------------------------------------------------------------------
// Codebook rounding and the LDLQ block step, on the context's device. A codebook plugin hands
// the core its rule and scales, and the core runs the one per-element math (quantizers/e8/e8p.h,
// quantizers/uniform/uniform-rule.h, quantizers/ldlq/ldlq-step.h, compiled for host and device)
// on the CPU threads, or in the CUDA backend's kernels when one of the tensors is a device tensor
// or the context's device is cuda and the work pays for copying host operands. The CPU path is
// the code plugins ran before, so results there do not change; the GPU gives the same bits.
// Plugins stay free of CUDA code. Matrices are 2-d views with a leading dimension (ld), host or
// device; per-group parameters (scales, zeros) are host memory.

struct e8p_tables;    ///< quantizers/e8/e8p.h, filled by e8p_tables_build (host memory)
struct uniform_rule;  ///< quantizers/uniform/uniform-rule.h

/**
 * E8P rounding of x (rows × cols f32, cols % 8 == 0) to x_hat (rows × cols f32) with block code
 * rule e8p_round_scaled at @p bits (2, 3 or 4) and per-row scales (nscale = 1: one for all rows,
 * or rows): codes (rows × cols/8 u16) and, for 3 and 4 bits, codes2 (same shape u16; NULL for
 * 2 bits). Codes may be views with ld into a larger store.
 */
int caldera_round_e8p(struct caldera_ctx * ctx, const struct e8p_tables * tab, int bits, const float * scale,
                      int64_t nscale, const struct caldera_tensor * x, struct caldera_tensor * codes,
                      struct caldera_tensor * codes2, struct caldera_tensor * x_hat);
/**
 * Uniform rounding of x (rows × cols f32), the columns [col0, col0 + cols) of a weight, with the
 * rule r: weight (i, col0 + j) takes scale group uniform_gid_of(granularity, ngr, group_size, i,
 * col0 + j) of scale / zero (zero NULL: 0; both host, nscale entries); codes (rows × cols u8).
 */
int caldera_round_uniform(struct caldera_ctx * ctx, const struct uniform_rule * r, int granularity, int64_t ngr,
                          int64_t group_size, int64_t col0, const float * scale, const float * zero, int64_t nscale,
                          const struct caldera_tensor * x, struct caldera_tensor * codes,
                          struct caldera_tensor * x_hat);
/**
 * LDLQ block step (ldlq-step.h): xj (m × b) = block j0 of xt (n × m, Xᵀ) as the codebook takes it.
 * Every tensor is on the same device (no staging: these run inside a loop that keeps its data there).
 */
int caldera_ldlq_gather(struct caldera_ctx * ctx, const struct caldera_tensor * xt, int64_t j0,
                        struct caldera_tensor * xj);
/** Ŵ_j = qj and Δ_j = W_j − Ŵ_j (qj m × b, wt n × m) into rows jl .. jl + b of hbt, dbt (bc × m). */
int caldera_ldlq_scatter(struct caldera_ctx * ctx, const struct caldera_tensor * qj, const struct caldera_tensor * wt,
                         int64_t j0, int64_t jl, struct caldera_tensor * hbt, struct caldera_tensor * dbt);
/**
 * *loss += Σ_r (xj − qj)_r D_j (xj − qj)_rᵀ over the m rows, in double (dj b × b); on the CPU the
 * rows are added to *loss one at a time in order, on the GPU their sum is.
 */
int caldera_ldlq_loss(struct caldera_ctx * ctx, const struct caldera_tensor * xj, const struct caldera_tensor * qj,
                      const struct caldera_tensor * dj, double * loss);
/** Tune step target (ldlq_tune_target): xs = old + gj hi (old, gj, xs m × b; hi b × b), in double. */
int caldera_ldlq_tune_target(struct caldera_ctx * ctx, const struct caldera_tensor * old, const struct caldera_tensor * gj,
                             const struct caldera_tensor * hi, struct caldera_tensor * xs);
/**
 * Tune guard (ldlq_tune_guard) of every row: rows whose rounding q is worse than old in the H_jj
 * norm around xs get xs = old; *kept = their number. hjj (b × b) may have ld > b (a view into H).
 */
int caldera_ldlq_tune_guard(struct caldera_ctx * ctx, const struct caldera_tensor * q, const struct caldera_tensor * old,
                            const struct caldera_tensor * hjj, struct caldera_tensor * xs, int64_t * kept);
/** Tune update (ldlq_tune_update) of block j0: dqt (b × m) = Ŵ_old − q, then Ŵ = q, Δ = W − q in ht, dt (n × m). */
int caldera_ldlq_tune_update(struct caldera_ctx * ctx, const struct caldera_tensor * q, const struct caldera_tensor * wt,
                             int64_t j0, struct caldera_tensor * ht, struct caldera_tensor * dt,
                             struct caldera_tensor * dqt);

// ---------------------------------------------------------------------------------------------
// Calling other instances (a REF option) through the core: kind and presence are checked.

int caldera_quantizer_quantize(struct caldera_inst * q, const struct caldera_tensor * w,
                               const struct caldera_tensor * h, struct caldera_tensor * w_hat,
                               struct caldera_pack * pack);
int caldera_quantizer_dequantize(struct caldera_inst * q, const struct caldera_pack * pack,
                                 struct caldera_tensor * w_hat);
/** The quantizer's codebook ops, or CALDERA_ERR_UNSUPPORTED (with a message) if it has none. */
int caldera_quantizer_codebook(struct caldera_inst * q, const struct caldera_quantizer_ops ** ops);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif // CALDERA_PLUGIN_H
