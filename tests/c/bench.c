/* Benchmark: a fresh cached read through the C ABI (tl_manager_token into a stack buffer).
 * Prints the median ns per call over many batches.
 *
 * Usage: bench [--quick]   (build against the release library for meaningful numbers) */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenlease.h"

static uint32_t bench_fetch(void *userdata, tl_fetch_output *out) {
    (void)userdata;
    static const char value[] = "eyJhbGciOiJSUzI1NiJ9.bench-token-of-a-typical-length.signature";
    tl_fetch_output_set_token(out, value, sizeof value - 1, 3600 * 1000);
    return TL_OK;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    int batches = quick ? 51 : 301;
    int per_batch = quick ? 20000 : 100000;

    tl_source_callbacks cbs;
    memset(&cbs, 0, sizeof cbs);
    cbs.fetch = bench_fetch;
    tl_manager *mgr = NULL;
    if (tl_manager_new_custom(&cbs, NULL, "bench", NULL, &mgr) != TL_OK) return 1;

    char buf[256];
    size_t written = 0;
    uint64_t generation = 0;
    if (tl_manager_token(mgr, buf, sizeof buf, &written, &generation) != TL_OK) return 1;
    for (int i = 0; i < per_batch; i++) tl_manager_token(mgr, buf, sizeof buf, &written, NULL);

    double *samples = malloc(sizeof(double) * (size_t)batches);
    if (!samples) return 1;
    unsigned failures = 0;
    for (int b = 0; b < batches; b++) {
        uint64_t start = now_ns();
        for (int i = 0; i < per_batch; i++) {
            failures += tl_manager_token(mgr, buf, sizeof buf, &written, &generation) != TL_OK;
        }
        samples[b] = (double)(now_ns() - start) / per_batch;
    }
    qsort(samples, (size_t)batches, sizeof(double), cmp_double);
    printf("tl_manager_token (fresh cached read, %zu-byte token, stack buffer): "
           "median %.1f ns, p10 %.1f ns, p90 %.1f ns (%d batches x %d calls)%s\n",
           written, samples[batches / 2], samples[batches / 10], samples[batches * 9 / 10],
           batches, per_batch, failures ? " FAILURES" : "");
    free(samples);
    tl_manager_free(mgr);
    return failures ? 1 : 0;
}
