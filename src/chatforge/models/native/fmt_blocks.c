/* Block-quantized weight formats Q4_1 and Q8_0 (GGUF's), and the 8-bit activations they read.

   Weights and activations are both quantized in blocks of 32 along K:
   - Q4_1 weights: w = d * q + m, q in [0, 15];
   - Q8_0 weights: w = d * q, q in [-127, 127];
   - activations (cf_quantize_q8, on every matmul input): x = dx * qx, qx in [-127, 127],
     dx = max|x| / 127 per block, and sx = dx * sum(qx) (for the Q4_1 offset term m * sum(x)).
   A block's dot product is then integer (maddubs: u8 x s8 pairs -> s16; madd: -> s32) times one
   float scale, llama.cpp's arithmetic, so a weight costs half a byte (Q4_1) of reading.

   Layout (formats.h: groups of eight columns). Within a group the eight columns are interleaved
   four inputs at a time, so that one 32-byte vector holds 4 consecutive weights of each of the 8
   columns: against a broadcast of the same 4 activations, maddubs + madd leaves the 8 columns'
   partial dot products in the 8 lanes (no horizontal sums, one scale multiply per block for 8
   columns, one vector store). Per group, block after block (K / 32 of them):
   - Q4_1, 160 bytes: 128 bytes of nibbles, byte 32 c + 4 i + t holding q[8g + i][32 b + 4 c + t]
     in its low nibble and q[8g + i][32 b + 16 + 4 c + t] in its high nibble (c < 4, i < 8,
     t < 4); then d[8] and m[8] as float16 (the GGUF block's own values).
   - Q8_0, 272 bytes: 256 bytes, byte 32 c + 4 i + t holding q[8g + i][32 b + 4 c + t] (c < 8);
     then d[8] as float16.
   Q4_1's eight 4-bit partial products fit in 16 bits (8 x 2 x 15 x 127 < 32768), so a block is
   summed in 16 bits and widened once; Q8_0's are widened after every 4 inputs.

   Rows are processed up to four at a time against one group (the group's unpacked weights
   shared); the kernels for 1..4 rows run each row's operations identically. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "formats.h"
#include "simd.h"

/* x [blocks of 32] -> qx, dx, sx; vectorized, the same values as the scalar definition:
   q = round-half-even(x * (1 / d)), d = max|x| / 127 (0 for an all-zero block). */
void cf_quantize_q8(const float *x, int64_t M, int64_t K, int8_t *qx, float *dx, float *sx) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    int64_t blocks = M * (K / QK);
    for (int64_t i = 0; i < blocks; i++) {
        const float *v = x + i * QK;
        __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16), v3 = _mm256_loadu_ps(v + 24);
        __m256 a = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        float amax = hmax8(a);
        float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
        __m256 vi = _mm256_set1_ps(inv);
        const int round = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        __m256i q0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vi), round));
        __m256i q1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vi), round));
        __m256i q2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vi), round));
        __m256i q3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vi), round));
        __m256i total = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
        int sum = _mm_cvtsi128_si32(t);
        /* packs work within 128-bit lanes: the bytes come out in the order 0-3, 8-11, 16-19, 24-27,
           4-7, ... of groups of 4; one 32-bit permute puts them back */
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(qx + i * QK), packed);
        dx[i] = d;
        sx[i] = d * (float)sum;
    }
}

/* The exact integer dot products of one block (32 inputs) of eight columns, AVX2 versions (the
   AVX-512 VNNI ones: fmt_blocks_vnni.c; both give the same integers, hence the same results).
   Q4_1: maddubs of the unsigned nibbles and the signed activations, 8 steps summed in 16 bits
   (the eight partial products of a lane stay below 8 x 2 x 15 x 127 < 32768), widened once.
   Q8_0: maddubs needs an unsigned operand, so |w| times x with w's sign moved onto x, each step
   widened to 32 bits (two products may already reach 2 x 127 x 127). */
#define DOT_Q4_1(q, x) dot_q4_1_avx2(q, x)
#define DOT_Q8_0(w, x, corr) ((void)(corr), dot_q8_0_avx2(w, x))
#define Q8_0_CORRECTION(w) _mm256_setzero_si256()

static inline __attribute__((always_inline)) __m256i dot_q4_1_avx2(const __m256i q[8], const int8_t *x) {
    __m256i s = _mm256_maddubs_epi16(q[0], bcast4(x));
    for (int c = 1; c < 8; c++) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(q[c], bcast4(x + 4 * c)));
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

static inline __attribute__((always_inline)) __m256i dot_q8_0_avx2(const uint8_t *w, const int8_t *x) {
    __m256i s = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(w + c * 32));
        __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(bcast4(x + 4 * c), v));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
    }
    return s;
}

#define KERNEL(name) name##_avx2
#define TILE_ROWS 4
#include "fmt_blocks_impl.h"

static inline float f16_to_f32(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static void q4_1_row(const cf_matrix *w, int64_t n, float *out) {
    const uint8_t *wg = (const uint8_t *)w->data + (n / 8) * w->group_bytes;
    int64_t i = n % 8;
    for (int64_t b = 0; b < w->K / QK; b++, wg += Q4_1_BLOCK_BYTES) {
        float d = f16_to_f32(wg + 128 + 2 * i), m = f16_to_f32(wg + 144 + 2 * i);
        for (int c = 0; c < 4; c++)
            for (int t = 0; t < 4; t++) {
                uint8_t byte = wg[32 * c + 4 * i + t];
                out[b * QK + 4 * c + t] = d * (float)(byte & 0xF) + m;
                out[b * QK + 16 + 4 * c + t] = d * (float)(byte >> 4) + m;
            }
    }
}

static void q8_0_row(const cf_matrix *w, int64_t n, float *out) {
    const uint8_t *wg = (const uint8_t *)w->data + (n / 8) * w->group_bytes;
    int64_t i = n % 8;
    for (int64_t b = 0; b < w->K / QK; b++, wg += Q8_0_BLOCK_BYTES) {
        float d = f16_to_f32(wg + 256 + 2 * i);
        for (int c = 0; c < 8; c++)
            for (int t = 0; t < 4; t++) out[b * QK + 4 * c + t] = d * (float)(int8_t)wg[32 * c + 4 * i + t];
    }
}

cf_format cf_format_q4_1 = {"q4_1", CF_ACT_Q8, QK, q4_1_matmul_avx2, q4_1_row, q4_1_matmul_avx2};
cf_format cf_format_q8_0 = {"q8_0", CF_ACT_Q8, QK, q8_0_matmul_avx2, q8_0_row, q8_0_matmul_avx2};
