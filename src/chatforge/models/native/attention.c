/* Paged attention over the float16 KV cache, the same code for decode steps and prefill chunks.

   For one query at position p (and a window w, 0 = none) the keys are positions
   [max(0, p + 1 - w), p], read from the cache (the step's own keys were written there first).
   They are visited in chunks of CF_KEY_CHUNK positions aligned to position 0, with an online
   softmax: per chunk, the scores s_j = scale * q . k_j, the running maximum m, the running sum
   l = l * e^(m_old - m) + sum_j e^(s_j - m), the output acc = acc * e^(m_old - m) + sum_j
   e^(s_j - m) v_j; at the end out = acc / l. Each (query, chunk) update depends only on the query,
   its position and the chunk's keys, so a query's result is the same whether it is decoded
   alone, in a batch, or inside a prefill chunk of any length (model.h).

   A task is a run of consecutive queries of one sequence and one kv head: each chunk's keys and
   values are converted to float32 once and used by every query of the run and every query head
   of the kv head's group (grouped-query attention). */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "model.h"
#include "ops.h"
#include "simd.h"

#define C CF_KEY_CHUNK
_Static_assert(CF_KEY_CHUNK == 32, "update() holds a chunk's scores in four vectors");

int64_t cf_attend_scratch_floats(int64_t head_dim, int64_t group, int64_t max_queries) {
    return 2 * C * head_dim + C + max_queries * group * (head_dim + 2);
}

/* q . k_j for the 8 keys at kbuf (rows of D floats) -> 8 scores: 8 dot products side by side
   (one accumulator each), then a tree of horizontal adds. Every key's sum is formed the same way
   whatever its lane, and no lane reads another key's row. */
static inline __m256 dot8(const float *q, const float *kbuf, int64_t D) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t e = 0; e < D; e += 8) {
        __m256 qv = _mm256_loadu_ps(q + e);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kbuf + e), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kbuf + D + e), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kbuf + 2 * D + e), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kbuf + 3 * D + e), a3);
        a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kbuf + 4 * D + e), a4);
        a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kbuf + 5 * D + e), a5);
        a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kbuf + 6 * D + e), a6);
        a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kbuf + 7 * D + e), a7);
    }
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3)); /* keys 0-3: low | high halves */
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7)); /* keys 4-7 */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

static inline int64_t first_key(int64_t pos, int64_t window) {
    return window > 0 && pos + 1 > window ? pos + 1 - window : 0;
}

/* One query head against keys [j0, j1) of the chunk in kbuf / vbuf (rows relative to the chunk). */
static void update(const float *q, const float *kbuf, const float *vbuf, int64_t j0, int64_t j1, int64_t D,
                   float scale, float *s, float *acc, float *m, float *l) {
    const __m256 ninf = _mm256_set1_ps(-INFINITY), lanes = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 top = ninf;
    for (int64_t g = 0; g < C; g += 8) {
        __m256 v = ninf;
        if (g + 8 > j0 && g < j1) {
            __m256 idx = _mm256_add_ps(lanes, _mm256_set1_ps((float)g));
            __m256 valid = _mm256_and_ps(_mm256_cmp_ps(idx, _mm256_set1_ps((float)j0), _CMP_GE_OQ),
                                         _mm256_cmp_ps(idx, _mm256_set1_ps((float)j1), _CMP_LT_OQ));
            v = _mm256_blendv_ps(ninf, _mm256_mul_ps(dot8(q, kbuf + g * D, D), _mm256_set1_ps(scale)), valid);
        }
        _mm256_storeu_ps(s + g, v);
        top = _mm256_max_ps(top, v);
    }
    __m256 s0 = _mm256_loadu_ps(s), s1 = _mm256_loadu_ps(s + 8), s2 = _mm256_loadu_ps(s + 16), s3 = _mm256_loadu_ps(s + 24);
    float chunk_max = hmax8(top);
    float m_new = *m > chunk_max ? *m : chunk_max;
    float alpha = expf(*m - m_new);
    __m256 vm = _mm256_set1_ps(m_new);
    s0 = exp8(_mm256_sub_ps(s0, vm)), s1 = exp8(_mm256_sub_ps(s1, vm));
    s2 = exp8(_mm256_sub_ps(s2, vm)), s3 = exp8(_mm256_sub_ps(s3, vm));
    _mm256_storeu_ps(s, s0), _mm256_storeu_ps(s + 8, s1), _mm256_storeu_ps(s + 16, s2), _mm256_storeu_ps(s + 24, s3);
    *l = *l * alpha + hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    *m = m_new;
    __m256 va = _mm256_set1_ps(alpha);
    int64_t e = 0;
    for (; e + 32 <= D; e += 32) {
        __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(acc + e), va), a1 = _mm256_mul_ps(_mm256_loadu_ps(acc + e + 8), va);
        __m256 a2 = _mm256_mul_ps(_mm256_loadu_ps(acc + e + 16), va), a3 = _mm256_mul_ps(_mm256_loadu_ps(acc + e + 24), va);
        for (int64_t j = j0; j < j1; j++) {
            const float *v = vbuf + j * D + e;
            __m256 p = _mm256_broadcast_ss(s + j);
            a0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v), a0);
            a1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 8), a1);
            a2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 16), a2);
            a3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(v + 24), a3);
        }
        _mm256_storeu_ps(acc + e, a0), _mm256_storeu_ps(acc + e + 8, a1);
        _mm256_storeu_ps(acc + e + 16, a2), _mm256_storeu_ps(acc + e + 24, a3);
    }
    for (; e < D; e += 8) {
        __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(acc + e), va);
        for (int64_t j = j0; j < j1; j++) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(s + j), _mm256_loadu_ps(vbuf + j * D + e), a0);
        _mm256_storeu_ps(acc + e, a0);
    }
}

/* rows [j0, j1) of the chunk starting at c0, float16 cache -> float32 buf (row j - c0) */
static void load_chunk(const cf_attn_args *a, const uint16_t *cache, int64_t kvh, int64_t c0, int64_t j0, int64_t j1,
                       float *buf) {
    int64_t D = a->head_dim, bs = a->block_size;
    for (int64_t j = j0; j < j1; j++) {
        int64_t block = a->block_table[j / bs];
        const uint16_t *src = cache + ((block * a->n_kv_heads + kvh) * bs + j % bs) * D;
        float *dst = buf + (j - c0) * D;
        for (int64_t e = 0; e < D; e += 8)
            _mm256_storeu_ps(dst + e, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + e))));
    }
}

void cf_attend(const cf_attn_args *a, int64_t kvh, int64_t t0, int64_t pos0, int64_t n, float *scratch) {
    int64_t D = a->head_dim, H = a->n_heads, group = H / a->n_kv_heads, stride = D + 2;
    float *kbuf = scratch, *vbuf = kbuf + C * D, *s = vbuf + C * D, *state = s + C;
    for (int64_t i = 0; i < n * group; i++) {
        float *acc = state + i * stride;
        for (int64_t e = 0; e < D; e++) acc[e] = 0.f;
        acc[D] = -INFINITY, acc[D + 1] = 0.f; /* m, l */
    }
    int64_t last = pos0 + n - 1, lo = first_key(pos0, a->window);
    for (int64_t c0 = lo / C * C; c0 <= last; c0 += C) {
        int64_t j0 = c0 > lo ? c0 : lo, j1 = c0 + C < last + 1 ? c0 + C : last + 1;
        load_chunk(a, a->k_cache, kvh, c0, j0, j1, kbuf);
        load_chunk(a, a->v_cache, kvh, c0, j0, j1, vbuf);
        for (int64_t i = 0; i < n; i++) {
            int64_t pos = pos0 + i, f = first_key(pos, a->window);
            int64_t q0 = f > c0 ? f - c0 : 0, q1 = pos + 1 < c0 + C ? pos + 1 - c0 : C;
            if (q0 >= q1) continue;
            for (int64_t g = 0; g < group; g++) {
                float *acc = state + (i * group + g) * stride;
                const float *q = a->q + ((t0 + i) * H + kvh * group + g) * D;
                update(q, kbuf, vbuf, q0, q1, D, a->scale, s, acc, acc + D, acc + D + 1);
            }
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < group; g++) {
            const float *acc = state + (i * group + g) * stride;
            float *o = a->out + ((t0 + i) * H + kvh * group + g) * D;
            for (int64_t e = 0; e < D; e++) o[e] = acc[e] / acc[D + 1];
        }
}
