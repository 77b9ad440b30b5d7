// SPDX-License-Identifier: MIT
// fuzz-gguf: the gguf reader's full read path over one file in memory. The first byte chooses
// hf_layout (bit 0: undo llama.cpp's q/k permutation, the default); the rest is the file.
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static struct fz_memfile f;
    if (!f.path[0]) fz_memfile_open(&f, "fuzz.gguf");
    if (size < 1) return 0;
    static const char * const raw[] = { "hf_layout", "0", NULL };
    fz_memfile_set(&f, data + 1, size - 1);
    fz_drive_format("gguf", f.path, (data[0] & 1) ? NULL : raw, size);
    return 0;
}
