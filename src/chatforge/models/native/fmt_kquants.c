/* GGUF's k-quants Q4_K and Q6_K, repacked per superblock of 256 inputs with the file's own
   integer scales, and the 8-bit activations of fmt_blocks.c (cf_quantize_q8).

   In the file a k-quant superblock holds 256 inputs of one column with small integer scales
   (6 bits in Q4_K, 8 bits in Q6_K) under a float16 superscale. models/native_formats.py keeps
   the integer scales as bytes and the superscales as float32, and interleaves eight columns as
   fmt_blocks.c does; per group of 8 columns and superblock:
   - Q4_K, 1216 bytes (152 a column, 4.75 bits a weight; the file's 144, 4.5): d[8] and -dmin[8]
     (float32), scale[8 blocks][8 columns] and min[8][8] (uint8), then per block of 32 inputs the
     128 nibble bytes of Q4_1's layout (byte 32 c + 4 i + t: q[32 b + 4 c + t] low,
     q[32 b + 16 + 4 c + t] high): w = D * q + M, D = d * scale, M = -dmin * min;
   - Q6_K, 1696 bytes (212 a column, 6.63 bits a weight; the file's 210, 6.56): d[8] (float32),
     scale[8 blocks][2 halves][8 columns] (int8), then per block 192 bytes: 128 of nibbles (byte
     32 c + 4 i + t: the low 4 bits of value q[4 c + t] of column i in its low half, of
     q[16 + 4 c + t] in its high half), 64 of bit pairs (byte 32 h + 4 i + t: the high 2 bits of
     q[16 h + 4 k + t] at bits 2 k, 2 k + 1): w = D_lo * (q - 32) for inputs 0..15, D_hi * (q - 32)
     for 16..31, D_lo/D_hi = d * scale (Q6_K's sub-blocks are 16).
   D and M are formed here in float32, exactly (a float16 times an integer of at most 8 bits fits
   float32's 24-bit mantissa): the values a float32 table of them would hold. Q6_K's values are
   unpacked to the bytes q - 32 (Q8_0's layout) and read by the same signed-byte dot products. A
   group computed for several row tiles has its scales (and Q6_K's bytes) formed by its first
   tile and kept on the stack for the others: the unpacking is paid once per group.

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

/* per group of 8 columns and superblock of 256 inputs; the parts' offsets in it */
#define Q4_K_SUPER_BYTES 1216
#define Q4_K_D 0
#define Q4_K_NEG_DMIN 32
#define Q4_K_SCALES 64
#define Q4_K_MINS 128
#define Q4_K_NIBBLES 192
#define Q6_K_SUPER_BYTES 1696
#define Q6_K_D 0
#define Q6_K_SCALES 32
#define Q6_K_VALUES 160 /* eight blocks of 192: 128 nibble bytes, 64 bytes of bit pairs */
#define q4_k_KEPT_VALUES 0
#define q6_k_KEPT_VALUES 256 /* a block's values unpacked to bytes */
#define KQ_TILE_ROWS 4
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* the eight columns' dot products of unsigned nibbles q[8] (Q4_1's) with 32 activations */
ALWAYS_INLINE __m256i dot_nibbles(const __m256i q[8], const int8_t *x) {
    __m256i s = _mm256_maddubs_epi16(q[0], bcast4(x));
    for (int c = 1; c < 8; c++) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(q[c], bcast4(x + 4 * c)));
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

/* the eight columns' dot products of signed bytes q[c0 .. c0 + 3] (4 chunks of 4 inputs) */
ALWAYS_INLINE __m256i dot_bytes16(const __m256i q[8], const int8_t *x, int c0) {
    __m256i s = _mm256_setzero_si256();
    for (int c = c0; c < c0 + 4; c++) {
        __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(q[c], q[c]), _mm256_sign_epi8(bcast4(x + 4 * c), q[c]));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
    }
    return s;
}

/* a Q6_K block's 8 chunks as signed bytes q - 32: chunk c's low 4 bits are nibble c % 4 of
   the 4 nibble vectors (low half for c < 4), its high 2 bits pair c % 4 of bit-pair vector c / 4 */
ALWAYS_INLINE void unpack_q6(const uint8_t *blk, __m256i q[8]) {
    const __m256i low = _mm256_set1_epi8(0xF), pair = _mm256_set1_epi8(0x30), bias = _mm256_set1_epi8(32);
    __m256i h0 = _mm256_loadu_si256((const __m256i *)(blk + 128)), h1 = _mm256_loadu_si256((const __m256i *)(blk + 160));
    for (int c = 0; c < 4; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 32 * c));
        __m256i hi0 = c == 0 ? _mm256_slli_epi16(h0, 4) : c == 1 ? _mm256_slli_epi16(h0, 2) : c == 2 ? h0 : _mm256_srli_epi16(h0, 2);
        __m256i hi1 = c == 0 ? _mm256_slli_epi16(h1, 4) : c == 1 ? _mm256_slli_epi16(h1, 2) : c == 2 ? h1 : _mm256_srli_epi16(h1, 2);
        q[c] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(v, low), _mm256_and_si256(hi0, pair)), bias);
        q[c + 4] = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), _mm256_and_si256(hi1, pair)), bias);
    }
}

/* the eight columns' superscales (float16 values) times their integer scales at p (8 bytes): exact */
ALWAYS_INLINE __m256 scaled_u8(__m256 d, const uint8_t *p) {
    return _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p))));
}

ALWAYS_INLINE __m256 scaled_i8(__m256 d, const uint8_t *p) {
    return _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))));
}

/* The float32 scales of a group's block of 32 inputs: D[8], M[8] (Q4_K) or D_lo[8], D_hi[8]
   (Q6_K), formed from the integer scales by a group's first row tile, which keeps them in
   `kept` (16 floats a block) for the group's other row tiles to load (form 2, then 0); a
   group computed for one row tile only forms them (form 1). */
ALWAYS_INLINE void q4_k_block_scales(const uint8_t *sb, int j, float *kept, const int form, __m256 *d, __m256 *m) {
    if (form) {
        *d = scaled_u8(_mm256_loadu_ps((const float *)(sb + Q4_K_D)), sb + Q4_K_SCALES + 8 * j);
        *m = scaled_u8(_mm256_loadu_ps((const float *)(sb + Q4_K_NEG_DMIN)), sb + Q4_K_MINS + 8 * j);
        if (form == 2) _mm256_storeu_ps(kept, *d), _mm256_storeu_ps(kept + 8, *m);
    } else {
        *d = _mm256_loadu_ps(kept), *m = _mm256_loadu_ps(kept + 8);
    }
}

ALWAYS_INLINE void q6_k_block_scales(const uint8_t *sb, int j, float *kept, const int form, __m256 *lo, __m256 *hi) {
    if (form) {
        __m256 d = _mm256_loadu_ps((const float *)(sb + Q6_K_D));
        *lo = scaled_i8(d, sb + Q6_K_SCALES + 16 * j), *hi = scaled_i8(d, sb + Q6_K_SCALES + 16 * j + 8);
        if (form == 2) _mm256_storeu_ps(kept, *lo), _mm256_storeu_ps(kept + 8, *hi);
    } else {
        *lo = _mm256_loadu_ps(kept), *hi = _mm256_loadu_ps(kept + 8);
    }
}

ALWAYS_INLINE void q4_k_tile(const cf_acts *x, int64_t r, int64_t nb, const uint8_t *w, float *scales,
                             uint8_t *values, const int form, const int R, __m256 acc[KQ_TILE_ROWS]) {
    (void)values;
    const __m256i low = _mm256_set1_epi8(0xF);
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *sb = w + (b / 8) * Q4_K_SUPER_BYTES, *blk = sb + Q4_K_NIBBLES + (b % 8) * 128;
        __m256i q[8];
        for (int c = 0; c < 4; c++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 32 * c));
            q[c] = _mm256_and_si256(v, low);
            q[c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        }
        __m256 d, m;
        q4_k_block_scales(sb, b % 8, scales + 16 * b, form, &d, &m);
        for (int i = 0; i < R; i++) {
            const int8_t *xr = x->q8 + (r + i) * x->K + b * QK;
            const float *dx = x->q8_d + (r + i) * nb + b, *sx = x->q8_s + (r + i) * nb + b;
            __m256 dot = _mm256_cvtepi32_ps(dot_nibbles(q, xr));
            acc[i] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d, _mm256_broadcast_ss(dx)), acc[i]);
            acc[i] = _mm256_fmadd_ps(m, _mm256_broadcast_ss(sx), acc[i]);
        }
    }
}

ALWAYS_INLINE void q6_k_tile(const cf_acts *x, int64_t r, int64_t nb, const uint8_t *w, float *scales,
                             uint8_t *values, const int form, const int R, __m256 acc[KQ_TILE_ROWS]) {
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *sb = w + (b / 8) * Q6_K_SUPER_BYTES;
        __m256i q[8];
        if (form) {
            unpack_q6(sb + Q6_K_VALUES + (b % 8) * 192, q);
            if (form == 2)
                for (int c = 0; c < 8; c++) _mm256_storeu_si256((__m256i *)(values + 256 * b + 32 * c), q[c]);
        } else {
            for (int c = 0; c < 8; c++) q[c] = _mm256_loadu_si256((const __m256i *)(values + 256 * b + 32 * c));
        }
        __m256 d_lo, d_hi;
        q6_k_block_scales(sb, b % 8, scales + 16 * b, form, &d_lo, &d_hi);
        for (int i = 0; i < R; i++) {
            const int8_t *xr = x->q8 + (r + i) * x->K + b * QK;
            __m256 dx = _mm256_broadcast_ss(x->q8_d + (r + i) * nb + b);
            __m256 lo = _mm256_cvtepi32_ps(dot_bytes16(q, xr, 0)), hi = _mm256_cvtepi32_ps(dot_bytes16(q, xr, 4));
            acc[i] = _mm256_fmadd_ps(lo, _mm256_mul_ps(d_lo, dx), acc[i]);
            acc[i] = _mm256_fmadd_ps(hi, _mm256_mul_ps(d_hi, dx), acc[i]);
        }
    }
}

/* rows [r0, r1) x groups [g0, g1): one group at a time, rows KQ_TILE_ROWS at a time (the group's
   scales, and Q6_K's values as bytes, kept between its row tiles on the stack: nb * 64 bytes,
   nb * 320 for Q6_K, 160 KiB for K = 16384) */
#define KQ_CASE(tile, n)                                                 \
    case n:                                                              \
        if (r1 - r0 <= KQ_TILE_ROWS) tile(x, r, nb, wg, scales, values, 1, n, acc); \
        else if (r == r0) tile(x, r, nb, wg, scales, values, 2, n, acc);         \
        else tile(x, r, nb, wg, scales, values, 0, n, acc);                      \
        break;
#define KQ_MATMUL(format)                                                                                  \
    static void format##_matmul(const cf_matrix *w, const cf_acts *x, int64_t r0, int64_t r1, int64_t g0,   \
                                int64_t g1, const float *bias, float *y, int64_t ldy, int accumulate) {     \
        int64_t nb = w->K / QK;                                                                            \
        float scales[nb * 16];                                                                             \
        uint8_t values[nb * format##_KEPT_VALUES + 32];                                                    \
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
    for (int64_t b = 0; b < w->K / QK; b++) {
        const uint8_t *sb = wg + (b / 8) * Q4_K_SUPER_BYTES, *blk = sb + Q4_K_NIBBLES + (b % 8) * 128;
        float d = f32_at(sb + Q4_K_D + 4 * i) * (float)sb[Q4_K_SCALES + (b % 8) * 8 + i];
        float m = f32_at(sb + Q4_K_NEG_DMIN + 4 * i) * (float)sb[Q4_K_MINS + (b % 8) * 8 + i];
        for (int c = 0; c < 4; c++)
            for (int t = 0; t < 4; t++) {
                uint8_t byte = blk[32 * c + 4 * i + t];
                out[b * QK + 4 * c + t] = d * (float)(byte & 0xF) + m;
                out[b * QK + 16 + 4 * c + t] = d * (float)(byte >> 4) + m;
            }
    }
}

static void q6_k_row(const cf_matrix *w, int64_t n, float *out) {
    const uint8_t *wg = (const uint8_t *)w->data + (n / 8) * w->group_bytes;
    int64_t i = n % 8;
    for (int64_t b = 0; b < w->K / QK; b++) {
        const uint8_t *sb = wg + (b / 8) * Q6_K_SUPER_BYTES, *blk = sb + Q6_K_VALUES + (b % 8) * 192;
        const int8_t *scales = (const int8_t *)(sb + Q6_K_SCALES + (b % 8) * 16);
        float d = f32_at(sb + Q6_K_D + 4 * i), d_lo = d * (float)scales[i], d_hi = d * (float)scales[8 + i];
        for (int c = 0; c < 8; c++)
            for (int t = 0; t < 4; t++) {
                int nibble = (blk[32 * (c % 4) + 4 * i + t] >> (4 * (c / 4))) & 0xF;
                int pair = (blk[128 + 32 * (c / 4) + 4 * i + t] >> (2 * (c % 4))) & 3;
                out[b * QK + 4 * c + t] = (c < 4 ? d_lo : d_hi) * (float)((nibble | pair << 4) - 32);
            }
    }
}

cf_format cf_format_q4_k = {"q4_k", CF_ACT_Q8, QK, q4_k_matmul, q4_k_row, q4_k_matmul};
cf_format cf_format_q6_k = {"q6_k", CF_ACT_Q8, QK, q6_k_matmul, q6_k_row, q6_k_matmul};
