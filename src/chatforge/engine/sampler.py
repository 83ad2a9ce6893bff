"""The sampler: one token per row from the model's logits, every SamplingParams field honoured
per row inside one batch. This module owns the order (DESIGN §3), which matches Hugging Face
transformers' logits processors and TGI, so either can serve as a reference:

1. raw log-softmax of the logits, kept for `logprobs` / `top_logprobs`;
2. `logit_bias` is added; a constrained row's grammar mask sets the tokens its grammar forbids
   to -inf (engine/grammar_mask.py; so a bias cannot revive them. A greedy row's mask is only
   computed when the grammar refuses its unmasked argmax: the same token, for less work); until
   `min_tokens` are generated, EOS (unless `ignore_eos`) and `stop_token_ids` are banned;
3. `repetition_penalty` over prompt + generated tokens (a positive logit is divided by it, a
   negative one multiplied);
4. `frequency_penalty` x count and `presence_penalty` x [count > 0] are subtracted, counting
   generated tokens only (OpenAI's formula);
5. greedy rows (temperature 0) take the argmax here;
6. temperature -> top_k -> top_p -> min_p -> typical_p, each keeping at least one token;
7. draw by inverse CDF with one uniform number per row, taken from the sequence's own
   torch.Generator when the request has a seed, else from the sampler's shared generator.

Batch invariance: each step is row-wise, parameters are per-row tensors, disabled filters
leave a row bit-for-bit unchanged, and a seeded row draws its number from its own generator; so
a seeded or greedy row gets the same token whatever else is in the batch. A step whose rows
all have default parameters is skipped, and an all-greedy batch without penalties is one argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from chatforge.engine import sampling_ops as ops
from chatforge.engine.grammar_mask import GrammarMasks, StepMasks, constrained_rows
from chatforge.engine.outputs import TokenLogprob
from chatforge.engine.sampling_batch import FilterParams, SamplingBatch
from chatforge.engine.sequence import Sequence
from chatforge.engine.token_history import TokenHistory


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row
    logprobs: list[TokenLogprob | None]  # per row; None where the request did not ask
    # The step's prompt scores (prompt_logprobs.PromptScores), added by the model runner.
    prompt_scores: list = field(default_factory=list)


class Sampler:
    def __init__(self, vocab_size: int, stop_token_ids: frozenset[int], device: torch.device, seed: int | None = None):
        self.vocab_size = vocab_size
        self.stop_token_ids = stop_token_ids
        self.device = torch.device(device)
        self.shared_generator = torch.Generator(self.device)
        if seed is None:
            self.shared_generator.seed()
        else:
            self.shared_generator.manual_seed(seed)
        self._generators: dict[int, torch.Generator] = {}  # seq_id -> its own generator
        self.history = TokenHistory(self.device)  # the penalised sequences' tokens, kept across steps
        self.grammar_masks = GrammarMasks(vocab_size, self.device)

    def release(self, seq_id: int) -> None:
        """Forget a finished sequence's generator and token history."""
        self._generators.pop(seq_id, None)
        self.history.release(seq_id)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits: float32 [N, V], row i belonging to seqs[i]."""
        b = SamplingBatch.build(seqs, self.vocab_size, self.stop_token_ids, logits.device, self.history)
        raw = logits[b.logprob_rows].log_softmax(dim=-1) if b.logprob_rows is not None else None  # 1
        constrained = constrained_rows(seqs)
        # Greedy constrained rows are masked only when the grammar refuses their argmax (grammar_mask.py).
        greedy = [i for i in constrained if not seqs[i].params.temperature > 0]
        masks = self.grammar_masks.fill(seqs, [i for i in constrained if seqs[i].params.temperature > 0])
        processed = apply_penalties(logits, b, masks) if b.needs_processing or masks is not None else logits  # 2-4
        if b.sampled_rows is None:
            tokens = processed.argmax(dim=-1)  # 5
        elif len(b.sampled_rows) == len(seqs):
            tokens = self._draw(processed, seqs, b.filters)  # 6, 7
        else:
            tokens = processed.argmax(dim=-1)  # 5
            rows = b.sampled_rows
            tokens[rows] = self._draw(processed[rows], [seqs[i] for i in rows.tolist()], b.filters)  # 6, 7
        token_ids = tokens.tolist()
        if greedy:
            redone = self.grammar_masks.redo_refused(processed, seqs, greedy, token_ids)
            if redone:
                tokens[list(redone)] = torch.tensor(list(redone.values()), device=tokens.device)
                for i, token in redone.items():
                    token_ids[i] = token
        return SamplerOutput(token_ids, self._logprobs(raw, tokens, seqs, b))

    def _draw(self, logits: torch.Tensor, seqs: list[Sequence], f: FilterParams) -> torch.Tensor:
        """logits [S, V] of the non-greedy rows, f their parameters -> [S] token ids."""
        filtered = apply_filters(logits, f)
        tokens = ops.inverse_cdf(filtered.softmax(dim=-1), self._uniforms(seqs))
        lost = tokens < 0  # e.g. a +inf logit_bias makes the softmax NaN: its argmax is meant
        if bool(lost.any()):
            tokens = torch.where(lost, filtered.argmax(dim=-1), tokens)
        return tokens

    def _uniforms(self, seqs: list[Sequence]) -> torch.Tensor:
        """[S] float64 in [0, 1): a seeded row's from its own generator, the others' from the shared one.

        NOTE: one number per row rather than noise over the vocabulary: an exponential race
        needs V logarithms per row, ~100 ms per step at 32 rows on one CPU core."""
        unseeded = [i for i, s in enumerate(seqs) if s.params.seed is None]
        shared = torch.rand(len(unseeded), dtype=torch.float64, device=self.device, generator=self.shared_generator)
        if len(unseeded) == len(seqs):
            return shared
        u = torch.empty(len(seqs), dtype=torch.float64, device=self.device)
        u[unseeded] = shared
        for i, seq in enumerate(seqs):
            if seq.params.seed is not None:
                u[i] = torch.rand(1, dtype=torch.float64, device=self.device, generator=self._generator(seq))[0]
        return u

    def _generator(self, seq: Sequence) -> torch.Generator:
        gen = self._generators.get(seq.seq_id)
        if gen is None:
            gen = torch.Generator(self.device).manual_seed(sequence_seed(seq.params.seed, seq.index))
            self._generators[seq.seq_id] = gen
        return gen

    def _logprobs(
        self, raw: torch.Tensor | None, tokens: torch.Tensor, seqs: list[Sequence], b: SamplingBatch
    ) -> list[TokenLogprob | None]:
        """raw: [L, V] log-softmax of the rows in b.logprob_rows (step 1, before any processing)."""
        out: list[TokenLogprob | None] = [None] * len(seqs)
        if raw is None:
            return out
        rows = b.logprob_rows.tolist()
        chosen = tokens[b.logprob_rows]
        chosen_lp = raw.gather(1, chosen[:, None])[:, 0].tolist()
        k = max(seqs[i].params.top_logprobs for i in rows)
        top_ids: list[list[int]] = []
        top_vals: list[list[float]] = []
        if k:
            top = raw.topk(k, dim=-1)  # best first
            top_ids, top_vals = top.indices.tolist(), top.values.tolist()
        for j, (i, token) in enumerate(zip(rows, chosen.tolist())):
            n = seqs[i].params.top_logprobs
            top = list(zip(top_ids[j][:n], top_vals[j][:n])) if n else []
            out[i] = TokenLogprob(token, chosen_lp[j], top)
        return out


def apply_penalties(logits: torch.Tensor, b: SamplingBatch, masks: StepMasks | None = None) -> torch.Tensor:
    """Steps 2-4 on a copy of logits [N, V]: bias, grammar masks, min_tokens bans, repetition,
    frequency/presence."""
    logits = logits.clone()  # the raw logits stay untouched for the caller
    num_rows, vocab = logits.shape
    if b.bias_rows is not None:
        ops.add_logit_bias(logits, b.bias_rows, b.bias_cols, b.bias_values)
    if masks is not None:
        masks.apply(logits)
    if b.ban_rows is not None:
        ops.ban_tokens(logits, b.ban_rows, b.ban_cols)
    if b.repetition_penalty is not None:
        seen = ops.token_mask(num_rows, vocab, b.seen_rows, b.seen_cols)
        logits = ops.repetition_penalty(logits, seen, b.repetition_penalty)
    if b.frequency_penalty is not None:
        counts = ops.token_counts(num_rows, vocab, b.generated_rows, b.generated_cols)
        logits = ops.frequency_presence_penalty(logits, counts, b.frequency_penalty, b.presence_penalty)
    return logits


def apply_filters(logits: torch.Tensor, f: FilterParams) -> torch.Tensor:
    """Step 6 on logits [S, V] of non-greedy rows: temperature, top_k, top_p, min_p, typical_p."""
    if f.temperature is not None:
        logits = ops.temperature(logits, f.temperature)
    if f.top_k is not None:
        logits = ops.top_k(logits, f.top_k, f.top_k_active)
    if f.top_p is not None:
        logits = ops.top_p(logits, f.top_p, f.top_p_active)
    if f.min_p is not None:
        logits = ops.min_p(logits, f.min_p, f.min_p_active)
    if f.typical_p is not None:
        logits = ops.typical_p(logits, f.typical_p, f.typical_p_active)
    return logits


def sequence_seed(seed: int, index: int) -> int:
    """The generator seed of completion `index` of a seeded request: the seed itself for the
    first, a fixed mix of (seed, index) for the others, so n > 1 completions differ."""
    return seed if index == 0 else hash((seed, index)) & (2**63 - 1)
