/* GGUF's Q5_0 kept at its file's size, multiplied by Q8_0's kernels (fmt_blocks.c).

   A Q5_0 block holds 32 inputs of one column: d (float16), the 32 values' fifth bits, their low
   4 bits as nibbles; w = d (q - 16). models/native_formats.py interleaves eight columns, 176
   bytes per group and block of 32 inputs (22 a column, 5.5 bits a weight, as in the file):
   - 128 nibble bytes in Q4_1's layout (byte 32 c + 4 i + t: the low 4 bits of column i's
     q[4 c + t] low, of q[16 + 4 c + t] high);
   - 32 bytes of fifth bits (byte 4 i + t: bit c is that of column i's q[4 c + t]);
   - d[8] (float16).
   The matmul unpacks two groups at a time into Q8_0's blocks (the bytes q - 16 and d, on the
   stack: nb * 544 bytes) and runs Q8_0's matmul on them for all the rows asked: the same
   operations as on a Q8_0 matrix of the same values, whichever variant (AVX2, VNNI) is chosen,
   the unpacking paid once per group. */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "formats.h"

#define Q5_0_BLOCK_BYTES 176
#define UNPACKED_GROUPS 2

extern cf_format cf_format_q8_0;

/* one block of a group -> Q8_0's block (256 bytes of q - 16 in chunk order, then d[8]) */
static inline void unpack_block(const uint8_t *blk, uint8_t *out) {
    const __m256i low = _mm256_set1_epi8(0xF), fifth = _mm256_set1_epi8(0x10), bias = _mm256_set1_epi8(16);
    __m256i h = _mm256_loadu_si256((const __m256i *)(blk + 128));
    for (int c = 0; c < 4; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 32 * c));
        /* bit c of each byte to bit 4 (epi16 shifts of at most 4: no bit crosses into the
           neighbouring byte's bit 4), bit c + 4 likewise */
        __m256i h_lo = c == 0 ? _mm256_slli_epi16(h, 4) : c == 1 ? _mm256_slli_epi16(h, 3)
                     : c == 2 ? _mm256_slli_epi16(h, 2) : _mm256_slli_epi16(h, 1);
        __m256i h_hi = c == 0 ? h : c == 1 ? _mm256_srli_epi16(h, 1) : c == 2 ? _mm256_srli_epi16(h, 2) : _mm256_srli_epi16(h, 3);
        __m256i q_lo = _mm256_or_si256(_mm256_and_si256(v, low), _mm256_and_si256(h_lo, fifth));
        __m256i q_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), _mm256_and_si256(h_hi, fifth));
        _mm256_storeu_si256((__m256i *)(out + 32 * c), _mm256_sub_epi8(q_lo, bias));
        _mm256_storeu_si256((__m256i *)(out + 32 * (c + 4)), _mm256_sub_epi8(q_hi, bias));
    }
    memcpy(out + 256, blk + 160, 16);
}

static inline void q5_0_via_q8_0(cf_matmul_fn q8_0, const cf_matrix *w, const cf_acts *x, int64_t r0, int64_t r1,
                                 int64_t g0, int64_t g1, const float *bias, float *y, int64_t ldy, int accumulate) {
    int64_t nb = w->K / QK;
    uint8_t unpacked[UNPACKED_GROUPS * nb * Q8_0_BLOCK_BYTES];
    for (int64_t g = g0; g < g1; g += UNPACKED_GROUPS) {
        int64_t n_groups = g1 - g < UNPACKED_GROUPS ? g1 - g : UNPACKED_GROUPS;
        for (int64_t k = 0; k < n_groups; k++) {
            const uint8_t *wg = (const uint8_t *)w->data + (g + k) * w->group_bytes;
            for (int64_t b = 0; b < nb; b++)
                unpack_block(wg + b * Q5_0_BLOCK_BYTES, unpacked + (k * nb + b) * Q8_0_BLOCK_BYTES);
        }
        /* these groups as groups 0.. of a Q8_0 matrix whose columns start at 8 g */
        cf_matrix part = {CF_FMT_Q8_0, w->N - 8 * g, w->K, nb * Q8_0_BLOCK_BYTES, unpacked};
        q8_0(&part, x, r0, r1, 0, n_groups, bias ? bias + 8 * g : NULL, y + 8 * g, ldy, accumulate);
    }
}

static void q5_0_matmul(const cf_matrix *w, const cf_acts *x, int64_t r0, int64_t r1, int64_t g0, int64_t g1,
                        const float *bias, float *y, int64_t ldy, int accumulate) {
    q5_0_via_q8_0(cf_format_q8_0.matmul, w, x, r0, r1, g0, g1, bias, y, ldy, accumulate);
}

static void q5_0_matmul_baseline(const cf_matrix *w, const cf_acts *x, int64_t r0, int64_t r1, int64_t g0,
                                 int64_t g1, const float *bias, float *y, int64_t ldy, int accumulate) {
    q5_0_via_q8_0(cf_format_q8_0.matmul_baseline, w, x, r0, r1, g0, g1, bias, y, ldy, accumulate);
}

static void q5_0_row(const cf_matrix *w, int64_t n, float *out) {
    const uint8_t *wg = (const uint8_t *)w->data + (n / 8) * w->group_bytes;
    int64_t i = n % 8;
    for (int64_t b = 0; b < w->K / QK; b++, wg += Q5_0_BLOCK_BYTES) {
        uint16_t h;
        memcpy(&h, wg + 160 + 2 * i, 2);
        float d = _cvtsh_ss(h);
        for (int c = 0; c < 8; c++)
            for (int t = 0; t < 4; t++) {
                int nibble = (wg[32 * (c % 4) + 4 * i + t] >> (4 * (c / 4))) & 0xF;
                int fifth = (wg[128 + 4 * i + t] >> c) & 1;
                out[b * QK + 4 * c + t] = d * (float)((nibble | fifth << 4) - 16);
            }
    }
}

cf_format cf_format_q5_0 = {"q5_0", CF_ACT_Q8, QK, q5_0_matmul, q5_0_row, q5_0_matmul_baseline};
