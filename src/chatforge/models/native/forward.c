/* The step of the model plan (model.h): one call runs the whole forward pass (a Mixtral
   layer's experts: moe.c).

   Work is handed to the thread pool (pool.h) op by op: a matmul as tasks of (rows, column
   groups), the attention as tasks of (sequence, kv head, run of queries), the per-row operations
   as tasks of rows (or on the calling thread alone when the step is small). Which thread runs
   which task never changes a result (model.h). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ops.h"
#include "plan.h"

/* ---- per-row operations ---------------------------------------------------------------- */

typedef struct {
    cf_model *m;
    cf_row_op fn;
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
void cf_for_rows(cf_model *m, cf_row_op fn, void *ctx, int64_t rows, int64_t work) {
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

cf_acts cf_prepare_input(cf_model *m, const float *src, const float *weight, float *dst, int64_t M, int64_t K,
                             int acts) {
    norm_ctx c = {src, weight, weight ? dst : (float *)src, K, acts};
    if (weight || (acts & CF_ACT_Q8)) cf_for_rows(m, norm_row, &c, M, K);
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
void cf_run_linear(cf_model *m, const cf_linear *lin, const cf_acts *x, float *y, int64_t ldy, int accumulate) {
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
void cf_mark(cf_model *m, int what) {
    if (!m->profiling) return;
    int64_t now = thread_ns();
    m->profile_ns[what] += now - m->mark;
    m->mark = now;
}

/* ---- the layer's per-row steps ---------------------------------------------------------- */

typedef struct {
    int64_t layer;
} layer_ctx;

/* a head before RoPE: as it is, or RMS-normalised into tmp (QK-norm) */
static inline const float *head_in(const float *src, const float *norm, int64_t D, float eps, float *tmp) {
    if (!norm) return src;
    cf_rms_norm(src, norm, D, eps, tmp);
    return tmp;
}

/* (QK-norm,) RoPE on q and k, k and v into the cache (float16), q kept for the attention */
static void rope_row(cf_model *m, void *p, int64_t t) {
    const cf_model_desc *d = &m->d;
    int64_t l = ((layer_ctx *)p)->layer, H = d->n_heads, Hkv = d->n_kv_heads, D = d->head_dim;
    const cf_layer *L = &m->layers[l];
    const float *row = m->ws.qkv + t * (H + 2 * Hkv) * D;
    const float *table = d->inv_freq_local && L->sliding_window > 0 ? m->ws.rope_local : m->ws.rope;
    const float *cos = table + t * D, *sin = cos + D / 2;
    float tmp[512];
    for (int64_t h = 0; h < H; h++)
        cf_rotate_head(head_in(row + h * D, L->q_norm, D, d->rms_eps, tmp), cos, sin, D, m->ws.q + (t * H + h) * D);
    int64_t pos = m->ws.tok_pos[t], bs = m->step->block_size;
    int64_t block = m->step->block_tables[m->ws.tok_seq[t] * m->step->max_blocks + pos / bs];
    float k[512];
    for (int64_t h = 0; h < Hkv; h++) {
        int64_t at = ((block * Hkv + h) * bs + pos % bs) * D;
        cf_rotate_head(head_in(row + (H + h) * D, L->k_norm, D, d->rms_eps, tmp), cos, sin, D, k);
        cf_to_f16(k, D, (uint16_t *)m->step->k_cache[l] + at);
        cf_to_f16(row + (H + Hkv + h) * D, D, (uint16_t *)m->step->v_cache[l] + at);
    }
}

void cf_ffn_act_row(cf_model *m, void *p, int64_t t) {
    (void)p;
    int64_t F = m->d.ffn;
    if (m->d.activation == CF_ACT_FN_GELU_TANH)
        cf_geglu(m->ws.gu + t * 2 * F, F, m->ws.act + t * F);
    else
        cf_swiglu(m->ws.gu + t * 2 * F, F, m->ws.act + t * F);
}

/* x += norm(h): a sub-block's output normalised before the residual add (Gemma's post-norms) */
static void add_normed_row(cf_model *m, void *p, int64_t t) {
    const float *weight = p;
    int64_t dim = m->d.hidden;
    float *h = m->ws.h + t * dim, *x = m->ws.x + t * dim;
    cf_rms_norm(h, weight, dim, m->d.rms_eps, h);
    for (int64_t i = 0; i < dim; i++) x[i] = x[i] + h[i];
}

/* y = x . lin^T, added into the residual x: directly, or through a post-norm (into h first) */
static void residual_linear(cf_model *m, const cf_linear *lin, const cf_acts *in, const float *post_norm) {
    if (!post_norm) {
        cf_run_linear(m, lin, in, m->ws.x, m->d.hidden, 1);
        return;
    }
    cf_run_linear(m, lin, in, m->ws.h, m->d.hidden, 0);
    cf_for_rows(m, add_normed_row, (void *)post_norm, in->M, m->d.hidden);
}

/* cos [D / 2], then sin [D / 2], of one position */
static void rope_table(const float *inv, int64_t pos, int64_t D, float *cos) {
    float *sin = cos + D / 2;
    for (int64_t i = 0; i < D / 2; i++) {
        float angle = (float)pos * inv[i];
        cos[i] = cosf(angle), sin[i] = sinf(angle);
    }
}

static void embed_row(cf_model *m, void *p, int64_t t) {
    (void)p;
    const cf_model_desc *d = &m->d;
    float *x = m->ws.x + t * d->hidden;
    cf_formats[d->embed.format]->row(&d->embed, m->step->token_ids[t], x);
    if (d->embed_scale != 1.f)
        for (int64_t i = 0; i < d->hidden; i++) x[i] *= d->embed_scale;
    rope_table(d->inv_freq, m->ws.tok_pos[t], d->head_dim, m->ws.rope + t * d->head_dim);
    if (d->inv_freq_local) rope_table(d->inv_freq_local, m->ws.tok_pos[t], d->head_dim, m->ws.rope_local + t * d->head_dim);
}

static void layer(cf_model *m, int64_t l, int64_t T, int64_t n_attn_tasks) {
    const cf_model_desc *d = &m->d;
    const cf_layer *L = &m->layers[l];
    workspace *w = &m->ws;
    int64_t H = d->n_heads, Hkv = d->n_kv_heads, D = d->head_dim, dim = d->hidden;
    layer_ctx lc = {l};

    cf_acts in = cf_prepare_input(m, w->x, L->attn_norm, w->h, T, dim, cf_linear_acts(&L->qkv));
    cf_mark(m, P_NORM);
    cf_run_linear(m, &L->qkv, &in, w->qkv, (H + 2 * Hkv) * D, 0);
    cf_mark(m, P_QKV);
    cf_for_rows(m, rope_row, &lc, T, (H + 2 * Hkv) * D);
    cf_mark(m, P_ROPE);
    attn_ctx ac = {m, l};
    cf_pool_run(m->pool, attn_task, &ac, n_attn_tasks);
    cf_mark(m, P_ATTN);
    in = cf_prepare_input(m, w->attn, NULL, NULL, T, H * D, cf_linear_acts(&L->o));
    cf_mark(m, P_NORM);
    residual_linear(m, &L->o, &in, L->post_attn_norm);
    cf_mark(m, P_O);

    if (L->n_experts) {
        cf_experts(m, L, T);
        return;
    }
    in = cf_prepare_input(m, w->x, L->ffn_norm, w->h, T, dim, cf_linear_acts(&L->gate_up));
    cf_mark(m, P_NORM);
    cf_run_linear(m, &L->gate_up, &in, w->gu, 2 * d->ffn, 0);
    cf_mark(m, P_GATE_UP);
    cf_for_rows(m, cf_ffn_act_row, NULL, T, 2 * d->ffn);
    cf_mark(m, P_SWIGLU);
    in = cf_prepare_input(m, w->act, NULL, NULL, T, d->ffn, cf_linear_acts(&L->down));
    cf_mark(m, P_NORM);
    residual_linear(m, &L->down, &in, L->post_ffn_norm);
    cf_mark(m, P_DOWN);
}

/* ---- the step --------------------------------------------------------------------------- */

/* the final norm and the lm_head on `n` rows of the step's final hidden states (n <= the step's
   tokens: the rows are gathered into the workspace's h) */
static void head(cf_model *m, const int32_t *rows, int64_t n, float *logits) {
    const cf_model_desc *d = &m->d;
    workspace *w = &m->ws;
    int64_t dim = d->hidden;
    for (int64_t i = 0; i < n; i++) memcpy(w->h + i * dim, w->x + (int64_t)rows[i] * dim, sizeof(float) * (size_t)dim);
    cf_linear lm_head = {1, {d->lm_head}, NULL};
    cf_acts in = cf_prepare_input(m, w->h, d->final_norm, w->h, n, dim, cf_formats[d->lm_head.format]->act);
    cf_run_linear(m, &lm_head, &in, logits, d->vocab, 0);
    if (d->logit_softcap > 0.f)
        for (int64_t i = 0; i < n * d->vocab; i++) logits[i] = d->logit_softcap * tanhf(logits[i] / d->logit_softcap);
}

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
    m->last_tokens = 0;
    if (s->n_tokens < 1 || s->n_seqs < 1 || s->n_sample < 0 || s->n_sample > s->n_tokens) return bad_step(m, "sizes");
    if (!s->k_cache || !s->v_cache || s->block_size < 1) return bad_step(m, "no KV cache");
    if (cf_reserve(m, s->n_tokens)) {
        snprintf(m->error, sizeof m->error, "out of memory for a step of %lld tokens", (long long)s->n_tokens);
        return -1;
    }
    m->step = s;
    int64_t n_tasks = plan_tokens(m, s);
    if (n_tasks < 0) return (int)n_tasks;
    int64_t T = s->n_tokens;
    if (m->profiling) m->mark = thread_ns();
    cf_for_rows(m, embed_row, NULL, T, d->hidden);
    cf_mark(m, P_EMBED);
    for (int64_t l = 0; l < d->n_layers; l++) layer(m, l, T, n_tasks * d->n_kv_heads);
    m->last_tokens = T;
    if (s->n_sample == 0) return 0;
    head(m, s->sample_rows, s->n_sample, s->logits);
    cf_mark(m, P_HEAD);
    return 0;
}

int cf_model_logits(cf_model *m, const int32_t *rows, int64_t n, float *logits) {
    for (int64_t i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= m->last_tokens) return bad_step(m, "a row the last step did not compute");
    if (n > m->last_tokens) return bad_step(m, "more rows than the last step computed");
    head(m, rows, n, logits);
    return 0;
}
