/* Per-row operations of a decoder layer (layer_ops.c) and the attention (attention.c). */
#ifndef CHATFORGE_OPS_H
#define CHATFORGE_OPS_H

#include <stdint.h>

/* out[D] = weight * x / rms(x), rms(x) = sqrt(mean(x^2) + eps) */
void cf_rms_norm(const float *x, const float *weight, int64_t D, float eps, float *out);
/* out[F] = silu(gate) * up, for one row gate_up[2F] (gate, then up) */
void cf_swiglu(const float *gate_up, int64_t F, float *out);
/* out[F] = gelu_tanh(gate) * up (GeGLU), gelu_tanh(g) = g * sigmoid(2 sqrt(2 / pi) (g + 0.044715 g^3)) */
void cf_geglu(const float *gate_up, int64_t F, float *out);
/* RoPE (rotate-half) of one head: dst = src * cos + rotate_half(src) * sin; cos, sin [D / 2] */
void cf_rotate_head(const float *src, const float *cos, const float *sin, int64_t D, float *dst);
/* Grammar masks: token t of logits row rows[r] becomes -inf unless bit t of bitmask row r is set. */
void cf_apply_token_bitmask(float *logits, int64_t row_stride, const int64_t *rows, int64_t n_rows,
                            const uint32_t *bitmask, int64_t words, int64_t vocab);
/* float32 -> float16, n % 8 == 0 */
void cf_to_f16(const float *src, int64_t n, uint16_t *dst);

/* One (sequence, kv head, run of consecutive queries) of paged attention; model.h says why the
   keys go in fixed chunks. q: the queries' rotated heads, row t at q + t * H * D; out likewise. */
typedef struct {
    const float *q;
    float *out;
    const uint16_t *k_cache, *v_cache; /* this layer's, [n_blocks, Hkv, block_size, D] */
    const int32_t *block_table;        /* this sequence's */
    int64_t block_size, n_heads, n_kv_heads, head_dim, window;
    float scale;
} cf_attn_args;

/* Per-thread scratch for cf_attend: cf_attend_scratch_floats(...) floats. */
int64_t cf_attend_scratch_floats(int64_t head_dim, int64_t group, int64_t max_queries);
/* Queries t0 .. t0 + n - 1 (flat rows) at positions pos0 .. pos0 + n - 1, kv head kvh. */
void cf_attend(const cf_attn_args *a, int64_t kvh, int64_t t0, int64_t pos0, int64_t n, float *scratch);

#endif
