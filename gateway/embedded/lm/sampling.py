"""Per-sequence logits processing and token draws (numpy only), with TensorRT-LLM's semantics.

Processing, in order: embedding bias; repetition penalty over the prompt and output tokens (positive logits
divided, negative multiplied); presence and frequency penalties over the output tokens; bad words; end ids
forbidden before ``min_tokens``; the grammar mask. Logprobs are the log-softmax of these processed logits.
Temperature, top-k and top-p only shape the draw. Per-step cost is O(vocab) vectorised work plus
O(distinct seen tokens) for the penalties: no full sort of the vocabulary, no Python loop over it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from gateway.embedded.lm.grammar import Matcher

_NEG_INF = np.float32(-np.inf)
# top-p buckets: float32 bits >> 20 (probabilities are in [0, 1], so at most 0x3F800000 >> 20 = 1016)
_BUCKET_SHIFT = 20
_N_BUCKETS = (0x3F800000 >> _BUCKET_SHIFT) + 1
_TOP_K_BLOCKS = 256  # top-k: a threshold from block maxima narrows the candidates before any partition


class SamplingError(ValueError):
    """No token can be drawn (every token masked, a grammar dead end, non-finite logits)."""


@dataclass(frozen=True, slots=True)
class SamplingSpec:
    temperature: float = 1.0  # <= 0 means greedy; so does top_k == 1
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0  # 0 or >= 1: no limit
    seed: int | None = None
    repetition_penalty: float = 1.0  # tokens seen in prompt + output: logit / p if logit > 0 else logit * p
    presence_penalty: float = 0.0  # subtracted once for every token present in the output
    frequency_penalty: float = 0.0  # subtracted count times for output tokens
    min_tokens: int = 0  # end ids forbidden before this many output tokens
    end_ids: tuple[int, ...] = ()
    embedding_bias: NDArray[np.float32] | None = None  # [vocab], added to the logits
    bad_words: tuple[tuple[int, ...], ...] = ()  # token sequences never to produce


class Sampled(NamedTuple):
    token: int
    logprob: float  # log_softmax(processed logits)[token]
    logits: NDArray[np.float32] | None  # the processed logits row, when the sampler was made with want_logits


class TokenSampler:
    """One sequence's sampler: processes each step's raw logits, draws a token and accepts it."""

    def __init__(
        self,
        spec: SamplingSpec,
        vocab_size: int,
        prompt_ids: Sequence[int],
        grammar: Matcher | None = None,
        want_logits: bool = False,
    ) -> None:
        if vocab_size <= 0:
            raise ValueError("vocab_size must be positive")
        if spec.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if spec.top_p < 0:
            raise ValueError("top_p must be >= 0")
        if not spec.repetition_penalty > 0:
            raise ValueError("repetition_penalty must be > 0")
        self._spec = spec
        self._vocab = vocab_size
        self._grammar = grammar
        self._want_logits = want_logits
        self._greedy = spec.temperature <= 0 or spec.top_k == 1
        self._top_k = spec.top_k if 1 < spec.top_k < vocab_size else 0
        self._top_p = float(spec.top_p) if 0 < spec.top_p < 1 else 1.0
        self._rng: np.random.Generator | None = None

        self._bias: NDArray[np.float32] | None = None
        if spec.embedding_bias is not None:
            bias = np.ascontiguousarray(spec.embedding_bias, dtype=np.float32)
            if bias.shape != (vocab_size,):
                raise ValueError(f"embedding_bias has shape {bias.shape}, expected ({vocab_size},)")
            self._bias = bias

        # repetition penalty: distinct tokens of prompt + output
        self._rep = float(spec.repetition_penalty)
        self._seen_set: set[int] = set()
        self._seen = np.empty(0, dtype=np.intp)
        if self._rep != 1.0:
            self._seen_set = {int(t) for t in prompt_ids if 0 <= int(t) < vocab_size}
            self._seen = np.fromiter(sorted(self._seen_set), dtype=np.intp, count=len(self._seen_set))

        # presence / frequency penalties: distinct output tokens and their counts
        self._presence = float(spec.presence_penalty)
        self._frequency = float(spec.frequency_penalty)
        self._counting = self._presence != 0.0 or self._frequency != 0.0
        self._out_index: dict[int, int] = {}
        self._out_ids = np.empty(0, dtype=np.intp)
        self._out_counts = np.empty(0, dtype=np.float32)

        single = sorted({w[0] for w in spec.bad_words if len(w) == 1 and 0 <= w[0] < vocab_size})
        self._bad_single = np.asarray(single, dtype=np.intp)
        self._bad_multi = [(list(w[:-1]), w[-1]) for w in spec.bad_words if len(w) > 1 and 0 <= w[-1] < vocab_size]
        self._end_ids = np.asarray(sorted({e for e in spec.end_ids if 0 <= e < vocab_size}), dtype=np.intp)

        self._output: list[int] = []
        # per-step work buffers (fresh 200-400 KB arrays every step cost more than the arithmetic)
        self._x = np.empty(vocab_size, dtype=np.float32)
        self._shifted = np.empty(vocab_size, dtype=np.float32)
        self._probs = np.empty(vocab_size, dtype=np.float32)
        self._pt = np.empty(vocab_size, dtype=np.float32) if not self._greedy and spec.temperature != 1.0 else None
        top_p_bufs = not self._greedy and not self._top_k and self._top_p < 1.0
        self._buckets = np.empty(vocab_size, dtype=np.intp) if top_p_bufs else None
        self._weights = np.empty(vocab_size, dtype=np.float64) if top_p_bufs else None
        # ragged block starts over the vocabulary, for two-level draws and top-k thresholds
        self._block_starts = np.arange(0, vocab_size, -(-vocab_size // _TOP_K_BLOCKS), dtype=np.intp)

    @property
    def must_end(self) -> bool:
        """The grammar is complete: nothing but the end may follow."""
        return self._grammar is not None and self._grammar.done

    @property
    def output_ids(self) -> list[int]:
        """The tokens accepted so far (a copy)."""
        return list(self._output)

    def process(self, logits: NDArray[np.float32]) -> NDArray[np.float32]:
        """The processed logits row (a new array): bias, penalties, bad words, min_tokens, grammar mask."""
        x = np.empty(self._vocab, dtype=np.float32)
        self._process_into(logits, x)
        return x

    def _process_into(self, logits: NDArray[np.float32], x: NDArray[np.float32]) -> None:
        row = np.asarray(logits)
        if row.shape != (self._vocab,):
            raise ValueError(f"logits have shape {row.shape}, expected ({self._vocab},)")
        if self._bias is not None:
            np.add(row, self._bias, out=x)
        else:
            np.copyto(x, row)
        if self._seen.size:
            v = x[self._seen]
            x[self._seen] = np.where(v > 0, v / self._rep, v * self._rep)
        if self._out_ids.size:
            x[self._out_ids] -= self._presence + self._frequency * self._out_counts
        if self._bad_single.size:
            x[self._bad_single] = _NEG_INF
        out = self._output
        for prefix, last in self._bad_multi:
            n = len(prefix)
            if n <= len(out) and out[len(out) - n :] == prefix:
                x[last] = _NEG_INF
        grammar = self._grammar
        if len(out) < self._spec.min_tokens and self._end_ids.size and not (grammar is not None and grammar.done):
            x[self._end_ids] = _NEG_INF  # a complete grammar wins over min_tokens: nothing else could follow
        if grammar is not None:
            try:
                grammar.mask(x)
            except ValueError as e:
                raise SamplingError(f"grammar: {e}") from e

    def sample(self, logits: NDArray[np.float32]) -> Sampled:
        """Process the raw logits, draw a token, accept it (penalty counts, grammar); SamplingError if none can be."""
        x = np.empty(self._vocab, dtype=np.float32) if self._want_logits else self._x
        self._process_into(logits, x)
        top = int(np.argmax(x))
        m = float(x[top])
        if not math.isfinite(m):
            reason = "every token is masked" if m == -math.inf else f"logits contain {m}"
            raise SamplingError(f"no token can be drawn: {reason} (after {len(self._output)} output tokens)")
        shifted = np.subtract(x, np.float32(m), out=self._shifted)
        probs = np.exp(shifted, out=self._probs)  # unnormalised softmax of the processed logits, max 1
        lse = math.log(float(probs.sum()))
        token = top if self._greedy else self._draw(shifted, probs)
        logprob = float(shifted[token]) - lse
        self.accept(token)
        return Sampled(token, logprob, x if self._want_logits else None)

    def accept(self, token: int) -> None:
        """Record a token as produced (penalty counts, bad-word context, grammar state)."""
        if not 0 <= token < self._vocab:
            raise SamplingError(f"token {token} is outside the vocabulary ({self._vocab})")
        self._output.append(token)
        if self._rep != 1.0 and token not in self._seen_set:
            self._seen_set.add(token)
            self._seen = np.append(self._seen, token)
        if self._counting:
            i = self._out_index.get(token)
            if i is None:
                self._out_index[token] = len(self._out_ids)
                self._out_ids = np.append(self._out_ids, token)
                self._out_counts = np.append(self._out_counts, np.float32(1))
            else:
                self._out_counts[i] += 1
        if self._grammar is not None:
            try:
                self._grammar.consume(token)
            except ValueError as e:
                raise SamplingError(f"grammar: {e}") from e

    # draws

    def _generator(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(self._spec.seed)
        return self._rng

    def _draw(self, shifted: NDArray[np.float32], probs: NDArray[np.float32]) -> int:
        """Draw from softmax(processed / temperature) restricted by top-k then top-p."""
        t = float(self._spec.temperature)
        if self._top_k:
            ids = self._top_k_ids(shifted, self._top_k)
            p = np.exp(shifted[ids] / np.float32(t)) if t != 1.0 else probs[ids]
            if self._top_p < 1.0:
                ids, p = _nucleus(ids, p, self._top_p * float(p.sum(dtype=np.float64)))
            return int(ids[_pick(np.cumsum(p, dtype=np.float64), self._generator())])
        pt = probs if self._pt is None else np.exp(np.multiply(shifted, np.float32(1 / t), out=self._pt), out=self._pt)
        if self._top_p < 1.0:
            ids, p = self._top_p_ids(pt)
            return int(ids[_pick(np.cumsum(p, dtype=np.float64), self._generator())])
        # two-level inverse-CDF draw over the whole vocabulary (one uniform): a block by block sums, then a token
        cum = np.cumsum(np.add.reduceat(pt, self._block_starts, dtype=np.float64))
        u = self._generator().random() * float(cum[-1])
        b = _index(cum, u)
        lo = int(self._block_starts[b])
        hi = int(self._block_starts[b + 1]) if b + 1 < len(self._block_starts) else self._vocab
        return lo + _index(np.cumsum(pt[lo:hi], dtype=np.float64), u - (float(cum[b - 1]) if b else 0.0))

    def _top_k_ids(self, shifted: NDArray[np.float32], k: int) -> NDArray[np.intp]:
        """The ids of the k largest logits (unordered; fewer when fewer are finite)."""
        starts = self._block_starts
        if k <= len(starts):
            # each block max is a distinct element, so the k-th largest block max bounds the k-th largest logit
            maxima = np.maximum.reduceat(shifted, starts)
            bound = np.partition(maxima, len(maxima) - k)[len(maxima) - k]
            ids = np.flatnonzero(shifted >= bound) if bound > -np.inf else np.flatnonzero(shifted > -np.inf)
        else:
            ids = np.flatnonzero(shifted > -np.inf)
        if ids.size > k:
            ids = ids[np.argpartition(shifted[ids], ids.size - k)[ids.size - k :]]
        return ids

    def _top_p_ids(self, pt: NDArray[np.float32]) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
        """The nucleus of the unnormalised probabilities (unordered), without sorting the vocabulary.

        Positive float32 bit patterns order like their values, so ``bits >> 20`` buckets the probabilities
        monotonically (8 buckets per power of two). Whole buckets from the top are in the nucleus until the
        one where the mass crosses top_p; only that bucket is sorted.
        """
        assert self._buckets is not None and self._weights is not None
        # bincount is fast on intp buckets and float64 weights (slow paths otherwise)
        buckets = self._buckets
        np.copyto(buckets, pt.view(np.int32) >> _BUCKET_SHIFT)
        np.copyto(self._weights, pt)
        mass = np.bincount(buckets, weights=self._weights, minlength=_N_BUCKETS)[::-1]  # mass[j]: bucket n - 1 - j
        cum = np.cumsum(mass)
        j = int(np.searchsorted(cum, self._top_p * float(cum[-1]), side="left"))
        crossing = len(mass) - 1 - j
        if crossing <= 0:  # rounding at top_p close to 1: every token with a positive probability
            ids = np.flatnonzero(pt > 0)
            return ids, pt[ids]
        top = np.flatnonzero(buckets >= crossing)
        in_band = buckets[top] == crossing
        above, band = top[~in_band], top[in_band]
        band_ids, band_p = _nucleus(band, pt[band], float(self._top_p * cum[-1] - (cum[j - 1] if j else 0.0)))
        return np.concatenate((above, band_ids)), np.concatenate((pt[above], band_p))


def _nucleus(
    ids: NDArray[np.intp], p: NDArray[np.float32], mass: float
) -> tuple[NDArray[np.intp], NDArray[np.float32]]:
    """Keep the most probable tokens, largest first, until their weight reaches ``mass`` (at least one)."""
    order = np.argsort(-p, kind="stable")
    ids, p = ids[order], p[order]
    cum = np.cumsum(p, dtype=np.float64)
    keep = min(int(np.searchsorted(cum, mass, side="left")) + 1, len(p))
    return ids[:keep], p[:keep]


def _pick(cum: NDArray[np.float64], rng: np.random.Generator) -> int:
    """Inverse-CDF draw: the index whose cumulative weight first exceeds a uniform point in [0, total)."""
    return _index(cum, rng.random() * float(cum[-1]))


def _index(cum: NDArray[np.float64], u: float) -> int:
    """The first index whose cumulative weight exceeds u; the last one with a positive weight if none does."""
    i = int(np.searchsorted(cum, u, side="right"))
    return i if i < len(cum) else int(np.searchsorted(cum, cum[-1], side="left"))
