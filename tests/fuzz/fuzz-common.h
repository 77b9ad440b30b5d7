// SPDX-License-Identifier: MIT
// fuzz-common.h: what every libFuzzer harness of tests/fuzz shares: a quiet context, files in
// memory (memfd, opened through /proc/self/fd/N so the readers need no special path), and the full
// read path of a format plugin (open, every tensor's info, all metadata, the model description,
// every tensor read up to a size cap). The same harness sources build as libFuzzer targets (clang)
// and as replay programs (fuzz-replay.c, any compiler) that run the corpus and regression inputs.
#ifndef CALDERA_FUZZ_COMMON_H
#define CALDERA_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "caldera/caldera.h"

// Tensors of more elements than this are listed but not read (the harness's size cap: conversions
// of large tensors would dominate the time of an execution without adding coverage); the f16
// conversion is tried up to FZ_F16_CAP elements.
#define FZ_READ_CAP ((int64_t) 1 << 16)
#define FZ_F16_CAP  ((int64_t) 1 << 12)

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size);

/** The harness's context: built-in plugins, one thread, log discarded (created once). */
struct caldera_ctx * fz_ctx(void);

/** A file in memory holding data; *path is "/proc/self/fd/N" (valid until fz_memfile_close). */
struct fz_memfile { int fd; char path[64]; };
void fz_memfile_open(struct fz_memfile * f, const char * name);
/** Replace the contents (truncate, write, rewind). */
void fz_memfile_set(struct fz_memfile * f, const uint8_t * data, size_t size);

/**
 * Drive format plugin @p plugin over @p path: option key/value pairs (NULL-terminated list, may be
 * NULL) are set before start; then open, n_tensors, tensor_info of each, every metadata value,
 * model_desc, read_tensor of each (stored dtype, f32, and f16 up to FZ_F16_CAP) when it has at most
 * FZ_READ_CAP elements, close. Invariants of the ABI are checked (a failure is abort(), which libFuzzer
 * reports): info and views agree, errors come with a message, the memory held after open is
 * bounded by @p input_bytes (FZ_OPEN_FACTOR).
 */
void fz_drive_format(const char * plugin, const char * path, const char * const * options, size_t input_bytes);

// In libFuzzer builds (ASan's allocator statistics), the memory a reader still holds after open
// (metadata, tensor table; data stays mmapped) may be at most FZ_OPEN_FACTOR times the bytes of
// its input plus FZ_OPEN_SLACK: a header must not make it allocate for what the file does not hold.
#define FZ_OPEN_FACTOR 32
#define FZ_OPEN_SLACK  ((size_t) 1 << 20)

/** Write size bytes to dir/name (a regular file); size 0 with data NULL removes it. */
void fz_write_file(const char * dir, const char * name, const uint8_t * data, size_t size);
/** A private temporary folder (on /dev/shm when it exists), removed at exit. */
const char * fz_tmpdir(void);

#endif
