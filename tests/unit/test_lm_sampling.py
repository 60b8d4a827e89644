"""The CPU engine's token sampler: logits processing numerics and draws (numpy only)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.embedded.lm.sampling import Sampled, SamplingError, SamplingSpec, TokenSampler

INF = float("inf")


Row = NDArray[np.float32]


def f32(*values: float) -> Row:
    return np.array(values, dtype=np.float32)


def log_softmax(row: Row) -> NDArray[np.float64]:
    x = row.astype(np.float64)
    m = x[np.isfinite(x)].max()
    out: NDArray[np.float64] = x - m - math.log(np.exp(x - m).sum())
    return out


def logits_of(s: Sampled) -> Row:
    assert s.logits is not None
    return s.logits


def processed(spec: SamplingSpec, steps: list[Row], prompt: tuple[int, ...] = ()) -> list[Sampled]:
    sampler = TokenSampler(spec, len(steps[0]), prompt, want_logits=True)
    return [sampler.sample(row) for row in steps]


# greedy, logprobs


def test_greedy_is_argmax_and_logprob_is_log_softmax() -> None:
    rng = np.random.default_rng(1)
    for spec in (SamplingSpec(temperature=0), SamplingSpec(temperature=0.8, top_k=1, seed=3)):
        sampler = TokenSampler(spec, 100, [])
        for _ in range(20):
            row = rng.standard_normal(100).astype(np.float32) * 4
            s = sampler.sample(row)
            assert s.token == int(np.argmax(row))
            assert s.logprob == pytest.approx(log_softmax(row)[s.token], abs=1e-5)
            assert s.logits is None


def test_logprob_ignores_temperature_and_sums_to_cumulative() -> None:
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal(64).astype(np.float32) * 3 for _ in range(30)]
    sampler = TokenSampler(SamplingSpec(temperature=0.3, top_p=0.8, top_k=10, seed=7), 64, [])
    total, expected = 0.0, 0.0
    for row in rows:
        s = sampler.sample(row)
        total += s.logprob
        expected += log_softmax(row)[s.token]
        assert s.logprob <= 0
    assert total == pytest.approx(expected, abs=1e-4)


def test_want_logits_returns_a_fresh_processed_row() -> None:
    row = f32(1.0, 2.0, 3.0)
    bias = f32(0.0, 0.0, -INF)
    sampler = TokenSampler(SamplingSpec(temperature=0, embedding_bias=bias), 3, [], want_logits=True)
    first = sampler.sample(row)
    second = sampler.sample(row)
    assert first.token == 1
    assert logits_of(first) is not logits_of(second) and first.logits is not row
    np.testing.assert_array_equal(logits_of(first), f32(1.0, 2.0, -INF))
    np.testing.assert_array_equal(row, f32(1.0, 2.0, 3.0))  # the caller's row is untouched
    assert first.logprob == pytest.approx(log_softmax(logits_of(first))[1], abs=1e-6)


# penalties, bias, bad words, min_tokens


def test_repetition_penalty_over_prompt_and_output() -> None:
    p = 2.0
    spec = SamplingSpec(temperature=0, repetition_penalty=p)
    # step 1 draws token 3 (prompt has 0 and 1); step 2 sees 0, 1 and 3 penalised once each
    steps = [f32(4.0, -2.0, 1.0, 9.0, 0.5), f32(4.0, -2.0, 1.0, 3.0, 0.5)]
    out = processed(spec, steps, prompt=(0, 1, 1))
    np.testing.assert_allclose(logits_of(out[0]), f32(4.0 / p, -2.0 * p, 1.0, 9.0, 0.5))
    np.testing.assert_allclose(logits_of(out[1]), f32(4.0 / p, -2.0 * p, 1.0, 3.0 / p, 0.5))
    assert out[0].token == 3 and out[1].token == 0


def test_presence_and_frequency_penalties_count_output_tokens_only() -> None:
    spec = SamplingSpec(temperature=0, presence_penalty=0.5, frequency_penalty=0.25)
    force = [f32(0, 0, 0, 10, 0), f32(0, 0, 0, 10, 0), f32(0, 10, 0, 0, 0), f32(1, 1, 1, 1, 1)]
    out = processed(spec, force, prompt=(0, 2, 2))  # prompt tokens are not penalised
    assert [s.token for s in out[:3]] == [3, 3, 1]
    np.testing.assert_allclose(logits_of(out[0]), f32(0, 0, 0, 10, 0))
    np.testing.assert_allclose(logits_of(out[1]), f32(0, 0, 0, 10 - 0.5 - 0.25, 0))
    np.testing.assert_allclose(logits_of(out[2]), f32(0, 10, 0, -0.5 - 0.5, 0))
    np.testing.assert_allclose(logits_of(out[3]), f32(1, 1 - 0.75, 1, 1 - 1.0, 1))


def test_embedding_bias_is_added_and_minus_inf_forbids() -> None:
    bias = f32(0.5, -INF, 2.0, 0.0)
    out = processed(SamplingSpec(temperature=0, embedding_bias=bias), [f32(1.0, 5.0, 1.0, 2.5)])
    np.testing.assert_array_equal(logits_of(out[0]), f32(1.5, -INF, 3.0, 2.5))
    assert out[0].token == 2
    with pytest.raises(ValueError, match="embedding_bias"):
        TokenSampler(SamplingSpec(embedding_bias=f32(0, 0)), 4, [])


def test_bad_words_single_and_multi_token() -> None:
    spec = SamplingSpec(temperature=0, bad_words=((4,), (1, 2, 3), (2, 0)))
    flat = f32(1, 1, 1, 1, 1)
    steps = [f32(0, 9, 0, 0, 0), f32(0, 0, 9, 0, 0), flat, f32(9, 0, 0, 0, 0)]
    out = processed(spec, steps)
    assert [s.token for s in out[:2]] == [1, 2]
    np.testing.assert_array_equal(logits_of(out[0]), f32(0, 9, 0, 0, -INF))  # single-token word: always
    np.testing.assert_array_equal(logits_of(out[1]), f32(0, 0, 9, 0, -INF))  # output [1]: no complete prefix yet
    # output [1, 2]: "1 2 3" would complete, and so would "2 0"
    np.testing.assert_array_equal(logits_of(out[2]), f32(-INF, 1, 1, -INF, -INF))
    assert out[2].token == 1
    np.testing.assert_array_equal(logits_of(out[3]), f32(9, 0, 0, 0, -INF))


def test_min_tokens_masks_end_ids_until_reached() -> None:
    spec = SamplingSpec(temperature=0, min_tokens=2, end_ids=(0, 3))
    row = f32(9, 1, 0, 8, 0)
    out = processed(spec, [row, row, row])
    assert [s.token for s in out] == [1, 1, 0]
    np.testing.assert_array_equal(logits_of(out[0]), f32(-INF, 1, 0, -INF, 0))
    np.testing.assert_array_equal(logits_of(out[2]), row)


def test_everything_masked_raises_sampling_error() -> None:
    spec = SamplingSpec(temperature=0, embedding_bias=f32(-INF, 0, 0), bad_words=((1,), (2,)))
    sampler = TokenSampler(spec, 3, [])
    with pytest.raises(SamplingError, match="masked") as info:
        sampler.sample(f32(1, 2, 3))
    assert isinstance(info.value, ValueError)
    with pytest.raises(SamplingError):
        TokenSampler(SamplingSpec(temperature=0), 2, []).sample(f32(float("nan"), 1))


def test_shape_mismatch_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        TokenSampler(SamplingSpec(), 4, []).sample(f32(1, 2, 3))


# draws


def draws(spec: SamplingSpec, row: Row, n: int) -> list[int]:
    sampler = TokenSampler(spec, len(row), [])
    return [sampler.sample(row).token for _ in range(n)]


def test_seeded_draws_reproduce() -> None:
    rng = np.random.default_rng(5)
    rows = [rng.standard_normal(49152).astype(np.float32) * 2 for _ in range(10)]
    for extra in ({}, {"top_p": 0.9}, {"top_k": 40, "temperature": 0.7}, {"temperature": 1.3}):
        a = TokenSampler(SamplingSpec(seed=1234, **extra), 49152, [])  # type: ignore[arg-type]
        b = TokenSampler(SamplingSpec(seed=1234, **extra), 49152, [])  # type: ignore[arg-type]
        c = TokenSampler(SamplingSpec(seed=99, **extra), 49152, [])  # type: ignore[arg-type]
        ta = [a.sample(r).token for r in rows]
        assert ta == [b.sample(r).token for r in rows]
        assert ta != [c.sample(r).token for r in rows]


def test_top_k_two_never_leaves_the_top_two() -> None:
    row = f32(1.0, 3.0, 0.5, 2.9, -1.0, 2.0)
    got = Counter(draws(SamplingSpec(top_k=2, temperature=5.0, seed=0), row, 2000))
    assert set(got) == {1, 3}
    # renormalised over the two at temperature 5: exp(3/5) vs exp(2.9/5)
    p1 = 1 / (1 + math.exp(-0.1 / 5))
    assert got[1] / 2000 == pytest.approx(p1, abs=0.04)


def test_top_k_large_vocab_with_masked_tokens() -> None:
    rng = np.random.default_rng(11)
    row = rng.standard_normal(49152).astype(np.float32)
    bias = np.zeros(49152, dtype=np.float32)
    best = np.argsort(-row)[:50]
    bias[best[::2]] = -INF  # half of the top 50 forbidden
    allowed = set(np.argsort(-(row + bias))[:20].tolist())
    got = draws(SamplingSpec(top_k=20, temperature=3.0, seed=2, embedding_bias=bias), row, 400)
    assert set(got) <= allowed
    assert len(set(got)) > 10
    # fewer finite tokens than k: only those can be drawn
    only = np.full(49152, -INF, dtype=np.float32)
    only[[7, 40000]] = 0
    assert set(draws(SamplingSpec(top_k=50, seed=1, embedding_bias=only), row, 100)) == {7, 40000}


def reference_nucleus(p: NDArray[np.float64], top_p: float) -> set[int]:
    order = np.argsort(-p, kind="stable")
    cum = np.cumsum(p[order]) / p.sum()
    keep = int(np.searchsorted(cum, top_p, side="left")) + 1
    return set(order[:keep].tolist())


def test_top_p_small_vocab() -> None:
    row = np.log(f32(0.5, 0.3, 0.15, 0.05))
    assert set(draws(SamplingSpec(top_p=0.75, seed=0), row, 500)) == {0, 1}
    assert set(draws(SamplingSpec(top_p=0.85, seed=0), row, 800)) == {0, 1, 2}
    assert set(draws(SamplingSpec(top_p=0.1, seed=0), row, 50)) == {0}  # at least one token
    assert set(draws(SamplingSpec(top_p=1.0, seed=0), row, 1500)) == {0, 1, 2, 3}
    assert set(draws(SamplingSpec(top_p=0.0, seed=0), row, 1500)) == {0, 1, 2, 3}  # 0: no limit
    got = Counter(draws(SamplingSpec(top_p=0.75, seed=4), row, 4000))
    assert got[0] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)


@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])
@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.995])
def test_top_p_nucleus_matches_a_full_sort(scale: float, top_p: float) -> None:
    rng = np.random.default_rng(int(scale * 10) + int(top_p * 1000))
    row = rng.standard_normal(49152).astype(np.float32) * scale
    sampler = TokenSampler(SamplingSpec(top_p=top_p, seed=0), 49152, [])
    p = np.exp(row - row.max())
    ids, weights = sampler._top_p_ids(p)
    expected = reference_nucleus(p.astype(np.float64), top_p)
    got = set(ids.tolist())
    # the same set up to float rounding at the boundary token
    assert len(got ^ expected) <= 1
    assert len(got) == len(ids)
    np.testing.assert_array_equal(weights, p[ids])
    drawn = draws(SamplingSpec(top_p=top_p, seed=3), row, 200)
    assert set(drawn) <= got


def test_top_p_with_temperature_uses_the_tempered_distribution() -> None:
    row = np.log(f32(0.5, 0.3, 0.15, 0.05))
    # at temperature 0.5 the probabilities are proportional to the squares: 0.685, 0.247, 0.062, 0.007
    assert set(draws(SamplingSpec(top_p=0.6, temperature=0.5, seed=0), row, 300)) == {0}
    assert set(draws(SamplingSpec(top_p=0.8, temperature=0.5, seed=0), row, 600)) == {0, 1}


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_plain_draws_follow_the_softmax(temperature: float) -> None:
    vocab = 49152
    row = np.full(vocab, -30.0, dtype=np.float32)
    hot = [3, 1000, 20000, 49151]  # spread over different blocks
    row[hot] = f32(0.0, 1.0, 0.5, -0.5)
    n = 3000
    got = Counter(draws(SamplingSpec(temperature=temperature, seed=8), row, n))
    weights = np.exp(row.astype(np.float64) / temperature)
    expected = weights / weights.sum()
    for t in hot:
        assert got[t] / n == pytest.approx(expected[t], abs=0.03)
    assert sum(got[t] for t in hot) / n == pytest.approx(expected[hot].sum(), abs=0.01)


def test_invalid_specs() -> None:
    with pytest.raises(ValueError):
        TokenSampler(SamplingSpec(top_k=-1), 4, [])
    with pytest.raises(ValueError):
        TokenSampler(SamplingSpec(repetition_penalty=0.0), 4, [])
    assert not TokenSampler(SamplingSpec(), 4, []).must_end
