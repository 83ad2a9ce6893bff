/* Attention for decode steps (one new token per sequence), read straight from the paged KV cache.

   The general path (models/attention.py) gathers every sequence's whole context into a padded
   [B, Lk] copy per layer and runs SDPA on it; at 32 sequences of ~150 tokens that copy is most
   of the attention time. Here each (sequence, kv head) item reads its keys and values where they
   lie, through the slot of each key position, and never copies them.

   Per item: for each query head of the kv head's group, scores s_j = scale * q . k_j over the
   keys in [first, context_len), first = context_len - window with a sliding window (0: none),
   softmax in float32 (max subtracted), out = sum_j p_j v_j. Items run in parallel (OpenMP).
   Each output depends only on its own sequence's data, so the result does not depend on the batch. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"

static inline void softmax(float *s, int64_t n) {
    float top = -INFINITY;
    for (int64_t j = 0; j < n; j++) top = s[j] > top ? s[j] : top;
    __m256 vtop = _mm256_set1_ps(top), vsum = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vtop));
        _mm256_storeu_ps(s + j, p);
        vsum = _mm256_add_ps(vsum, p);
    }
    float sum = hsum8(vsum);
    for (; j < n; j++) {
        s[j] = expf(s[j] - top);
        sum += s[j];
    }
    float inv = 1.f / sum;
    for (j = 0; j < n; j++) s[j] *= inv;
}


/* q [B, H, D]; k_cache, v_cache [slots, Hkv, D]; key_slots [B, Lk]: the cache slot of each key
   position; context_lens [B] (<= Lk); out [B, H, D]. H % Hkv == 0, D % 8 == 0.
   Returns 0, or -1 when a thread could not allocate its scores (out incomplete). */
int decode_attention(const float *q, const float *k_cache, const float *v_cache, const int64_t *key_slots,
                     const int64_t *context_lens, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t Lk,
                     float scale, int64_t window, float *out) {
    int64_t group = H / Hkv;
    int failed = 0;
#pragma omp parallel
    {
        float *scores = malloc(sizeof(float) * (size_t)(Lk > 0 ? Lk : 1) * (size_t)group);
        if (!scores) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < B * Hkv; item++) {
            if (!scores) continue;
            int64_t b = item / Hkv, kvh = item % Hkv;
            int64_t ctx = context_lens[b], first = window > 0 && ctx > window ? ctx - window : 0;
            int64_t n = ctx - first;
            const int64_t *slots = key_slots + b * Lk + first;
            for (int64_t g = 0; g < group; g++) {
                const float *qv = q + (b * H + kvh * group + g) * D;
                float *s = scores + g * n;
                for (int64_t j = 0; j < n; j += 2) {  /* two keys at a time: four independent FMA chains */
                    const float *k0 = k_cache + (slots[j] * Hkv + kvh) * D;
                    const float *k1 = j + 1 < n ? k_cache + (slots[j + 1] * Hkv + kvh) * D : k0;
                    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
                    int64_t e = 0;
                    for (; e + 16 <= D; e += 16) {
                        __m256 q0 = _mm256_loadu_ps(qv + e), q1 = _mm256_loadu_ps(qv + e + 8);
                        a0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k0 + e), a0);
                        a1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(k0 + e + 8), a1);
                        b0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k1 + e), b0);
                        b1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(k1 + e + 8), b1);
                    }
                    if (e < D) {  /* D % 16 == 8 */
                        __m256 q0 = _mm256_loadu_ps(qv + e);
                        a0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k0 + e), a0);
                        b0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k1 + e), b0);
                    }
                    s[j] = hsum8(_mm256_add_ps(a0, a1)) * scale;
                    if (j + 1 < n) s[j + 1] = hsum8(_mm256_add_ps(b0, b1)) * scale;
                }
                softmax(s, n);
            }
            /* out = P V in column strips of 32 (four accumulators, independent FMA chains), then 8 */
            for (int64_t g = 0; g < group; g++) {
                const float *s = scores + g * n;
                float *o = out + (b * H + kvh * group + g) * D;
                int64_t e0 = 0;
                for (; e0 + 32 <= D; e0 += 32) {
                    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
                    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
                    for (int64_t j = 0; j < n; j++) {
                        const float *vv = v_cache + (slots[j] * Hkv + kvh) * D + e0;
                        __m256 w = _mm256_set1_ps(s[j]);
                        a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vv), a0);
                        a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vv + 8), a1);
                        a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vv + 16), a2);
                        a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vv + 24), a3);
                    }
                    _mm256_storeu_ps(o + e0, a0);
                    _mm256_storeu_ps(o + e0 + 8, a1);
                    _mm256_storeu_ps(o + e0 + 16, a2);
                    _mm256_storeu_ps(o + e0 + 24, a3);
                }
                for (; e0 < D; e0 += 8) {
                    __m256 a0 = _mm256_setzero_ps();
                    for (int64_t j = 0; j < n; j++)
                        a0 = _mm256_fmadd_ps(_mm256_set1_ps(s[j]), _mm256_loadu_ps(v_cache + (slots[j] * Hkv + kvh) * D + e0), a0);
                    _mm256_storeu_ps(o + e0, a0);
                }
            }
        }
        free(scores);
    }
    return failed ? -1 : 0;
}
