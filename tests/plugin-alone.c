// SPDX-License-Identifier: MIT
// plugin-alone: dlopen one plugin shared object with RTLD_NOW in a process that holds nothing but
// libc, so the load succeeds only if every symbol it needs comes from the libraries it names
// itself (libcaldera, libc, libm, ...), never from another plugin or from the host program.
// Prints the descriptor's name, kind and version.   usage: plugin-alone PLUGIN.so
#include <dlfcn.h>
#include <stdio.h>

#include "caldera/caldera-plugin.h"

int main(int argc, char ** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: plugin-alone PLUGIN.so\n");
        return 2;
    }
    void * h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "plugin-alone: %s\n", dlerror());
        return 1;
    }
    caldera_plugin_entry_fn entry;
    *(void **) &entry = dlsym(h, CALDERA_PLUGIN_ENTRY_SYMBOL);
    const struct caldera_plugin * p = entry ? entry(CALDERA_PLUGIN_ABI_VERSION) : NULL;
    if (!p || !p->name) {
        fprintf(stderr, "plugin-alone: %s: no entry point or no descriptor\n", argv[1]);
        return 1;
    }
    // caldera_plugin_kind_name would need libcaldera in this program: print the number.
    printf("%s %d %u.%u.%u\n", p->name, (int) p->kind, p->version >> 16, (p->version >> 8) & 0xff, p->version & 0xff);
    return 0;
}
