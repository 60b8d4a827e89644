"""Whisper on CPU with CTranslate2: a batch of (audio, decoder prefix, temperature) -> text.

The prefix is Whisper's decoder prompt written as text, special tokens spelt out::

    <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    <|startofprev|> earlier words<|startoftranscript|><|fr|><|transcribe|>

A prefix with no language token right after ``<|startoftranscript|>`` gets the most likely language
(CTranslate2's ``detect_language``) inserted there, and the output then starts with that token. A
prefix without ``<|notimestamps|>`` decodes with timestamp tokens. The output is the continuation of
the prefix as text, special tokens spelt out, ``<|endoftext|>`` dropped::

    <|en|><|0.00|> The quick brown fox.<|2.40|>

One batch: the features of every item in one array, one encoder pass, language detection for the
items that need it (on the encoder's output), then one ``generate`` call per group of items that
CTranslate2 can decode together (same temperature, same number of tokens before and after
``<|startoftranscript|>``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import ctranslate2  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from gateway.embedded.whisper_features import N_SAMPLES, log_mel

SOT = "<|startoftranscript|>"
SOT_PREV = "<|startofprev|>"
EOT = "<|endoftext|>"
NO_TIMESTAMPS = "<|notimestamps|>"
MAX_LENGTH = 448  # Whisper's decoder context
_SPECIAL = re.compile(r"(<\|[^<>|]*\|>)")


class Transcription(NamedTuple):
    """One window of audio: 16 kHz mono samples (at most 30 s), the decoder prefix, the temperature."""

    samples: npt.NDArray[np.float32]
    prefix: str
    temperature: float = 0.0


@dataclass(frozen=True)
class Prompt:
    """A parsed prefix: its token ids, and whether the language is to be detected and put at ``sot + 1``."""

    ids: tuple[int, ...]
    sot: int  # the index of <|startoftranscript|>
    detect_language: bool


class Checked(NamedTuple):
    """An item :meth:`WhisperRunner.check` has passed, with its parsed prompt."""

    item: Transcription
    prompt: Prompt


class WhisperVocabulary:
    """Prefix text -> token ids, output ids -> text: special tokens by name, the rest by the BPE."""

    def __init__(self, weights: Path, max_length: int = MAX_LENGTH) -> None:
        tokens: list[str] = json.loads((weights / "vocabulary.json").read_text(encoding="utf-8"))
        config = json.loads((weights / "config.json").read_text(encoding="utf-8"))
        self.tokens = tokens
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.tokenizer = Tokenizer.from_file(str(weights / "tokenizer.json"))
        self.eot = self.ids[EOT]
        self.sot = self.ids[SOT]
        self.sot_prev = self.ids[SOT_PREV]
        self.languages = frozenset(int(i) for i in config["lang_ids"])
        self.max_length = max_length
        self.max_previous = max_length // 2 - 1  # as Whisper: half the context for earlier text

    def prompt(self, prefix: str) -> Prompt:
        """Parse ``prefix``; ValueError for an unknown special token, a missing or doubled SOT, or a
        prompt that leaves the decoder no room (text before SOT is cut to the latest ``max_previous``
        tokens, as Whisper does, so only what follows SOT can be too long)."""
        ids: list[int] = []
        for part in _SPECIAL.split(prefix):
            if not part:
                continue
            if _SPECIAL.fullmatch(part):
                token = self.ids.get(part)
                if token is None or token < self.eot:
                    raise ValueError(f"unknown special token {part} in TEXT_PREFIX")
                ids.append(token)
            else:
                ids.extend(self.tokenizer.encode(part, add_special_tokens=False).ids)
        if ids.count(self.sot) != 1:
            raise ValueError(f"TEXT_PREFIX must hold {SOT} once")
        sot = ids.index(self.sot)
        if sot > 0 and ids[0] == self.sot_prev and sot - 1 > self.max_previous:
            ids = [self.sot_prev, *ids[sot - self.max_previous : sot], *ids[sot:]]  # keep the latest text
            sot = self.max_previous + 1
        detect = sot + 1 >= len(ids) or ids[sot + 1] not in self.languages
        if len(ids) + detect >= self.max_length:
            raise ValueError(f"TEXT_PREFIX is {len(ids) + detect} tokens; at most {self.max_length - 1}")
        return Prompt(tuple(ids), sot, detect)

    def text(self, ids: Sequence[int]) -> str:
        """Output ids as text: runs of text tokens through the BPE's decoder, special tokens by name."""
        parts: list[str] = []
        run: list[int] = []
        for token in ids:
            if token < self.eot:
                run.append(token)
                continue
            if run:
                parts.append(self.tokenizer.decode(run, skip_special_tokens=False))
                run = []
            if token != self.eot:
                parts.append(self.tokens[token])
        if run:
            parts.append(self.tokenizer.decode(run, skip_special_tokens=False))
        return "".join(parts)


class WhisperRunner:
    """One CTranslate2 Whisper model and its vocabulary.

    ``transcribe_batch`` checks and transcribes; a caller that refuses bad items one by one calls
    ``check`` on each, then ``transcribe_checked`` on those that passed (each prefix parsed once).
    """

    def __init__(
        self,
        weights: Path,
        compute_type: str = "int8",
        threads: int = 0,
        beam_size: int = 1,
        max_length: int = MAX_LENGTH,
    ) -> None:
        if beam_size < 1 or max_length < 2:
            raise ValueError("beam_size must be at least 1 and max_length at least 2")
        self.vocabulary = WhisperVocabulary(weights, max_length)
        self.model = ctranslate2.models.Whisper(
            str(weights), device="cpu", compute_type=compute_type, intra_threads=threads
        )
        self.beam_size = beam_size
        self.max_length = max_length

    def check(self, item: Transcription) -> Checked:
        """The item with its prompt; ValueError when it cannot be transcribed (so a caller can refuse it alone)."""
        samples = np.asarray(item.samples)
        if samples.ndim != 1 or samples.size > N_SAMPLES:
            raise ValueError(f"WAV must be at most {N_SAMPLES} samples (30 s at 16 kHz) of one channel")
        if not np.isfinite(samples).all():
            raise ValueError("WAV holds a NaN or an infinity")
        if not math.isfinite(item.temperature) or item.temperature < 0:
            raise ValueError("TEMPERATURE must be a finite number >= 0")
        return Checked(item, self.vocabulary.prompt(item.prefix))

    def transcribe_batch(self, items: Sequence[Transcription]) -> list[str]:
        """The text of each item, in order. ValueError, before any work, for a bad item (see :meth:`check`)."""
        return self.transcribe_checked([self.check(item) for item in items])

    def transcribe_checked(self, checked: Sequence[Checked]) -> list[str]:
        """The text of each item :meth:`check` passed, in order."""
        if not checked:
            return []
        items = [c.item for c in checked]
        prompts = [c.prompt for c in checked]
        features = log_mel(np.stack([_window(item.samples) for item in items]))
        encoded = np.asarray(self.model.encode(ctranslate2.StorageView.from_array(features), to_cpu=True))
        ids = [list(p.ids) for p in prompts]
        languages: dict[int, int] = {}
        need = [i for i, p in enumerate(prompts) if p.detect_language]
        if need:
            rows = _rows(encoded, need)
            found = self.model.detect_language(ctranslate2.StorageView.from_array(rows))
            for i, ranked in zip(need, found, strict=True):
                languages[i] = self.vocabulary.ids[ranked[0][0]]
                ids[i].insert(prompts[i].sot + 1, languages[i])
        outputs: list[list[int]] = [[] for _ in items]
        for group in _groups(items, prompts, ids):
            for i, result in zip(group, self._generate(encoded, group, ids, items[group[0]].temperature), strict=True):
                outputs[i] = result
        return [self.vocabulary.text([languages[i], *out] if i in languages else out) for i, out in enumerate(outputs)]

    def _generate(
        self, encoded: npt.NDArray[np.float32], group: list[int], ids: list[list[int]], temperature: float
    ) -> list[list[int]]:
        sampled = temperature > 0
        rows = _rows(encoded, group)  # CTranslate2 reads this array in place: it lives until the call returns
        results = self.model.generate(
            ctranslate2.StorageView.from_array(rows),
            [ids[i] for i in group],
            beam_size=1 if sampled else self.beam_size,
            max_length=self.max_length,
            sampling_topk=0 if sampled else 1,  # 0: the whole distribution
            sampling_temperature=temperature if sampled else 1.0,
        )
        return [list(r.sequences_ids[0]) for r in results]


def _window(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """One item's samples zero-padded to 30 s (so the batch stacks)."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    out = np.zeros(N_SAMPLES, dtype=np.float32)
    out[: audio.size] = audio
    return out


def _rows(encoded: npt.NDArray[np.float32], rows: list[int]) -> npt.NDArray[np.float32]:
    """The encoder output of these items, contiguous (the whole array when they are all of it)."""
    if rows == list(range(len(encoded))):
        return encoded
    return np.ascontiguousarray(encoded[rows])


def _groups(items: Sequence[Transcription], prompts: list[Prompt], ids: list[list[int]]) -> list[list[int]]:
    """Item indices CTranslate2 decodes in one call: same temperature, SOT position and length after it."""
    groups: dict[tuple[float, int, int], list[int]] = {}
    for i, (item, prompt) in enumerate(zip(items, prompts, strict=True)):
        key = (float(item.temperature), prompt.sot, len(ids[i]) - prompt.sot)
        groups.setdefault(key, []).append(i)
    return list(groups.values())
