"""The CPU engine (gateway.embedded.lm) on the real SmolLM2 graph: greedy text, batching, appending."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from gateway.embedded.lm.graph import MODEL_FILE
from gateway.embedded.lm.runner import CausalLM
from gateway.text.tokenizer import Tokenizer
from tests.conftest import WEIGHTS

pytestmark = pytest.mark.e2e

END = 2  # <|im_end|>


@pytest.fixture(scope="module")
def lm() -> Iterator[CausalLM]:
    if not (WEIGHTS / MODEL_FILE).is_file():
        pytest.skip(f"no {MODEL_FILE} in {WEIGHTS}: run `make model`")
    yield CausalLM(WEIGHTS, max_sequences=4)


def chat(tokenizer: Tokenizer, question: str) -> list[int]:
    return tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": question}]))


def greedy(lm: CausalLM, prompt: Sequence[int], n: int) -> list[int]:
    slot = lm.open()
    try:
        out = [int(lm.prefill(slot, prompt).argmax())]
        while len(out) < n and out[-1] != END:
            out.append(int(lm.decode([slot], [out[-1]])[0].argmax()))
        return out
    finally:
        lm.close(slot)


def test_greedy_answer(lm: CausalLM, tokenizer: Tokenizer) -> None:
    assert lm.vocab_size == tokenizer.vocab_size
    out = greedy(lm, chat(tokenizer, "What is the capital of France?"), 24)
    assert out[-1] == END
    assert "Paris" in tokenizer.decode(out)


def test_batched_decode_matches_single(lm: CausalLM, tokenizer: Tokenizer) -> None:
    prompts = [chat(tokenizer, "Write a short poem about the sea."), chat(tokenizer, "Name three colours.")]
    alone = [greedy(lm, p, 20) for p in prompts]
    slots = [lm.open() for _ in prompts]
    try:
        tokens = [[int(lm.prefill(s, p).argmax())] for s, p in zip(slots, prompts, strict=True)]
        for _ in range(19):
            logits = lm.decode(slots, [t[-1] for t in tokens])
            assert logits.shape == (2, lm.vocab_size)
            for row, t in zip(logits, tokens, strict=True):
                t.append(int(row.argmax()))
    finally:
        for s in slots:
            lm.close(s)
    for got, want in zip(tokens, alone, strict=True):
        assert got[: len(want)] == want


def test_prefill_then_append(lm: CausalLM, tokenizer: Tokenizer) -> None:
    prompt = chat(tokenizer, "Explain in two sentences why the sky is blue.")
    cut = len(prompt) // 2
    whole, parts = lm.open(), lm.open()
    try:
        expected = lm.prefill(whole, prompt)
        lm.prefill(parts, prompt[:cut])
        got = lm.prefill(parts, prompt[cut:])
        np.testing.assert_allclose(got, expected, atol=1e-3)
        nxt = int(expected.argmax())
        step = lm.decode([parts, whole], [nxt, nxt])
        np.testing.assert_allclose(step[0], step[1], atol=1e-3)
    finally:
        lm.close(whole)
        lm.close(parts)


def test_decode_of_some_slots_leaves_the_others_intact(lm: CausalLM) -> None:
    first, middle, last = lm.open(), lm.open(), lm.open()
    alone = lm.open()
    try:
        for slot in (first, middle, last, alone):
            lm.prefill(slot, [1, 2, 3, 4])
        lm.decode([last, first], [5, 6])  # ``middle`` sits between them: a throwaway step there
        np.testing.assert_allclose(lm.decode([middle], [7])[0], lm.decode([alone], [7])[0], atol=1e-3)
    finally:
        for slot in (first, middle, last, alone):
            lm.close(slot)


def test_slots_are_reused_and_bounded(lm: CausalLM) -> None:
    slots = [lm.open() for _ in range(4)]
    with pytest.raises(RuntimeError):
        lm.open()
    first = lm.prefill(slots[3], [1, 2, 3])
    lm.close(slots[0])  # the last row's cache moves into the freed row
    again = lm.decode([slots[3]], [4])
    reference = lm.open()
    try:
        lm.prefill(reference, [1, 2, 3])
        np.testing.assert_allclose(lm.decode([reference], [4])[0], again[0], atol=1e-3)
    finally:
        lm.close(reference)
    assert first.shape == (lm.vocab_size,)
    for s in slots[1:]:
        lm.close(s)
    with pytest.raises(ValueError):
        lm.prefill(slots[1], [1])
    slot = lm.open()
    try:
        with pytest.raises(ValueError):
            lm.prefill(slot, [lm.vocab_size])
    finally:
        lm.close(slot)
