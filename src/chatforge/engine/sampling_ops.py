"""Pure tensor functions for sampling, each over a batch of rows with per-row parameters.

Shapes: logits [B, V] float32; per-row parameters [B]. Every filter keeps at least one token per
row and leaves rows whose `active` flag is False bit-for-bit unchanged, so a row's result never
depends on the other rows in the batch. Filtered tokens become -inf. The order in which these
act is owned by `sampler.py`, not here.
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")


def add_logit_bias(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> None:
    """In place: logits[rows[j], cols[j]] += values[j] (each (row, col) pair at most once)."""
    logits.index_put_((rows, cols), values, accumulate=True)


def ban_tokens(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """In place: logits[rows[j], cols[j]] = -inf."""
    logits[rows, cols] = _NEG_INF


def token_mask(num_rows: int, vocab_size: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """bool [B, V], True at each (rows[j], cols[j])."""
    mask = torch.zeros(num_rows, vocab_size, dtype=torch.bool, device=rows.device)
    mask[rows, cols] = True
    return mask


def token_counts(num_rows: int, vocab_size: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float32 [B, V]: how many times each token occurs in each row's (rows, cols) pairs."""
    counts = torch.zeros(num_rows, vocab_size, dtype=torch.float32, device=rows.device)
    counts.index_put_((rows, cols), torch.ones_like(cols, dtype=torch.float32), accumulate=True)
    return counts


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) on the tokens `seen` [B, V]: a negative logit is
    multiplied by the row's penalty, any other divided by it. Rows with penalty 1 are unchanged."""
    r = penalty[:, None]
    penalised = torch.where(logits < 0, logits * r, logits / r)
    return torch.where(seen, penalised, logits)


def frequency_presence_penalty(
    logits: torch.Tensor, counts: torch.Tensor, frequency: torch.Tensor, presence: torch.Tensor
) -> torch.Tensor:
    """OpenAI's formula: logit - count * frequency_penalty - [count > 0] * presence_penalty,
    with `counts` [B, V] over the generated tokens only."""
    return logits - counts * frequency[:, None] - (counts > 0).float() * presence[:, None]


def temperature(logits: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """Rows with temperature 1 are unchanged (x / 1 == x exactly)."""
    return logits / temp[:, None]


def top_k(logits: torch.Tensor, k: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Keep tokens whose logit is >= the row's k-th largest (ties at the boundary are kept).
    k [B] long, each in [1, V] for active rows."""
    k = torch.where(active, k, torch.ones_like(k))
    largest = torch.topk(logits, int(k.max()), dim=-1).values  # [B, kmax], descending
    kth = largest.gather(1, (k - 1)[:, None])  # [B, 1]
    remove = (logits < kth) & active[:, None]
    return logits.masked_fill(remove, _NEG_INF)


def top_p(logits: torch.Tensor, keep_mass_complement: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019): drop the least likely tokens whose cumulative
    probability stays <= 1 - top_p; the most likely token always stays.

    `keep_mass_complement` is 1 - top_p per row, computed in float64 before the cast so that the
    threshold is the one transformers' TopPLogitsWarper uses.
    """
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= keep_mass_complement[:, None]
    remove_sorted[:, -1] = False
    remove = remove_sorted.scatter(1, order, remove_sorted) & active[:, None]
    return logits.masked_fill(remove, _NEG_INF)


def min_p(logits: torch.Tensor, p: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    probs = logits.softmax(dim=-1)
    remove = probs < p[:, None] * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)
    return logits.masked_fill(remove & active[:, None], _NEG_INF)


def typical_p(logits: torch.Tensor, mass: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2022): keep the tokens whose surprisal is closest
    to the distribution's entropy, up to the given probability mass."""
    log_probs = logits.log_softmax(dim=-1)
    entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)
    distance = (-log_probs - entropy).abs()
    sorted_distance, order = torch.sort(distance, descending=False)
    cumulative = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass[:, None]).sum(dim=1).clamp_(max=logits.shape[-1] - 1)  # [B]
    remove_sorted = sorted_distance > sorted_distance.gather(1, last[:, None])
    remove_sorted[:, 0] = False
    remove = remove_sorted.scatter(1, order, remove_sorted) & active[:, None]
    return logits.masked_fill(remove, _NEG_INF)


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Sample one token per row with one uniform number per row.

    probs [B, V] (rows need not be normalised), uniform [B] float64 in [0, 1) -> [B] long.
    x = (1 - u) * total lies in (0, total], and the first token whose cumulative sum reaches x
    is drawn: token i exactly when cdf[i-1] < x <= cdf[i], i.e. with probability p_i / total.
    A zero-probability token can never be drawn (its cdf equals its predecessor's), nor can an
    index past the end (x <= cdf[-1]). The sums are float64 so that tiny probabilities keep
    their share. Each row only reads its own probabilities and number.

    A row with no distribution (NaN from an infinite logit, or nothing left) gets -1: the
    caller picks its token another way. No id past the vocabulary ever comes out.
    """
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)  # [B, V]
    total = cdf[:, -1]
    x = (1.0 - uniform) * total  # [B]
    tokens = torch.searchsorted(cdf, x[:, None], right=False)[:, 0]
    usable = torch.isfinite(total) & (total > 0)  # False for NaN too
    return torch.where(usable, tokens, torch.full_like(tokens, -1))
