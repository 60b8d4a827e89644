"""Chat prompts encoded piece by piece, reusing the ids of pieces seen before.

A rendered chat prompt is its template's special tokens with text between them: a system prompt,
tool definitions, the turns of a conversation, each of which comes back, unchanged, in the next
requests (a conversation's turn n+1 repeats turns 1..n). ``tokenizers`` cuts its input at special
tokens before it normalizes and pre-tokenizes anything, so a prompt's ids are the ids of its pieces
put end to end; this encoder cuts the prompt the same way and keeps the ids of recent pieces, so only
the new text of a request is tokenized (the byte-level pre-tokenizer costs ~200 µs per 128 tokens).

It is used only where the cut is provably the library's: every added token matched verbatim (not
normalized, no stripping, not single-word), and a self-check at load time. Otherwise the whole prompt
goes to the library, as before.
"""

from __future__ import annotations

import re
import threading

from tokenizers import Tokenizer as RustTokenizer

# the pieces kept, by their characters in all (each token id costs ~36 bytes in a list: ~10 MB at most)
CACHE_CHARS = 1_000_000
_SELF_CHECK = (
    "plain text, no special tokens",
    "{first}\n  spaced   text {second}{first}{first} tail ",
    "{second}x{first}",
)


class PieceEncoder:
    """``encode(text)`` == the tokenizer's ``encode(text, add_special_tokens=False).ids``, piece by piece."""

    def __init__(self, tok: RustTokenizer, cache_chars: int = CACHE_CHARS) -> None:
        self._tok = tok
        self._cache: dict[str, list[int]] = {}
        self._cached_chars = 0
        self._cache_chars = cache_chars
        self._lock = threading.Lock()  # encode may run on the tokenizer's worker threads too
        self._specials: dict[str, int] = {}
        self._split: re.Pattern[str] | None = None
        added = tok.get_added_tokens_decoder()
        if not added or any(t.normalized or t.lstrip or t.rstrip or t.single_word for t in added.values()):
            return  # the library would not cut these texts verbatim: leave it to the library
        self._specials = {t.content: token_id for token_id, t in added.items()}
        # longest first: at one position the regex takes the first alternative, the library the longest
        contents = sorted(self._specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(c) for c in contents) + ")")
        if not self._agrees(contents):
            self._split = None

    @property
    def active(self) -> bool:
        return self._split is not None

    def encode(self, text: str, drop_gil: bool = False) -> list[int]:
        """The ids of ``text``; ``drop_gil`` on a worker thread (the library's batch entry point drops the
        GIL while it works, which its single-text one does not)."""
        if self._split is None:
            return self._library(text, drop_gil)
        out: list[int] = []
        specials, cache = self._specials, self._cache
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:  # the separators: special tokens
                out.append(specials[piece])
            elif piece:
                cached = cache.get(piece)
                if cached is None:
                    cached = self._library(piece, drop_gil)
                    self._keep(piece, cached)
                out.extend(cached)
        return out

    def _library(self, text: str, drop_gil: bool) -> list[int]:
        if drop_gil:
            batch: list[int] = self._tok.encode_batch_fast([text], add_special_tokens=False)[0].ids
            return batch
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        return ids

    def _keep(self, piece: str, ids: list[int]) -> None:
        size = len(piece)
        if size > self._cache_chars // 4:
            return  # one huge piece would push everything else out
        with self._lock:
            if piece in self._cache:
                return
            self._cache[piece] = ids
            self._cached_chars += size
            while self._cached_chars > self._cache_chars:  # the oldest go first
                old = next(iter(self._cache))
                self._cached_chars -= len(old)
                del self._cache[old]

    def _agrees(self, contents: list[str]) -> bool:
        first, second = contents[-1], contents[0]
        for sample in _SELF_CHECK:
            text = sample.format(first=first, second=second)
            if self.encode(text) != self._tok.encode(text, add_special_tokens=False).ids:
                return False
        self._cache.clear()
        self._cached_chars = 0
        return True
