"""The stream state with the real SmolLM2 tokenizer, token by token, without I/O."""

from __future__ import annotations

from gateway.core.types import FinishReason
from gateway.text.stream_state import StreamState
from gateway.text.tokenizer import Tokenizer

TEXT = "Héllo wörld — naïve café 日本語 😀  spaces   and\ttabs\nnew line 12345"


def stream(state: StreamState, ids: list[int], group: int = 1) -> list[str]:
    pieces = []
    for i in range(0, len(ids), group):
        pieces.append(state.feed(ids[i : i + group]))
        if state.finished:
            break
    pieces.append(state.finish())
    return pieces


def test_token_by_token_text_equals_whole_decode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT)
    for group in (1, 2, 3, 7):
        state = StreamState(tokenizer, max_tokens=1000)
        pieces = stream(state, ids, group)
        assert "".join(pieces) == tokenizer.decode(ids) == TEXT
        assert all("\ufffd" not in p for p in pieces)
        assert state.completion_tokens == len(ids)
        assert state.finish_reason is FinishReason.STOP


def test_multibyte_characters_split_across_tokens_are_not_sent_half(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("😀日本語")
    assert len(ids) > 3  # the emoji and CJK take several byte-level tokens
    state = StreamState(tokenizer, max_tokens=100)
    pieces = stream(state, ids)
    assert "".join(pieces) == "😀日本語"
    assert "" in pieces  # some tokens yield nothing until the character is whole
    assert all("\ufffd" not in p for p in pieces)


def test_length_finish_at_max_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT)
    state = StreamState(tokenizer, max_tokens=5)
    text = "".join(stream(state, ids))
    assert state.finish_reason is FinishReason.LENGTH
    assert state.completion_tokens == 5
    assert text == tokenizer.decode(ids[:5])


def test_length_when_upstream_ends_exactly_at_the_limit(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("one two three")
    state = StreamState(tokenizer, max_tokens=len(ids))
    stream(state, ids)
    assert state.finish_reason is FinishReason.LENGTH


def test_eos_token_ends_with_stop_and_is_not_text(tokenizer: Tokenizer) -> None:
    assert tokenizer.eos_token_id is not None
    ids = [*tokenizer.encode("Paris."), tokenizer.eos_token_id, *tokenizer.encode(" more")]
    state = StreamState(tokenizer, max_tokens=100)
    assert "".join(stream(state, ids)) == "Paris."
    assert state.finish_reason is FinishReason.STOP
    assert state.completion_tokens == len(tokenizer.encode("Paris."))


def test_ignore_eos_keeps_going(tokenizer: Tokenizer) -> None:
    assert tokenizer.eos_token_id is not None
    ids = [*tokenizer.encode("a"), tokenizer.eos_token_id, *tokenizer.encode(" b")]
    state = StreamState(tokenizer, max_tokens=100, ignore_eos=True)
    stream(state, ids)
    assert state.completion_tokens == len(ids)


def test_stop_string_split_across_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("The answer is 42. Done. More text follows")
    state = StreamState(tokenizer, max_tokens=100, stop=("Done.",))
    pieces = stream(state, ids)
    assert "".join(pieces) == "The answer is 42. "
    assert state.finish_reason is FinishReason.STOP
    assert not any("Done" in p for p in pieces)
    # tokens up to the one completing the stop string were generated, and are counted
    assert 0 < state.completion_tokens < len(ids)


def test_stop_string_prefix_that_never_completes_is_released(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("an END-less story")
    state = StreamState(tokenizer, max_tokens=100, stop=("END.",))
    assert "".join(stream(state, ids)) == "an END-less story"
    assert state.finish_reason is FinishReason.STOP


def test_nothing_after_finish(tokenizer: Tokenizer) -> None:
    state = StreamState(tokenizer, max_tokens=1)
    state.feed(tokenizer.encode("a b c"))
    assert state.finished
    assert state.feed(tokenizer.encode("more")) == ""
    assert state.completion_tokens == 1


def test_eos_as_the_first_token_is_an_empty_stop_with_no_tokens(tokenizer: Tokenizer) -> None:
    # the end token is not part of the output (as TensorRT-LLM's sequence_length): 0 tokens, stop
    assert tokenizer.eos_token_id is not None
    for ids in ([tokenizer.eos_token_id], [tokenizer.eos_token_id, *tokenizer.encode("more")]):
        state = StreamState(tokenizer, max_tokens=1)
        assert stream(state, ids) == ["", ""]
        assert state.finish_reason is FinishReason.STOP
        assert state.completion_tokens == 0


def test_an_upstream_that_ends_without_tokens_stops_with_none(tokenizer: Tokenizer) -> None:
    state = StreamState(tokenizer, max_tokens=1)  # a model that stops on its end token and omits it
    assert state.finish() == ""
    assert state.finish_reason is FinishReason.STOP and state.completion_tokens == 0
