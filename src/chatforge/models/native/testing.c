/* Entry points for the kernel tests only (tests/models/test_native_kernels.py): one format's
   matmul on a range of rows and column groups, and the thread pool on a counting job. */
#include <stdatomic.h>
#include <stdlib.h>

#include "formats.h"
#include "pool.h"

/* y[M, N] for rows [r0, r1) and groups [g0, g1) of w: x in float32, quantized here when the
   format reads 8-bit activations (q8 scratch supplied by the caller: M * K + 2 * M * K / 32 floats' room);
   with `baseline`, the AVX2 variant instead of the one chosen for this CPU. */
void cf_test_matmul(const cf_matrix *w, const float *x, int64_t M, int64_t r0, int64_t r1, int64_t g0, int64_t g1,
                    float *y, void *scratch, int accumulate, int baseline) {
    const cf_format *f = cf_formats[w->format];
    cf_select_kernels();
    cf_acts a = {M, w->K, x, NULL, NULL, NULL};
    if (f->act & CF_ACT_Q8) {
        int8_t *q = scratch;
        float *d = (float *)(q + M * w->K), *s = d + M * (w->K / QK); /* M * K % 32 == 0: aligned */
        cf_quantize_q8(x, M, w->K, q, d, s);
        a.q8 = q, a.q8_d = d, a.q8_s = s;
    }
    (baseline ? f->matmul_baseline : f->matmul)(w, &a, r0, r1, g0, g1, NULL, y, w->N, accumulate);
}

typedef struct {
    _Atomic int64_t *counts;
    int64_t spin;
} count_job;

static void count_task(void *p, int64_t task, int thread) {
    (void)thread;
    count_job *j = p;
    volatile int64_t sink = 0;
    for (int64_t i = 0; i < j->spin; i++) sink += i;
    atomic_fetch_add(&j->counts[task], 1);
}

/* `jobs` jobs of `n_tasks` tasks each on a pool of `threads`; counts[t] = how often task t ran
   (jobs, when every task of every job ran exactly once). 0, or -1 when the pool did not start. */
int cf_test_pool(int threads, int64_t jobs, int64_t n_tasks, int64_t *counts) {
    cf_pool *pool = cf_pool_new(threads);
    if (!pool) return -1;
    _Atomic int64_t *c = calloc((size_t)n_tasks, sizeof *c);
    if (!c) {
        cf_pool_free(pool);
        return -1;
    }
    count_job j = {c, 200};
    for (int64_t i = 0; i < jobs; i++) {
        j.spin = (i % 7) * 300;
        cf_pool_run(pool, count_task, &j, n_tasks);
    }
    for (int64_t t = 0; t < n_tasks; t++) counts[t] = atomic_load(&c[t]);
    free(c);
    cf_pool_free(pool);
    return 0;
}

/* row n of w as K floats (the embedding lookup) */
void cf_test_row(const cf_matrix *w, int64_t n, float *out) { cf_formats[w->format]->row(w, n, out); }
