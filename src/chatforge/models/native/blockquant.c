/* Block-quantized matmuls for x86 CPUs with AVX2 and FMA: y[M, N] = x[M, K] . W[N, K]^T.

   Weights and activations are both quantized in blocks of 32 along K, the scheme of GGUF's
   Q4_1 / Q8_0 / Q8_1 formats:
   - Q4_1 weights: w = d * q + m, q in [0, 15]; block b of row n is 16 bytes holding element j in
     the low nibble of byte j and element j + 16 in the high nibble; d is float32 [N, K/32], m is
     float32 [K/32, N] (transposed: the offset term is summed for eight columns at a time).
   - Q8_0 weights: w = d * q, q in [-127, 127]; 32 bytes per block, d float32 [N, K/32].
   - activations, quantized here on each call: x = dx * qx, qx in [-127, 127], dx = max|x| / 127
     per block, and sx = dx * sum(qx) (for the Q4_1 offset term m * sum(x)).
   A block's dot product is then integer (maddubs: u8 x s8 pairs -> s16; madd: -> s32) times one
   float scale, so each weight byte is read once per step and unpacked with a few instructions.

   Every output element is computed by the same sequence of operations whatever M is and
   wherever its row sits in x (rows are processed in groups of up to 4 by kernels that differ
   only in how many rows they carry; compiled with -ffp-contract=off so no scalar expression
   is fused differently in one of them): results do not depend on the batch.

   Threads: OpenMP over the N output columns (native/__init__.py: torch's own thread pool). */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "simd.h"

#define QK 32

static void quantize_rows_q8(const float *x, int64_t M, int64_t K, int8_t *qx, float *dx, float *sx) {
    int64_t blocks = M * (K / QK);
    for (int64_t i = 0; i < blocks; i++) {
        const float *v = x + i * QK;
        float amax = 0.f;
        for (int j = 0; j < QK; j++) {
            float a = fabsf(v[j]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.f, inv = d > 0.f ? 1.f / d : 0.f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            int q = (int)nearbyintf(v[j] * inv);  /* round half to even, like torch.round */
            qx[i * QK + j] = (int8_t)q;
            sum += q;
        }
        dx[i] = d;
        sx[i] = d * (float)sum;
    }
}

static inline __m256i unpack_q4(const uint8_t *p) {
    __m128i packed = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), _mm256_set1_epi8(0xF));
}

/* sum over 32 pairs of u[i] * s[i] (u unsigned, s signed bytes) as 8 float lanes */
static inline __m256 dot_u8s8(__m256i u, __m256i s) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

static inline __m256i load32(const int8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* How each format turns a weight block into the operands of one integer block dot product. Q4_1:
   the 32 nibbles, unsigned, times x. Q8_0: maddubs needs an unsigned operand, so |w| times x with
   w's sign moved onto x. */
static inline __m256i q4_1_block(const uint8_t *wq, int64_t b) { return unpack_q4(wq + b * 16); }
static inline __m256 q4_1_dot(__m256i w, __m256i x) { return dot_u8s8(w, x); }
static inline __m256i q8_0_block(const int8_t *wq, int64_t b) { return load32(wq + b * QK); }
static inline __m256 q8_0_dot(__m256i w, __m256i x) { return dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)); }

/* One weight row of format F against R activation rows: sum_b d_b dx_b (q_b . qx_b) (for Q4_1 the
   offset term m * sum(x) is added afterwards for all rows at once, add_q4_1_offsets). Two
   accumulators per row (even and odd blocks), so that consecutive FMAs do not wait on each other. */
#define BLOCK_ROWS(F, WTYPE, R)                                                                        \
    static inline void F##_rows_##R(const int8_t *qx, const float *dx, int64_t nb, const WTYPE *wq,   \
                                    const float *wd, float *out, int64_t ldo) {                        \
        __m256 even[R], odd[R];                                                                         \
        for (int r = 0; r < R; r++) {                                                                   \
            even[r] = _mm256_setzero_ps();                                                              \
            odd[r] = _mm256_setzero_ps();                                                               \
        }                                                                                               \
        int64_t b = 0;                                                                                  \
        for (; b + 1 < nb; b += 2) {                                                                    \
            __m256i w0 = F##_block(wq, b), w1 = F##_block(wq, b + 1);                                   \
            __m256 d0 = _mm256_broadcast_ss(wd + b), d1 = _mm256_broadcast_ss(wd + b + 1);              \
            for (int r = 0; r < R; r++) {                                                               \
                const int8_t *x = qx + (r * nb + b) * QK;                                               \
                const float *xd = dx + r * nb + b;                                                      \
                even[r] = _mm256_fmadd_ps(F##_dot(w0, load32(x)), _mm256_mul_ps(d0, _mm256_broadcast_ss(xd)), even[r]); \
                odd[r] = _mm256_fmadd_ps(F##_dot(w1, load32(x + QK)), _mm256_mul_ps(d1, _mm256_broadcast_ss(xd + 1)), odd[r]); \
            }                                                                                           \
        }                                                                                               \
        for (; b < nb; b++) {                                                                           \
            __m256i w0 = F##_block(wq, b);                                                              \
            __m256 d0 = _mm256_broadcast_ss(wd + b);                                                    \
            for (int r = 0; r < R; r++)                                                                 \
                even[r] = _mm256_fmadd_ps(F##_dot(w0, load32(qx + (r * nb + b) * QK)),                  \
                                          _mm256_mul_ps(d0, _mm256_broadcast_ss(dx + r * nb + b)), even[r]); \
        }                                                                                               \
        for (int r = 0; r < R; r++) out[r * ldo] = hsum8(_mm256_add_ps(even[r], odd[r]));                \
    }
BLOCK_ROWS(q4_1, uint8_t, 1)
BLOCK_ROWS(q4_1, uint8_t, 2)
BLOCK_ROWS(q4_1, uint8_t, 3)
BLOCK_ROWS(q4_1, uint8_t, 4)
BLOCK_ROWS(q8_0, int8_t, 1)
BLOCK_ROWS(q8_0, int8_t, 2)
BLOCK_ROWS(q8_0, int8_t, 3)
BLOCK_ROWS(q8_0, int8_t, 4)

/* Output column n of format F for all M rows: the rows in groups of four, then the rest. */
#define BLOCK_COLUMN(F, WTYPE, BLOCK_BYTES)                                                            \
    static inline void F##_column(const int8_t *qx, const float *dx, int64_t M, int64_t nb, const WTYPE *qs, \
                                  const float *d, int64_t n, int64_t N, float *y) {                     \
        const WTYPE *wq = qs + n * nb * (BLOCK_BYTES);                                                  \
        const float *wd = d + n * nb;                                                                   \
        for (int64_t r0 = 0; r0 < M; r0 += 4) {                                                         \
            const int8_t *xq = qx + r0 * nb * QK;                                                       \
            const float *xd = dx + r0 * nb;                                                             \
            float *out = y + r0 * N + n;                                                                \
            switch (M - r0 < 4 ? M - r0 : 4) {                                                          \
                case 1: F##_rows_1(xq, xd, nb, wq, wd, out, N); break;                                  \
                case 2: F##_rows_2(xq, xd, nb, wq, wd, out, N); break;                                  \
                case 3: F##_rows_3(xq, xd, nb, wq, wd, out, N); break;                                  \
                default: F##_rows_4(xq, xd, nb, wq, wd, out, N); break;                                 \
            }                                                                                           \
        }                                                                                               \
    }
BLOCK_COLUMN(q4_1, uint8_t, 16)
BLOCK_COLUMN(q8_0, int8_t, QK)

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

/* y[r, n] += sum_b sx[r, b] * m[b, n] (m stored [K / 32, N]): eight columns per FMA. */
static inline void add_q4_1_offsets(const float *sx, int64_t nb, const float *mt, int64_t N, int64_t n0, float *y_row) {
    if (n0 + 8 <= N) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) acc = _mm256_fmadd_ps(_mm256_broadcast_ss(sx + b), _mm256_loadu_ps(mt + b * N + n0), acc);
        _mm256_storeu_ps(y_row + n0, _mm256_add_ps(_mm256_loadu_ps(y_row + n0), acc));
        return;
    }
    for (int64_t n = n0; n < N; n++) {  /* the last N % 8 columns, whatever the row count */
        float acc = 0.f;
        for (int64_t b = 0; b < nb; b++) acc = fmaf(sx[b], mt[b * N + n], acc);
        y_row[n] += acc;
    }
}

/* Q4_1 weights: qs [N, K/32, 16], d [N, K/32], m [K/32, N] (transposed: the offsets are summed
   eight columns at a time). Returns 0, or -1 when the scratch could not be allocated (y untouched).
   K % 32 == 0. */
int q4_1_matmul(const float *x, int64_t M, int64_t K, const uint8_t *qs, const float *d, const float *m,
                int64_t N, float *y) {
    int8_t *qx;
    float *dx, *sx;
    if (quantize_input(x, M, K, &qx, &dx, &sx)) return -1;
    int64_t nb = K / QK;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) q4_1_column(qx, dx, M, nb, qs, d, n, N, y);
#pragma omp for schedule(static)
        for (int64_t chunk = 0; chunk < (N + 7) / 8; chunk++)
            for (int64_t r = 0; r < M; r++) add_q4_1_offsets(sx + r * nb, nb, m, N, chunk * 8, y + r * N);
    }
    free(qx), free(dx), free(sx);
    return 0;
}

int q8_0_matmul(const float *x, int64_t M, int64_t K, const int8_t *qs, const float *d, int64_t N, float *y) {
    int8_t *qx;
    float *dx, *sx;
    if (quantize_input(x, M, K, &qx, &dx, &sx)) return -1;
    int64_t nb = K / QK;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) q8_0_column(qx, dx, M, nb, qs, d, n, N, y);
    free(qx), free(dx), free(sx);
    return 0;
}
