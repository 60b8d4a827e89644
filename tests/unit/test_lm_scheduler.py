"""The CPU engine's decoding loop (gateway/embedded/lm/scheduler.py) on a fake CausalLM.

The fake model's logits depend on the last token alone: greedy decoding after token t gives t + 1
(mod the vocabulary), so every expected output is known without a real model.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.embedded.lm.grammar import GrammarError
from gateway.embedded.lm.jobs import Chunk, End, Job, Reason
from gateway.embedded.lm.sampling import Sampled, SamplingSpec
from gateway.embedded.lm.scheduler import Scheduler

VOCAB = 16
GREEDY = SamplingSpec(temperature=0.0)
TOKENIZER = Path(__file__).resolve().parents[2] / "model_repository" / "smollm2" / "weights" / "tokenizer.json"
TIMEOUT = 10.0


def fake_logits(last: int, vocab: int = VOCAB) -> NDArray[np.float32]:
    """Peaked at last + 1, falling off with the distance (so every token has a finite logprob)."""
    distance = np.abs(np.arange(vocab) - (last + 1) % vocab)
    return (-0.5 * distance).astype(np.float32)


class FakeLM:
    """A CausalLM stand-in: slots, a call log, an optional delay per call, failures on demand."""

    def __init__(
        self, vocab: int = VOCAB, max_sequences: int = 8, context_length: int = 64, delay: float = 0.0
    ) -> None:
        self.vocab_size = vocab
        self.context_length = context_length
        self.delay = delay
        self.free = list(range(max_sequences))
        self.cache: dict[int, list[int]] = {}
        self.calls: list[tuple[str, tuple[int, ...], int]] = []  # (kind, slots, tokens)
        self.fail_prefill_on: int | None = None  # a prompt's first id that makes prefill raise
        self.lock = threading.Lock()

    def open(self) -> int:
        if not self.free:
            raise RuntimeError("no free KV-cache slot")
        slot = self.free.pop(0)
        self.cache[slot] = []
        return slot

    def close(self, slot: int) -> None:
        del self.cache[slot]
        self.free.append(slot)

    def prefill(self, slot: int, ids: Sequence[int]) -> NDArray[np.float32]:
        self._call("prefill", (slot,), len(ids))
        if self.fail_prefill_on is not None and not self.cache[slot] and ids[0] == self.fail_prefill_on:
            raise RuntimeError("prefill blew up")
        self.cache[slot].extend(ids)
        assert len(self.cache[slot]) <= self.context_length
        return fake_logits(ids[-1], self.vocab_size)

    def decode(self, slots: Sequence[int], ids: Sequence[int]) -> NDArray[np.float32]:
        self._call("decode", tuple(slots), len(ids))
        assert len(slots) == len(ids) == len(set(slots))
        for slot, token in zip(slots, ids, strict=True):
            self.cache[slot].append(token)
            assert len(self.cache[slot]) <= self.context_length
        return np.stack([fake_logits(t, self.vocab_size) for t in ids])

    def _call(self, kind: str, slots: tuple[int, ...], n: int) -> None:
        with self.lock:
            self.calls.append((kind, slots, n))
        if self.delay:
            time.sleep(self.delay)


class Recorder:
    """A Sink that keeps everything it is given."""

    def __init__(self, name: str = "", timeline: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.timeline = timeline if timeline is not None else []
        self.chunks: list[Chunk] = []
        self.end: End | None = None
        self.done = threading.Event()
        self.cancel = False
        self.fail_emit_after: int | None = None

    def emit(self, chunk: Chunk) -> None:
        if self.fail_emit_after is not None and len(self.tokens) >= self.fail_emit_after:
            raise ConnectionError("client went away")
        self.chunks.append(chunk)
        self.timeline.append((self.name, "token"))

    def finish(self, end: End) -> None:
        assert self.end is None, "finished twice"
        self.end = end
        self.timeline.append((self.name, "end"))
        self.done.set()

    def cancelled(self) -> bool:
        return self.cancel

    @property
    def tokens(self) -> list[int]:
        return [t for c in self.chunks for t in c.tokens]

    def wait(self) -> End:
        assert self.done.wait(TIMEOUT), f"{self.name} did not finish"
        assert self.end is not None
        return self.end

    def wait_tokens(self, n: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while len(self.tokens) < n:
            assert time.monotonic() < deadline and not self.done.is_set(), f"{self.name}: {len(self.tokens)} tokens"
            time.sleep(0.001)


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
def make(lines: Lines) -> Iterator[Any]:
    made: list[Scheduler] = []

    def factory(lm: FakeLM | None = None, **kwargs: Any) -> tuple[Scheduler, FakeLM]:
        lm = lm or FakeLM()
        kwargs.setdefault("cancel_check_s", 0.0)
        sched = Scheduler(lm, kwargs.pop("compiler", None), log_line=lines, **kwargs)
        made.append(sched)
        return sched, lm

    yield factory
    for sched in made:
        sched.close()
        assert not sched.alive


def job(rid: str, sink: Recorder, prompt: Sequence[int] = (3,), max_new: int = 5, **kwargs: Any) -> Job:
    kwargs.setdefault("sampling", GREEDY)
    return Job(rid, list(prompt), max_new, sink, **kwargs)


def expected(start: int, n: int) -> list[int]:
    return [(start + 1 + i) % VOCAB for i in range(n)]


def test_streaming_and_not_give_the_same_tokens(make: Any) -> None:
    sched, _ = make()
    streamed, whole = Recorder("s"), Recorder("w")
    sched.submit(job("s", streamed, max_new=6))
    sched.submit(job("w", whole, max_new=6, streaming=False))
    assert streamed.wait() == End(Reason.LENGTH, 6) == whole.wait()
    assert [c.tokens for c in streamed.chunks] == [[t] for t in expected(3, 6)]
    assert [c.tokens for c in whole.chunks] == [expected(3, 6)]
    assert all(
        c.logprobs is None and c.cum_logprob is None and c.logits is None for c in streamed.chunks + whole.chunks
    )


def test_max_tokens(make: Any) -> None:
    sched, lm = make()
    for n in (1, 2, 9):
        sink = Recorder()
        sched.submit(job("r", sink, max_new=n))
        assert sink.wait() == End(Reason.LENGTH, n)
        assert sink.tokens == expected(3, n)
    # the last token is never decoded: n tokens cost one prefill and n - 1 decode steps
    assert sum(1 for kind, *_ in lm.calls if kind == "decode") == 0 + 1 + 8
    assert lm.cache == {} and sorted(lm.free) == list(range(8))  # every slot given back


def test_max_tokens_are_cut_to_the_context(make: Any) -> None:
    sched, _ = make(FakeLM(context_length=10))
    sink = Recorder()
    sched.submit(job("r", sink, prompt=[1, 2, 3, 4], max_new=100))
    assert sink.wait() == End(Reason.LENGTH, 6)
    with pytest.raises(ValueError, match="does not fit the context of 10"):
        sched.submit(job("r", Recorder(), prompt=[1] * 10))


@pytest.mark.parametrize(
    ("prompt", "max_new", "message"),
    [([], 5, "empty"), ([3, 99], 5, r"in \[0, 16\)"), ([-1], 5, "in"), ([3], 0, "at least 1")],
)
def test_bad_jobs_are_refused_at_submit(make: Any, prompt: list[int], max_new: int, message: str) -> None:
    sched, _ = make()
    with pytest.raises(ValueError, match=message):
        sched.submit(job("r", Recorder(), prompt=prompt, max_new=max_new))


def test_end_id_ends_without_being_emitted(make: Any) -> None:
    sched, _ = make()
    for streaming in (True, False):
        sink = Recorder()
        sched.submit(
            job("r", sink, max_new=10, streaming=streaming, sampling=SamplingSpec(temperature=0, end_ids=(6,)))
        )
        assert sink.wait() == End(Reason.END, 2)
        assert sink.tokens == [4, 5]
    first = Recorder()  # the end id first: nothing at all when streaming
    sched.submit(job("r", first, max_new=10, sampling=SamplingSpec(temperature=0, end_ids=(4,))))
    assert first.wait() == End(Reason.END, 0) and first.chunks == []


def test_min_tokens_hold_the_end_id_back(make: Any) -> None:
    sched, _ = make()
    sink = Recorder()
    sampling = SamplingSpec(temperature=0, end_ids=(4,), min_tokens=2)
    sched.submit(job("r", sink, max_new=10, sampling=sampling))
    # 4 is forbidden twice: the next best (3, the first of the tie 3 / 5) comes instead, then 4 ends it
    assert sink.wait() == End(Reason.END, 2)
    assert sink.tokens == [3, 3]


def test_stop_words_are_emitted_then_end(make: Any) -> None:
    sched, _ = make()
    for streaming in (True, False):
        sink = Recorder()
        stops = ((9, 9), (5, 6), (12,))
        sched.submit(job("r", sink, max_new=10, streaming=streaming, stop_words=stops))
        assert sink.wait() == End(Reason.STOP_WORDS, 3)
        assert sink.tokens == [4, 5, 6]
    sink = Recorder()  # a sequence that never completes: no stop
    sched.submit(job("r", sink, max_new=4, stop_words=((4, 6),)))
    assert sink.wait() == End(Reason.LENGTH, 4)


def test_sequences_interleave(make: Any) -> None:
    timeline: list[tuple[str, str]] = []
    sched, lm = make(FakeLM(delay=0.002))
    long, short = Recorder("long", timeline), Recorder("short", timeline)
    sched.submit(job("long", long, max_new=40))
    long.wait_tokens(3)
    sched.submit(job("short", short, prompt=[8], max_new=3))
    assert short.wait() == End(Reason.LENGTH, 3)
    assert long.wait() == End(Reason.LENGTH, 40)
    # the short one started and ended while the long one ran, and both decoded in the same batch
    assert timeline.index(("short", "end")) < timeline.index(("long", "end"))
    assert timeline.index(("short", "token")) > 3 and timeline[-1] == ("long", "end")
    assert any(kind == "decode" and len(slots) == 2 for kind, slots, _ in lm.calls)
    assert long.tokens == expected(3, 40) and short.tokens == expected(8, 3)


def test_at_most_max_sequences_run_the_rest_wait(make: Any) -> None:
    sched, lm = make(max_sequences=2)
    sinks = [Recorder(str(i)) for i in range(5)]
    for i, sink in enumerate(sinks):
        sched.submit(job(str(i), sink, prompt=[i], max_new=4))
    for i, sink in enumerate(sinks):
        assert sink.wait() == End(Reason.LENGTH, 4)
        assert sink.tokens == expected(i, 4)
    assert max(len(slots) for kind, slots, _ in lm.calls if kind == "decode") == 2
    assert sorted(lm.free) == list(range(8))


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(make: Any) -> None:
    sched, lm = make(FakeLM(delay=0.001, context_length=256), prefill_chunk=8)
    running, late = Recorder("running"), Recorder("late")
    sched.submit(job("running", running, max_new=60))
    running.wait_tokens(2)
    start = len(lm.calls)
    sched.submit(job("late", late, prompt=list(range(1, 16)) * 3, max_new=2))  # 45 tokens: 6 chunks
    assert late.wait() == End(Reason.LENGTH, 2)
    assert late.tokens == expected(15, 2)
    running.wait()
    prefills = [i for i, (kind, _, _) in enumerate(lm.calls) if kind == "prefill" and i >= start]
    assert [lm.calls[i][2] for i in prefills] == [8, 8, 8, 8, 8, 5]
    # never two prefills in a row while a stream runs: a decode step between each chunk
    assert all(lm.calls[i + 1][0] == "decode" for i in prefills)


def test_short_prompts_share_a_step(make: Any) -> None:
    sched, lm = make(FakeLM(delay=0.001), prefill_chunk=64)
    blocker = Recorder()
    sched.submit(job("b", blocker, max_new=30))
    blocker.wait_tokens(1)
    sinks = [Recorder(str(i)) for i in range(4)]
    with sched._cond:  # the loop sees all four at once (the condition's lock is re-entrant)
        for i, sink in enumerate(sinks):
            sched.submit(job(str(i), sink, prompt=[i, i], max_new=2))
    for i, sink in enumerate(sinks):
        assert sink.wait() == End(Reason.LENGTH, 2) and sink.tokens == expected(i, 2)
    blocker.wait()
    kinds = "".join(kind[0] for kind, *_ in lm.calls)  # p(refill) and d(ecode)
    assert "dppppd" in kinds  # one step's budget covers the four prompts


def test_stop_request_ends_the_sequence(make: Any, lines: Lines) -> None:
    sched, lm = make(FakeLM(delay=0.002))
    sink, other = Recorder("a"), Recorder("b")
    sched.submit(job("req-1", sink, max_new=1000, streaming=False))
    sched.submit(job("req-2", other, max_new=20))
    deadline = time.monotonic() + TIMEOUT
    while sum(kind == "decode" for kind, *_ in lm.calls) < 3:  # not streaming: a token or two made, unseen
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert sched.stop("req-1")
    end = sink.wait()
    assert end.reason is Reason.STOPPED and 0 < end.tokens < 1000
    assert sink.chunks == []  # not streaming: a stopped request sends nothing but its end
    assert lines.lines == [f"request 'req-1' cancelled after {end.tokens} tokens (stop request)"]
    assert other.wait() == End(Reason.LENGTH, 20)  # the other one goes on
    assert not sched.stop("req-1") and not sched.stop("nobody")
    assert sorted(lm.free) == list(range(8))


def test_stop_request_for_a_waiting_sequence(make: Any, lines: Lines) -> None:
    sched, _ = make(FakeLM(delay=0.002), max_sequences=1)
    first, second = Recorder(), Recorder()
    sched.submit(job("first", first, max_new=30))
    first.wait_tokens(1)
    sched.submit(job("second", second, max_new=30))
    assert sched.stop("second")
    assert second.wait() == End(Reason.STOPPED, 0)
    assert first.wait() == End(Reason.LENGTH, 30)
    assert lines.lines == ["request 'second' cancelled after 0 tokens (stop request)"]


def test_cancelled_call_ends_the_sequence(make: Any, lines: Lines) -> None:
    sched, _ = make(FakeLM(delay=0.002), cancel_check_s=0.005)
    sink = Recorder()
    sched.submit(job("c", sink, max_new=1000))
    sink.wait_tokens(3)
    sink.cancel = True
    end = sink.wait()
    assert end.reason is Reason.CANCELLED and 3 <= end.tokens == len(sink.tokens) < 1000
    assert lines.lines == [f"request 'c' cancelled after {end.tokens} tokens (call cancelled)"]


def test_cancelled_after_the_last_token_is_reported(make: Any, lines: Lines) -> None:
    sched, _ = make()

    class LateCancel(Recorder):
        def emit(self, chunk: Chunk) -> None:
            super().emit(chunk)
            self.cancel = len(self.tokens) == 2  # cancelled as the last token goes out

    sink = LateCancel()
    sched.submit(job("late", sink, max_new=2))
    assert sink.wait() == End(Reason.CANCELLED, 2)
    assert lines.lines == ["request 'late' cancelled after 2 tokens (call cancelled)"]


def test_sequences_that_end_by_themselves_log_nothing(make: Any, lines: Lines) -> None:
    sched, _ = make()
    sinks = [Recorder() for _ in range(3)]
    sched.submit(job("a", sinks[0], max_new=3))
    sched.submit(job("b", sinks[1], max_new=9, sampling=SamplingSpec(temperature=0, end_ids=(5,))))
    sched.submit(job("c", sinks[2], max_new=9, stop_words=((5,),)))
    for sink in sinks:
        sink.wait()
    assert lines.lines == []


class FakeMatcher:
    """A grammar that accepts exactly `allowed` (token ids), then is done."""

    def __init__(self, allowed: list[int]) -> None:
        self.allowed = allowed
        self.pos = 0

    def mask(self, logits: NDArray[np.float32]) -> None:
        keep = logits[self.allowed[self.pos]] if self.pos < len(self.allowed) else None
        logits[:] = -np.inf
        if keep is not None:
            logits[self.allowed[self.pos]] = keep

    def consume(self, token: int) -> None:
        if self.pos >= len(self.allowed) or token != self.allowed[self.pos]:
            raise GrammarError(f"token {token} rejected by the grammar")
        self.pos += 1

    @property
    def done(self) -> bool:
        return self.pos >= len(self.allowed)


class FakeCompiler:
    def matcher(self, guide_type: str, guide: str) -> FakeMatcher:
        if guide_type != "regex":
            raise GrammarError(f"unknown guided decoding guide type {guide_type!r}")
        if not guide.isdigit() and guide != "":
            raise GrammarError(f"invalid regex guide: {guide!r}")
        return FakeMatcher([int(c) for c in guide])


def test_a_complete_grammar_ends_the_sequence(make: Any) -> None:
    sched, _ = make(compiler=FakeCompiler())
    for streaming in (True, False):
        sink = Recorder()
        sched.submit(job("g", sink, max_new=10, streaming=streaming, guide=("regex", "971")))
        assert sink.wait() == End(Reason.END, 3)
        assert sink.tokens == [9, 7, 1]
    empty = Recorder()  # a grammar complete before any token
    sched.submit(job("g", empty, max_new=10, guide=("regex", "")))
    assert empty.wait() == End(Reason.END, 0)


def test_a_bad_guide_is_refused_and_others_run_on(make: Any) -> None:
    sched, _ = make(FakeLM(delay=0.001), compiler=FakeCompiler())
    running = Recorder()
    sched.submit(job("ok", running, max_new=20))
    with pytest.raises(GrammarError, match="unknown guided decoding guide type 'yaml'"):
        sched.submit(job("bad", Recorder(), guide=("yaml", "x")))
    with pytest.raises(GrammarError, match="invalid regex guide"):
        sched.submit(job("bad", Recorder(), guide=("regex", "[")))
    assert running.wait() == End(Reason.LENGTH, 20)
    no_compiler, _ = make()
    with pytest.raises(ValueError, match="guided decoding is not available"):
        no_compiler.submit(job("bad", Recorder(), guide=("regex", "1")))


@pytest.mark.skipif(not TOKENIZER.is_file(), reason="needs the prepared tokenizer (make model)")
def test_a_real_grammar_ends_the_sequence(make: Any) -> None:
    from tokenizers import Tokenizer

    from gateway.embedded.lm.grammar import GrammarCompiler

    vocab = 49152
    sched, _ = make(FakeLM(vocab=vocab, context_length=128), compiler=GrammarCompiler(TOKENIZER, [2]))
    sink = Recorder()
    sampling = SamplingSpec(temperature=0, end_ids=(2,))
    sched.submit(job("g", sink, prompt=[1, 2, 3], max_new=50, sampling=sampling, guide=("regex", "(yes|no)")))
    end = sink.wait()
    assert end.reason is Reason.END and 0 < end.tokens < 50
    assert Tokenizer.from_file(str(TOKENIZER)).decode(sink.tokens) in ("yes", "no")


def test_one_failing_sequence_leaves_the_others_running(make: Any) -> None:
    lm = FakeLM(delay=0.001)
    lm.fail_prefill_on = 13
    sched, _ = make(lm)
    running = Recorder()
    sched.submit(job("ok", running, max_new=30))
    running.wait_tokens(1)
    # a sampling error mid-stream: every token forbidden by the bias
    masked, prefill, emit = Recorder(), Recorder(), Recorder()
    bias = np.full(VOCAB, -np.inf, dtype=np.float32)
    sched.submit(job("masked", masked, sampling=SamplingSpec(temperature=0, embedding_bias=bias)))
    sched.submit(job("prefill", prefill, prompt=[13, 1]))  # the model raises on this prompt
    emit.fail_emit_after = 2  # the sink raises on its third token
    sched.submit(job("emit", emit, max_new=10))
    end = masked.wait()
    assert end.reason is Reason.ERROR and end.error is not None and "every token is masked" in end.error
    assert prefill.wait() == End(Reason.ERROR, 0, "prefill blew up")
    assert emit.wait() == End(Reason.ERROR, 3, "client went away") and emit.tokens == expected(3, 2)
    assert running.wait() == End(Reason.LENGTH, 30) and running.tokens == expected(3, 30)
    assert sched.alive and sorted(lm.free) == list(range(8))


def test_a_failing_decode_fails_its_batch_only(make: Any) -> None:
    class Flaky(FakeLM):
        broken = True

        def decode(self, slots: Sequence[int], ids: Sequence[int]) -> NDArray[np.float32]:
            if self.broken:
                self.broken = False
                raise MemoryError("out of memory")
            return super().decode(slots, ids)

    sched, lm = make(Flaky())
    first, later = Recorder(), Recorder()
    sched.submit(job("first", first))
    assert first.wait() == End(Reason.ERROR, 1, "out of memory")
    sched.submit(job("later", later))
    assert later.wait() == End(Reason.LENGTH, 5)
    assert sorted(lm.free) == list(range(8))


def test_logprobs_and_logits(make: Any) -> None:
    sched, _ = make()
    streamed, whole = Recorder(), Recorder()
    want = {"want_logprobs": True, "want_logits": True}
    sched.submit(job("s", streamed, max_new=5, **want))
    sched.submit(job("w", whole, max_new=5, streaming=False, **want))
    streamed.wait(), whole.wait()
    logprobs = [lp for c in streamed.chunks for lp in c.logprobs or []]
    # each token's logprob is the log-softmax of the (unprocessed here) logits after the previous token
    previous = [3, *expected(3, 4)]
    for lp, prev, token in zip(logprobs, previous, expected(3, 5), strict=True):
        row = fake_logits(prev).astype(np.float64)
        assert lp == pytest.approx(row[token] - np.log(np.exp(row).sum()), abs=1e-5)
    # the running total is the sum so far; the whole answer carries the same values
    assert [c.cum_logprob for c in streamed.chunks] == pytest.approx(list(np.cumsum(logprobs)))
    (chunk,) = whole.chunks
    assert chunk.logprobs == pytest.approx(logprobs)
    assert chunk.cum_logprob == pytest.approx(sum(logprobs))
    assert chunk.logits is not None and chunk.logits.shape == (5, VOCAB)
    assert [int(np.argmax(row)) for row in chunk.logits] == chunk.tokens
    for c in streamed.chunks:
        assert c.logits is not None and c.logits.shape == (1, VOCAB)
    np.testing.assert_array_equal(
        np.concatenate([c.logits for c in streamed.chunks if c.logits is not None]), chunk.logits
    )


def test_seeded_sampling_reproduces(make: Any) -> None:
    sched, _ = make()
    runs = []
    for _ in range(2):
        sink = Recorder()
        sched.submit(job("s", sink, max_new=12, sampling=SamplingSpec(temperature=1.5, seed=42), want_logprobs=True))
        sink.wait()
        runs.append(sink.tokens)
    assert runs[0] == runs[1]
    assert runs[0] != expected(3, 12)  # a flat enough distribution at this temperature not to be greedy


def test_the_loop_idles_without_spinning_and_closes(make: Any) -> None:
    sched, lm = make()
    sink = Recorder()
    sched.submit(job("r", sink, max_new=3))
    sink.wait()
    steps, calls, cpu = sched.steps, len(lm.calls), time.process_time()
    time.sleep(0.3)
    assert (sched.steps, len(lm.calls)) == (steps, calls)
    assert time.process_time() - cpu < 0.05  # blocked on its condition, not polling
    # a wake-up with work runs at once
    sink = Recorder()
    started = time.monotonic()
    sched.submit(job("r", sink, max_new=3))
    sink.wait()
    assert time.monotonic() - started < 1.0
    sched.close()
    assert not sched.alive
    with pytest.raises(RuntimeError, match="closed"):
        sched.submit(job("r", Recorder()))


def test_close_ends_what_is_still_running(make: Any) -> None:
    sched, lm = make(FakeLM(delay=0.002), max_sequences=1)
    running, waiting = Recorder(), Recorder()
    sched.submit(job("a", running, max_new=10_000))
    sched.submit(job("b", waiting, max_new=10))
    running.wait_tokens(1)
    sched.close()
    assert not sched.alive
    assert running.wait().reason is Reason.ERROR
    assert waiting.wait() == End(Reason.ERROR, 0, "the model is shutting down")
    assert sorted(lm.free) == list(range(8))


def test_a_custom_sampler_factory(make: Any) -> None:
    """The sampler is injectable (the overhead benchmark uses a trivial one)."""

    class Constant:
        must_end = False

        def sample(self, logits: NDArray[np.float32]) -> Sampled:
            return Sampled(7, -1.0, None)

    sched, _ = make(sampler=lambda *args: Constant())
    sink = Recorder()
    sched.submit(job("r", sink, max_new=3, want_logprobs=True))
    assert sink.wait() == End(Reason.LENGTH, 3)
    assert sink.tokens == [7, 7, 7] and [c.cum_logprob for c in sink.chunks] == [-1.0, -2.0, -3.0]


def test_the_log_line_is_the_one_the_e2e_tests_read(lines: Lines, make: Any) -> None:
    sched, _ = make(FakeLM(delay=0.002))
    sink = Recorder()
    sched.submit(job("chatcmpl-x-0", sink, max_new=500))
    sink.wait_tokens(1)
    sched.stop("chatcmpl-x-0")
    sink.wait()
    assert re.fullmatch(r"request 'chatcmpl-x-0' cancelled after \d+ tokens \(stop request\)", lines.lines[0])


# The Triton adapter (model_repository/smollm2/1/model.py) over a stand-in triton_python_backend_utils,
# the fake model and the fake grammar compiler: requests in, responses out, as the gateway parses them.

MODEL_PY = Path(__file__).resolve().parents[2] / "model_repository" / "smollm2" / "1" / "model.py"
FINAL_FLAG = 1


class PbTensor:
    def __init__(self, name: str, array: Any) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> Any:
        return self._array


class PbResponse:
    def __init__(self, output_tensors: Sequence[PbTensor] = (), error: Any = None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class PbError:
    def __init__(self, message: str) -> None:
        self.text = message

    def message(self) -> str:
        return self.text


class PbSender:
    def __init__(self) -> None:
        self.responses: list[PbResponse] = []
        self.flags: list[int] = []
        self.final = threading.Event()
        self.cancel = False

    def send(self, response: PbResponse | None = None, flags: int = 0) -> None:
        assert not self.final.is_set(), "sent after the final flag"
        if response is not None:
            self.responses.append(response)
        self.flags.append(flags)
        if flags & FINAL_FLAG:
            self.final.set()

    def is_cancelled(self) -> bool:
        return self.cancel

    def wait(self) -> list[PbResponse]:
        assert self.final.wait(TIMEOUT), "no final flag"
        return self.responses

    @property
    def error(self) -> str | None:
        errors = [r.error.message() for r in self.responses if r.error is not None]
        assert len(errors) <= 1
        return errors[0] if errors else None


class PbRequest:
    def __init__(self, rid: str, **inputs: Any) -> None:
        self.rid = rid
        self.inputs = {k: PbTensor(k, v) for k, v in inputs.items()}
        self.sender = PbSender()

    def request_id(self) -> str:
        return self.rid

    def get_response_sender(self) -> PbSender:
        return self.sender


def triton_request(rid: str, prompt: Sequence[int] = (3,), max_new: int = 4, **extra: Any) -> PbRequest:
    """The tensors as Triton hands them to the model (batch dimension 1; per-request scalars [1])."""
    inputs: dict[str, Any] = {
        "input_ids": np.asarray([prompt], dtype=np.int32),
        "input_lengths": np.asarray([len(prompt)], dtype=np.int32),
        "request_output_len": np.asarray([max_new], dtype=np.int32),
        "runtime_top_k": np.asarray([1], dtype=np.int32),
    }
    inputs.update(extra)
    return PbRequest(rid, **inputs)


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    import importlib.util
    import json
    import sys
    import types

    pb = types.ModuleType("triton_python_backend_utils")
    logged: list[str] = []
    pb.Tensor = PbTensor  # type: ignore[attr-defined]
    pb.InferenceResponse = PbResponse  # type: ignore[attr-defined]
    pb.TritonError = PbError  # type: ignore[attr-defined]
    pb.TritonModelException = type("TritonModelException", (Exception,), {})  # type: ignore[attr-defined]
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL_FLAG  # type: ignore[attr-defined]
    pb.Logger = types.SimpleNamespace(log_info=logged.append)  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("smollm2_model", MODEL_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built: dict[str, Any] = {}

    def causal_lm(weights: Path, *, max_sequences: int, threads: int, int8_activations: bool) -> FakeLM:
        built.update(weights=weights, max_sequences=max_sequences, threads=threads, int8=int8_activations)
        return FakeLM(max_sequences=max_sequences, delay=0.001)

    def compiler(tokenizer_json: Path, end_ids: Sequence[int]) -> FakeCompiler:
        built.update(tokenizer=tokenizer_json, end_ids=list(end_ids))
        return FakeCompiler()

    monkeypatch.setattr(module, "CausalLM", causal_lm)
    monkeypatch.setattr(module, "GrammarCompiler", compiler)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"id": 2, "content": "<|im_end|>"}]}))
    (weights / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    params = {
        "max_sequences": {"string_value": "4"},
        "threads": {"string_value": "0"},
        "int8_activations": {"string_value": "true"},
    }
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": params}), "model_repository": str(tmp_path)})
    assert built == {
        "weights": weights, "max_sequences": 4, "threads": 0, "int8": True,
        "tokenizer": weights / "tokenizer.json", "end_ids": [2],
    }  # fmt: skip
    model.logged = logged
    yield model
    model.finalize()
    assert not model._scheduler.alive


def to_infer_response(response: PbResponse) -> Any:
    """A Python-backend response as the gateway receives it over gRPC (little-endian raw outputs)."""
    from tritonclient.grpc import service_pb2

    out = service_pb2.ModelInferResponse()
    for name, array in response.outputs.items():
        datatype = {np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}[array.dtype]
        out.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        out.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return out


def test_adapter_streams_one_response_per_token(adapter: Any) -> None:
    from gateway.engine.contract import parse_tokens

    request = triton_request("r", max_new=4, streaming=np.asarray([True]), end_id=np.asarray([2], dtype=np.int32))
    adapter.execute([request])
    responses = request.sender.wait()
    assert request.sender.flags == [0, 0, 0, 0, FINAL_FLAG]  # the final flag comes alone
    for response in responses:
        assert response.outputs["output_ids"].shape == (1, 1, 1)  # [batch, beam, tokens]
        assert response.outputs["sequence_length"].tolist() == [[1]]
        assert set(response.outputs) == {"output_ids", "sequence_length"}
    assert [t for r in responses for t in parse_tokens(to_infer_response(r))] == expected(3, 4)


def test_adapter_answers_at_once_when_not_streaming(adapter: Any) -> None:
    request = triton_request("r", max_new=5)
    adapter.execute([request])
    (response,) = request.sender.wait()
    assert response.outputs["output_ids"].tolist() == [[expected(3, 5)]]
    assert response.outputs["sequence_length"].tolist() == [[5]]


def test_adapter_logprobs_and_logits_as_the_gateway_parses_them(adapter: Any) -> None:
    from gateway.engine.contract import parse_logprobs, parse_tokens

    def logprobs_of(infer: Any) -> list[Any]:
        return parse_logprobs(infer, parse_tokens(infer), 2)

    flags = {"return_log_probs": np.asarray([True]), "return_generation_logits": np.asarray([True])}
    streamed = triton_request("s", max_new=3, streaming=np.asarray([True]), **flags)
    whole = triton_request("w", max_new=3, **flags)
    adapter.execute([streamed, whole])
    parsed = [lp for r in streamed.sender.wait() for lp in logprobs_of(to_infer_response(r))]
    for r in streamed.sender.responses:
        assert r.outputs["output_log_probs"].shape == (1, 1, 1) and r.outputs["cum_log_probs"].shape == (1, 1)
        assert r.outputs["generation_logits"].shape == (1, 1, 1, VOCAB)
    (response,) = whole.sender.wait()
    assert response.outputs["generation_logits"].shape == (1, 1, 3, VOCAB)
    at_once = logprobs_of(to_infer_response(response))
    assert [p.id for p in parsed] == [p.id for p in at_once] == expected(3, 3)
    assert [p.logprob for p in parsed] == pytest.approx([p.logprob for p in at_once])
    assert all(p.top[0] == (p.id, pytest.approx(p.logprob)) for p in parsed)  # greedy: the top one
    assert float(response.outputs["cum_log_probs"][0, 0]) == pytest.approx(sum(p.logprob for p in at_once))
    cums = [float(r.outputs["cum_log_probs"][0, 0]) for r in streamed.sender.responses]
    assert cums == pytest.approx(list(np.cumsum([p.logprob for p in parsed])))


def test_adapter_end_id_stop_words_bad_words_and_guides(adapter: Any) -> None:
    int32 = np.int32
    cases = {
        "end": (triton_request("a", max_new=9, end_id=np.asarray([6], int32)), [4, 5]),
        "never": (triton_request("b", max_new=9, end_id=np.asarray([-1], int32)), expected(3, 9)),
        "stop": (triton_request("c", max_new=9, stop_words_list=np.asarray([[[5, 6], [2, -1]]], int32)), [4, 5, 6]),
        "bad": (triton_request("d", max_new=2, bad_words_list=np.asarray([[[4], [1]]], int32)), [3, 3]),
        "guide": (
            triton_request(
                "e",
                max_new=9,
                guided_decoding_guide_type=np.asarray([[b"regex"]], dtype=object),
                guided_decoding_guide=np.asarray([[b"97"]], dtype=object),
            ),
            [9, 7],
        ),
        "no bias": (triton_request("f", max_new=2, embedding_bias=np.zeros((1, 0), np.float32)), [4, 5]),
    }
    adapter.execute([request for request, _ in cases.values()])
    for name, (request, tokens) in cases.items():
        (response,) = request.sender.wait()
        assert response.error is None, name
        assert response.outputs["output_ids"].reshape(-1).tolist() == tokens, name


def test_adapter_embedding_bias_steers_the_tokens(adapter: Any) -> None:
    bias = np.zeros((1, VOCAB), np.float32)
    bias[0, 11] = 100.0
    request = triton_request("r", max_new=3, embedding_bias=bias)
    adapter.execute([request])
    (response,) = request.sender.wait()
    assert response.outputs["output_ids"].reshape(-1).tolist() == [11, 11, 11]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_ids": None}, "input_ids is required"),
        ({"input_ids": np.zeros((1, 0), np.int32)}, "input_ids is empty"),
        ({"input_ids": np.asarray([[3, 16]], np.int32), "input_lengths": np.asarray([2], np.int32)}, "out of range"),
        ({"request_output_len": np.asarray([0], np.int32)}, "request_output_len must be at least 1"),
        ({"runtime_top_k": np.asarray([-1], np.int32)}, "runtime_top_k must be >= 0"),
        ({"runtime_top_p": np.asarray([1.5], np.float32)}, r"runtime_top_p must be in \[0, 1\]"),
        ({"temperature": np.asarray([np.nan], np.float32)}, "temperature must be a finite number"),
        ({"temperature": np.asarray([-0.5], np.float32)}, "temperature must be >= 0"),
        ({"repetition_penalty": np.asarray([0.0], np.float32)}, "repetition_penalty must be > 0"),
        ({"presence_penalty": np.asarray([np.inf], np.float32)}, "presence_penalty must be a finite number"),
        ({"min_tokens": np.asarray([-1], np.int32)}, "min_tokens must be >= 0"),
        ({"end_id": np.asarray([99], np.int32)}, r"end_id 99 out of range \[0, 16\)"),
        ({"embedding_bias": np.zeros((1, 5), np.float32)}, "embedding_bias has 5 values; the vocabulary has 16"),
        ({"embedding_bias": np.full((1, VOCAB), np.nan, np.float32)}, "embedding_bias must hold numbers or -inf"),
        ({"stop_words_list": np.asarray([[[5], [3]]], np.int32)}, "offset 3 past its 1 ids"),
        ({"guided_decoding_guide_type": np.asarray([[b"yaml"]], object)}, "guided_decoding_guide is required"),
        (
            {
                "guided_decoding_guide_type": np.asarray([[b"yaml"]], object),
                "guided_decoding_guide": np.asarray([[b"a: 1"]], object),
            },
            "unknown guided decoding guide type 'yaml'",
        ),
        ({"guided_decoding_guide": np.asarray([[b"1"]], object)}, "needs a guided_decoding_guide_type"),
    ],
    ids=lambda v: "" if isinstance(v, str) else "-".join(v),
)
def test_adapter_refuses_bad_values(adapter: Any, inputs: dict[str, Any], message: str) -> None:
    request = triton_request("r", **{k: v for k, v in inputs.items() if v is not None})
    if inputs.get("input_ids", 0) is None:
        del request.inputs["input_ids"]
    good = triton_request("good", max_new=2)
    adapter.execute([request, good])
    request.sender.wait()
    assert request.sender.flags == [FINAL_FLAG]  # the error is the final response
    assert request.sender.error is not None and re.search(message, request.sender.error), request.sender.error
    assert good.sender.wait()[0].outputs["output_ids"].reshape(-1).tolist() == expected(3, 2)


def test_adapter_stop_request_ends_the_running_one(adapter: Any) -> None:
    running = triton_request("req-7", max_new=10_000, streaming=np.asarray([True]))
    adapter.execute([running])
    deadline = time.monotonic() + TIMEOUT
    while len(running.sender.responses) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    stop = triton_request("req-7", max_new=1, prompt=[0], stop=np.asarray([True]))
    adapter.execute([stop])
    assert stop.sender.wait() == [] and stop.sender.flags == [FINAL_FLAG]  # an empty final answer
    running.sender.wait()
    assert running.sender.error is None and running.sender.flags[-1] == FINAL_FLAG
    n = len(running.sender.responses)
    assert adapter.logged == [f"request 'req-7' cancelled after {n} tokens (stop request)"]
    late = triton_request("req-7", prompt=[0], stop=np.asarray([True]))  # nothing runs: answered all the same
    adapter.execute([late])
    assert late.sender.wait() == [] and len(adapter.logged) == 1


def test_adapter_cancelled_call(adapter: Any) -> None:
    running = triton_request("c", max_new=10_000, streaming=np.asarray([True]))
    adapter.execute([running])
    while len(running.sender.responses) < 2:
        time.sleep(0.001)
    running.sender.cancel = True
    running.sender.wait()
    assert running.sender.error is None
    assert re.fullmatch(r"request 'c' cancelled after \d+ tokens \(call cancelled\)", adapter.logged[0])
