/* The model plan's inner state, shared by plan.c (life cycle, validation, workspace) and
   forward.c (the step). Not part of the library's interface (model.h is). */
#ifndef CHATFORGE_PLAN_H
#define CHATFORGE_PLAN_H

#include <stdint.h>

#include "model.h"
#include "pool.h"

#define QUERY_RUN 16        /* queries of one sequence per attention task */
#define ROW_MATMUL_BLOCK 32 /* rows per matmul task when the step has more */
#define INLINE_ROW_WORK 65536 /* per-row ops of less work than this run on the caller alone */

typedef struct {
    int64_t cap;              /* tokens the buffers hold */
    float *x, *h, *qkv, *q, *attn, *gu, *act, *rope; /* activations */
    float *rope_local;        /* the sliding-window layers' cos / sin when their base differs */
    int8_t *q8;               /* 8-bit copy of the current matmul input */
    float *q8_d, *q8_s;
    int32_t *tok_seq, *tok_pos;
    int32_t *tasks;           /* attention tasks: (seq, first token, count) */
    /* Mixtral: gu, act and the 8-bit input hold T top_k gathered rows (moe.c says how they are laid out) */
    float *router, *moe_x, *moe_y, *route_weight; /* [T, E], [T k, hidden] x 2, [T, k] */
    int32_t *route_expert, *slot_of, *row_of, *expert_offsets; /* [T, k], [T k] x 2, [E + 1] */
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
    int64_t last_tokens;      /* tokens of the last step run (its final hidden states are kept) */
    int64_t max_experts, max_top_k; /* over the layers (0 and 1 without experts) */
};

/* The step's building blocks (forward.c), shared with moe.c. */
typedef void (*cf_row_op)(cf_model *m, void *ctx, int64_t row);
/* fn on every row; `work` is a row's size in floats (small steps stay on this thread) */
void cf_for_rows(cf_model *m, cf_row_op fn, void *ctx, int64_t rows, int64_t work);
/* dst = norm(src) per row (src as is when weight is NULL), and its 8-bit form when `acts` wants it */
cf_acts cf_prepare_input(cf_model *m, const float *src, const float *weight, float *dst, int64_t M, int64_t K, int acts);
/* y[M, N] (= or +=) x . lin^T, on the pool */
void cf_run_linear(cf_model *m, const cf_linear *lin, const cf_acts *x, float *y, int64_t ldy, int accumulate);
/* the FFN's activation of gated row t: ws.act[t] = act(ws.gu[t] gate) * ws.gu[t] up */
void cf_ffn_act_row(cf_model *m, void *p, int64_t t);
/* charges the calling thread's CPU time since the last mark to op `what` (when profiling) */
void cf_mark(cf_model *m, int what);
/* Mixtral: a layer's mixture of experts (moe.c): x += experts(norm(x)) for the step's T rows */
void cf_experts(cf_model *m, const cf_layer *L, int64_t T);

/* Grows the step's buffers to hold T tokens (kept afterwards). 0, or -1 out of memory. */
int cf_reserve(cf_model *m, int64_t T);
/* The activation forms (CF_ACT_*) a linear's parts read. */
int cf_linear_acts(const cf_linear *lin);

#endif
