/* The model plan (model.h) and its step: one call runs the whole forward pass.

   Work is handed to the thread pool (pool.h) op by op: a matmul as tasks of (rows, column
   groups), the attention as tasks of (sequence, kv head, run of queries), the per-row operations
   as tasks of rows (or on the calling thread alone when the step is small). Which thread runs
   which task never changes a result (model.h). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "ops.h"
#include "pool.h"

#define QUERY_RUN 16        /* queries of one sequence per attention task */
#define ROW_MATMUL_BLOCK 32 /* rows per matmul task when the step has more */
#define INLINE_ROW_WORK 65536 /* per-row ops of less work than this run on the caller alone */

typedef struct {
    int64_t cap;              /* tokens the buffers hold */
    float *x, *h, *qkv, *q, *attn, *gu, *act, *rope; /* activations */
    int8_t *q8;               /* 8-bit copy of the current matmul input */
    float *q8_d, *q8_s;
    int32_t *tok_seq, *tok_pos;
    int32_t *tasks;           /* attention tasks: (seq, first token, count) */
} workspace;

/* Where a step's time goes (cf_model_profile): the calling thread's CPU time per kind of op. */
enum { P_EMBED, P_NORM, P_QKV, P_ROPE, P_ATTN, P_O, P_GATE_UP, P_SWIGLU, P_DOWN, P_HEAD, P_COUNT };

struct cf_model {
    cf_model_desc d;
    int profiling;
    int64_t profile_ns[P_COUNT];
    int64_t mark;
    cf_layer *layers;
    cf_pool *pool;
    float *scratch;           /* per thread: attention scratch */
    int64_t scratch_floats;
    workspace ws;
    char error[256];
    const cf_step *step;      /* the step being run */
};

int64_t cf_sizeof(int64_t what) {
    switch (what) {
        case 0: return sizeof(cf_matrix);
        case 1: return sizeof(cf_linear);
        case 2: return sizeof(cf_layer);
        case 3: return sizeof(cf_model_desc);
        case 4: return sizeof(cf_step);
        default: return -1;
    }
}

static int linear_acts(const cf_linear *lin) {
    int acts = 0;
    for (int64_t p = 0; p < lin->n_parts; p++) acts |= cf_formats[lin->parts[p].format]->act;
    return acts;
}

static int64_t linear_n(const cf_linear *lin) {
    int64_t n = 0;
    for (int64_t p = 0; p < lin->n_parts; p++) n += lin->parts[p].N;
    return n;
}

/* ---- validation ------------------------------------------------------------------------- */

static int check_matrix(const cf_matrix *w, int64_t N, int64_t K, const char *what, char *err, int64_t len) {
    if (w->format < 0 || w->format >= CF_FMT_COUNT || !w->data) {
        snprintf(err, (size_t)len, "%s: unknown format %lld or no data", what, (long long)w->format);
        return -1;
    }
    if ((N >= 0 && w->N != N) || w->K != K || K % cf_formats[w->format]->k_multiple) {
        snprintf(err, (size_t)len, "%s: shape [%lld, %lld] in %s, expected [%lld, %lld]", what, (long long)w->N,
                 (long long)w->K, cf_formats[w->format]->name, (long long)N, (long long)K);
        return -1;
    }
    return 0;
}

static int check_linear(const cf_linear *lin, int64_t N, int64_t K, const char *what, char *err, int64_t len) {
    if (lin->n_parts < 1 || lin->n_parts > CF_MAX_PARTS) {
        snprintf(err, (size_t)len, "%s: %lld parts", what, (long long)lin->n_parts);
        return -1;
    }
    for (int64_t p = 0; p < lin->n_parts; p++)
        if (check_matrix(&lin->parts[p], -1, K, what, err, len)) return -1;
    if (linear_n(lin) != N) {
        snprintf(err, (size_t)len, "%s: %lld outputs, expected %lld", what, (long long)linear_n(lin), (long long)N);
        return -1;
    }
    return 0;
}

static int check_desc(const cf_model_desc *d, char *err, int64_t len) {
    if (d->n_layers < 1 || d->hidden < 8 || d->n_heads < 1 || d->n_kv_heads < 1 || d->n_heads % d->n_kv_heads ||
        d->head_dim % 8 || d->head_dim > 512 || d->ffn < 1 || d->vocab < 1 || !d->inv_freq || !d->final_norm || !d->layers) {
        snprintf(err, (size_t)len, "unsupported sizes (head_dim %% 8, heads %% kv heads) or missing tensors");
        return -1;
    }
    if (check_matrix(&d->embed, d->vocab, d->hidden, "embedding", err, len) ||
        check_matrix(&d->lm_head, d->vocab, d->hidden, "lm_head", err, len))
        return -1;
    int64_t H = d->n_heads, Hkv = d->n_kv_heads, D = d->head_dim;
    for (int64_t l = 0; l < d->n_layers; l++) {
        const cf_layer *L = &d->layers[l];
        char what[64];
        if (!L->attn_norm || !L->ffn_norm) {
            snprintf(err, (size_t)len, "layer %lld: missing norms", (long long)l);
            return -1;
        }
        snprintf(what, sizeof what, "layer %lld qkv", (long long)l);
        if (check_linear(&L->qkv, (H + 2 * Hkv) * D, d->hidden, what, err, len)) return -1;
        snprintf(what, sizeof what, "layer %lld o", (long long)l);
        if (check_linear(&L->o, d->hidden, H * D, what, err, len)) return -1;
        snprintf(what, sizeof what, "layer %lld gate_up", (long long)l);
        if (check_linear(&L->gate_up, 2 * d->ffn, d->hidden, what, err, len)) return -1;
        snprintf(what, sizeof what, "layer %lld down", (long long)l);
        if (check_linear(&L->down, d->hidden, d->ffn, what, err, len)) return -1;
    }
    return 0;
}

/* ---- life cycle ------------------------------------------------------------------------- */

int cf_model_new(const cf_model_desc *desc, int n_threads, cf_model **out, char *err, int64_t err_len) {
    *out = NULL;
    cf_select_kernels();
    if (check_desc(desc, err, err_len)) return -1;
    cf_model *m = calloc(1, sizeof *m);
    if (!m) goto oom;
    m->d = *desc;
    m->layers = malloc(sizeof(cf_layer) * (size_t)desc->n_layers);
    if (!m->layers) goto oom;
    memcpy(m->layers, desc->layers, sizeof(cf_layer) * (size_t)desc->n_layers);
    m->d.layers = m->layers;
    m->pool = cf_pool_new(n_threads);
    if (!m->pool) {
        snprintf(err, (size_t)err_len, "could not start %d threads", n_threads);
        cf_model_free(m);
        return -1;
    }
    m->scratch_floats = cf_attend_scratch_floats(desc->head_dim, desc->n_heads / desc->n_kv_heads, QUERY_RUN);
    m->scratch = malloc(sizeof(float) * (size_t)(m->scratch_floats * cf_pool_threads(m->pool)));
    if (!m->scratch) goto oom;
    *out = m;
    return 0;
oom:
    snprintf(err, (size_t)err_len, "out of memory");
    cf_model_free(m);
    return -1;
}

static void free_workspace(workspace *w) {
    free(w->x), free(w->h), free(w->qkv), free(w->q), free(w->attn), free(w->gu), free(w->act), free(w->rope);
    free(w->q8), free(w->q8_d), free(w->q8_s), free(w->tok_seq), free(w->tok_pos), free(w->tasks);
    memset(w, 0, sizeof *w);
}

void cf_model_free(cf_model *m) {
    if (!m) return;
    cf_pool_free(m->pool);
    free_workspace(&m->ws);
    free(m->scratch), free(m->layers), free(m);
}

const char *cf_model_error(const cf_model *m) { return m->error; }
int64_t cf_model_threads(const cf_model *m) { return cf_pool_threads(m->pool); }
void cf_model_pool_stats(const cf_model *m, int64_t out[4]) { cf_pool_stats(m->pool, out); }

static int reserve(cf_model *m, int64_t T) {
    workspace *w = &m->ws;
    if (T <= w->cap) return 0;
    free_workspace(w);
    const cf_model_desc *d = &m->d;
    int64_t H = d->n_heads, Hkv = d->n_kv_heads, D = d->head_dim;
    int64_t widest = d->hidden > H * D ? d->hidden : H * D;
    if (d->ffn > widest) widest = d->ffn;
    size_t f = sizeof(float), t = (size_t)T;
    w->x = malloc(f * t * (size_t)d->hidden);
    w->h = malloc(f * t * (size_t)d->hidden);
    w->qkv = malloc(f * t * (size_t)((H + 2 * Hkv) * D));
    w->q = malloc(f * t * (size_t)(H * D));
    w->attn = malloc(f * t * (size_t)(H * D));
    w->gu = malloc(f * t * (size_t)(2 * d->ffn));
    w->act = malloc(f * t * (size_t)d->ffn);
    w->rope = malloc(f * t * (size_t)D);
    w->q8 = malloc(t * (size_t)widest);
    w->q8_d = malloc(f * t * (size_t)(widest / QK + 1));
    w->q8_s = malloc(f * t * (size_t)(widest / QK + 1));
    w->tok_seq = malloc(sizeof(int32_t) * t);
    w->tok_pos = malloc(sizeof(int32_t) * t);
    w->tasks = malloc(sizeof(int32_t) * 3 * (2 * t + 1));
    if (!w->x || !w->h || !w->qkv || !w->q || !w->attn || !w->gu || !w->act || !w->rope || !w->q8 || !w->q8_d ||
        !w->q8_s || !w->tok_seq || !w->tok_pos || !w->tasks) {
        free_workspace(w);
        return -1;
    }
    w->cap = T;
    return 0;
}

/* ---- per-row operations ---------------------------------------------------------------- */

typedef void (*row_fn)(cf_model *m, void *ctx, int64_t row);

typedef struct {
    cf_model *m;
    row_fn fn;
    void *ctx;
    int64_t rows, per_task;
} rows_job;

static void rows_task(void *p, int64_t task, int thread) {
    (void)thread;
    rows_job *j = p;
    int64_t r1 = (task + 1) * j->per_task < j->rows ? (task + 1) * j->per_task : j->rows;
    for (int64_t r = task * j->per_task; r < r1; r++) j->fn(j->m, j->ctx, r);
}

/* fn on every row; `work` is a row's size in floats (small steps stay on this thread) */
static void for_rows(cf_model *m, row_fn fn, void *ctx, int64_t rows, int64_t work) {
    if (rows * work < INLINE_ROW_WORK || cf_pool_threads(m->pool) == 1) {
        for (int64_t r = 0; r < rows; r++) fn(m, ctx, r);
        return;
    }
    int64_t tasks = 4 * cf_pool_threads(m->pool);
    int64_t per = (rows + tasks - 1) / tasks;
    rows_job j = {m, fn, ctx, rows, per};
    cf_pool_run(m->pool, rows_task, &j, (rows + per - 1) / per);
}

/* the 8-bit form of an input when its matmul reads it */
static cf_acts make_acts(cf_model *m, const float *x, int64_t M, int64_t K, int acts) {
    cf_acts a = {M, K, x, NULL, NULL, NULL};
    if (acts & CF_ACT_Q8) a.q8 = m->ws.q8, a.q8_d = m->ws.q8_d, a.q8_s = m->ws.q8_s;
    return a;
}

typedef struct {
    const float *src;
    const float *weight; /* a norm's weight, or NULL: no norm */
    float *dst;          /* the float32 result (may be src when no norm) */
    int64_t K;
    int acts;
} norm_ctx;

/* dst = norm(src) (or src as is); and its 8-bit form when wanted */
static void norm_row(cf_model *m, void *p, int64_t r) {
    norm_ctx *c = p;
    const float *src = c->src + r * c->K;
    float *dst = c->dst + r * c->K;
    if (c->weight) cf_rms_norm(src, c->weight, c->K, m->d.rms_eps, dst);
    if (c->acts & CF_ACT_Q8)
        cf_quantize_q8(c->weight ? dst : src, 1, c->K, m->ws.q8 + r * c->K, m->ws.q8_d + r * (c->K / QK),
                       m->ws.q8_s + r * (c->K / QK));
}

static cf_acts prepare_input(cf_model *m, const float *src, const float *weight, float *dst, int64_t M, int64_t K,
                             int acts) {
    norm_ctx c = {src, weight, weight ? dst : (float *)src, K, acts};
    if (weight || (acts & CF_ACT_Q8)) for_rows(m, norm_row, &c, M, K);
    return make_acts(m, c.dst, M, K, acts);
}

/* ---- matmuls ---------------------------------------------------------------------------- */

typedef struct {
    const cf_linear *lin;
    const cf_acts *x;
    float *y;
    int64_t ldy;
    int accumulate;
    int64_t groups, groups_per_task, col_tasks, row_blocks, row_block;
} matmul_job;

static void matmul_task(void *p, int64_t task, int thread) {
    (void)thread;
    matmul_job *j = p;
    int64_t ct = task / j->row_blocks, rb = task % j->row_blocks;
    int64_t r0 = rb * j->row_block, r1 = r0 + j->row_block < j->x->M ? r0 + j->row_block : j->x->M;
    int64_t lo = ct * j->groups_per_task, hi = lo + j->groups_per_task < j->groups ? lo + j->groups_per_task : j->groups;
    int64_t base = 0, col = 0; /* the part's first group (over all parts) and first output column */
    for (int64_t p = 0; p < j->lin->n_parts && base < hi; p++) {
        const cf_matrix *w = &j->lin->parts[p];
        int64_t n_groups = (w->N + 7) / 8;
        int64_t g0 = lo > base ? lo - base : 0, g1 = hi - base < n_groups ? hi - base : n_groups;
        if (g0 < g1)
            cf_formats[w->format]->matmul(w, j->x, r0, r1, g0, g1, j->lin->bias ? j->lin->bias + col : NULL,
                                          j->y + col, j->ldy, j->accumulate);
        base += n_groups, col += w->N;
    }
}

/* y[M, N] (= or +=) x . lin^T */
static void linear(cf_model *m, const cf_linear *lin, const cf_acts *x, float *y, int64_t ldy, int accumulate) {
    int64_t groups = 0;
    for (int64_t p = 0; p < lin->n_parts; p++) groups += (lin->parts[p].N + 7) / 8;
    int64_t threads = cf_pool_threads(m->pool);
    int64_t row_block = x->M > ROW_MATMUL_BLOCK ? ROW_MATMUL_BLOCK : x->M;
    int64_t row_blocks = (x->M + row_block - 1) / row_block;
    int64_t want = threads == 1 ? 1 : 8 * threads / row_blocks;
    if (want < 1) want = 1;
    int64_t per = (groups + want - 1) / want;
    matmul_job j = {lin, x, y, ldy, accumulate, groups, per, (groups + per - 1) / per, row_blocks, row_block};
    cf_pool_run(m->pool, matmul_task, &j, j.col_tasks * row_blocks);
}

/* ---- attention -------------------------------------------------------------------------- */

typedef struct {
    cf_model *m;
    int64_t layer;
} attn_ctx;

static cf_attn_args attn_args(cf_model *m, int64_t l, int64_t seq) {
    const cf_model_desc *d = &m->d;
    cf_attn_args a = {
        m->ws.q, m->ws.attn, m->step->k_cache[l], m->step->v_cache[l], m->step->block_tables + seq * m->step->max_blocks,
        m->step->block_size, d->n_heads, d->n_kv_heads, d->head_dim, m->layers[l].sliding_window, d->attn_scale,
    };
    return a;
}

static void attn_task(void *p, int64_t task, int thread) {
    attn_ctx *c = p;
    cf_model *m = c->m;
    int64_t Hkv = m->d.n_kv_heads;
    const int32_t *t = m->ws.tasks + 3 * (task / Hkv);
    cf_attn_args a = attn_args(m, c->layer, t[0]);
    cf_attend(&a, task % Hkv, t[1], m->ws.tok_pos[t[1]], t[2], m->scratch + thread * m->scratch_floats);
}

/* ---- profiling ------------------------------------------------------------------------- */

static int64_t thread_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* charges the time since the last mark to `what` */
static inline void mark(cf_model *m, int what) {
    if (!m->profiling) return;
    int64_t now = thread_ns();
    m->profile_ns[what] += now - m->mark;
    m->mark = now;
}

void cf_model_profile(cf_model *m, int enable, int64_t *out) {
    if (out)
        for (int i = 0; i < P_COUNT; i++) out[i] = m->profile_ns[i];
    memset(m->profile_ns, 0, sizeof m->profile_ns);
    m->profiling = enable;
}

/* ---- the layer's per-row steps ---------------------------------------------------------- */

typedef struct {
    int64_t layer;
} layer_ctx;

/* RoPE on q and k, k and v into the cache (float16), q kept for the attention */
static void rope_row(cf_model *m, void *p, int64_t t) {
    const cf_model_desc *d = &m->d;
    int64_t l = ((layer_ctx *)p)->layer, H = d->n_heads, Hkv = d->n_kv_heads, D = d->head_dim;
    const float *row = m->ws.qkv + t * (H + 2 * Hkv) * D;
    const float *cos = m->ws.rope + t * D, *sin = cos + D / 2;
    for (int64_t h = 0; h < H; h++) cf_rotate_head(row + h * D, cos, sin, D, m->ws.q + (t * H + h) * D);
    int64_t pos = m->ws.tok_pos[t], bs = m->step->block_size;
    int64_t block = m->step->block_tables[m->ws.tok_seq[t] * m->step->max_blocks + pos / bs];
    float k[512];
    for (int64_t h = 0; h < Hkv; h++) {
        int64_t at = ((block * Hkv + h) * bs + pos % bs) * D;
        cf_rotate_head(row + (H + h) * D, cos, sin, D, k);
        cf_to_f16(k, D, (uint16_t *)m->step->k_cache[l] + at);
        cf_to_f16(row + (H + Hkv + h) * D, D, (uint16_t *)m->step->v_cache[l] + at);
    }
}

static void swiglu_row(cf_model *m, void *p, int64_t t) {
    (void)p;
    int64_t F = m->d.ffn;
    cf_swiglu(m->ws.gu + t * 2 * F, F, m->ws.act + t * F);
}

static void embed_row(cf_model *m, void *p, int64_t t) {
    (void)p;
    const cf_model_desc *d = &m->d;
    float *x = m->ws.x + t * d->hidden;
    cf_formats[d->embed.format]->row(&d->embed, m->step->token_ids[t], x);
    if (d->embed_scale != 1.f)
        for (int64_t i = 0; i < d->hidden; i++) x[i] *= d->embed_scale;
    const float *inv = d->inv_freq;
    float *cos = m->ws.rope + t * d->head_dim, *sin = cos + d->head_dim / 2;
    for (int64_t i = 0; i < d->head_dim / 2; i++) {
        float angle = (float)m->ws.tok_pos[t] * inv[i];
        cos[i] = cosf(angle), sin[i] = sinf(angle);
    }
}

static void layer(cf_model *m, int64_t l, int64_t T, int64_t n_attn_tasks) {
    const cf_model_desc *d = &m->d;
    const cf_layer *L = &m->layers[l];
    workspace *w = &m->ws;
    int64_t H = d->n_heads, Hkv = d->n_kv_heads, D = d->head_dim, dim = d->hidden;
    layer_ctx lc = {l};

    cf_acts in = prepare_input(m, w->x, L->attn_norm, w->h, T, dim, linear_acts(&L->qkv));
    mark(m, P_NORM);
    linear(m, &L->qkv, &in, w->qkv, (H + 2 * Hkv) * D, 0);
    mark(m, P_QKV);
    for_rows(m, rope_row, &lc, T, (H + 2 * Hkv) * D);
    mark(m, P_ROPE);
    attn_ctx ac = {m, l};
    cf_pool_run(m->pool, attn_task, &ac, n_attn_tasks);
    mark(m, P_ATTN);
    in = prepare_input(m, w->attn, NULL, NULL, T, H * D, linear_acts(&L->o));
    mark(m, P_NORM);
    linear(m, &L->o, &in, w->x, dim, 1);
    mark(m, P_O);

    in = prepare_input(m, w->x, L->ffn_norm, w->h, T, dim, linear_acts(&L->gate_up));
    mark(m, P_NORM);
    linear(m, &L->gate_up, &in, w->gu, 2 * d->ffn, 0);
    mark(m, P_GATE_UP);
    for_rows(m, swiglu_row, NULL, T, 2 * d->ffn);
    mark(m, P_SWIGLU);
    in = prepare_input(m, w->act, NULL, NULL, T, d->ffn, linear_acts(&L->down));
    mark(m, P_NORM);
    linear(m, &L->down, &in, w->x, dim, 1);
    mark(m, P_DOWN);
}

/* ---- the step --------------------------------------------------------------------------- */

static int bad_step(cf_model *m, const char *what) {
    snprintf(m->error, sizeof m->error, "malformed step: %s", what);
    return -2;
}

/* positions, sequences and attention tasks of the step's tokens; -2 when malformed */
static int64_t plan_tokens(cf_model *m, const cf_step *s) {
    int64_t t = 0, n_tasks = 0, bs = s->block_size;
    for (int64_t b = 0; b < s->n_seqs; b++) {
        int64_t q = s->query_lens[b], ctx = s->context_lens[b];
        if (q < 1 || ctx < q || t + q > s->n_tokens) return bad_step(m, "query/context lengths");
        if ((ctx + bs - 1) / bs > s->max_blocks) return bad_step(m, "block table too short");
        for (int64_t i = 0; i < (ctx + bs - 1) / bs; i++) {
            int32_t block = s->block_tables[b * s->max_blocks + i];
            if (block < 0 || block >= s->n_blocks) return bad_step(m, "block id out of range");
        }
        for (int64_t i = 0; i < q; i++) {
            m->ws.tok_seq[t + i] = (int32_t)b;
            m->ws.tok_pos[t + i] = (int32_t)(ctx - q + i);
        }
        for (int64_t i = 0; i < q; i += QUERY_RUN) {
            int32_t *task = m->ws.tasks + 3 * n_tasks++;
            task[0] = (int32_t)b, task[1] = (int32_t)(t + i), task[2] = (int32_t)(q - i < QUERY_RUN ? q - i : QUERY_RUN);
        }
        t += q;
    }
    if (t != s->n_tokens) return bad_step(m, "query lengths do not sum to the token count");
    for (int64_t i = 0; i < s->n_tokens; i++)
        if (s->token_ids[i] < 0 || s->token_ids[i] >= m->d.vocab) return bad_step(m, "token id out of range");
    for (int64_t i = 0; i < s->n_sample; i++)
        if (s->sample_rows[i] < 0 || s->sample_rows[i] >= s->n_tokens) return bad_step(m, "sample row out of range");
    return n_tasks;
}

int cf_model_step(cf_model *m, const cf_step *s) {
    const cf_model_desc *d = &m->d;
    m->error[0] = 0;
    if (s->n_tokens < 1 || s->n_seqs < 1 || s->n_sample < 0 || s->n_sample > s->n_tokens) return bad_step(m, "sizes");
    if (!s->k_cache || !s->v_cache || s->block_size < 1) return bad_step(m, "no KV cache");
    if (reserve(m, s->n_tokens)) {
        snprintf(m->error, sizeof m->error, "out of memory for a step of %lld tokens", (long long)s->n_tokens);
        return -1;
    }
    m->step = s;
    int64_t n_tasks = plan_tokens(m, s);
    if (n_tasks < 0) return (int)n_tasks;
    int64_t T = s->n_tokens;
    if (m->profiling) m->mark = thread_ns();
    for_rows(m, embed_row, NULL, T, d->hidden);
    mark(m, P_EMBED);
    for (int64_t l = 0; l < d->n_layers; l++) layer(m, l, T, n_tasks * d->n_kv_heads);
    if (s->n_sample == 0) return 0;
    /* the final norm and the lm_head on the sampled rows only */
    workspace *w = &m->ws;
    int64_t S = s->n_sample, dim = d->hidden;
    for (int64_t i = 0; i < S; i++) memcpy(w->h + i * dim, w->x + (int64_t)s->sample_rows[i] * dim, sizeof(float) * (size_t)dim);
    int acts = cf_formats[d->lm_head.format]->act;
    cf_linear head = {1, {d->lm_head}, NULL};
    cf_acts in = prepare_input(m, w->h, d->final_norm, w->h, S, dim, acts);
    linear(m, &head, &in, s->logits, d->vocab, 0);
    mark(m, P_HEAD);
    return 0;
}
