/* The thread pool of pool.h: pthreads, an atomic task counter, futexes for sleeping. */
#define _GNU_SOURCE
#include "pool.h"

#include <errno.h>
#include <immintrin.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long a worker spins for the next job before it sleeps, and the caller for a straggler. */
#define WORKER_SPIN_NS 100000
#define CALLER_SPIN_NS 30000
/* Starvation, judged over each WINDOW jobs run with the workers: when the caller spent more than
   WAIT_SHARE of the jobs' time waiting for tasks that workers held, or ran less than CPU_SHARE of
   the window's wall time itself (it was descheduled: the CPUs are wanted elsewhere, if only by
   its own spinning workers), the workers only slow it down. Then the jobs of the next SOLO_NS run
   on the caller alone (the workers sleep); then the workers are tried again for a window, and
   after each failed try the caller stays alone twice as long (up to SOLO_NS << MAX_BACKOFF). A
   wait longer than STALL_NS counts as a stall (statistics). */
#define WINDOW 64
#define WAIT_SHARE 0.25
#define CPU_SHARE 0.8
#define SOLO_NS 100000000
#define MAX_BACKOFF 5
#define STALL_NS 200000

struct worker {
    cf_pool *pool;
    int id;
};

struct cf_pool {
    int n_threads;
    pthread_t *threads;
    struct worker *workers;
    /* The current job: (generation << 32) | next unclaimed task. A task is claimed by a CAS that
       also checks the generation, so a late worker never runs a task of the next job with the
       previous job's function. */
    _Atomic uint64_t state;
    _Atomic(cf_task_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n_tasks;
    _Atomic int64_t done;
    _Atomic uint32_t job_seq;  /* futex: bumped when a job is posted while workers sleep */
    _Atomic int sleepers;
    _Atomic uint32_t done_seq; /* futex: bumped when the last task ends while the caller sleeps */
    _Atomic int caller_sleeping;
    _Atomic int stop;
    /* caller-only bookkeeping */
    int64_t jobs, solo_jobs, stalls_total, fallbacks;
    int64_t window_jobs, window_wait_ns, window_job_ns, window_start, window_cpu, solo_until, backoff;
};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int64_t thread_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *word, uint32_t seen, int64_t timeout_ns) {
    struct timespec t = {timeout_ns / 1000000000, timeout_ns % 1000000000};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, seen, timeout_ns > 0 ? &t : NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word, int count) {
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}

static inline uint32_t generation(uint64_t state) { return (uint32_t)(state >> 32); }

/* Claims and runs tasks of job `gen` until none is left. */
static void run_tasks(cf_pool *p, uint32_t gen, int id) {
    cf_task_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
    void *ctx = atomic_load_explicit(&p->ctx, memory_order_relaxed);
    int64_t n = atomic_load_explicit(&p->n_tasks, memory_order_relaxed);
    for (;;) {
        uint64_t s = atomic_load_explicit(&p->state, memory_order_acquire);
        do {
            if (generation(s) != gen || (int64_t)(uint32_t)s >= n) return;
        } while (!atomic_compare_exchange_weak_explicit(&p->state, &s, s + 1, memory_order_acq_rel, memory_order_acquire));
        fn(ctx, (int64_t)(uint32_t)s, id);
        if (atomic_fetch_add(&p->done, 1) + 1 == n && atomic_load(&p->caller_sleeping)) {
            atomic_fetch_add(&p->done_seq, 1);
            futex_wake(&p->done_seq, 1);
        }
    }
}

/* The next job's generation (!= seen), or 0 with p->stop set. */
static uint32_t wait_for_job(cf_pool *p, uint32_t seen) {
    int64_t until = now_ns() + WORKER_SPIN_NS;
    for (int i = 1;; i++) {
        uint32_t g = generation(atomic_load_explicit(&p->state, memory_order_acquire));
        if (g != seen) return g;
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return 0;
        _mm_pause();
        if (i % 64 == 0 && now_ns() > until) break;
    }
    atomic_fetch_add(&p->sleepers, 1);
    uint32_t g;
    for (;;) {
        uint32_t w = atomic_load(&p->job_seq);
        g = generation(atomic_load(&p->state));
        if (g != seen || atomic_load(&p->stop)) break;
        futex_wait(&p->job_seq, w, 0);
    }
    atomic_fetch_sub(&p->sleepers, 1);
    return atomic_load(&p->stop) ? 0 : g;
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    cf_pool *p = w->pool;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g = wait_for_job(p, seen);
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        run_tasks(p, g, w->id);
    }
}

cf_pool *cf_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    cf_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    if (!p->threads || !p->workers) {
        free(p->threads), free(p->workers), free(p);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        p->workers[i] = (struct worker){p, i};
        if (pthread_create(&p->threads[i], NULL, worker_main, &p->workers[i])) {
            p->n_threads = i;  /* the started ones are joined by cf_pool_free */
            cf_pool_free(p);
            return NULL;
        }
    }
    return p;
}

void cf_pool_free(cf_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->job_seq, 1);
    futex_wake(&p->job_seq, INT_MAX);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    free(p->threads), free(p->workers), free(p);
}

int cf_pool_threads(const cf_pool *p) { return p->n_threads; }

void cf_pool_stats(const cf_pool *p, int64_t out[4]) {
    out[0] = p->jobs, out[1] = p->solo_jobs, out[2] = p->stalls_total, out[3] = p->fallbacks;
}

/* The caller has run out of tasks: wait for the workers' last ones. */
static void wait_done(cf_pool *p, int64_t n) {
    int64_t until = now_ns() + CALLER_SPIN_NS;
    for (int i = 1; atomic_load_explicit(&p->done, memory_order_acquire) < n; i++) {
        _mm_pause();
        if (i % 64 == 0 && now_ns() > until) {
            /* a worker is still inside a task, probably descheduled: give it the CPU */
            atomic_store(&p->caller_sleeping, 1);
            for (;;) {
                uint32_t w = atomic_load(&p->done_seq);
                if (atomic_load(&p->done) >= n) break;
                futex_wait(&p->done_seq, w, 1000000);
            }
            atomic_store(&p->caller_sleeping, 0);
            return;
        }
    }
}

void cf_pool_run(cf_pool *p, cf_task_fn fn, void *ctx, int64_t n_tasks) {
    if (n_tasks <= 0) return;
    p->jobs++;
    int solo = p->solo_until && now_ns() < p->solo_until;
    if (p->n_threads == 1 || n_tasks == 1 || solo) {
        p->solo_jobs += solo;
        for (int64_t t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    int64_t start = now_ns();
    if (p->window_jobs == 0) p->window_start = start, p->window_cpu = thread_cpu_ns();
    atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&p->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->n_tasks, n_tasks, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    uint32_t gen = generation(atomic_load_explicit(&p->state, memory_order_relaxed)) + 1;
    if (gen == 0) gen = 1;  /* 0 is the workers' initial "seen" */
    atomic_store(&p->state, (uint64_t)gen << 32);
    if (atomic_load(&p->sleepers) > 0) {
        atomic_fetch_add(&p->job_seq, 1);
        futex_wake(&p->job_seq, INT_MAX);
    }
    run_tasks(p, gen, 0);
    int64_t own_done = now_ns();
    wait_done(p, n_tasks);
    int64_t end = now_ns(), waited = end - own_done;
    p->stalls_total += waited > STALL_NS;
    p->window_wait_ns += waited, p->window_job_ns += end - start;
    if (++p->window_jobs == WINDOW) {
        double cpu_share = (double)(thread_cpu_ns() - p->window_cpu) / (double)(end - p->window_start + 1);
        if (p->window_wait_ns > WAIT_SHARE * p->window_job_ns || cpu_share < CPU_SHARE) {
            p->solo_until = end + (SOLO_NS << p->backoff);
            p->backoff += p->backoff < MAX_BACKOFF;
            p->fallbacks++;
        } else {
            p->backoff = 0;
        }
        p->window_jobs = p->window_wait_ns = p->window_job_ns = 0;
    }
}
