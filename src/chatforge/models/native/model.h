/* A model plan (plan.c) and its one call per engine step (forward.c).

   The plan is built once, when the model is loaded (models/native_model.py fills cf_model_desc
   and calls cf_model_new): every weight in its kernel's format (formats.h), the sizes, the
   thread pool (pool.h). Then each engine step is ONE call, cf_model_step: embedding -> every
   decoder layer -> the final norm and the lm_head on the rows that sample -> logits.

   A step is a flat batch of T new tokens from B sequences, in order: sequence i contributes
   query_lens[i] tokens, the last query_lens[i] of its context_lens[i] positions. Prefill, a
   chunk of a long prompt and a decode step are the same thing and mix freely in one batch.

   KV cache (passed with each step, owned by the caller): per layer, K and V each [n_blocks, Hkv,
   block_size, D] float16; position p of sequence i lives in block block_tables[i][p / block_size],
   row p % block_size.

   Batch invariance, by construction: every token row goes through the same operations in the
   same order whatever else is in the step. The matmul kernels compute each output element the
   same way for any rows (formats.h); RMSNorm, RoPE, SwiGLU and the activations' quantization are
   per row; attention computes each (token, head) with the same code for a decode step and for a
   prefill chunk of any size: keys in fixed chunks of CF_KEY_CHUNK positions counted from
   position 0 (not from the chunk of queries), an online softmax across chunks, keys and values
   always read back from the float16 cache. So chunked prefill, batching, preemption and
   recompute never change a token. How work is split between threads never changes a result.

   The architecture (sized for the Llama family today): pre-norm blocks of RMSNorm -> attention
   (grouped-query, RoPE in the rotate-half layout, optional sliding window per layer, optional
   qkv bias) -> residual add -> RMSNorm -> SwiGLU MLP -> residual add. Further architectures add
   fields at the END of these structs, zero meaning "absent" (so older plans stay valid), and a
   step in forward.c that reads them (and their checks in plan.c):
   - Qwen3 / Gemma 3 QK-norm: per-layer q_norm, k_norm [D] (RMSNorm per head before RoPE);
   - Gemma 3: GeGLU (`activation`), norms of 1 + weight (the 1 folded in by native_model.py),
     embeddings times sqrt(d) (`embed_scale`), post-attention / post-MLP norms, and the
     sliding-window layers' own RoPE base (`inv_freq_local`);
   - Mixtral: a sparse mixture of SwiGLU experts in place of the MLP (`n_experts` > 0): the
     router's logits, a softmax over all experts, the top_k most probable kept and renormalised
     to sum to one; each expert multiplies the rows routed to it, gathered (moe.c), and a row's
     output is its experts' outputs weighted, summed in the order of the experts' indices. A
     row's routing and its experts' arithmetic are its own: the gathering never changes a bit.
   Formats are added in formats.h; the plan only names a matrix's format. */
#ifndef CHATFORGE_MODEL_H
#define CHATFORGE_MODEL_H

#include <stdint.h>

#include "formats.h"

#define CF_MAX_PARTS 3   /* matrices side by side in one linear (q, k, v) */
#define CF_KEY_CHUNK 32  /* attention's key chunk, in positions */
#define CF_MAX_EXPERTS 256

/* y = x . [W_0; W_1; ...]^T (+ bias): the parts' outputs side by side, N = sum of their N. */
typedef struct {
    int64_t n_parts;
    cf_matrix parts[CF_MAX_PARTS];
    const float *bias; /* [N] or NULL */
} cf_linear;

typedef struct {
    const float *attn_norm; /* [hidden] */
    const float *ffn_norm;  /* [hidden] */
    cf_linear qkv;          /* N = (H + 2 Hkv) D: q heads, then k heads, then v heads */
    cf_linear o;            /* [hidden, H D] */
    cf_linear gate_up;      /* N = 2 ffn: gate rows, then up rows */
    cf_linear down;         /* [hidden, ffn] */
    int64_t sliding_window; /* keys within this many positions of the query; 0 = all */
    /* Qwen3 / Gemma 3 (NULL = absent) */
    const float *q_norm, *k_norm;  /* [head_dim]: RMSNorm of each head's query and key before RoPE */
    const float *post_attn_norm;   /* [hidden]: the attention's output normalised before the residual add */
    const float *post_ffn_norm;    /* [hidden]: the MLP's likewise (Gemma's "sandwich" norms) */
    /* Mixtral (n_experts = 0: the dense MLP above; else gate_up and down are unused) */
    int64_t n_experts, top_k;      /* top_k <= n_experts <= CF_MAX_EXPERTS */
    cf_linear router;              /* [n_experts, hidden] */
    const cf_linear *expert_gate_up; /* [n_experts], each N = 2 ffn: gate rows, then up rows */
    const cf_linear *expert_down;    /* [n_experts], each [hidden, ffn] */
} cf_layer;

typedef struct {
    int64_t n_layers, hidden, n_heads, n_kv_heads, head_dim, ffn, vocab;
    float rms_eps;
    float embed_scale;       /* embeddings are multiplied by it (1 for Llama) */
    float attn_scale;        /* scores = q . k * attn_scale (head_dim^-0.5) */
    float pad_;
    const float *inv_freq;   /* [head_dim / 2] RoPE rotation speeds */
    const float *final_norm; /* [hidden] */
    cf_matrix embed;         /* [vocab, hidden], read one row per token */
    cf_matrix lm_head;       /* [vocab, hidden]; may share the embedding's data */
    const cf_layer *layers;  /* [n_layers] */
    /* Gemma 3 (0 / NULL = absent) */
    int64_t activation;            /* CF_ACT_FN_*: the MLP's gate function */
    const float *inv_freq_local;   /* [head_dim / 2]: the sliding-window layers' RoPE speeds (NULL: inv_freq) */
    float logit_softcap;           /* logits = cap * tanh(logits / cap); 0 = none */
    float pad2_;
} cf_model_desc;

enum { CF_ACT_FN_SILU = 0, CF_ACT_FN_GELU_TANH = 1 }; /* SwiGLU, GeGLU */

typedef struct {
    int64_t n_tokens;
    const int32_t *token_ids;    /* [T] */
    int64_t n_seqs;
    const int32_t *query_lens;   /* [B], each >= 1, summing to T */
    const int32_t *context_lens; /* [B], each >= its query_len */
    const int32_t *block_tables; /* [B, max_blocks] */
    int64_t max_blocks;
    int64_t n_sample;
    const int32_t *sample_rows;  /* [S] flat token rows whose logits are wanted */
    float *logits;               /* [S, vocab] */
    void *const *k_cache;        /* [n_layers] pointers, each [n_blocks, Hkv, block_size, D] float16 */
    void *const *v_cache;
    int64_t n_blocks, block_size;
} cf_step;

typedef struct cf_model cf_model;

/* 0 and *out, or -1 with a message in err. The desc's arrays must outlive the model. */
int cf_model_new(const cf_model_desc *desc, int n_threads, cf_model **out, char *err, int64_t err_len);
void cf_model_free(cf_model *m);
/* 0; -1 out of memory; -2 a malformed step (message in cf_model_error). */
int cf_model_step(cf_model *m, const cf_step *step);
/* Logits of other rows of the step just run (its final hidden states stay until the next
   step): the lm_head on `rows` (n of them, each < that step's tokens, n <= its tokens). 0, or -2. */
int cf_model_logits(cf_model *m, const int32_t *rows, int64_t n, float *logits);
const char *cf_model_error(const cf_model *m);
int64_t cf_model_threads(const cf_model *m);
void cf_model_pool_stats(const cf_model *m, int64_t out[4]);
/* The calling thread's CPU time (ns) per kind of op since the last call, into out (when not
   NULL): embed, norm + quantize, qkv, rope + cache write, attention, o, gate_up, swiglu, down,
   lm_head; then counting restarts, on or off. With one thread it is where a step goes. */
void cf_model_profile(cf_model *m, int enable, int64_t *out);
/* sizeof checks for the ctypes mirror */
int64_t cf_sizeof(int64_t what);

#endif
