"""Guided decoding with llguidance: guides (TensorRT-LLM's guide types) compiled to per-sequence token masks.

Guide types: ``json`` (any JSON object; the guide text is ignored), ``json_schema`` (a JSON Schema as text),
``regex``, ``ebnf_grammar`` (llguidance's Lark syntax, which may embed ``%json{...}``; a GBNF grammar with
``::=`` rules is converted to Lark first). JSON from ``json``/``json_schema`` is compact by default (no
whitespace between tokens: ``{"a":1,"b":[2,3]}``) so a small model cannot wander into endless whitespace; a
schema may override that with its own ``"x-guidance"`` options.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import llguidance
import numpy as np
from llguidance.gbnf_to_lark import any_to_lark, is_lark_syntax
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask
from numpy.typing import NDArray

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # a TypedDict that exists only in the stub

log = logging.getLogger(__name__)

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
# applied before a schema's own "x-guidance": no whitespace between JSON tokens ("," and ":" separators)
JSON_DEFAULTS: JsonCompileOptions = {"whitespace_flexible": False}
CACHE_SIZE = 64
_ANY_OBJECT = '{"type": "object"}'


class GrammarError(ValueError):
    """An unknown guide type, a guide that does not compile, or a token the grammar rejects."""


def _limits() -> llguidance.LLParserLimits:
    # short error messages: no parser state or grammar dump
    return llguidance.LLParserLimits(verbose_errors=False)


def grammar_text(guide_type: str, guide: str) -> str:
    """The llguidance grammar (a JSON string) for a guide; GrammarError for an unknown type or unparsable guide."""
    try:
        if guide_type == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(_ANY_OBJECT, defaults=JSON_DEFAULTS)
        if guide_type == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(guide, defaults=JSON_DEFAULTS)
        if guide_type == "regex":
            return llguidance.LLMatcher.grammar_from_regex(guide)
        if guide_type == "ebnf_grammar":
            if not is_lark_syntax(guide) and "::=" in guide:
                guide = _gbnf_to_lark(guide)
            return llguidance.LLMatcher.grammar_from_lark(guide)
    except ValueError as e:  # not JSON, or not a JSON object
        raise GrammarError(f"invalid {guide_type} guide: {e}") from e
    raise GrammarError(f"unknown guided decoding guide type {guide_type!r}; expected one of {', '.join(GUIDE_TYPES)}")


def _gbnf_to_lark(gbnf: str) -> str:
    """A GBNF grammar (llama.cpp / xgrammar style, ``root ::= ...``) in Lark syntax."""
    try:
        return str(any_to_lark(gbnf))
    except Exception as e:  # the converter raises GbnfToLarkError or a bare Exception
        raise GrammarError(f"invalid ebnf_grammar guide (GBNF): {e}") from e


@functools.lru_cache(maxsize=256)
def _validation_error(guide_type: str, guide: str) -> str:
    grammar = grammar_text(guide_type, guide)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None, limits=_limits())
    return (messages[0] if messages else "invalid grammar") if is_error else ""


def check_guide(guide_type: str, guide: str) -> None:
    """Raise GrammarError when the guide would not compile (no tokenizer needed; results cached)."""
    if guide_type == "json":
        guide = ""
    message = _validation_error(guide_type, guide)
    if message:
        raise GrammarError(f"invalid {guide_type} guide: {message}")


class Matcher:
    """One sequence's grammar state: masks logits, consumes the sampled tokens."""

    __slots__ = ("_bitmask", "_matcher", "_vocab")

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab = vocab_size  # the tokenizer's; the model's logits may be longer
        self._bitmask: NDArray[np.int32] = allocate_token_bitmask(1, vocab_size)

    def _raise_if_error(self) -> None:
        if self._matcher.is_error():
            raise GrammarError(self._matcher.get_error())

    def mask(self, logits: NDArray[np.float32]) -> None:
        """Set -inf, in place, on every token the grammar forbids next (the end ids unless it accepts)."""
        self._raise_if_error()
        fill_next_token_bitmask(self._matcher, self._bitmask)
        self._raise_if_error()
        n = min(self._vocab, logits.shape[-1])
        forbidden = np.unpackbits(np.invert(self._bitmask.view(np.uint8)), count=n, bitorder="little").view(np.bool_)
        np.copyto(logits[:n], -np.inf, where=forbidden)
        if logits.shape[-1] > n:
            logits[n:] = -np.inf  # ids the tokenizer does not know

    def consume(self, token: int) -> None:
        """Advance past a sampled token; GrammarError when the grammar does not allow it."""
        if not self._matcher.consume_token(token):
            raise GrammarError(self._matcher.get_error() or f"token {token} rejected by the grammar")

    @property
    def done(self) -> bool:
        """The grammar is complete: nothing but an end id may follow."""
        return bool(self._matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """The output so far satisfies the grammar (an end id is allowed now)."""
        return bool(self._matcher.is_accepting())


class GrammarCompiler:
    """Compiles guides against one tokenizer; hands out a fresh Matcher per sequence."""

    def __init__(self, tokenizer_json: Path, end_ids: Sequence[int]) -> None:
        text = Path(tokenizer_json).read_text(encoding="utf-8")
        eos = [int(i) for i in end_ids]
        self._tokenizer = llguidance.LLTokenizer(text, eos_token=eos or None)
        self.vocab_size: int = self._tokenizer.vocab_size
        self._cache: OrderedDict[tuple[str, str], llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        log.debug("llguidance tokenizer: vocab %d, end ids %s", self.vocab_size, self._tokenizer.eos_tokens)

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        return self._tokenizer

    def _compiled(self, guide_type: str, guide: str) -> llguidance.LLMatcher:
        key = (guide_type, "" if guide_type == "json" else guide)
        with self._lock:
            proto = self._cache.get(key)
            if proto is not None:
                self._cache.move_to_end(key)
                return proto
        grammar = grammar_text(*key)
        proto = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0, limits=_limits())
        if proto.is_error():
            raise GrammarError(f"invalid {guide_type} guide: {proto.get_error()}")
        with self._lock:
            self._cache[key] = proto
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return proto

    def matcher(self, guide_type: str, guide: str) -> Matcher:
        """A fresh matcher for one sequence; GrammarError for an unknown type or a guide that fails to compile."""
        return Matcher(self._compiled(guide_type, guide).deep_copy(), self.vocab_size)
