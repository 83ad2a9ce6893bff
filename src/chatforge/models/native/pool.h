/* chatforge's thread pool: the caller and N - 1 workers share each job's tasks.

   A job is `n_tasks` calls of `fn(ctx, task, thread)`; tasks are claimed one at a time from an
   atomic counter, so a thread that the OS has descheduled only holds back the task it is in,
   never the others (no barrier waits for every thread to arrive). The caller works too and
   returns when every task has finished.

   Waiting: a worker with nothing to do spins briefly (a job usually follows within
   microseconds inside a model step), then sleeps on a futex; the caller waiting for a task that
   a worker still runs spins briefly, then sleeps until that worker wakes it. Nothing ever spins
   for long, so a busy neighbour process costs a fair share of the CPUs, not a collapse.

   Starvation: when the caller spends much of its jobs' time waiting for tasks that workers hold
   (they were descheduled mid-task: another process has the CPUs), the pool runs the next jobs
   on the caller alone for a while, then tries its workers again (cf_pool_stats says how often).
   Results never depend on which thread ran a task. */
#ifndef CHATFORGE_POOL_H
#define CHATFORGE_POOL_H

#include <stdint.h>

typedef void (*cf_task_fn)(void *ctx, int64_t task, int thread);

typedef struct cf_pool cf_pool;

/* n_threads >= 1 (the caller included); NULL when a thread could not be started. */
cf_pool *cf_pool_new(int n_threads);
void cf_pool_free(cf_pool *pool);
int cf_pool_threads(const cf_pool *pool);
/* Runs fn(ctx, t, thread) for t in [0, n_tasks) on the pool; thread < cf_pool_threads(pool).
   Not reentrant: one caller at a time. */
void cf_pool_run(cf_pool *pool, cf_task_fn fn, void *ctx, int64_t n_tasks);

/* [jobs run, jobs run by the caller alone, times the caller slept on a straggler,
   times the pool fell back to the caller alone] since the pool was made. */
void cf_pool_stats(const cf_pool *pool, int64_t out[4]);

#endif
