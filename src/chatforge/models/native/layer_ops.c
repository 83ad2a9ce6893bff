/* The small operations of a decoder layer, fused, for x86 CPUs with AVX2 and FMA (float32).

   Between its matmuls a layer runs RMSNorm (with the residual add before it), RoPE on q and k,
   the KV cache write and SwiGLU's silu(gate) * up: in torch some 40 operator calls per layer,
   each a few microseconds of dispatch for a few hundred floats of work at decode batch sizes.
   Here each is one pass over the data. Every row is computed on its own, in the same order
   whatever the batch, so results do not depend on the batch. The elementwise products and sums
   are those torch computes (-ffp-contract=off: no fused multiply-adds), so RoPE, the residual add
   and the cache write give torch's bits; RMSNorm's sum of squares is summed in another order
   and SwiGLU's exp is exp8's (simd.h), both within a few float32 ulps of torch's. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "simd.h"

/* x [M, D] (the residual stream, updated in place), add [M, D] or NULL, weight [D]:
   x += add; out = weight * (x * rsqrt(mean(x^2) + eps)). */
void add_rms_norm(float *x, const float *add, const float *weight, int64_t M, int64_t D, float eps, float *out) {
    for (int64_t m = 0; m < M; m++) {
        float *xr = x + m * D;
        float *o = out + m * D;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t j = 0;
        if (add) {
            const float *ar = add + m * D;
            for (; j + 8 <= D; j += 8) {
                __m256 v = _mm256_add_ps(_mm256_loadu_ps(xr + j), _mm256_loadu_ps(ar + j));
                _mm256_storeu_ps(xr + j, v);
            }
            for (; j < D; j++) xr[j] += ar[j];
        }
        for (j = 0; j + 16 <= D; j += 16) {
            __m256 v0 = _mm256_loadu_ps(xr + j), v1 = _mm256_loadu_ps(xr + j + 8);
            acc0 = _mm256_add_ps(acc0, _mm256_mul_ps(v0, v0));
            acc1 = _mm256_add_ps(acc1, _mm256_mul_ps(v1, v1));
        }
        float ss = hsum8(_mm256_add_ps(acc0, acc1));
        for (; j < D; j++) ss += xr[j] * xr[j];
        float r = 1.f / sqrtf(ss / (float)D + eps);
        __m256 vr = _mm256_set1_ps(r);
        for (j = 0; j + 8 <= D; j += 8)
            _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_loadu_ps(weight + j), _mm256_mul_ps(_mm256_loadu_ps(xr + j), vr)));
        for (; j < D; j++) o[j] = weight[j] * (xr[j] * r);
    }
}

static inline float silu_scalar(float g) { return g / (1.f + expf(-g)); }

/* gate_up [M, 2F] (gate then up, one row each) -> out [M, F] = silu(gate) * up.
   silu(g) = g * sigmoid(g) with t = e^-|g| <= 1: sigmoid = 1 / (1 + t) for g >= 0, t / (1 + t) below. */
void swiglu(const float *gate_up, int64_t M, int64_t F, float *out) {
#pragma omp parallel for if (M * F >= 32768)
    for (int64_t m = 0; m < M; m++) {
        const float *g = gate_up + m * 2 * F, *u = g + F;
        float *o = out + m * F;
        const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
        int64_t j = 0;
        for (; j + 8 <= F; j += 8) {
            __m256 gv = _mm256_loadu_ps(g + j);
            __m256 t = exp8(_mm256_or_ps(gv, sign));  /* e^-|g| */
            __m256 num = _mm256_blendv_ps(one, t, gv);  /* the sign bit of g picks t */
            __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, t));
            _mm256_storeu_ps(o + j, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + j)));
        }
        for (; j < F; j++) o[j] = silu_scalar(g[j]) * u[j];
    }
}

/* RoPE (rotate-half form) of one head of D floats: dst = src * cos + rotate_half(src) * sin. */
static inline void rotate_head(const float *src, const float *c, const float *s, int64_t D, float *dst) {
    int64_t half = D / 2, i = 0;
    for (; i + 8 <= half; i += 8) {
        __m256 x1 = _mm256_loadu_ps(src + i), x2 = _mm256_loadu_ps(src + half + i);
        __m256 lo = _mm256_sub_ps(_mm256_mul_ps(x1, _mm256_loadu_ps(c + i)), _mm256_mul_ps(x2, _mm256_loadu_ps(s + i)));
        __m256 hi = _mm256_add_ps(_mm256_mul_ps(x2, _mm256_loadu_ps(c + half + i)), _mm256_mul_ps(x1, _mm256_loadu_ps(s + half + i)));
        _mm256_storeu_ps(dst + i, lo);
        _mm256_storeu_ps(dst + half + i, hi);
    }
    for (; i < half; i++) {
        float x1 = src[i], x2 = src[half + i];
        dst[i] = x1 * c[i] - x2 * s[i];
        dst[half + i] = x2 * c[half + i] + x1 * s[half + i];
    }
}

/* qkv [M, (H + 2 Hkv) * D] (q heads, k heads, v heads); cos, sin [M, D]; slots [M]: each row's
   cache slot; k_cache, v_cache [slots, Hkv, D]. Writes the rotated q to q_out [M, H, D], the
   rotated k and the v to the caches at the row's slot. qkv is left as it is. D even. */
void rotary_cache_write(const float *qkv, int64_t M, int64_t H, int64_t Hkv, int64_t D, const float *cos,
                        const float *sin, const int64_t *slots, float *k_cache, float *v_cache, float *q_out) {
    int64_t row = (H + 2 * Hkv) * D;
    for (int64_t m = 0; m < M; m++) {
        const float *src = qkv + m * row, *c = cos + m * D, *s = sin + m * D;
        for (int64_t h = 0; h < H; h++) rotate_head(src + h * D, c, s, D, q_out + (m * H + h) * D);
        float *k = k_cache + slots[m] * Hkv * D, *v = v_cache + slots[m] * Hkv * D;
        for (int64_t h = 0; h < Hkv; h++) rotate_head(src + (H + h) * D, c, s, D, k + h * D);
        memcpy(v, src + (H + Hkv) * D, sizeof(float) * (size_t)(Hkv * D));
    }
}
