/* The machine's limits for benchmarks/RESULTS.md's roofline: memory read bandwidth, float32 FMA
   and 8-bit integer multiply-accumulate throughput, on 1 thread and on every thread.

   cc -O2 -mavx2 -mfma -pthread benchmarks/probe.c -o probe && ./probe THREADS   (JSON on stdout)

   Rates are work per second of each thread's CPU time (best of a few runs), so the one-thread
   figures hold on a machine other processes share too (memory bandwidth excepted: it is shared
   whatever the clock); the N-thread figures assume the threads ran together (a quiet machine).
   - read: each thread sums its own slice of a 512 MiB buffer with 256-bit loads (best of 5);
   - fp32: 12 independent chains of 8-lane FMAs per thread (2 flops per lane and FMA);
   - int8 (maddubs): AVX2's u8 x s8 pairs -> s16 then -> s32 (the block kernels' step), counted in
     multiply-accumulates; int8 (vnni): AVX-512 VNNI's vpdpbusd on 256-bit vectors, where the
     CPU has it (the kernels' choice there), 16 independent chains. */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUF ((size_t)512 << 20)
static uint8_t *buffer;

typedef struct {
    int kind, id, n;
    double seconds, work;
} job;

static void *read_slice(job *j) {
    size_t slice = BUF / j->n / 128 * 128;
    const uint8_t *p = buffer + slice * j->id;
    __m256i s = _mm256_setzero_si256();
    for (size_t i = 0; i < slice; i += 128) {
        s = _mm256_add_epi64(s, _mm256_load_si256((const __m256i *)(p + i)));
        s = _mm256_add_epi64(s, _mm256_load_si256((const __m256i *)(p + i + 32)));
        s = _mm256_add_epi64(s, _mm256_load_si256((const __m256i *)(p + i + 64)));
        s = _mm256_add_epi64(s, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    volatile int64_t sink = _mm256_extract_epi64(s, 0);
    (void)sink;
    j->work = (double)slice;
    return NULL;
}

#define ITERS 20000000L

static void *fp32(job *j) {
    __m256 a[12], x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f);
    for (int k = 0; k < 12; k++) a[k] = _mm256_set1_ps((float)k);
    for (long i = 0; i < ITERS; i++)
        for (int k = 0; k < 12; k++) a[k] = _mm256_fmadd_ps(a[k], x, y);
    float out[8];
    __m256 s = a[0];
    for (int k = 1; k < 12; k++) s = _mm256_add_ps(s, a[k]);
    _mm256_storeu_ps(out, s);
    volatile float sink = out[0];
    (void)sink;
    j->work = 2.0 * 8 * 12 * ITERS; /* flops */
    return NULL;
}

static void *int8_maddubs(job *j) {
    __m256i a[8], w = _mm256_set1_epi8(3), x = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1);
    for (int k = 0; k < 8; k++) a[k] = _mm256_setzero_si256();
    for (long i = 0; i < ITERS; i++)
        for (int k = 0; k < 8; k++) a[k] = _mm256_add_epi32(a[k], _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), one));
    __m256i s = a[0];
    for (int k = 1; k < 8; k++) s = _mm256_add_epi32(s, a[k]);
    volatile int sink = _mm256_extract_epi32(s, 0);
    (void)sink;
    j->work = 32.0 * 8 * ITERS; /* multiply-accumulates */
    return NULL;
}

__attribute__((target("avx512f,avx512vl,avx512vnni"))) static void *int8_vnni(job *j) {
    __m256i a[16], w = _mm256_set1_epi8(3), x = _mm256_set1_epi8(-2);
    for (int k = 0; k < 16; k++) a[k] = _mm256_setzero_si256();
    for (long i = 0; i < ITERS; i++)
        for (int k = 0; k < 16; k++) a[k] = _mm256_dpbusd_epi32(a[k], w, x);
    __m256i s = a[0];
    for (int k = 1; k < 16; k++) s = _mm256_add_epi32(s, a[k]);
    volatile int sink = _mm256_extract_epi32(s, 0);
    (void)sink;
    j->work = 32.0 * 16 * ITERS;
    return NULL;
}

/* CPU time of the calling thread: the rate of a CPU while the probe has it, whatever else the
   machine runs (a loaded machine gives the probe's threads only part of each CPU) */
static double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *run(void *arg) {
    job *j = arg;
    double t = thread_cpu();
    switch (j->kind) {
        case 0: read_slice(j); break;
        case 1: fp32(j); break;
        case 2: int8_maddubs(j); break;
        default: int8_vnni(j); break;
    }
    j->seconds = thread_cpu() - t;
    return NULL;
}

/* the best of `repeats` runs of `kind` on n threads: total work per second */
static double measure(int kind, int n, int repeats) {
    double best = 0;
    for (int r = 0; r < repeats; r++) {
        pthread_t t[64];
        job j[64];
        for (int i = 0; i < n; i++) {
            j[i] = (job){kind, i, n, 0, 0};
            pthread_create(&t[i], NULL, run, &j[i]);
        }
        double work = 0, slowest = 0;
        for (int i = 0; i < n; i++) {
            pthread_join(t[i], NULL);
            work += j[i].work;
            if (j[i].seconds > slowest) slowest = j[i].seconds;
        }
        if (work / slowest > best) best = work / slowest;
    }
    return best;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2;
    if (n < 1 || n > 64) n = 2;
    buffer = aligned_alloc(64, BUF);
    memset(buffer, 1, BUF);
    int vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
    printf("{\"threads\": %d, \"read_gb_s\": [%.1f, %.1f], \"fp32_gflop_s\": [%.1f, %.1f], "
           "\"int8_maddubs_gmac_s\": [%.1f, %.1f]",
           n, measure(0, 1, 5) / 1e9, measure(0, n, 5) / 1e9, measure(1, 1, 3) / 1e9, measure(1, n, 3) / 1e9,
           measure(2, 1, 3) / 1e9, measure(2, n, 3) / 1e9);
    if (vnni) printf(", \"int8_vnni_gmac_s\": [%.1f, %.1f]", measure(3, 1, 3) / 1e9, measure(3, n, 3) / 1e9);
    printf("}\n");
    return 0;
}
