/* Mixtral's sparse mixture of experts, in place of a layer's MLP (model.h): which experts each
   row goes to, with what weight; the rows grouped by expert (copied into a gathered matrix), so
   that each expert multiplies all of its rows in one matmul; then every row's weighted sum.

   Per row, as transformers' MixtralSparseMoeBlock: a softmax over all experts' logits (float32),
   the top_k probabilities kept (the lower index first among equal ones) and divided by their
   sum. The row's experts are then listed in the order of their indices: that is the order its
   weighted outputs are summed in, whatever the other rows. The grouping only decides where a
   row's copy sits in the gathered matrix, which no kernel's result depends on (formats.h). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ops.h"
#include "plan.h"

/* one row: its top-k experts (ascending index) and their renormalised weights */
static void route_row(const float *logits, int64_t E, int64_t k, int32_t *expert, float *weight) {
    float p[CF_MAX_EXPERTS], top = logits[0], sum = 0.f;
    for (int64_t e = 1; e < E; e++) top = logits[e] > top ? logits[e] : top;
    for (int64_t e = 0; e < E; e++) sum += p[e] = expf(logits[e] - top);
    for (int64_t e = 0; e < E; e++) p[e] /= sum;
    int chosen[CF_MAX_EXPERTS] = {0};
    float kept = 0.f;
    for (int64_t s = 0; s < k; s++) { /* descending probability, as torch.topk lists them */
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++)
            if (!chosen[e] && (best < 0 || p[e] > p[best])) best = e;
        chosen[best] = 1;
        expert[s] = (int32_t)best, weight[s] = p[best];
        kept += p[best];
    }
    for (int64_t s = 0; s < k; s++) weight[s] /= kept;
    for (int64_t s = 1; s < k; s++) /* by expert index: the order of the weighted sum */
        for (int64_t j = s; j > 0 && expert[j - 1] > expert[j]; j--) {
            int32_t e = expert[j]; expert[j] = expert[j - 1]; expert[j - 1] = e;
            float w = weight[j]; weight[j] = weight[j - 1]; weight[j - 1] = w;
        }
}

/* From the router's logits [T, E], each row's k experts and weights [T, k] (route_row), and the
   T k (row, slot) pairs grouped by expert: expert e's pairs are gathered rows offsets[e] ..
   offsets[e + 1] - 1, pair (t, s) is gathered row slot_of[t k + s], gathered row r is row_of[r]. */
static void route(const float *logits, int64_t T, int64_t E, int64_t k, int32_t *expert, float *weight,
                  int32_t *offsets, int32_t *slot_of, int32_t *row_of) {
    int32_t filled[CF_MAX_EXPERTS] = {0};
    for (int64_t e = 0; e <= E; e++) offsets[e] = 0;
    for (int64_t t = 0; t < T; t++) {
        route_row(logits + t * E, E, k, expert + t * k, weight + t * k);
        for (int64_t s = 0; s < k; s++) offsets[expert[t * k + s] + 1]++;
    }
    for (int64_t e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    for (int64_t t = 0; t < T; t++)
        for (int64_t s = 0; s < k; s++) {
            int32_t e = expert[t * k + s], at = offsets[e] + filled[e]++;
            slot_of[t * k + s] = at;
            row_of[at] = (int32_t)t;
        }
}

/* gathered row r = the normalised input of the row routed there */
static void gather_row(cf_model *m, void *p, int64_t r) {
    (void)p;
    int64_t dim = m->d.hidden;
    memcpy(m->ws.moe_x + r * dim, m->ws.h + (int64_t)m->ws.row_of[r] * dim, sizeof(float) * (size_t)dim);
}

/* x[t] += its experts' outputs, weighted, summed in the order of the experts' indices */
static void combine_row(cf_model *m, void *p, int64_t t) {
    int64_t k = ((const cf_layer *)p)->top_k, dim = m->d.hidden;
    const workspace *w = &m->ws;
    float *x = w->x + t * dim, *acc = w->h + t * dim; /* h: the row's input, gathered already */
    const float *y = w->moe_y + (int64_t)w->slot_of[t * k] * dim;
    float weight = w->route_weight[t * k];
    for (int64_t i = 0; i < dim; i++) acc[i] = weight * y[i];
    for (int64_t s = 1; s < k; s++) {
        y = w->moe_y + (int64_t)w->slot_of[t * k + s] * dim, weight = w->route_weight[t * k + s];
        for (int64_t i = 0; i < dim; i++) acc[i] = acc[i] + weight * y[i];
    }
    for (int64_t i = 0; i < dim; i++) x[i] = x[i] + acc[i];
}

/* rows r0 .. r0 + n - 1 of a, as activations of their own */
static cf_acts acts_rows(const cf_acts *a, int64_t r0, int64_t n) {
    cf_acts s = *a;
    s.M = n, s.f32 = a->f32 + r0 * a->K;
    if (a->q8) s.q8 = a->q8 + r0 * a->K, s.q8_d = a->q8_d + r0 * (a->K / QK), s.q8_s = a->q8_s + r0 * (a->K / QK);
    return s;
}

/* y rows of each expert's group = that expert's `lins` on its gathered rows of `in` */
static void experts_linear(cf_model *m, const cf_layer *L, const cf_linear *lins, const cf_acts *in, float *y, int64_t ldy) {
    const int32_t *off = m->ws.expert_offsets;
    for (int64_t e = 0; e < L->n_experts; e++) {
        if (off[e + 1] == off[e]) continue;
        cf_acts part = acts_rows(in, off[e], off[e + 1] - off[e]);
        cf_run_linear(m, &lins[e], &part, y + off[e] * ldy, ldy, 0);
    }
}

static int experts_acts(const cf_linear *lins, int64_t n) {
    int acts = 0;
    for (int64_t e = 0; e < n; e++) acts |= cf_linear_acts(&lins[e]);
    return acts;
}

/* the sparse MoE block in place of the MLP: route, gather, each expert's SwiGLU, weighted sum */
void cf_experts(cf_model *m, const cf_layer *L, int64_t T) {
    workspace *w = &m->ws;
    int64_t dim = m->d.hidden, F = m->d.ffn, E = L->n_experts, R = T * L->top_k;
    cf_acts in = cf_prepare_input(m, w->x, L->ffn_norm, w->h, T, dim, cf_linear_acts(&L->router));
    cf_mark(m, P_NORM);
    cf_run_linear(m, &L->router, &in, w->router, E, 0);
    route(w->router, T, E, L->top_k, w->route_expert, w->route_weight, w->expert_offsets, w->slot_of, w->row_of);
    cf_for_rows(m, gather_row, NULL, R, dim);
    in = cf_prepare_input(m, w->moe_x, NULL, NULL, R, dim, experts_acts(L->expert_gate_up, E));
    experts_linear(m, L, L->expert_gate_up, &in, w->gu, 2 * F);
    cf_mark(m, P_GATE_UP);
    cf_for_rows(m, cf_ffn_act_row, NULL, R, 2 * F);
    cf_mark(m, P_SWIGLU);
    in = cf_prepare_input(m, w->act, NULL, NULL, R, F, experts_acts(L->expert_down, E));
    experts_linear(m, L, L->expert_down, &in, w->moe_y, dim);
    cf_for_rows(m, combine_row, (void *)L, T, L->top_k * dim);
    cf_mark(m, P_DOWN);
}
