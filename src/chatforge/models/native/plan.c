/* The model plan's life cycle (model.h): validation of the description, the thread pool, the
   step's buffers. The step itself is forward.c. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "plan.h"

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

int cf_linear_acts(const cf_linear *lin) {
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

/* a Mixtral layer: the router and every expert's matrices */
static int check_experts(const cf_model_desc *d, const cf_layer *L, int64_t l, char *err, int64_t len) {
    char what[64];
    if (L->n_experts < 1 || L->n_experts > CF_MAX_EXPERTS || L->top_k < 1 || L->top_k > L->n_experts ||
        !L->expert_gate_up || !L->expert_down || L->post_ffn_norm || d->activation != CF_ACT_FN_SILU) {
        snprintf(err, (size_t)len, "layer %lld: %lld experts, top %lld (at most %d experts; SwiGLU, no post-norm)",
                 (long long)l, (long long)L->n_experts, (long long)L->top_k, CF_MAX_EXPERTS);
        return -1;
    }
    snprintf(what, sizeof what, "layer %lld router", (long long)l);
    if (check_linear(&L->router, L->n_experts, d->hidden, what, err, len)) return -1;
    for (int64_t e = 0; e < L->n_experts; e++) {
        snprintf(what, sizeof what, "layer %lld expert %lld gate_up", (long long)l, (long long)e);
        if (check_linear(&L->expert_gate_up[e], 2 * d->ffn, d->hidden, what, err, len)) return -1;
        snprintf(what, sizeof what, "layer %lld expert %lld down", (long long)l, (long long)e);
        if (check_linear(&L->expert_down[e], d->hidden, d->ffn, what, err, len)) return -1;
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
    if (d->activation != CF_ACT_FN_SILU && d->activation != CF_ACT_FN_GELU_TANH) {
        snprintf(err, (size_t)len, "unknown activation %lld", (long long)d->activation);
        return -1;
    }
    int64_t H = d->n_heads, Hkv = d->n_kv_heads, D = d->head_dim;
    for (int64_t l = 0; l < d->n_layers; l++) {
        const cf_layer *L = &d->layers[l];
        char what[64];
        if (!L->attn_norm || !L->ffn_norm || !L->q_norm != !L->k_norm) {
            snprintf(err, (size_t)len, "layer %lld: missing norms", (long long)l);
            return -1;
        }
        snprintf(what, sizeof what, "layer %lld qkv", (long long)l);
        if (check_linear(&L->qkv, (H + 2 * Hkv) * D, d->hidden, what, err, len)) return -1;
        snprintf(what, sizeof what, "layer %lld o", (long long)l);
        if (check_linear(&L->o, d->hidden, H * D, what, err, len)) return -1;
        if (L->n_experts) {
            if (check_experts(d, L, l, err, len)) return -1;
            continue;
        }
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
    m->max_top_k = 1;
    for (int64_t l = 0; l < desc->n_layers; l++) {
        if (desc->layers[l].n_experts > m->max_experts) m->max_experts = desc->layers[l].n_experts;
        if (desc->layers[l].top_k > m->max_top_k) m->max_top_k = desc->layers[l].top_k;
    }
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
    free(w->x), free(w->h), free(w->qkv), free(w->q), free(w->attn), free(w->gu), free(w->act), free(w->rope), free(w->rope_local);
    free(w->q8), free(w->q8_d), free(w->q8_s), free(w->tok_seq), free(w->tok_pos), free(w->tasks);
    free(w->router), free(w->moe_x), free(w->moe_y), free(w->route_weight), free(w->route_expert), free(w->slot_of);
    free(w->row_of), free(w->expert_offsets);
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

int cf_reserve(cf_model *m, int64_t T) {
    workspace *w = &m->ws;
    if (T <= w->cap) return 0;
    free_workspace(w);
    const cf_model_desc *d = &m->d;
    int64_t H = d->n_heads, Hkv = d->n_kv_heads, D = d->head_dim;
    int64_t widest = d->hidden > H * D ? d->hidden : H * D;
    if (d->ffn > widest) widest = d->ffn;
    size_t f = sizeof(float), t = (size_t)T, r = t * (size_t)m->max_top_k; /* r: rows an expert matmul may gather */
    w->x = malloc(f * t * (size_t)d->hidden);
    w->h = malloc(f * t * (size_t)d->hidden);
    w->qkv = malloc(f * t * (size_t)((H + 2 * Hkv) * D));
    w->q = malloc(f * t * (size_t)(H * D));
    w->attn = malloc(f * t * (size_t)(H * D));
    w->gu = malloc(f * r * (size_t)(2 * d->ffn));
    w->act = malloc(f * r * (size_t)d->ffn);
    w->rope = malloc(f * t * (size_t)D);
    w->rope_local = d->inv_freq_local ? malloc(f * t * (size_t)D) : NULL;
    w->q8 = malloc(r * (size_t)widest);
    w->q8_d = malloc(f * r * (size_t)(widest / QK + 1));
    w->q8_s = malloc(f * r * (size_t)(widest / QK + 1));
    w->tok_seq = malloc(sizeof(int32_t) * t);
    w->tok_pos = malloc(sizeof(int32_t) * t);
    w->tasks = malloc(sizeof(int32_t) * 3 * (2 * t + 1));
    int moe_ok = 1;
    if (m->max_experts) {
        size_t i32 = sizeof(int32_t), dim = (size_t)d->hidden;
        w->router = malloc(f * t * (size_t)m->max_experts);
        w->moe_x = malloc(f * r * dim), w->moe_y = malloc(f * r * dim);
        w->route_weight = malloc(f * r), w->route_expert = malloc(i32 * r);
        w->slot_of = malloc(i32 * r), w->row_of = malloc(i32 * r);
        w->expert_offsets = malloc(i32 * (size_t)(m->max_experts + 1));
        moe_ok = w->router && w->moe_x && w->moe_y && w->route_weight && w->route_expert && w->slot_of && w->row_of &&
                 w->expert_offsets;
    }
    if (!moe_ok || !w->x || !w->h || !w->qkv || !w->q || !w->attn || !w->gu || !w->act || !w->rope || (d->inv_freq_local && !w->rope_local) || !w->q8 || !w->q8_d ||
        !w->q8_s || !w->tok_seq || !w->tok_pos || !w->tasks) {
        free_workspace(w);
        return -1;
    }
    w->cap = T;
    return 0;
}

void cf_model_profile(cf_model *m, int enable, int64_t *out) {
    if (out)
        for (int i = 0; i < P_COUNT; i++) out[i] = m->profile_ns[i];
    memset(m->profile_ns, 0, sizeof m->profile_ns);
    m->profiling = enable;
}
