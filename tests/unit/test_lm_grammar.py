"""Guided decoding with llguidance: guides compiled against the model's tokenizer, masks, forced outputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest
from numpy.typing import NDArray
from tokenizers import Tokenizer

from gateway.embedded.lm.grammar import GrammarCompiler, GrammarError, Matcher, check_guide
from gateway.embedded.lm.sampling import SamplingError, SamplingSpec, TokenSampler

TOKENIZER_JSON = Path(__file__).resolve().parents[2] / "model_repository" / "smollm2" / "weights" / "tokenizer.json"
END = 2  # <|im_end|>
VOCAB = 49152

needs_tokenizer = pytest.mark.skipif(not TOKENIZER_JSON.is_file(), reason=f"no {TOKENIZER_JSON}")

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["name", "age", "color", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    return GrammarCompiler(TOKENIZER_JSON, [END])


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(TOKENIZER_JSON))


def ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def allowed(matcher: Matcher, size: int = VOCAB) -> NDArray[np.bool_]:
    row = np.zeros(size, dtype=np.float32)
    matcher.mask(row)
    return np.isfinite(row)


def generate(matcher: Matcher, seed: int, spec: SamplingSpec | None = None, limit: int = 200) -> tuple[list[int], bool]:
    """A stand-in model: random logits, masked by the grammar, until it is complete or the limit is reached."""
    rng = np.random.default_rng(seed)
    sampler = TokenSampler(spec or SamplingSpec(temperature=0, end_ids=(END,)), VOCAB, [], grammar=matcher)
    out: list[int] = []
    while not sampler.must_end and len(out) < limit:
        token = sampler.sample(rng.standard_normal(VOCAB).astype(np.float32) * 3).token
        if token == END:
            return out, True
        out.append(token)
    if sampler.must_end:  # only the end may follow now
        assert sampler.sample(rng.standard_normal(VOCAB).astype(np.float32)).token == END
    return out, sampler.must_end


# guide checks without a tokenizer


@pytest.mark.parametrize(
    ("guide_type", "guide"),
    [
        ("json", ""),
        ("json", "ignored text"),
        ("json_schema", json.dumps(PERSON)),
        ("regex", r"[a-z]{3,6}-[0-9]{2}"),
        ("ebnf_grammar", 'start: "yes" | "no"'),
        ("ebnf_grammar", 'start: "x=" val\nval: %json{"type": "integer"}'),
        ("ebnf_grammar", 'root ::= "yes" | "no"'),  # GBNF is converted
    ],
)
def test_check_guide_accepts_valid_guides(guide_type: str, guide: str) -> None:
    check_guide(guide_type, guide)


@pytest.mark.parametrize(
    ("guide_type", "guide", "message"),
    [
        ("json_schema", '{"type": "foo"}', "foo"),
        ("json_schema", "{not json", "json_schema"),
        ("json_schema", "[1, 2]", "json_schema"),
        ("json_schema", '{"type": "string", "format": "weird"}', "weird"),
        ("regex", "a(b", "unclosed group"),
        ("ebnf_grammar", "start: foo", "foo"),
        ("ebnf_grammar", "nothing here", "ebnf_grammar"),
        ("ebnf_grammar", 'root ::= "yes" | (', "GBNF"),
        ("ebnf_grammar", "root ::= foo", "foo"),
        ("xml", "<a/>", "unknown"),
        ("structural_tag", "{}", "unknown"),
    ],
)
def test_check_guide_rejects_invalid_guides(guide_type: str, guide: str, message: str) -> None:
    with pytest.raises(GrammarError, match=message) as info:
        check_guide(guide_type, guide)
    assert isinstance(info.value, ValueError)


# matchers


@needs_tokenizer
def test_unknown_type_and_invalid_guides_raise_grammar_error(compiler: GrammarCompiler) -> None:
    with pytest.raises(GrammarError, match="unknown"):
        compiler.matcher("xml", "<a/>")
    with pytest.raises(GrammarError, match="foo"):
        compiler.matcher("json_schema", '{"type": "foo"}')
    with pytest.raises(GrammarError):
        compiler.matcher("json_schema", "{not json")
    with pytest.raises(GrammarError, match="unclosed group"):
        compiler.matcher("regex", "a(b")
    with pytest.raises(GrammarError, match="foo"):
        compiler.matcher("ebnf_grammar", "start: foo")


@needs_tokenizer
@pytest.mark.parametrize("seed", range(6))
def test_json_schema_forced_output_validates(compiler: GrammarCompiler, tokenizer: Tokenizer, seed: int) -> None:
    spec = None if seed % 2 == 0 else SamplingSpec(temperature=1.0, top_p=0.95, seed=seed, end_ids=(END,))
    out, complete = generate(compiler.matcher("json_schema", json.dumps(PERSON)), seed, spec)
    assert complete, tokenizer.decode(out)
    text = tokenizer.decode(out)
    value = json.loads(text)
    jsonschema.validate(value, PERSON)
    assert not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text))  # compact: whitespace only in strings


@needs_tokenizer
def test_end_is_allowed_exactly_when_the_grammar_accepts(compiler: GrammarCompiler, tokenizer: Tokenizer) -> None:
    matcher = compiler.matcher("regex", "[0-9]{2,3}")
    one, two, three = ids(tokenizer, "123")
    assert not allowed(matcher)[END] and not matcher.done and not matcher.accepting
    matcher.consume(one)
    assert not allowed(matcher)[END] and not matcher.done
    matcher.consume(two)
    mask = allowed(matcher)
    assert mask[END] and mask[three] and not matcher.done and matcher.accepting
    matcher.consume(three)
    mask = allowed(matcher)
    assert matcher.done and mask[END] and mask.sum() == 1


@needs_tokenizer
def test_json_any_object(compiler: GrammarCompiler, tokenizer: Tokenizer) -> None:
    matcher = compiler.matcher("json", "this text is ignored")
    mask = allowed(matcher)
    assert mask[ids(tokenizer, "{")[0]] and not mask[END] and not mask[ids(tokenizer, " ")[0]]
    assert not mask[ids(tokenizer, "[")[0]]
    for token in ids(tokenizer, '{"a":[1,2],"b":{"c":null}}'):
        assert allowed(matcher)[token], tokenizer.decode([token])
        matcher.consume(token)
    assert matcher.done
    # compact: no whitespace after a separator
    matcher = compiler.matcher("json", "")
    for token in ids(tokenizer, '{"a":'):
        matcher.consume(token)
    mask = allowed(matcher)
    assert not mask[ids(tokenizer, " ")[0]] and not mask[ids(tokenizer, "\n")[0]]
    assert mask[ids(tokenizer, "1")[0]]


@needs_tokenizer
@pytest.mark.parametrize("seed", range(4))
def test_regex_forced_output_matches(compiler: GrammarCompiler, tokenizer: Tokenizer, seed: int) -> None:
    pattern = r"[a-z]{3,6}-[0-9]{2}"
    out, _ = generate(compiler.matcher("regex", pattern), seed)
    assert re.fullmatch(pattern, tokenizer.decode(out))


@needs_tokenizer
@pytest.mark.parametrize("seed", range(4))
def test_lark_with_embedded_json(compiler: GrammarCompiler, tokenizer: Tokenizer, seed: int) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 999}},
        "required": ["n"],
        "additionalProperties": False,
        # %json inside Lark takes no defaults from the compiler: without this it allows any whitespace
        "x-guidance": {"whitespace_flexible": False},
    }
    lark = f'start: "Answer: " obj\nobj: %json{json.dumps(schema)}'
    out, complete = generate(compiler.matcher("ebnf_grammar", lark), seed)
    text = tokenizer.decode(out)
    assert complete, text
    assert text.startswith("Answer: ")
    jsonschema.validate(json.loads(text.removeprefix("Answer: ")), schema)


@needs_tokenizer
def test_gbnf_grammar(compiler: GrammarCompiler, tokenizer: Tokenizer) -> None:
    out, complete = generate(compiler.matcher("ebnf_grammar", 'root ::= "yes" | "no"'), 0)
    assert complete and tokenizer.decode(out) in {"yes", "no"}


@needs_tokenizer
def test_matchers_are_independent_and_cached(compiler: GrammarCompiler, tokenizer: Tokenizer) -> None:
    a = compiler.matcher("regex", "ab|cd")
    b = compiler.matcher("regex", "ab|cd")
    a_token = ids(tokenizer, "a")[0]
    a.consume(a_token)
    assert allowed(b)[a_token]
    assert not allowed(a)[a_token]
    with pytest.raises(GrammarError):
        a.consume(a_token)
    assert ("regex", "ab|cd") in compiler._cache


@needs_tokenizer
def test_logits_longer_than_the_tokenizer_are_masked(compiler: GrammarCompiler) -> None:
    matcher = compiler.matcher("json", "")
    mask = allowed(matcher, VOCAB + 64)
    assert mask[:VOCAB].any() and not mask[VOCAB:].any()


@needs_tokenizer
def test_sampler_dead_end_and_min_tokens(compiler: GrammarCompiler, tokenizer: Tokenizer) -> None:
    # the bias forbids everything the grammar allows: no token can be drawn
    bias = np.where(allowed(compiler.matcher("regex", "yes")), -np.inf, 0).astype(np.float32)
    sampler = TokenSampler(SamplingSpec(embedding_bias=bias), VOCAB, [], grammar=compiler.matcher("regex", "yes"))
    with pytest.raises(SamplingError, match="masked"):
        sampler.sample(np.zeros(VOCAB, dtype=np.float32))
    # a complete grammar wins over min_tokens: the end is still allowed
    spec = SamplingSpec(temperature=0, min_tokens=50, end_ids=(END,))
    sampler = TokenSampler(spec, VOCAB, [], grammar=compiler.matcher("regex", "yes"))
    row = np.zeros(VOCAB, dtype=np.float32)
    tokens = []
    while not sampler.must_end:
        tokens.append(sampler.sample(row).token)
    assert tokenizer.decode(tokens) == "yes"
    assert sampler.sample(row).token == END
