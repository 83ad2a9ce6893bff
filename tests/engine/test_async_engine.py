"""AsyncEngine on the bundled model: the loop on its own thread, streams per request, aborts
when the consumer goes away, finish without abort, typed errors, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from chatforge.engine.async_engine import AsyncEngine
from chatforge.engine.errors import EngineDeadError, PromptTooLongError, StepFailedError
from chatforge.engine.outputs import FinishReason
from chatforge.engine.sampling_params import SamplingParams

LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)


@pytest.fixture
def async_engine(make_engine):
    engine = AsyncEngine(make_engine())
    yield engine
    engine.shutdown()


async def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def collect(engine: AsyncEngine, request_id: str, prompt, params):
    tokens, outputs = [], []
    async for out in engine.generate(request_id, prompt, params):
        outputs.append(out)
        tokens.extend(out.outputs[0].new_token_ids if out.outputs else [])
    return tokens, outputs


async def test_concurrent_requests_stream_their_tokens_from_one_engine_thread(async_engine, prompts, greedy_together, greedy_params):
    threads = set()
    step = async_engine.engine.step

    def recording_step():
        threads.add(threading.get_ident())
        return step()

    async_engine.engine.step = recording_step
    async_engine.start()
    results = await asyncio.gather(*(collect(async_engine, str(i), prompts[i], greedy_params) for i in range(4)))
    for i, (tokens, outputs) in enumerate(results):
        assert tokens == greedy_together[str(i)]
        assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason is FinishReason.LENGTH
        assert not any(o.finished for o in outputs[:-1])
    assert threads == {async_engine.thread.ident} != {threading.get_ident()}
    stats = async_engine.stats()
    assert (stats.running, stats.kv_usage, stats.generated_tokens_total) == (0, 0.0, 4 * len(greedy_together["0"]))


async def test_a_consumer_that_stops_iterating_aborts_its_request(async_engine, prompts):
    async_engine.start()
    stream = async_engine.generate("gone", prompts[0], LONG)
    async with contextlib.aclosing(stream):
        async for out in stream:
            if out.outputs[0].num_generated >= 2:
                break
    await wait_until(lambda: async_engine.stats().aborts == 1)
    stats = async_engine.stats()
    assert (stats.running, stats.num_blocks_used, stats.kv_usage) == (0, 0, 0.0)


async def test_a_cancelled_task_aborts_its_request(async_engine, prompts):
    async_engine.start()
    first = asyncio.Event()

    async def consume():
        async for _ in async_engine.generate("cancelled", prompts[1], LONG):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: async_engine.stats().aborts == 1)
    assert async_engine.stats().num_blocks_used == 0


async def test_abort_and_finish_end_the_stream_with_their_reason(async_engine, prompts):
    async_engine.start()

    async def consume(request_id: str, end):
        reasons = []
        async for out in async_engine.generate(request_id, prompts[2], LONG):
            if out.outputs[0].num_generated == 2 and out.outputs[0].finish_reason is None:
                end(request_id)
            reasons.append(out.outputs[0].finish_reason)
        return reasons

    aborted, finished = await asyncio.gather(
        consume("a", lambda rid: async_engine.finish(rid, FinishReason.ABORT)),
        consume("f", lambda rid: async_engine.finish(rid, FinishReason.STOP_SEQUENCE)),
    )
    assert aborted[-1] is FinishReason.ABORT and finished[-1] is FinishReason.STOP_SEQUENCE
    await wait_until(lambda: async_engine.stats().running == 0)
    assert (async_engine.stats().aborts, async_engine.stats().num_blocks_used) == (1, 0)


async def test_admission_errors_reach_the_consumer(async_engine):
    async_engine.start()
    with pytest.raises(PromptTooLongError):
        await collect(async_engine, "long", [1] * 5000, SamplingParams())
    assert async_engine.is_running  # the loop survives a refused request


async def test_shutdown_aborts_in_flight_requests_and_refuses_new_ones(async_engine, prompts):
    async_engine.start()
    stream = async_engine.generate("inflight", prompts[0], LONG)
    first = await anext(stream)
    assert first.outputs[0].num_generated == 1
    await asyncio.to_thread(async_engine.shutdown)
    rest = [out async for out in stream]
    assert rest[-1].finished and rest[-1].outputs[0].finish_reason is FinishReason.ABORT
    assert not async_engine.is_running and not async_engine.thread.is_alive()
    assert async_engine.stats().num_blocks_used == 0
    with pytest.raises(EngineDeadError):
        await collect(async_engine, "late", prompts[0], SamplingParams())


class FailingSteps:
    """Wraps a runner's `execute` so that the next `times` steps raise, as a bug in the model
    or sampler would; later steps run normally."""

    def __init__(self, runner, times: int):
        self.runner, self.left, self.execute = runner, times, runner.execute

    def __call__(self, batch):
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("injected step failure")
        return self.execute(batch)


async def test_a_failing_step_ends_its_requests_and_the_engine_goes_on(async_engine, prompts):
    runner = async_engine.engine.runner
    async_engine.start()
    first = async_engine.generate("inflight", prompts[0], LONG)
    assert (await anext(first)).outputs[0].num_generated == 1
    runner.execute = FailingSteps(runner, times=1)  # the engine thread calls it on its next step
    try:
        with pytest.raises(StepFailedError) as failed:
            async for _ in first:
                pass
        assert failed.value.request_ids == ["inflight"]
        assert async_engine.is_running
        assert async_engine.stats().num_blocks_used == 0  # its KV blocks went back to the pool
        tokens, outputs = await collect(async_engine, "after", prompts[1], SamplingParams(temperature=0, max_tokens=5))
        assert len(tokens) == 5 and outputs[-1].finished
    finally:
        del runner.execute  # back to the class's method


# The loop's thread ends by raising the last failure (so the thread's excepthook logs it).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_steps_that_keep_failing_stop_the_engine(async_engine, prompts):
    runner = async_engine.engine.runner
    runner.execute = FailingSteps(runner, times=100)
    async_engine.start()
    for i in range(3):  # each request's step fails; the third failure in a row stops the loop
        with pytest.raises((StepFailedError, EngineDeadError)):
            await collect(async_engine, f"r{i}", prompts[i], SamplingParams(max_tokens=3))
    await wait_until(lambda: not async_engine.is_running)
    with pytest.raises(EngineDeadError):
        await collect(async_engine, "late", prompts[0], SamplingParams())
