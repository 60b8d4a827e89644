"""Prompts encoded piece by piece equal the library's whole-text encoding, on the real tokenizers."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers import AddedToken
from tokenizers import Tokenizer as RustTokenizer

from gateway.text.pieces import PieceEncoder
from gateway.text.tokenizer import Tokenizer
from tests.conftest import MODEL_REPOSITORY, WEIGHTS

WORDS = ["hello", " world", "\n", "  ", "日本語", "é", "{", '"x": 1', "tool_call", "<", ">", "|", " ", "\t", "42"]


def _texts(specials: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    parts = WORDS + specials
    return ["".join(rng.choice(parts) for _ in range(rng.randint(0, 40))) for _ in range(count)]


@pytest.mark.parametrize("directory", [WEIGHTS, MODEL_REPOSITORY / "minilm" / "weights"], ids=["smollm2", "minilm"])
def test_pieces_equal_the_whole_text_encoding(directory: Path) -> None:
    tok = RustTokenizer.from_file(str(directory / "tokenizer.json"))
    encoder = PieceEncoder(tok)
    assert encoder.active
    specials = [t.content for t in tok.get_added_tokens_decoder().values()]
    for text in _texts(specials, 400, seed=1) + _texts(specials, 400, seed=1):  # the second pass is cached
        assert encoder.encode(text) == tok.encode(text, add_special_tokens=False).ids, text
        assert encoder.encode(text, drop_gil=True) == tok.encode(text, add_special_tokens=False).ids, text


def test_a_conversation_reuses_its_earlier_turns(tokenizer: Tokenizer) -> None:
    messages = [{"role": "system", "content": "You answer tersely. " * 50}, {"role": "user", "content": "Hi"}]
    first = tokenizer.apply_chat_template(messages, None)
    encoder = PieceEncoder(tokenizer._tok)
    assert encoder.encode(first) == tokenizer.encode(first)
    cached = dict(encoder._cache)
    assert any(piece.endswith("You answer tersely. ") for piece in cached)
    messages += [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And then?"}]
    second = tokenizer.apply_chat_template(messages, None)
    assert encoder.encode(second) == tokenizer.encode(second)
    assert all(encoder._cache[piece] is ids for piece, ids in cached.items())  # reused, not encoded again


def test_the_cache_keeps_its_bound_oldest_out_first(tokenizer: Tokenizer) -> None:
    encoder = PieceEncoder(tokenizer._tok, cache_chars=100)
    for i in range(50):
        encoder.encode(f"<|im_start|>piece number {i:04d}<|im_end|>")
    assert encoder._cached_chars <= 100
    assert "piece number 0049" in encoder._cache
    assert "piece number 0000" not in encoder._cache
    assert sum(len(p) for p in encoder._cache) == encoder._cached_chars


def test_tokens_the_library_does_not_cut_verbatim_leave_it_to_the_library(tokenizer: Tokenizer) -> None:
    tok = RustTokenizer.from_file(str(WEIGHTS / "tokenizer.json"))
    tok.add_tokens([AddedToken("<stripped>", lstrip=True, rstrip=True)])
    encoder = PieceEncoder(tok)
    assert not encoder.active
    text = "a <stripped> b<|im_end|>"
    assert encoder.encode(text) == tok.encode(text, add_special_tokens=False).ids
    assert not encoder._cache
