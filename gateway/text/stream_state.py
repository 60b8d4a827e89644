"""The state of one generated choice: token ids in, text deltas and a finish reason out.

Pure and synchronous, so it is tested without sockets. Per token it does O(1) work: one step of
the tokenizer's streaming decoder and one bounded stop-string check; it never re-decodes the text.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.core.types import FinishReason
from gateway.text.stop import StopMatcher
from gateway.text.tokenizer import Tokenizer


class StreamState:
    __slots__ = ("_decoder", "_ends", "_stop", "completion_tokens", "finish_reason", "max_tokens")

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_tokens: int,
        stop: tuple[str, ...] = (),
        ignore_eos: bool = False,
        stop_token_ids: tuple[int, ...] = (),
    ) -> None:
        self._decoder = tokenizer.decode_stream()
        self._stop = StopMatcher(stop)
        eos = tokenizer.eos_token_id
        # the tokens that end the choice without being text: the end token and the client's stop ids
        self._ends = frozenset(stop_token_ids) | ({eos} if eos is not None and not ignore_eos else set())
        self.max_tokens = max_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self, token_ids: Iterable[int]) -> str:
        """Text to send for these new tokens (possibly empty). Sets :attr:`finish_reason` when done."""
        out: list[str] = []
        for token_id in token_ids:
            if self.finish_reason is not None:
                break
            if token_id in self._ends:
                # an upstream that returns an end token: it is not text, it is the end
                self.finish_reason = FinishReason.STOP
                out.append(self._stop.flush())
                break
            self.completion_tokens += 1
            piece = self._decoder.step(token_id)
            if piece:
                text, stopped = self._stop.feed(piece)
                out.append(text)
                if stopped:
                    self.finish_reason = FinishReason.STOP
                    break
            if self.completion_tokens >= self.max_tokens:
                self.finish_reason = FinishReason.LENGTH
                out.append(self._stop.flush())
        return "".join(out) if len(out) != 1 else out[0]

    def finish(self) -> str:
        """The upstream ended the sequence: flush held-back text and settle the finish reason."""
        if self.finish_reason is None:
            self.finish_reason = FinishReason.LENGTH if self.completion_tokens >= self.max_tokens else FinishReason.STOP
            return self._stop.flush()
        return ""
