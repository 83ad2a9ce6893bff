/* Small AVX2 helpers shared by the kernels of this folder. */
#ifndef CHATFORGE_SIMD_H
#define CHATFORGE_SIMD_H

#include <immintrin.h>
#include <stdint.h>

/* the sum of the 8 lanes */
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the largest of the 8 lanes */
static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x for x <= 0 (scores minus their maximum, -|g| in SwiGLU), 8 lanes: x = k ln2 + r with |r| <= ln2 / 2, e^r by
   its degree-6 Taylor polynomial (relative error < 2e-7 there), times 2^k built in the exponent
   bits. Below -87 the result is flushed to 0 (expf gives a denormal there, a weight of < 1e-38);
   -inf gives 0. */
static inline __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.f);
    __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);  /* ln2 in two parts (Cody-Waite) */
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

/* y[8g .. 8g + 7] (= or +=) v (+ bias[8g ..]): a matmul's results for one row and column group;
   the last group may be partial (N % 8). The same additions in both branches. */
static inline void store8(__m256 v, int64_t N, int64_t g, const float *bias, float *yrow, int accumulate) {
    int64_t n0 = 8 * g;
    if (n0 + 8 <= N) {
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias + n0));
        if (accumulate) v = _mm256_add_ps(_mm256_loadu_ps(yrow + n0), v);
        _mm256_storeu_ps(yrow + n0, v);
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, v);
    for (int64_t i = 0; n0 + i < N; i++) {
        float r = t[i];
        if (bias) r = r + bias[n0 + i];
        yrow[n0 + i] = accumulate ? yrow[n0 + i] + r : r;
    }
}

#endif
