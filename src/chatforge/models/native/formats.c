/* The table of weight formats (formats.h), indexed by CF_FMT_*, and the choice of kernel variants. */
#include "formats.h"

extern cf_format cf_format_f32, cf_format_q4_1, cf_format_q8_0, cf_format_q4_k, cf_format_q6_k, cf_format_q5_0;
extern int cf_have_vnni(void);
void q4_1_matmul_vnni(const cf_matrix *, const cf_acts *, int64_t, int64_t, int64_t, int64_t, const float *, float *,
                      int64_t, int);
void q8_0_matmul_vnni(const cf_matrix *, const cf_acts *, int64_t, int64_t, int64_t, int64_t, const float *, float *,
                      int64_t, int);

cf_format *const cf_formats[CF_FMT_COUNT] = {
    [CF_FMT_F32] = &cf_format_f32,
    [CF_FMT_Q4_1] = &cf_format_q4_1,
    [CF_FMT_Q8_0] = &cf_format_q8_0,
    [CF_FMT_Q4_K] = &cf_format_q4_k, /* AVX2 only */
    [CF_FMT_Q6_K] = &cf_format_q6_k,
    [CF_FMT_Q5_0] = &cf_format_q5_0, /* Q8_0's kernels, whichever variant */
};

const char *cf_select_kernels(void) {
    if (!cf_have_vnni()) return "avx2";
    cf_format_q4_1.matmul = q4_1_matmul_vnni;
    cf_format_q8_0.matmul = q8_0_matmul_vnni;
    return "avx512vnni";
}
