"""Stop strings matched on the text, across any chunk boundary, never sent to the client."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces; get back what is safe to send and whether a stop string was hit.

    Text that could be the start of a stop string is held back until it no longer can be. Each
    ``feed`` costs O(held + piece + stop lengths), independent of how much text came before.
    """

    __slots__ = ("_held", "_longest", "_stops")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self._longest = max((len(s) for s in self._stops), default=0)

    def feed(self, piece: str) -> tuple[str, bool]:
        """Returns ``(text to emit, stopped)``; after a stop, the text is what precedes it."""
        if not self._stops:
            return piece, False
        text = self._held + piece
        cut = -1
        for stop in self._stops:
            pos = text.find(stop)
            if pos != -1 and (cut == -1 or pos < cut):
                cut = pos
        if cut != -1:
            self._held = ""
            return text[:cut], True
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The held-back text, once the generation ended without completing a stop string."""
        held, self._held = self._held, ""
        return held

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        window = min(len(text), self._longest - 1)
        for stop in self._stops:
            for k in range(min(window, len(stop) - 1), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best


class StopTail:
    """Whether the model itself stops here: the tokens so far end with one of its stop sequences.

    The stop sequences are the ones sent to the model (TensorRT-LLM's ``stop_words_list``). When a
    stop string matched on the text and this holds, the model ends the request at this very token,
    so it need not be cancelled. Keeps only the last few ids; nothing at all without sequences.
    """

    __slots__ = ("_keep", "_seqs", "_tail")

    def __init__(self, sequences: tuple[tuple[int, ...], ...]) -> None:
        self._seqs = sequences
        self._keep = max((len(s) for s in sequences), default=0)
        self._tail: list[int] = []

    def feed(self, ids: list[int]) -> None:
        if self._keep:
            tail = self._tail
            tail.extend(ids)
            if len(tail) > self._keep:
                del tail[: len(tail) - self._keep]

    @property
    def model_stops(self) -> bool:
        tail = tuple(self._tail)
        return any(tail[len(tail) - len(s) :] == s for s in self._seqs if len(s) <= len(tail))
