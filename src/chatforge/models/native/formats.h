/* Weight formats: how a matrix is stored for the kernels, and the kernels that read it.

   A matrix W [N, K] (N output columns, K inputs) is stored in groups of eight output columns,
   group g holding columns 8g .. 8g + 7 (N is padded to a multiple of 8 with zero weights), each
   group's data contiguous (`group_bytes` per group). Each format provides:
   - matmul: y[r, n] (= or +=) x[r, :] . W[n, :] (+ bias[n]) for rows [r0, r1) and column groups
     [g0, g1), from the activations in the form the format reads (`act`: float32 rows, or rows
     quantized to 8 bits per block of 32, cf_acts);
   - row: W[n, :] as K floats (embedding lookups read the embedding matrix this way).
   Every output element must be computed by the same sequence of operations whatever r0, r1,
   g0, g1 and the row's place in x: that is what makes the model's results independent of the
   batch. Kernels get -ffp-contract=off, so a scalar expression is never fused one way in one
   variant and another way in another.

   Adding a format: a CF_FMT_* id, a file with its matmul and row functions,
   an entry in cf_formats (formats.c), its packing in models/native_formats.py. */
#ifndef CHATFORGE_FORMATS_H
#define CHATFORGE_FORMATS_H

#include <stdint.h>

#define QK 32 /* inputs per quantization block */

/* Q4_1 also holds GGUF's Q4_0 (m = -8 d, exact); Q4_K and Q6_K: fmt_kquants.c; Q5_0: fmt_q5_0.c */
enum { CF_FMT_F32 = 0, CF_FMT_Q4_1 = 1, CF_FMT_Q8_0 = 2, CF_FMT_Q4_K = 3, CF_FMT_Q6_K = 4, CF_FMT_Q5_0 = 5, CF_FMT_COUNT };
enum { CF_ACT_F32 = 1, CF_ACT_Q8 = 2 }; /* bit flags: which activation forms a format reads */

/* Activations x [M, K]: float32 rows, and (when some matrix reads them) the same rows quantized
   per block of 32: x ~= d * q, q in [-127, 127], d = max|x| / 127, s = d * sum(q). */
typedef struct {
    int64_t M, K;
    const float *f32; /* [M, K] */
    const int8_t *q8; /* [M, K] */
    const float *q8_d; /* [M, K / 32] */
    const float *q8_s; /* [M, K / 32] */
} cf_acts;

typedef struct cf_matrix cf_matrix;

typedef void (*cf_matmul_fn)(const cf_matrix *w, const cf_acts *x, int64_t r0, int64_t r1, int64_t g0, int64_t g1,
                             const float *bias, float *y, int64_t ldy, int accumulate);
typedef void (*cf_row_fn)(const cf_matrix *w, int64_t n, float *out);

typedef struct {
    const char *name;
    int act;             /* CF_ACT_* the matmul reads */
    int64_t k_multiple;  /* K must be a multiple of this */
    cf_matmul_fn matmul; /* the best variant for this CPU (cf_select_kernels) */
    cf_row_fn row;
    cf_matmul_fn matmul_baseline; /* the AVX2 variant (the same results; kernel tests) */
} cf_format;

/* Set from Python (ctypes mirror in models/native_plan.py): keep the layout in step. */
struct cf_matrix {
    int64_t format;      /* CF_FMT_* */
    int64_t N, K;
    int64_t group_bytes; /* bytes of one group of eight columns */
    const void *data;    /* ceil(N / 8) groups */
};

extern cf_format *const cf_formats[CF_FMT_COUNT];

/* Points each format's matmul at the best variant this CPU runs (AVX-512 VNNI where present);
   every variant gives the same results. Idempotent; cf_model_new calls it. Returns the name of
   the instruction set chosen. */
const char *cf_select_kernels(void);

/* x [M, K] -> q [M, K], d, s [M, K / 32] (cf_acts' 8-bit form); K % 32 == 0. */
void cf_quantize_q8(const float *x, int64_t M, int64_t K, int8_t *q, float *d, float *s);

#endif
