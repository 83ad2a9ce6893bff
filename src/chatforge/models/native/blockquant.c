/* Block-quantized matmuls for x86 CPUs with AVX2 and FMA: y[M, N] = x[M, K] . W[N, K]^T.

   Weights and activations are both quantized in blocks of 32 along K, the scheme of GGUF's
   Q4_1 / Q8_0 / Q8_1 formats:
   - Q4_1 weights: w = d * q + m, q in [0, 15];
   - Q8_0 weights: w = d * q, q in [-127, 127];
   - activations, quantized here on each call: x = dx * qx, qx in [-127, 127], dx = max|x| / 127
     per block, and sx = dx * sum(qx) (for the Q4_1 offset term m * sum(x)).
   A block's dot product is then integer (maddubs: u8 x s8 pairs -> s16; madd: -> s32) times one
   float scale, so each weight byte is read once per step and unpacked with a few instructions.

   Layout: the weights of eight output columns are interleaved, four input positions at a time,
   so that one 32-byte vector holds 4 consecutive weights of each of 8 columns. Against a
   broadcast of the same 4 activations, maddubs + madd gives the 8 columns' partial dot products
   in the 8 lanes: no horizontal sums, one scale multiply per block for 8 columns, and the 8
   results are stored as one vector. For column group g (columns 8g .. 8g + 7; N is padded to a
   multiple of 8 with zero weights) and block b:
   - Q4_1: 128 bytes; byte 32 c + 4 i + t holds q[8g + i][32 b + 4 c + t] in its low nibble and
     q[8g + i][32 b + 16 + 4 c + t] in its high nibble (c < 4, i < 8, t < 4); d and m are
     float32 [N / 8, K / 32, 8].
   - Q8_0: 256 bytes; byte 32 c + 4 i + t holds q[8g + i][32 b + 4 c + t] (c < 8); d as above.
   Q4_1's eight 4-bit partial products fit in 16 bits (8 x 2 x 15 x 127 < 32768), so a block is
   summed in 16 bits and widened once; Q8_0's are widened after every 4 positions.

   Every output element is computed by the same sequence of operations whatever M is and
   wherever its row sits in x (rows are processed in groups of up to 4 by kernels that differ
   only in how many rows they carry; compiled with -ffp-contract=off so no scalar expression
   is fused differently in one of them): results do not depend on the batch.

   Threads: OpenMP over the column groups (native/__init__.py: torch's own thread pool). */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

#define QK 32

/* x [blocks of 32] -> qx, dx, sx; vectorized, the same values as the scalar definition:
   q = round-half-even(x * (1 / d)), d = max|x| / 127 (0 for an all-zero block). */
static void quantize_rows_q8(const float *x, int64_t M, int64_t K, int8_t *qx, float *dx, float *sx) {
    const __m256 sign = _mm256_set1_ps(-0.f);
    int64_t blocks = M * (K / QK);
    for (int64_t i = 0; i < blocks; i++) {
        const float *v = x + i * QK;
        __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16), v3 = _mm256_loadu_ps(v + 24);
        __m256 a = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float amax = _mm_cvtss_f32(h);
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

/* Scratch for the quantized activations: M * K bytes + 2 * M * K / 32 floats. 0 on success. */
static int quantize_input(const float *x, int64_t M, int64_t K, int8_t **qx, float **dx, float **sx) {
    int64_t blocks = M * (K / QK);
    *qx = malloc((size_t)(M * K));
    *dx = malloc((size_t)blocks * sizeof(float));
    *sx = malloc((size_t)blocks * sizeof(float));
    if (!*qx || !*dx || !*sx) {
        free(*qx), free(*dx), free(*sx);
        return -1;
    }
    quantize_rows_q8(x, M, K, *qx, *dx, *sx);
    return 0;
}

/* the 4 activations at p, broadcast to the 8 lanes */
static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* R activation rows against column group g. Q4_1: the block's 8 unpacked vectors are shared by
   the R rows; y = sum_b (d_b dx_b (q_b . qx_b) + m_b sx_b), the two terms in one accumulator. */
#define Q4_1_ROWS(R)                                                                                   \
    static inline void q4_1_rows_##R(const int8_t *qx, const float *dx, const float *sx, int64_t nb,   \
                                     const uint8_t *wq, const float *wd, const float *wm, float *out,  \
                                     int64_t ldo) {                                                    \
        const __m256i low = _mm256_set1_epi8(0xF), ones = _mm256_set1_epi16(1);                         \
        __m256 acc[R];                                                                                  \
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                       \
        for (int64_t b = 0; b < nb; b++) {                                                              \
            const __m256i *p = (const __m256i *)(wq + b * 128);                                         \
            __m256i c0 = _mm256_loadu_si256(p), c1 = _mm256_loadu_si256(p + 1);                         \
            __m256i c2 = _mm256_loadu_si256(p + 2), c3 = _mm256_loadu_si256(p + 3);                     \
            __m256i w0 = _mm256_and_si256(c0, low), w4 = _mm256_and_si256(_mm256_srli_epi16(c0, 4), low); \
            __m256i w1 = _mm256_and_si256(c1, low), w5 = _mm256_and_si256(_mm256_srli_epi16(c1, 4), low); \
            __m256i w2 = _mm256_and_si256(c2, low), w6 = _mm256_and_si256(_mm256_srli_epi16(c2, 4), low); \
            __m256i w3 = _mm256_and_si256(c3, low), w7 = _mm256_and_si256(_mm256_srli_epi16(c3, 4), low); \
            __m256 d = _mm256_loadu_ps(wd + b * 8), m = _mm256_loadu_ps(wm + b * 8);                   \
            for (int r = 0; r < R; r++) {                                                               \
                const int8_t *x = qx + (r * nb + b) * QK;                                               \
                __m256i s = _mm256_maddubs_epi16(w0, bcast4(x));                                        \
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w1, bcast4(x + 4)));                       \
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w2, bcast4(x + 8)));                       \
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w3, bcast4(x + 12)));                      \
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w4, bcast4(x + 16)));                      \
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w5, bcast4(x + 20)));                      \
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w6, bcast4(x + 24)));                      \
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w7, bcast4(x + 28)));                      \
                __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(s, ones));                            \
                acc[r] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d, _mm256_broadcast_ss(dx + r * nb + b)), acc[r]); \
                acc[r] = _mm256_fmadd_ps(m, _mm256_broadcast_ss(sx + r * nb + b), acc[r]);             \
            }                                                                                           \
        }                                                                                               \
        for (int r = 0; r < R; r++) _mm256_storeu_ps(out + r * ldo, acc[r]);                            \
    }

/* Q8_0: maddubs needs an unsigned operand, so |w| times x with w's sign moved onto x; each group
   of 4 positions is widened to 32 bits (two products may already reach 2 x 127 x 127). */
#define Q8_0_ROWS(R)                                                                                   \
    static inline void q8_0_rows_##R(const int8_t *qx, const float *dx, const float *sx, int64_t nb,   \
                                     const int8_t *wq, const float *wd, const float *wm, float *out,   \
                                     int64_t ldo) {                                                    \
        (void)sx, (void)wm;                                                                             \
        const __m256i ones = _mm256_set1_epi16(1);                                                      \
        __m256 acc[R];                                                                                  \
        for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_ps();                                       \
        for (int64_t b = 0; b < nb; b++) {                                                              \
            __m256i s[R];                                                                               \
            for (int r = 0; r < R; r++) s[r] = _mm256_setzero_si256();                                  \
            for (int c = 0; c < 8; c++) {                                                               \
                __m256i w = _mm256_loadu_si256((const __m256i *)(wq + b * 256 + c * 32));               \
                __m256i a = _mm256_sign_epi8(w, w);                                                     \
                for (int r = 0; r < R; r++) {                                                           \
                    __m256i x = _mm256_sign_epi8(bcast4(qx + (r * nb + b) * QK + 4 * c), w);            \
                    s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(_mm256_maddubs_epi16(a, x), ones)); \
                }                                                                                       \
            }                                                                                           \
            __m256 d = _mm256_loadu_ps(wd + b * 8);                                                     \
            for (int r = 0; r < R; r++)                                                                 \
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r]), _mm256_mul_ps(d, _mm256_broadcast_ss(dx + r * nb + b)), acc[r]); \
        }                                                                                               \
        for (int r = 0; r < R; r++) _mm256_storeu_ps(out + r * ldo, acc[r]);                            \
    }

Q4_1_ROWS(1)
Q4_1_ROWS(2)
Q4_1_ROWS(3)
Q4_1_ROWS(4)
Q8_0_ROWS(1)
Q8_0_ROWS(2)
Q8_0_ROWS(3)
Q8_0_ROWS(4)

/* y [M, N] for format F: column groups in parallel, rows in groups of four then the rest; the
   last group, when N % 8 != 0, through a scratch tile. */
#define BLOCK_MATMUL(F, WTYPE, BLOCK_BYTES)                                                             \
    static void F##_groups(const int8_t *qx, const float *dx, const float *sx, int64_t M, int64_t nb,   \
                           const WTYPE *qs, const float *d, const float *m, int64_t N, float *y) {      \
        int64_t groups = (N + 7) / 8;                                                                   \
        _Pragma("omp parallel for schedule(static)")                                                    \
        for (int64_t g = 0; g < groups; g++) {                                                          \
            const WTYPE *wq = qs + g * nb * (BLOCK_BYTES);                                              \
            const float *wd = d + g * nb * 8, *wm = m ? m + g * nb * 8 : NULL;                          \
            int64_t cols = N - g * 8 < 8 ? N - g * 8 : 8;                                               \
            float tile[4 * 8];                                                                          \
            for (int64_t r0 = 0; r0 < M; r0 += 4) {                                                     \
                const int8_t *xq = qx + r0 * nb * QK;                                                   \
                const float *xd = dx + r0 * nb, *xs = sx + r0 * nb;                                     \
                int64_t R = M - r0 < 4 ? M - r0 : 4;                                                    \
                float *out = cols == 8 ? y + r0 * N + g * 8 : tile;                                     \
                int64_t ldo = cols == 8 ? N : 8;                                                        \
                switch (R) {                                                                            \
                    case 1: F##_rows_1(xq, xd, xs, nb, wq, wd, wm, out, ldo); break;                    \
                    case 2: F##_rows_2(xq, xd, xs, nb, wq, wd, wm, out, ldo); break;                    \
                    case 3: F##_rows_3(xq, xd, xs, nb, wq, wd, wm, out, ldo); break;                    \
                    default: F##_rows_4(xq, xd, xs, nb, wq, wd, wm, out, ldo); break;                   \
                }                                                                                       \
                if (cols < 8)                                                                           \
                    for (int64_t r = 0; r < R; r++)                                                     \
                        memcpy(y + (r0 + r) * N + g * 8, tile + r * 8, sizeof(float) * (size_t)cols);   \
            }                                                                                           \
        }                                                                                               \
    }
BLOCK_MATMUL(q4_1, uint8_t, 128)
BLOCK_MATMUL(q8_0, int8_t, 256)

/* Q4_1 weights: qs [N8 / 8, K / 32, 128], d and m [N8 / 8, K / 32, 8] (N8: N rounded up to 8).
   Returns 0, or -1 when the scratch could not be allocated (y untouched). K % 32 == 0. */
int q4_1_matmul(const float *x, int64_t M, int64_t K, const uint8_t *qs, const float *d, const float *m,
                int64_t N, float *y) {
    int8_t *qx;
    float *dx, *sx;
    if (quantize_input(x, M, K, &qx, &dx, &sx)) return -1;
    q4_1_groups(qx, dx, sx, M, K / QK, qs, d, m, N, y);
    free(qx), free(dx), free(sx);
    return 0;
}

/* Q8_0 weights: qs [N8 / 8, K / 32, 256], d [N8 / 8, K / 32, 8]. As q4_1_matmul otherwise. */
int q8_0_matmul(const float *x, int64_t M, int64_t K, const int8_t *qs, const float *d, int64_t N, float *y) {
    int8_t *qx;
    float *dx, *sx;
    if (quantize_input(x, M, K, &qx, &dx, &sx)) return -1;
    q8_0_groups(qx, dx, sx, M, K / QK, qs, d, NULL, N, y);
    free(qx), free(dx), free(sx);
    return 0;
}
