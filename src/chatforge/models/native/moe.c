/* Mixtral's routing (model.h): which experts each row goes to, with what weight, and the rows
   grouped by expert so that each expert multiplies all of its rows in one matmul (forward.c).

   Per row, as transformers' MixtralSparseMoeBlock: a softmax over all experts' logits (float32),
   the top_k probabilities kept (the lower index first among equal ones) and divided by their
   sum. The row's experts are then listed in the order of their indices: that is the order its
   weighted outputs are summed in, whatever the other rows. The grouping only decides where a
   row's copy sits in the gathered matrix, which no kernel's result depends on (formats.h). */
#include <math.h>
#include <stdint.h>

#include "model.h"
#include "ops.h"

/* one row: its top-k experts (ascending index) and their renormalised weights */
static void route_row(const float *logits, int64_t E, int64_t k, int32_t *expert, float *weight) {
    float p[CF_MAX_EXPERTS], top = logits[0], sum = 0.f;
    for (int64_t e = 1; e < E; e++) top = logits[e] > top ? logits[e] : top;
    for (int64_t e = 0; e < E; e++) sum += p[e] = expf(logits[e] - top);
    for (int64_t e = 0; e < E; e++) p[e] /= sum;
    int chosen[CF_MAX_EXPERTS] = {0};
    float kept = 0.f;
    for (int64_t s = 0; s < k; s++) { /* descending probability, as torch.topk lists them */
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++)
            if (!chosen[e] && (best < 0 || p[e] > p[best])) best = e;
        chosen[best] = 1;
        expert[s] = (int32_t)best, weight[s] = p[best];
        kept += p[best];
    }
    for (int64_t s = 0; s < k; s++) weight[s] /= kept;
    for (int64_t s = 1; s < k; s++) /* by expert index: the order of the weighted sum */
        for (int64_t j = s; j > 0 && expert[j - 1] > expert[j]; j--) {
            int32_t e = expert[j]; expert[j] = expert[j - 1]; expert[j - 1] = e;
            float w = weight[j]; weight[j] = weight[j - 1]; weight[j - 1] = w;
        }
}

void cf_route(const float *logits, int64_t T, int64_t E, int64_t k, int32_t *expert, float *weight,
              int32_t *offsets, int32_t *slot_of, int32_t *row_of) {
    int32_t filled[CF_MAX_EXPERTS] = {0};
    for (int64_t e = 0; e <= E; e++) offsets[e] = 0;
    for (int64_t t = 0; t < T; t++) {
        route_row(logits + t * E, E, k, expert + t * k, weight + t * k);
        for (int64_t s = 0; s < k; s++) offsets[expert[t * k + s] + 1]++;
    }
    for (int64_t e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    for (int64_t t = 0; t < T; t++)
        for (int64_t s = 0; s < k; s++) {
            int32_t e = expert[t * k + s], at = offsets[e] + filled[e]++;
            slot_of[t * k + s] = at;
            row_of[at] = (int32_t)t;
        }
}
