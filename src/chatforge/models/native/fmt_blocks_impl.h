/* The block formats' matmuls, written once for every instruction set: the including file defines
   KERNEL(name) (the suffix of this variant's functions), DOT_Q4_1(q, x), DOT_Q8_0(w, x, corr) and
   Q8_0_CORRECTION(w) (the exact integer dot products of one block of eight columns), then
   includes this file. fmt_blocks.c says what the formats are.

   A tile is R rows (1..TILE_ROWS) against G column groups (1..2): each group's block is unpacked once for
   the R rows, each row's activations are read once for the G groups. Every output element goes
   through the same operations whatever R, G and the tile's place:
   acc = fma(dot, d * dx, acc) (+ fma(m, sx, acc) for Q4_1), block after block. */

#define ALWAYS_INLINE static inline __attribute__((always_inline))


ALWAYS_INLINE void KERNEL(q4_1_tile)(const cf_acts *x, int64_t r, int64_t nb, const uint8_t *w, int64_t group_bytes,
                                     const int R, const int G, __m256 acc[TILE_ROWS][2]) {
    const __m256i low = _mm256_set1_epi8(0xF);
    for (int i = 0; i < R; i++)
        for (int g = 0; g < G; g++) acc[i][g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i q[2][8];
        __m256 d[2], m[2];
        for (int g = 0; g < G; g++) {
            const uint8_t *blk = w + g * group_bytes + b * Q4_1_BLOCK_BYTES;
            for (int c = 0; c < 4; c++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 32 * c));
                q[g][c] = _mm256_and_si256(v, low);
                q[g][c + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            }
            d[g] = load_f16x8(blk + 128), m[g] = load_f16x8(blk + 144);
        }
        for (int i = 0; i < R; i++) {
            const int8_t *xr = x->q8 + (r + i) * x->K + b * QK;
            const float *dx = x->q8_d + (r + i) * nb + b, *sx = x->q8_s + (r + i) * nb + b;
            for (int g = 0; g < G; g++) {
                __m256 dot = _mm256_cvtepi32_ps(DOT_Q4_1(q[g], xr));
                acc[i][g] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d[g], _mm256_broadcast_ss(dx)), acc[i][g]);
                acc[i][g] = _mm256_fmadd_ps(m[g], _mm256_broadcast_ss(sx), acc[i][g]);
            }
        }
    }
}

ALWAYS_INLINE void KERNEL(q8_0_tile)(const cf_acts *x, int64_t r, int64_t nb, const uint8_t *w, int64_t group_bytes,
                                     const int R, const int G, __m256 acc[TILE_ROWS][2]) {
    for (int i = 0; i < R; i++)
        for (int g = 0; g < G; g++) acc[i][g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk[2];
        __m256i corr[2];
        __m256 d[2];
        for (int g = 0; g < G; g++) {
            blk[g] = w + g * group_bytes + b * Q8_0_BLOCK_BYTES;
            corr[g] = Q8_0_CORRECTION(blk[g]);
            d[g] = load_f16x8(blk[g] + 256);
        }
        for (int i = 0; i < R; i++) {
            const int8_t *xr = x->q8 + (r + i) * x->K + b * QK;
            const float *dx = x->q8_d + (r + i) * nb + b;
            for (int g = 0; g < G; g++) {
                __m256 dot = _mm256_cvtepi32_ps(DOT_Q8_0(blk[g], xr, corr[g]));
                acc[i][g] = _mm256_fmadd_ps(dot, _mm256_mul_ps(d[g], _mm256_broadcast_ss(dx)), acc[i][g]);
            }
        }
    }
}

/* rows [r0, r1) x groups [g0, g1): pairs of groups, rows TILE_ROWS at a time */
#define TILE_CASE(tile, n, G) case n: tile(x, r, nb, wg, w->group_bytes, n, G, acc); break;
#if TILE_ROWS == 4
#define TILE_SWITCH(tile, G)                                                                            \
    switch (R) { TILE_CASE(tile, 1, G) TILE_CASE(tile, 2, G) TILE_CASE(tile, 3, G) default: TILE_CASE(tile, 4, G) }
#else
#define TILE_SWITCH(tile, G)                                                                            \
    switch (R) {                                                                                        \
        TILE_CASE(tile, 1, G) TILE_CASE(tile, 2, G) TILE_CASE(tile, 3, G) TILE_CASE(tile, 4, G)        \
        TILE_CASE(tile, 5, G) TILE_CASE(tile, 6, G) TILE_CASE(tile, 7, G) default: TILE_CASE(tile, 8, G) \
    }
#endif

#define MATMUL(format)                                                                                  \
    void KERNEL(format##_matmul)(const cf_matrix *w, const cf_acts *x, int64_t r0, int64_t r1, int64_t g0, \
                                 int64_t g1, const float *bias, float *y, int64_t ldy, int accumulate) { \
        int64_t nb = w->K / QK;                                                                         \
        for (int64_t g = g0; g < g1; g += 2) {                                                          \
            const uint8_t *wg = (const uint8_t *)w->data + g * w->group_bytes;                          \
            int G = g + 1 < g1 ? 2 : 1;                                                                 \
            for (int64_t r = r0; r < r1; r += TILE_ROWS) {                                              \
                __m256 acc[TILE_ROWS][2];                                                               \
                int64_t R = r1 - r < TILE_ROWS ? r1 - r : TILE_ROWS;                                    \
                if (G == 2) {                                                                           \
                    TILE_SWITCH(KERNEL(format##_tile), 2)                                               \
                } else {                                                                                \
                    TILE_SWITCH(KERNEL(format##_tile), 1)                                               \
                }                                                                                       \
                for (int64_t i = 0; i < R; i++)                                                         \
                    for (int k = 0; k < G; k++) store8(acc[i][k], w->N, g + k, bias, y + (r + i) * ldy, accumulate); \
            }                                                                                           \
        }                                                                                               \
    }

MATMUL(q4_1)
MATMUL(q8_0)

#undef TILE_SWITCH
#undef TILE_CASE
#undef MATMUL
#undef ALWAYS_INLINE
