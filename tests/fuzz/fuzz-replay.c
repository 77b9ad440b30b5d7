// SPDX-License-Identifier: MIT
// fuzz-replay: a main() for a harness built without libFuzzer (any compiler): runs
// LLVMFuzzerTestOneInput once over every file named on the command line (folders: every file in
// them, sorted), each under a time limit, so the corpus and the regression inputs are tests of the
// normal build (and of its sanitizer pass). usage: fuzz-replay-NAME [-t SECONDS] PATH...
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz-common.h"

static const char * current;

static void on_alarm(int sig) {
    (void) sig;
    static const char msg[] = "fuzz-replay: time limit exceeded (a hang) on input ";
    if (write(2, msg, sizeof(msg) - 1) < 0 || write(2, current, strlen(current)) < 0 || write(2, "\n", 1) < 0) _exit(3);
    _exit(3);
}

static int run_file(const char * path, unsigned limit) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "fuzz-replay: cannot open %s\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t * buf = malloc(n > 0 ? (size_t) n : 1);
    if (!buf || (n > 0 && fread(buf, 1, (size_t) n, f) != (size_t) n)) {
        fprintf(stderr, "fuzz-replay: cannot read %s\n", path);
        fclose(f);
        free(buf);
        return -1;
    }
    fclose(f);
    current = path;
    alarm(limit);
    LLVMFuzzerTestOneInput(buf, (size_t) n);
    alarm(0);
    free(buf);
    return 0;
}

static int cmp(const void * a, const void * b) { return strcmp(*(char * const *) a, *(char * const *) b); }

static int run_path(const char * path, unsigned limit, int * count) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "fuzz-replay: %s does not exist\n", path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        (*count)++;
        return run_file(path, limit);
    }
    struct dirent ** list = NULL;
    int n = scandir(path, &list, NULL, NULL), rc = 0;
    if (n < 0) return -1;
    qsort(list, (size_t) n, sizeof(*list), cmp);
    for (int i = 0; i < n; i++) {
        if (list[i]->d_name[0] != '.' && rc == 0) {
            char p[4096];
            snprintf(p, sizeof(p), "%s/%s", path, list[i]->d_name);
            rc = run_path(p, limit, count);
        }
        free(list[i]);
    }
    free(list);
    return rc;
}

int main(int argc, char ** argv) {
    unsigned limit = 20;
    int      i = 1, count = 0;
    if (argc > 2 && strcmp(argv[1], "-t") == 0) {
        limit = (unsigned) atoi(argv[2]);
        i = 3;
    }
    signal(SIGALRM, on_alarm);
    for (; i < argc; i++) {
        if (run_path(argv[i], limit, &count) < 0) return 1;
    }
    printf("fuzz-replay: %d inputs, no crash, no hang (limit %u s each)\n", count, limit);
    return count > 0 ? 0 : 1;
}
