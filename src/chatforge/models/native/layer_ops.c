/* The small per-row operations of a decoder layer, for x86 CPUs with AVX2, FMA and F16C.
   Each works on one row, so a row's result never depends on the others in the step. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "ops.h"
#include "simd.h"

void cf_rms_norm(const float *x, const float *weight, int64_t D, float eps, float *out) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= D; j += 16) {
        __m256 v0 = _mm256_loadu_ps(x + j), v1 = _mm256_loadu_ps(x + j + 8);
        acc0 = _mm256_fmadd_ps(v0, v0, acc0);
        acc1 = _mm256_fmadd_ps(v1, v1, acc1);
    }
    float ss = hsum8(_mm256_add_ps(acc0, acc1));
    for (; j < D; j++) ss += x[j] * x[j];
    float r = 1.f / sqrtf(ss / (float)D + eps);
    __m256 vr = _mm256_set1_ps(r);
    for (j = 0; j + 8 <= D; j += 8)
        _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_loadu_ps(weight + j), _mm256_mul_ps(_mm256_loadu_ps(x + j), vr)));
    for (; j < D; j++) out[j] = weight[j] * (x[j] * r);
}

/* silu(g) = g * sigmoid(g) with t = e^-|g| <= 1: sigmoid = 1 / (1 + t) for g >= 0, t / (1 + t) below. */
void cf_swiglu(const float *gate_up, int64_t F, float *out) {
    const float *g = gate_up, *u = gate_up + F;
    const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
    int64_t j = 0;
    for (; j + 8 <= F; j += 8) {
        __m256 gv = _mm256_loadu_ps(g + j);
        __m256 t = exp8(_mm256_or_ps(gv, sign)); /* e^-|g| */
        __m256 num = _mm256_blendv_ps(one, t, gv); /* the sign bit of g picks t */
        __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, t));
        _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + j)));
    }
    for (; j < F; j++) out[j] = g[j] / (1.f + expf(-g[j])) * u[j];
}

/* gelu's tanh form is g * sigmoid(2 a), a = sqrt(2 / pi) (g + 0.044715 g^3): SwiGLU's sigmoid
   on 2 a, t = e^-|2a|. */
void cf_geglu(const float *gate_up, int64_t F, float *out) {
    const float *g = gate_up, *u = gate_up + F;
    const float c = 1.5957691216057308f; /* 2 sqrt(2 / pi) */
    const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f), vc = _mm256_set1_ps(c),
                 cubic = _mm256_set1_ps(0.044715f);
    int64_t j = 0;
    for (; j + 8 <= F; j += 8) {
        __m256 gv = _mm256_loadu_ps(g + j);
        __m256 z = _mm256_mul_ps(vc, _mm256_add_ps(gv, _mm256_mul_ps(cubic, _mm256_mul_ps(gv, _mm256_mul_ps(gv, gv)))));
        __m256 t = exp8(_mm256_or_ps(z, sign)); /* e^-|z| */
        __m256 num = _mm256_blendv_ps(one, t, z);
        __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, t));
        _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + j)));
    }
    for (; j < F; j++) {
        float z = c * (g[j] + 0.044715f * (g[j] * (g[j] * g[j])));
        out[j] = g[j] / (1.f + expf(-z)) * u[j];
    }
}

void cf_rotate_head(const float *src, const float *c, const float *s, int64_t D, float *dst) {
    int64_t half = D / 2, i = 0;
    for (; i + 8 <= half; i += 8) {
        __m256 x1 = _mm256_loadu_ps(src + i), x2 = _mm256_loadu_ps(src + half + i);
        __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_loadu_ps(s + i);
        _mm256_storeu_ps(dst + i, _mm256_sub_ps(_mm256_mul_ps(x1, cv), _mm256_mul_ps(x2, sv)));
        _mm256_storeu_ps(dst + half + i, _mm256_add_ps(_mm256_mul_ps(x2, cv), _mm256_mul_ps(x1, sv)));
    }
    for (; i < half; i++) {
        float x1 = src[i], x2 = src[half + i];
        dst[i] = x1 * c[i] - x2 * s[i];
        dst[half + i] = x2 * c[i] + x1 * s[i];
    }
}

void cf_to_f16(const float *src, int64_t n, uint16_t *dst) {
    for (int64_t i = 0; i < n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
}

/* Grammar masks (engine/grammar_mask.py): logits row rows[r] keeps token t when bit t % 32 of
   bitmask[r * words + t / 32] is set and becomes -inf otherwise; words whose 32 bits are all set
   (the common case inside a JSON string) cost one compare. Setting -inf rather than adding it
   makes the grammar win over an infinite logit_bias too. */
void cf_apply_token_bitmask(float *logits, int64_t row_stride, const int64_t *rows, int64_t n_rows,
                            const uint32_t *bitmask, int64_t words, int64_t vocab) {
    for (int64_t r = 0; r < n_rows; r++) {
        float *row = logits + rows[r] * row_stride;
        const uint32_t *bits = bitmask + r * words;
        for (int64_t w = 0; w < words; w++) {
            uint32_t keep = bits[w];
            if (keep == 0xFFFFFFFFu) continue;
            int64_t base = w * 32, end = base + 32 < vocab ? base + 32 : vocab;
            for (int64_t t = base; t < end; t++)
                if (!((keep >> (t - base)) & 1u)) row[t] = -INFINITY;
        }
    }
}
