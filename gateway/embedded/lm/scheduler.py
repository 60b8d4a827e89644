"""The engine's decoding loop: TensorRT-LLM's inflight batching in miniature, on one background thread.

A :class:`Scheduler` owns one :class:`~gateway.embedded.lm.runner.CausalLM`. Sequences are submitted
from any thread (:meth:`Scheduler.submit`); the loop admits waiting ones while KV-cache slots are free,
prefills their prompts in chunks of at most ``prefill_chunk`` tokens per step (several short prompts
share a step's budget, a long one is spread over several steps), and runs one batched ``decode`` over
every running sequence after each round of prefill, so a long prompt never stalls running streams for
more than one chunk. Each sequence samples with its own TokenSampler and reports through its
:class:`~gateway.embedded.lm.jobs.Sink`: one :class:`~gateway.embedded.lm.jobs.Chunk` per token when
streaming, one with every token at the end otherwise, then one :class:`~gateway.embedded.lm.jobs.End`
(the data types live in :mod:`gateway.embedded.lm.jobs`).

As TensorRT-LLM does, an end id ends a sequence without being emitted; a stop-words sequence is
emitted, then ends it; a grammar that is complete ends it as an end id would. :meth:`Scheduler.stop`
is TensorRT-LLM's in-band stop; a sink's ``cancelled()`` (polled every ``cancel_check_s``) is the
client going away. Nothing here knows Triton: the adapter (model_repository/smollm2/1/model.py) turns
requests into jobs and chunks into responses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from gateway.embedded.lm.grammar import Matcher
from gateway.embedded.lm.jobs import Chunk, End, Job, Reason, Sink
from gateway.embedded.lm.sampling import Sampled, SamplingSpec, TokenSampler

__all__ = ["Chunk", "Compiler", "End", "Job", "Model", "Reason", "Sampler", "SamplerFactory", "Scheduler", "Sink"]

log = logging.getLogger(__name__)


class Sampler(Protocol):
    def sample(self, logits: NDArray[np.float32]) -> Sampled: ...

    @property
    def must_end(self) -> bool: ...


SamplerFactory = Callable[[SamplingSpec, int, Sequence[int], Matcher | None, bool], Sampler]


def _token_sampler(
    spec: SamplingSpec, vocab_size: int, prompt: Sequence[int], grammar: Matcher | None, want_logits: bool
) -> Sampler:
    return TokenSampler(spec, vocab_size, prompt, grammar=grammar, want_logits=want_logits)


class Compiler(Protocol):
    """A GrammarCompiler: a fresh Matcher per sequence, GrammarError for a bad guide."""

    def matcher(self, guide_type: str, guide: str) -> Matcher: ...


class Model(Protocol):
    """What the loop needs of a CausalLM (a fake one in the unit tests)."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    def open(self) -> int: ...

    def close(self, slot: int) -> None: ...

    def prefill(self, slot: int, ids: Sequence[int]) -> NDArray[np.float32]: ...

    def decode(self, slots: Sequence[int], ids: Sequence[int]) -> NDArray[np.float32]: ...


class _Seq:
    """A submitted job and its progress (the loop thread's alone once submitted)."""

    __slots__ = (
        "cum",
        "done",
        "end_ids",
        "job",
        "last",
        "limit",
        "logits",
        "logprobs",
        "prefilled",
        "sampler",
        "slot",
        "tokens",
    )  # fmt: skip

    def __init__(self, job: Job, sampler: Sampler, limit: int) -> None:
        self.job = job
        self.sampler = sampler
        self.limit = limit  # max new tokens, within the context
        self.end_ids = frozenset(job.sampling.end_ids)
        self.slot = -1
        self.prefilled = 0  # prompt tokens in the KV cache
        self.tokens: list[int] = []  # generated
        self.last = -1  # the token to decode next
        self.cum = 0.0
        self.logprobs: list[float] = []  # kept only when not streaming
        self.logits: list[NDArray[np.float32]] = []
        self.done = False


class Scheduler:
    """Runs every submitted sequence on one CausalLM, batched, from its own thread.

    ``log_line`` receives the line written when a sequence ends by a stop request or cancellation
    (``request 'id' cancelled after N tokens (stop request)`` / ``(call cancelled)``).
    """

    def __init__(
        self,
        lm: Model,
        compiler: Compiler | None = None,
        *,
        max_sequences: int = 8,
        prefill_chunk: int = 256,
        cancel_check_s: float = 0.02,
        log_line: Callable[[str], None] | None = None,
        sampler: SamplerFactory = _token_sampler,
    ) -> None:
        if max_sequences < 1 or prefill_chunk < 1:
            raise ValueError("max_sequences and prefill_chunk must be at least 1")
        self._lm = lm
        self._compiler = compiler
        self._vocab = lm.vocab_size
        self._context = lm.context_length
        self.max_sequences = max_sequences
        self._chunk = prefill_chunk
        self._cancel_period = cancel_check_s
        self._log_line = log_line or log.info
        self._new_sampler = sampler
        self._cond = threading.Condition()
        self._incoming: list[_Seq] = []  # submitted, not yet seen by the loop (under _cond)
        self._stops: set[str] = set()  # request ids asked to stop (under _cond)
        self._live: dict[str, int] = {}  # request id -> sequences submitted and not finished (under _cond)
        self._closed = False
        # the loop thread's own
        self._waiting: deque[_Seq] = deque()
        self._prefilling: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._next_cancel_check = 0.0
        self.steps = 0  # loop iterations that did work (prefill and/or decode)
        self._thread = threading.Thread(target=self._loop, name="lm-scheduler", daemon=True)
        self._thread.start()

    # -- any thread

    def submit(self, job: Job) -> None:
        """Queue a sequence. ValueError (GrammarError included) for a job that cannot run: nothing queued.

        The grammar is compiled and the sampler built here, on the caller's thread, so a slow compile
        never holds up running streams and a bad guide is the caller's error at once.
        """
        if not job.prompt:
            raise ValueError("the prompt is empty")
        if len(job.prompt) >= self._context:
            raise ValueError(f"the prompt of {len(job.prompt)} tokens does not fit the context of {self._context}")
        if min(job.prompt) < 0 or max(job.prompt) >= self._vocab:
            raise ValueError(f"prompt token ids must be in [0, {self._vocab})")
        if job.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        matcher = None
        if job.guide is not None:
            if self._compiler is None:
                raise ValueError("guided decoding is not available")
            matcher = self._compiler.matcher(*job.guide)
        sampler = self._new_sampler(job.sampling, self._vocab, job.prompt, matcher, job.want_logits)
        seq = _Seq(job, sampler, min(job.max_new_tokens, self._context - len(job.prompt)))
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._incoming.append(seq)
            self._live[job.request_id] = self._live.get(job.request_id, 0) + 1
            self._cond.notify()

    def stop(self, request_id: str) -> bool:
        """End the sequences of this request id at their next step; False when none is running."""
        with self._cond:
            if request_id not in self._live:
                return False
            self._stops.add(request_id)
            self._cond.notify()
            return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop; sequences still running or waiting end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the loop thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._incoming or self._stops or self._closed or self._has_work()):
                    self._cond.wait()
                if self._closed:
                    break
                incoming, self._incoming = self._incoming, []
                stops, self._stops = self._stops, set()
            try:
                self._waiting.extend(incoming)
                if stops:
                    self._apply_stops(stops)
                if self._has_work():
                    self._step()
            except Exception:  # a bug of the loop's own: report, keep serving
                log.exception("scheduler step failed")
        for seq in [*self._running, *self._prefilling, *self._waiting, *self._incoming]:
            self._finish(seq, Reason.ERROR, "the model is shutting down")

    def _has_work(self) -> bool:
        return bool(self._waiting or self._prefilling or self._running)

    def _step(self) -> None:
        self.steps += 1
        if self._cancel_period <= 0:
            self._check_cancelled()
        elif (now := time.monotonic()) >= self._next_cancel_check:
            self._next_cancel_check = now + self._cancel_period
            self._check_cancelled()
        self._admit()
        if self._prefilling:
            self._prefill()
        if self._running:
            self._decode()

    def _check_cancelled(self) -> None:
        for seq in [*self._running, *self._prefilling, *self._waiting]:
            try:
                cancelled = seq.job.sink.cancelled()
            except Exception as exc:
                self._fail(seq, exc)
                continue
            if cancelled:
                self._finish(seq, Reason.CANCELLED)
        self._sweep()

    def _apply_stops(self, stops: set[str]) -> None:
        for seq in [*self._running, *self._prefilling, *self._waiting]:
            if seq.job.request_id in stops:
                self._finish(seq, Reason.STOPPED)
        self._sweep()

    def _sweep(self) -> None:
        """Drop finished sequences from the loop's lists."""
        if any(s.done for s in self._running):
            self._running = [s for s in self._running if not s.done]
        for queue in (self._prefilling, self._waiting):
            if any(s.done for s in queue):
                kept = [s for s in queue if not s.done]
                queue.clear()
                queue.extend(kept)

    def _admit(self) -> None:
        while self._waiting and len(self._running) + len(self._prefilling) < self.max_sequences:
            try:
                slot = self._lm.open()
            except RuntimeError:  # every KV-cache slot is taken
                return
            seq = self._waiting.popleft()
            seq.slot = slot
            self._prefilling.append(seq)

    def _prefill(self) -> None:
        """Up to prefill_chunk prompt tokens, oldest sequence first; a finished prompt samples its first token."""
        budget = self._chunk
        while self._prefilling and budget > 0:
            seq = self._prefilling[0]
            prompt = seq.job.prompt
            end = min(len(prompt), seq.prefilled + budget)
            try:
                logits = self._lm.prefill(seq.slot, prompt[seq.prefilled : end])
            except Exception as exc:
                self._prefilling.popleft()
                self._fail(seq, exc)
                continue
            budget -= end - seq.prefilled
            seq.prefilled = end
            if end < len(prompt):
                return  # the budget is spent
            self._prefilling.popleft()
            if self._accept(seq, logits, first=True):
                self._running.append(seq)

    def _decode(self) -> None:
        running = self._running
        try:
            logits = self._lm.decode([s.slot for s in running], [s.last for s in running])
        except Exception as exc:  # the batch is lost: every sequence in it fails
            for seq in running:
                self._fail(seq, exc)
            self._running = []
            return
        finished = False
        for i, seq in enumerate(running):
            if not self._accept(seq, logits[i]):
                finished = True
        if finished:
            self._running = [s for s in running if not s.done]

    def _accept(self, seq: _Seq, logits: NDArray[np.float32], first: bool = False) -> bool:
        """Sample a sequence's next token and act on it; False when the sequence ended."""
        job = seq.job
        try:
            if first and seq.sampler.must_end:  # a grammar that accepts nothing more
                self._finish(seq, Reason.END)
                return False
            sampled = seq.sampler.sample(logits)
            token = sampled.token
            if token in seq.end_ids:
                self._finish(seq, Reason.END)
                return False
            seq.tokens.append(token)
            seq.last = token
            seq.cum += sampled.logprob
            if job.streaming:
                job.sink.emit(
                    Chunk(
                        [token],
                        [sampled.logprob] if job.want_logprobs else None,
                        seq.cum if job.want_logprobs else None,
                        sampled.logits[None, :] if job.want_logits and sampled.logits is not None else None,
                    )
                )
            else:
                if job.want_logprobs:
                    seq.logprobs.append(sampled.logprob)
                if job.want_logits and sampled.logits is not None:
                    seq.logits.append(sampled.logits)  # a new array each step
            if job.stop_words and self._stop_word(seq):
                self._finish(seq, Reason.STOP_WORDS)
            elif seq.sampler.must_end:
                self._finish(seq, Reason.END)
            elif len(seq.tokens) >= seq.limit:
                self._finish(seq, Reason.LENGTH)
        except Exception as exc:
            self._fail(seq, exc)
        return not seq.done

    @staticmethod
    def _stop_word(seq: _Seq) -> bool:
        tokens = seq.tokens
        for words in seq.job.stop_words:
            n = len(words)
            if n and len(tokens) >= n and tokens[-1] == words[-1] and tuple(tokens[-n:]) == words:
                return True
        return False

    def _fail(self, seq: _Seq, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        log.warning("request %r failed: %s", seq.job.request_id, message)
        self._finish(seq, Reason.ERROR, message)

    def _finish(self, seq: _Seq, reason: Reason, error: str | None = None) -> None:
        """Free the sequence's slot and tell its sink; never raises."""
        if seq.done:
            return
        seq.done = True
        job = seq.job
        if seq.slot >= 0:
            try:
                self._lm.close(seq.slot)
            except Exception:
                log.exception("closing KV-cache slot %d failed", seq.slot)
            seq.slot = -1
        with self._cond:
            left = self._live.get(job.request_id, 0) - 1
            if left > 0:
                self._live[job.request_id] = left
            else:
                self._live.pop(job.request_id, None)
        try:
            if reason in (Reason.END, Reason.LENGTH, Reason.STOP_WORDS) and job.sink.cancelled():
                reason = Reason.CANCELLED  # after its last token: say so all the same
            if reason in (Reason.STOPPED, Reason.CANCELLED):
                self._log_line(f"request {job.request_id!r} cancelled after {len(seq.tokens)} tokens ({reason.value})")
            elif reason is not Reason.ERROR and not job.streaming:
                logits = None
                if job.want_logits:
                    logits = np.stack(seq.logits) if seq.logits else np.zeros((0, self._vocab), np.float32)
                job.sink.emit(
                    Chunk(
                        seq.tokens,
                        seq.logprobs if job.want_logprobs else None,
                        seq.cum if job.want_logprobs else None,
                        logits,
                    )
                )
        except Exception as exc:
            reason, error = Reason.ERROR, str(exc) or type(exc).__name__
            log.warning("request %r failed: %s", job.request_id, error)
        try:
            job.sink.finish(End(reason, len(seq.tokens), error))
        except Exception:
            log.exception("request %r: finishing failed", job.request_id)
