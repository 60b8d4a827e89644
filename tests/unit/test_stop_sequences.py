"""What the model is told to stop on, and how the gateway knows the model stops by itself."""

from __future__ import annotations

import pytest

from gateway.engine.contract import stop_words_rows
from gateway.text.stop import StopTail
from gateway.text.tokenizer import Tokenizer


def test_stop_sequences_decode_to_text_holding_the_stop(tokenizer: Tokenizer) -> None:
    seqs = tokenizer.stop_sequences(("lazy", " dog", "\n\n"))
    texts = [tokenizer.decode(s) for s in seqs]
    assert "lazy" in texts and " lazy" in texts  # alone, and as byte-level BPE writes it after a space
    assert " dog" in texts and "  dog" not in texts  # a stop that starts with a space gets no second one
    assert all(any(stop in text for stop in ("lazy", " dog", "\n\n")) for text in texts)
    assert tokenizer.stop_sequences(("lazy", " dog", "\n\n")) is seqs  # cached per stop tuple


def test_stop_words_rows_are_tensorrt_llm_layout() -> None:
    ids, offsets = stop_words_rows([(5, 6), (7,), (8, 9, 10)])
    assert ids == [5, 6, 7, 8, 9, 10]
    assert offsets == [2, 3, 6, -1, -1, -1]  # end offsets, padded with -1 to the ids' length


def test_stop_tail_holds_only_at_the_end_of_a_sequence() -> None:
    tail = StopTail(((1, 2), (7,)))
    tail.feed([1])
    assert not tail.model_stops
    tail.feed([2])
    assert tail.model_stops
    tail.feed([3])
    assert not tail.model_stops
    tail.feed([9, 1, 2])  # several tokens in one response
    assert tail.model_stops
    tail.feed([7])
    assert tail.model_stops


def test_stop_tail_without_sequences_never_stops() -> None:
    tail = StopTail(())
    tail.feed([1, 2, 3])
    assert not tail.model_stops


@pytest.mark.parametrize(
    "text",
    [
        "plain words " * 200,
        "x" * 5000,
        " " * 4000,
        "\n" * 3000,
        "😀é" * 1000,
        "<|im_start|>" * 300,
        "".join(chr(c) for c in range(32, 3000)),
    ],
    ids=["words", "letters", "spaces", "newlines", "emoji", "special", "unicode"],
)
def test_min_tokens_is_a_lower_bound(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.min_tokens(len(text)) <= len(tokenizer.encode(text))
