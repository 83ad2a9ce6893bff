/* The table of weight formats (formats.h), indexed by CF_FMT_*. */
#include "formats.h"

extern const cf_format cf_format_f32, cf_format_q4_1, cf_format_q8_0;

const cf_format *const cf_formats[CF_FMT_COUNT] = {
    [CF_FMT_F32] = &cf_format_f32,
    [CF_FMT_Q4_1] = &cf_format_q4_1,
    [CF_FMT_Q8_0] = &cf_format_q8_0,
};
