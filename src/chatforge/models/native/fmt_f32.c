/* Float32 weights (checkpoints in F32, F16 or BF16, and formats without a kernel of their own),
   multiplied in float32.

   Layout (formats.h: groups of eight columns): group g is [K][8] floats, W[8g + i][k] at
   k * 8 + i, so one 8-float load holds input k of the group's 8 columns and an FMA against a
   broadcast x[k] advances 8 dot products. Each dot product runs in two chains, even and odd k,
   summed at the end: the same order whatever the number of rows computed together. */

#include <immintrin.h>
#include <stdint.h>

#include "formats.h"
#include "simd.h"

#define F32_ROWS(R)                                                                                    \
    static inline void f32_rows_##R(const float *x, int64_t K, const float *w, __m256 out[R]) {       \
        __m256 even[R], odd[R];                                                                         \
        for (int r = 0; r < R; r++) even[r] = odd[r] = _mm256_setzero_ps();                             \
        int64_t k = 0;                                                                                  \
        for (; k + 2 <= K; k += 2) {                                                                    \
            __m256 w0 = _mm256_loadu_ps(w + k * 8), w1 = _mm256_loadu_ps(w + k * 8 + 8);                \
            for (int r = 0; r < R; r++) {                                                               \
                even[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * K + k), w0, even[r]);             \
                odd[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * K + k + 1), w1, odd[r]);           \
            }                                                                                           \
        }                                                                                               \
        if (k < K) {                                                                                    \
            __m256 w0 = _mm256_loadu_ps(w + k * 8);                                                     \
            for (int r = 0; r < R; r++) even[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * K + k), w0, even[r]); \
        }                                                                                               \
        for (int r = 0; r < R; r++) out[r] = _mm256_add_ps(even[r], odd[r]);                            \
    }

F32_ROWS(1)
F32_ROWS(2)
F32_ROWS(3)
F32_ROWS(4)

static void f32_matmul(const cf_matrix *w, const cf_acts *x, int64_t r0, int64_t r1, int64_t g0, int64_t g1,
                       const float *bias, float *y, int64_t ldy, int accumulate) {
    int64_t K = w->K;
    for (int64_t g = g0; g < g1; g++) {
        const float *wg = (const float *)((const uint8_t *)w->data + g * w->group_bytes);
        for (int64_t r = r0; r < r1; r += 4) {
            const float *xr = x->f32 + r * K;
            __m256 acc[4];
            int64_t R = r1 - r < 4 ? r1 - r : 4;
            switch (R) {
                case 1: f32_rows_1(xr, K, wg, acc); break;
                case 2: f32_rows_2(xr, K, wg, acc); break;
                case 3: f32_rows_3(xr, K, wg, acc); break;
                default: f32_rows_4(xr, K, wg, acc); break;
            }
            for (int64_t i = 0; i < R; i++) store8(acc[i], w->N, g, bias, y + (r + i) * ldy, accumulate);
        }
    }
}

static void f32_row(const cf_matrix *w, int64_t n, float *out) {
    const float *wg = (const float *)((const uint8_t *)w->data + (n / 8) * w->group_bytes);
    for (int64_t k = 0; k < w->K; k++) out[k] = wg[k * 8 + n % 8];
}

cf_format cf_format_f32 = {"f32", CF_ACT_F32, 1, f32_matmul, f32_row, f32_matmul};
