/* Shared by the block formats' kernels (fmt_blocks.c, fmt_blocks_vnni.c): the layout's sizes and
   two loads. */
#ifndef CHATFORGE_BLOCKS_H
#define CHATFORGE_BLOCKS_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define Q4_1_BLOCK_BYTES 160 /* per group of 8 columns and block of 32 inputs: 128 nibble bytes, d[8], m[8] */
#define Q8_0_BLOCK_BYTES 272 /* 256 value bytes, d[8] */

/* the 4 activations at p, broadcast to the 8 lanes */
static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

static inline __m256 load_f16x8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

#endif
