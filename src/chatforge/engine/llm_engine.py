"""The synchronous engine: requests of token ids in, per-step RequestOutputs out.

`step()` is the whole loop body: schedule -> run the model and sample -> postprocess. It is not
thread-safe; `AsyncEngine` drives it from one dedicated thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatforge.engine import prompt_logprobs
from chatforge.engine.batch import ScheduledBatch
from chatforge.engine.block_manager import BlockManager
from chatforge.engine.config import EngineConfig, MiB
from chatforge.engine.errors import DuplicateRequestError, InvalidRequestError, PromptTooLongError, StepFailedError
from chatforge.engine.grammar import grammar_error
from chatforge.engine.model_runner import ModelRunner
from chatforge.engine.outputs import CompletionOutput, FinishReason, RequestOutput
from chatforge.engine.sampler import Sampler, SamplerOutput
from chatforge.engine.sampling_params import SamplingParams
from chatforge.engine.scheduler import Scheduler
from chatforge.engine.sequence import Sequence
from chatforge.engine.stats import EngineStats
from chatforge.models.step import ModelBackend

if TYPE_CHECKING:
    from chatforge.models.source import ModelSource


@dataclass
class _Request:
    request_id: str
    seqs: list[Sequence]  # index i = completion i

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)


class LLMEngine:
    def __init__(
        self,
        backend: ModelBackend,
        config: EngineConfig | None = None,
        stop_token_ids: Iterable[int] | None = None,
        seed: int | None = None,
    ):
        """`backend`: the loaded model (models/backend.py, or `from_source`).
        `stop_token_ids`: EOS and end-of-turn ids (default: the model config's eos ids).
        `seed`: the shared generator of unseeded requests (default: random)."""
        self.config = config = config or EngineConfig()
        model_config = backend.config
        self.model_config = model_config
        self.vocab_size = model_config.vocab_size
        self.stop_token_ids = frozenset(model_config.eos_token_ids if stop_token_ids is None else stop_token_ids)
        num_blocks = config.num_kv_blocks or max(1, config.kv_cache_mb * MiB // backend.kv_block_bytes(config.block_size))
        # A sequence can never outgrow the pool, or it would preempt itself forever.
        self.max_model_len = min(
            config.max_model_len or model_config.max_position_embeddings, num_blocks * config.block_size
        )
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_waiting=config.max_waiting,
            max_model_len=self.max_model_len,
            stop_token_ids=self.stop_token_ids,
        )
        sampler = Sampler(self.vocab_size, self.stop_token_ids, backend.device, seed)
        self.runner = ModelRunner(backend, num_blocks, config.block_size, sampler)
        self._finished_seq_ids: list[int] = []  # for the runner to forget, with the next step
        # torch's threads on the engine thread (AsyncEngine sets them there): with the native
        # backend torch only samples, and its idle OpenMP team would spin against the kernels' pool.
        self.torch_threads = config.threads if backend.computes_in_torch else 1
        self._requests: dict[str, _Request] = {}
        self.num_aborts = 0
        self.num_prompt_tokens_total = 0
        self.num_generated_tokens_total = 0

    @classmethod
    def from_source(cls, source: ModelSource, config: EngineConfig | None = None, **kwargs) -> LLMEngine:
        """Load the model on the backend the config chooses; kwargs as for the constructor."""
        from chatforge.models.backend import load_backend

        config = config or EngineConfig()
        backend = load_backend(
            source, config.weights, config.device, config.dtype, config.threads, config.kernel_cache_dir, config.compiler
        )
        return cls(backend, config, **kwargs)

    # -- requests ----------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a request. Raises PromptTooLongError, EngineOverloadedError (queue full),
        DuplicateRequestError or InvalidRequestError; nothing is queued when it raises."""
        if request_id in self._requests:
            raise DuplicateRequestError(f"request {request_id!r} is already in flight")
        self._validate(prompt_ids, params)
        parent = Sequence(request_id, prompt_ids, params, index=0)
        forks = parent.attach_forks()
        self.scheduler.add(parent)
        self._requests[request_id] = _Request(request_id, [parent, *forks])
        self.num_prompt_tokens_total += len(prompt_ids)

    def _validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise InvalidRequestError("the prompt has no tokens")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise InvalidRequestError(f"prompt token ids must be in [0, {self.vocab_size})")
        for name, ids in (("logit_bias", params.logit_bias), ("stop_token_ids", params.stop_token_ids)):
            if any(not 0 <= t < self.vocab_size for t in ids):
                raise InvalidRequestError(f"{name} token ids must be in [0, {self.vocab_size})")
        if params.grammar is not None and params.grammar.vocab_size != self.vocab_size:
            raise InvalidRequestError(f"the grammar masks {params.grammar.vocab_size} tokens; the model has {self.vocab_size}")
        if params.n > self.config.max_num_seqs:
            raise InvalidRequestError(f"n={params.n} exceeds max_num_seqs={self.config.max_num_seqs}")
        must_generate = max(1, params.min_tokens)
        if len(prompt_ids) + must_generate > self.max_model_len:
            raise PromptTooLongError(
                f"{len(prompt_ids)} prompt tokens + {must_generate} to generate exceed the context "
                f"of {self.max_model_len} tokens",
                prompt_tokens=len(prompt_ids),
                max_prompt_tokens=self.max_model_len - must_generate,
            )

    def abort(self, request_id: str) -> RequestOutput | None:
        """End a request now (client gone, shutdown); counts as an abort.

        Returns its last output (every unfinished completion with reason ABORT), or None when
        the request is unknown or already finished."""
        out = self._end(request_id, FinishReason.ABORT)
        if out is not None:
            self.num_aborts += 1
        return out

    def finish(self, request_id: str, reason: FinishReason = FinishReason.STOP_SEQUENCE) -> RequestOutput | None:
        """End a request now without counting an abort (the text layer found a stop string)."""
        return self._end(request_id, reason)

    def _end(self, request_id: str, reason: FinishReason) -> RequestOutput | None:
        request = self._requests.pop(request_id, None)
        if request is None:
            return None
        ending = [s for s in request.seqs if not s.is_finished]
        self.scheduler.finish_seqs(request.seqs, reason)
        for seq in request.seqs:
            self._finished_seq_ids.append(seq.seq_id)
        parent = request.seqs[0]
        completions = [
            CompletionOutput(s.index, [], None if not s.params.logprobs else [], s.num_generated, reason)
            for s in ending
        ]
        return RequestOutput(request_id, parent.num_prompt_tokens, parent.num_cached_tokens, completions, True)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    # -- the loop ----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One step. When the model or the sampler raises, every request in the step is ended
        (blocks freed, nothing registered in the prefix cache: that happens only after a step
        succeeds) and StepFailedError names them; the engine stays usable for the others."""
        batch = self.scheduler.schedule()
        batch.finished_seq_ids, self._finished_seq_ids = self._finished_seq_ids, []
        if batch.is_empty:
            self.runner.release(batch.finished_seq_ids)
            return self._postprocess(batch, SamplerOutput([], []))
        try:
            sampled = self.runner.execute(batch)
        except Exception as e:
            failed = list(dict.fromkeys(s.request_id for s in [*batch.seqs, *batch.sample_seqs]))
            for request_id in failed:
                self._end(request_id, FinishReason.ABORT)
            raise StepFailedError(f"a model step failed: {type(e).__name__}: {e}", request_ids=failed) from e
        return self._postprocess(batch, sampled)

    def _postprocess(self, batch: ScheduledBatch, sampled: SamplerOutput) -> list[RequestOutput]:
        prompt_logprobs.record(sampled.prompt_scores)
        self.scheduler.update(batch, sampled.token_ids)
        outputs: dict[str, RequestOutput] = {}
        for seq, token_id, logprob in zip(batch.sample_seqs, sampled.token_ids, sampled.logprobs):
            request = self._requests[seq.request_id]
            out = outputs.get(seq.request_id)
            if out is None:
                parent = request.seqs[0]
                out = outputs[seq.request_id] = RequestOutput(
                    seq.request_id, parent.num_prompt_tokens, parent.num_cached_tokens, [], False
                )
                if parent.params.prompt_logprobs is not None and not parent.prompt_logprobs_sent:
                    out.prompt_logprobs = [None, *parent.prompt_logprobs]  # nothing precedes token 0
                    parent.prompt_logprobs_sent = True
            ends_with_stop = seq.stop_token_id is not None  # the stop id is not part of the text
            out.outputs.append(
                CompletionOutput(
                    index=seq.index,
                    new_token_ids=[] if ends_with_stop else [token_id],
                    new_logprobs=None if logprob is None else ([] if ends_with_stop else [logprob]),
                    num_generated=seq.num_generated,
                    finish_reason=seq.finish_reason,
                    stop_token_id=seq.stop_token_id,
                    error=grammar_error(seq),
                )
            )
            if seq.is_finished:
                self._finished_seq_ids.append(seq.seq_id)
        self.num_generated_tokens_total += len(sampled.token_ids)
        for request_id, out in outputs.items():
            if self._requests[request_id].finished:
                out.finished = True
                del self._requests[request_id]
            out.outputs.sort(key=lambda c: c.index)
        return list(outputs.values())

    def stats(self) -> EngineStats:
        bm, s = self.block_manager, self.scheduler
        return EngineStats(
            running=s.num_running_seqs,
            waiting=s.num_waiting_seqs,
            kv_usage=bm.usage,
            num_blocks_total=bm.num_blocks,
            num_blocks_used=bm.num_used_blocks,
            prefix_cache_hit_tokens=s.num_prefix_cache_hit_tokens,
            prefix_cache_queried_tokens=s.num_prefix_cache_queried_tokens,
            preemptions=s.num_preemptions,
            aborts=self.num_aborts,
            prompt_tokens_total=self.num_prompt_tokens_total,
            generated_tokens_total=self.num_generated_tokens_total,
        )
