// SPDX-License-Identifier: MIT
// fuzz-safetensors: the safetensors reader's full read path over one file in memory (header JSON,
// typed __metadata__, tensor table, data).
#include "fuzz-common.h"

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    static struct fz_memfile f;
    if (!f.path[0]) fz_memfile_open(&f, "fuzz.safetensors");
    fz_memfile_set(&f, data, size);
    fz_drive_format("safetensors", f.path, NULL, size);
    return 0;
}
