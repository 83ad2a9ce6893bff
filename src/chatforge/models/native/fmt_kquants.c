/* GGUF's k-quants Q4_K and Q6_K, repacked per block of 32 inputs with float32 scales, and the
   8-bit activations of fmt_blocks.c (cf_quantize_q8).

   In the file a k-quant superblock holds 256 inputs of one column with small integer scales
   (6 bits in Q4_K, 8 bits in Q6_K) under a float16 superscale. models/native_formats.py folds the
   two levels into one float32 per sub-block, exactly (a float16 times a 6- or 8-bit integer fits
   float32's 24-bit mantissa), and interleaves eight columns as fmt_blocks.c does:
   - Q4_K, 192 bytes per group of 8 columns and block of 32 inputs: the 128 nibble bytes of Q4_1's
     layout (byte 32 c + 4 i + t: q[32 b + 4 c + t] low, q[32 b + 16 + 4 c + t] high), then
     D[8] and M[8] as float32: w = D * q + M, D = d * scale, M = -dmin * min (per 32 inputs);
   - Q6_K, 320 bytes: the 256 bytes of Q8_0's layout holding q - 32 in [-32, 31], then D_lo[8]
     and D_hi[8] as float32, the scales of inputs 0..15 and 16..31 (Q6_K's sub-blocks are 16).
   Memory: 6 bits a weight for Q4_K (4.5 in the file), 10 for Q6_K (6.56): the price of one
   layout the 8-lane integer dot products read without unpacking bit fields.

   Arithmetic, per output element, block after block (every tile size the same operations):
   Q4_K: acc = fma(dot, D * dx, acc); acc = fma(M, sx, acc)      (Q4_1's, with float32 scales)
   Q6_K: acc = fma(dot_lo, D_lo * dx, acc); acc = fma(dot_hi, D_hi * dx, acc)
   where dot, dot_lo, dot_hi are exact integer sums of weight times 8-bit activation. */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "formats.h"
#include "simd.h"

#define Q4_K_BLOCK_BYTES 192
#define Q6_K_BLOCK_BYTES 320
#define KQ_TILE_ROWS 4
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* the eight columns' dot products of unsigned nibbles q[8] (Q4_1's) with 32 activations */
ALWAYS_INLINE __m256i dot_nibbles(const __m256i q[8], const int8_t *x) {
    __m256i s = _mm256_maddubs_epi16(q[0], bcast4(x));
    for (int c = 1; c < 8; c++) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(q[c], bcast4(x + 4 * c)));
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

/* the eight columns' dot products of signed bytes (4 chunks of 4 inputs, c0 .. c0 + 3) */
ALWAYS_INLINE __m256i dot_bytes16(const uint8_t *w, const int8_t *x, int c0) {
    __m256i s = _mm256_setzero_si256();
    for (int c = c0; c < c0 + 4; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(w + c * 32));
        __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(bcast4(x + 4 * c), v));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
    }
    return s;
}

ALWAYS_INLINE void q4_k_tile(const cf_acts *x, int64_t r, int64_t nb, const uint8_t *w, const int R,
                             __m256 acc[KQ_TILE_ROWS]) {
    const __m256i low = _mm256_set1_epi8(0xF);
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * Q4_K_BLOCK_BYTES;
        __m256i q[8];
        for (int c = 0; c < 4; c++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 32 * c));
            q[c] = _mm256_and_si256(v, low);
            q[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
        __m256 d = _mm256_loadu_ps((const float *)(blk + 128)), m = _mm256_loadu_ps((const float *)(blk + 160));
        for (int i = 0; i < R; i++) {
            const int8_t *xr = x->q8 + (r + i) * x->K + b * QK;
            const float *dx = x->q8_d + (r + i) * nb + b, *sx = x->q8_s + (r + i) * nb + b;
            __m256 dot = _mm256_cvtepi32_ps(dot_nibbles(q, xr));
            acc[i] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d, _mm256_broadcast_ss(dx)), acc[i]);
            acc[i] = _mm256_fmadd_ps(m, _mm256_broadcast_ss(sx), acc[i]);
        }
    }
}

ALWAYS_INLINE void q6_k_tile(const cf_acts *x, int64_t r, int64_t nb, const uint8_t *w, const int R,
                             __m256 acc[KQ_TILE_ROWS]) {
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + b * Q6_K_BLOCK_BYTES;
        __m256 d_lo = _mm256_loadu_ps((const float *)(blk + 256)), d_hi = _mm256_loadu_ps((const float *)(blk + 288));
        for (int i = 0; i < R; i++) {
            const int8_t *xr = x->q8 + (r + i) * x->K + b * QK;
            __m256 dx = _mm256_broadcast_ss(x->q8_d + (r + i) * nb + b);
            __m256 lo = _mm256_cvtepi32_ps(dot_bytes16(blk, xr, 0)), hi = _mm256_cvtepi32_ps(dot_bytes16(blk, xr, 4));
            acc[i] = _mm256_fmadd_ps(lo, _mm256_mul_ps(d_lo, dx), acc[i]);
            acc[i] = _mm256_fmadd_ps(hi, _mm256_mul_ps(d_hi, dx), acc[i]);
        }
    }
}

/* rows [r0, r1) x groups [g0, g1): one group at a time, rows KQ_TILE_ROWS at a time */
#define KQ_CASE(tile, n) case n: tile(x, r, nb, wg, n, acc); break;
#define KQ_MATMUL(format)                                                                                  \
    static void format##_matmul(const cf_matrix *w, const cf_acts *x, int64_t r0, int64_t r1, int64_t g0,   \
                                int64_t g1, const float *bias, float *y, int64_t ldy, int accumulate) {     \
        int64_t nb = w->K / QK;                                                                            \
        for (int64_t g = g0; g < g1; g++) {                                                                \
            const uint8_t *wg = (const uint8_t *)w->data + g * w->group_bytes;                             \
            for (int64_t r = r0; r < r1; r += KQ_TILE_ROWS) {                                              \
                __m256 acc[KQ_TILE_ROWS];                                                                  \
                int64_t R = r1 - r < KQ_TILE_ROWS ? r1 - r : KQ_TILE_ROWS;                                 \
                switch (R) { KQ_CASE(format##_tile, 1) KQ_CASE(format##_tile, 2) KQ_CASE(format##_tile, 3) \
                             default: KQ_CASE(format##_tile, 4) }                                          \
                for (int64_t i = 0; i < R; i++) store8(acc[i], w->N, g, bias, y + (r + i) * ldy, accumulate); \
            }                                                                                              \
        }                                                                                                  \
    }

KQ_MATMUL(q4_k)
KQ_MATMUL(q6_k)

static inline float f32_at(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

static void q4_k_row(const cf_matrix *w, int64_t n, float *out) {
    const uint8_t *wg = (const uint8_t *)w->data + (n / 8) * w->group_bytes;
    int64_t i = n % 8;
    for (int64_t b = 0; b < w->K / QK; b++, wg += Q4_K_BLOCK_BYTES) {
        float d = f32_at(wg + 128 + 4 * i), m = f32_at(wg + 160 + 4 * i);
        for (int c = 0; c < 4; c++)
            for (int t = 0; t < 4; t++) {
                uint8_t byte = wg[32 * c + 4 * i + t];
                out[b * QK + 4 * c + t] = d * (float)(byte & 0xF) + m;
                out[b * QK + 16 + 4 * c + t] = d * (float)(byte >> 4) + m;
            }
    }
}

static void q6_k_row(const cf_matrix *w, int64_t n, float *out) {
    const uint8_t *wg = (const uint8_t *)w->data + (n / 8) * w->group_bytes;
    int64_t i = n % 8;
    for (int64_t b = 0; b < w->K / QK; b++, wg += Q6_K_BLOCK_BYTES) {
        float d_lo = f32_at(wg + 256 + 4 * i), d_hi = f32_at(wg + 288 + 4 * i);
        for (int c = 0; c < 8; c++)
            for (int t = 0; t < 4; t++)
                out[b * QK + 4 * c + t] = (c < 4 ? d_lo : d_hi) * (float)(int8_t)wg[32 * c + 4 * i + t];
    }
}

cf_format cf_format_q4_k = {"q4_k", CF_ACT_Q8, QK, q4_k_matmul, q4_k_row, q4_k_matmul};
cf_format cf_format_q6_k = {"q6_k", CF_ACT_Q8, QK, q6_k_matmul, q6_k_row, q6_k_matmul};
