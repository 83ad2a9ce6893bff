/* The block formats' matmuls for CPUs with AVX-512 VNNI (vpdpbusd on 256-bit vectors: four
   u8 x s8 products summed into each 32-bit lane in one instruction), chosen at start-up where the
   CPU has it (formats.c). The same integers as the AVX2 kernels (fmt_blocks.c), hence the same
   results bit for bit, in about half the instructions. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
#endif

#include <immintrin.h>
#include <stdint.h>

#include "blocks.h"
#include "formats.h"
#include "simd.h"

/* Q4_1: the nibbles are the unsigned operand; two chains, summed once. */
static inline __attribute__((always_inline)) __m256i dot_q4_1_vnni(const __m256i q[8], const int8_t *x) {
    __m256i s0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q[0], bcast4(x));
    __m256i s1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q[1], bcast4(x + 4));
    for (int c = 2; c < 8; c += 2) {
        s0 = _mm256_dpbusd_epi32(s0, q[c], bcast4(x + 4 * c));
        s1 = _mm256_dpbusd_epi32(s1, q[c + 1], bcast4(x + 4 * c + 4));
    }
    return _mm256_add_epi32(s0, s1);
}

/* Q8_0: both operands signed; the activations shifted to unsigned (x + 128), and 128 * sum(w),
   the block's correction (once per block, for every row), taken off again. */
static inline __attribute__((always_inline)) __m256i q8_0_correction_vnni(const uint8_t *w) {
    __m256i s = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++)
        s = _mm256_dpbusd_epi32(s, _mm256_set1_epi8((char)0x80), _mm256_loadu_si256((const __m256i *)(w + 32 * c)));
    return s;
}

static inline __attribute__((always_inline)) __m256i dot_q8_0_vnni(const uint8_t *w, const int8_t *x, __m256i corr) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
    for (int c = 0; c < 8; c += 2) {
        s0 = _mm256_dpbusd_epi32(s0, _mm256_xor_si256(bcast4(x + 4 * c), flip), _mm256_loadu_si256((const __m256i *)(w + 32 * c)));
        s1 = _mm256_dpbusd_epi32(s1, _mm256_xor_si256(bcast4(x + 4 * c + 4), flip), _mm256_loadu_si256((const __m256i *)(w + 32 * c + 32)));
    }
    return _mm256_sub_epi32(_mm256_add_epi32(s0, s1), corr);
}

#define DOT_Q4_1(q, x) dot_q4_1_vnni(q, x)
#define DOT_Q8_0(w, x, corr) dot_q8_0_vnni(w, x, corr)
#define Q8_0_CORRECTION(w) q8_0_correction_vnni(w)
#define KERNEL(name) name##_vnni
#define TILE_ROWS 8
#include "fmt_blocks_impl.h"

int cf_have_vnni(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
}

#if defined(__clang__)
#pragma clang attribute pop
#endif
