"""Run an encoder ONNX model (BERT-like: token ids, attention mask, token types) over many requests at once.

Each request is a block of rows ``[n, T]``; the blocks of one batch may differ in ``T``. :meth:`Encoder.run`
pads every row to the longest, makes one ONNX Runtime call for all of them (so concurrent requests
share a forward pass), and returns one row of output per input row, in order. A batch larger than
``max_batch_tokens`` padded tokens runs in a few calls instead, rows of similar length together, which
bounds the activations' memory (attention grows with the square of the length).

* task ``embed``: ``[rows, dim]`` float32, pooled over the attention mask (``mean``, or the first
  token's state for ``cls``) and L2-normalised when asked. A model whose graph already pools (a 2-D
  output) is taken as it is, normalised when asked.
* task ``score``: ``[rows, 1]`` float32, the cross-encoder's raw logit per (query, document) row.

Padding does not change a row's result: padded positions carry mask 0, which the model's attention
and the pooling both ignore. Not thread-safe; one caller at a time (Triton calls execute serially).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from gateway.embedded.ort_session import cpu_session

log = logging.getLogger(__name__)

Task = Literal["embed", "score"]
Pooling = Literal["mean", "cls"]
TASKS: tuple[Task, ...] = ("embed", "score")
POOLINGS: tuple[Pooling, ...] = ("mean", "cls")

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float32]
# input_ids, attention_mask, token_type_ids: each [n, T] (or [T] for one row)
Rows = tuple[NDArray[Any], NDArray[Any], NDArray[Any]]


class Block(NamedTuple):
    """One request's rows as :meth:`Encoder.check` passed them: int64 ``[n, T]`` each."""

    ids: IntArray
    mask: IntArray
    types: IntArray


INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# padded tokens (rows x longest row) per ONNX Runtime call. A batch within it is one call; a larger one
# runs in calls of rows of similar length. MiniLM on CPU: ~600 MiB of activations at 8192 tokens (32 rows
# of 256 or 128 of 64), and per-token speed no better in larger calls, while 256 rows of 256 take ~5 GiB.
MAX_BATCH_TOKENS = 8192

# outputs looked for, best first: an already pooled [B, dim] output, then the token states [B, T, dim]
_POOLED_NAMES = ("embeddings", "sentence_embedding")
_TOKEN_STATE_NAMES = ("last_hidden_state", "token_embeddings")
_LOGIT_NAMES = ("logits", "scores")


class Encoder:
    """One ONNX Runtime session over an encoder graph, for one task."""

    def __init__(
        self,
        path: Path,
        *,
        task: Task = "embed",
        pooling: Pooling = "mean",
        normalize: bool = True,
        threads: int = 0,
        vocab_size: int | None = None,
        type_vocab_size: int = 2,
        max_length: int | None = None,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        """Load ``path``. ``threads``: ONNX Runtime's intra-op threads, 0 for its default.

        ``vocab_size``, ``type_vocab_size`` and ``max_length`` bound what :meth:`check` accepts, so a
        request the graph would fail on is refused alone instead of failing the whole batch.
        ``max_batch_tokens``: the most padded tokens (rows x longest) one ONNX Runtime call takes.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        self._session = cpu_session(path, threads)
        self.task: Task = task
        self.pooling: Pooling = pooling
        self.normalize = normalize
        self.vocab_size = vocab_size
        self.type_vocab_size = type_vocab_size
        self.max_length = max_length
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be at least 1")
        self.max_batch_tokens = max_batch_tokens
        names = [i.name for i in self._session.get_inputs()]
        missing = [n for n in ("input_ids", "attention_mask") if n not in names]
        unknown = [n for n in names if n not in INPUT_NAMES]
        if missing or unknown:
            raise ValueError(f"{path.name}: inputs {names}; expected {', '.join(INPUT_NAMES)} (token types optional)")
        self._feeds = [INPUT_NAMES.index(n) for n in names]  # which of a Rows tuple each graph input takes
        self._input_names = names
        self._output, self._rank = self._pick_output(path.name)
        log.info("%s: task %s, output %s (rank %d)", path.name, task, self._output, self._rank)

    def _pick_output(self, file: str) -> tuple[str, int]:
        outputs = {o.name: len(o.shape) for o in self._session.get_outputs()}
        if self.task == "score":
            wanted = [n for n in _LOGIT_NAMES if n in outputs] or list(outputs)
            name = wanted[0]
            if outputs[name] not in (1, 2):
                raise ValueError(f"{file}: score output {name} has rank {outputs[name]}; expected [B] or [B, 1]")
            return name, outputs[name]
        for names, rank in ((_POOLED_NAMES, 2), (_TOKEN_STATE_NAMES, 3)):
            for name in names:
                if outputs.get(name) == rank:
                    return name, rank
        for rank in (3, 2):
            for name, r in outputs.items():
                if r == rank:
                    return name, rank
        raise ValueError(f"{file}: no [B, T, dim] or [B, dim] output among {outputs}")

    def check(self, rows: Rows) -> Block:
        """``rows`` as three int64 ``[n, T]`` arrays; ValueError saying what is wrong with them."""
        if len(rows) != 3:
            raise ValueError(f"expected {', '.join(INPUT_NAMES)}; got {len(rows)} tensors")
        arrays = [np.asarray(a) for a in rows]
        for name, a in zip(INPUT_NAMES, arrays, strict=True):
            if a.dtype.kind not in "iu":
                raise ValueError(f"{name} must hold integers, not {a.dtype}")
            if a.ndim not in (1, 2):
                raise ValueError(f"{name} must be [batch, tokens] or [tokens], not {list(a.shape)}")
        shape = arrays[0].shape
        if any(a.shape != shape for a in arrays[1:]):
            shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in zip(INPUT_NAMES, arrays, strict=True))
            raise ValueError(f"input shapes differ: {shapes}")
        ids, mask, types = (np.ascontiguousarray(np.atleast_2d(a), dtype=np.int64) for a in arrays)
        n, length = ids.shape
        if n == 0 or length == 0:
            raise ValueError(f"no tokens: input shape {list(shape)}")
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"{length} tokens; at most {self.max_length}")
        if self.vocab_size is not None and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"input_ids out of range [0, {self.vocab_size})")
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError("attention_mask must hold 0 or 1")
        if not mask.any(axis=1).all():
            raise ValueError("a row's attention_mask has no token")
        if types.min() < 0 or types.max() >= self.type_vocab_size:
            raise ValueError(f"token_type_ids out of range [0, {self.type_vocab_size})")
        return Block(ids, mask, types)

    def run(self, batch: Sequence[Rows]) -> FloatArray:
        """One output row per input row of every block in ``batch``; ValueError, before any work,
        for the first block :meth:`check` refuses."""
        return self.run_checked([self.check(rows) for rows in batch])

    def run_checked(self, blocks: Sequence[Block]) -> FloatArray:
        """:meth:`run` over blocks :meth:`check` has passed already (a caller that refuses bad
        requests one by one checks each once, then runs the rest together)."""
        if not blocks:
            raise ValueError("nothing to run")
        ids, mask, types = (_stack([b[i] for b in blocks]) for i in range(3))
        # tokens up to each row's last unmasked one: what the row needs, whatever padding it came with
        lengths = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)
        total = ids.shape[0]
        if total * int(lengths.max()) <= self.max_batch_tokens:
            return self._forward(ids, mask, types, int(lengths.max()))
        out: FloatArray | None = None
        for rows in _chunks(lengths, self.max_batch_tokens):
            length = int(lengths[rows[-1]])
            part = self._forward(ids[rows], mask[rows], types[rows], length)
            if out is None:
                out = np.empty((total, part.shape[1]), dtype=np.float32)
            out[rows] = part
        assert out is not None
        return out

    def _forward(self, ids: IntArray, mask: IntArray, types: IntArray, length: int) -> FloatArray:
        """One ONNX Runtime call over ``[B, length]``, then the task's output ``[B, dim]`` or ``[B, 1]``."""
        arrays = [np.ascontiguousarray(a[:, :length]) for a in (ids, mask, types)]
        feeds = {name: arrays[i] for name, i in zip(self._input_names, self._feeds, strict=True)}
        (out,) = self._session.run([self._output], feeds)
        result = np.asarray(out, dtype=np.float32)
        rows = ids.shape[0]
        if self.task == "score":
            return _logit_column(result, rows)
        if self._rank == 3:
            result = _pool(result, arrays[1], self.pooling)
        if result.ndim != 2 or result.shape[0] != rows:
            raise ValueError(f"model output {self._output} is {list(result.shape)}; expected [{rows}, dim]")
        return _l2_normalize(result) if self.normalize else result


def _stack(blocks: list[IntArray]) -> IntArray:
    """Blocks ``[n_i, T_i]`` as one ``[sum n_i, max T_i]``, zero-padded on the right."""
    longest = max(b.shape[1] for b in blocks)
    out = np.zeros((sum(b.shape[0] for b in blocks), longest), dtype=np.int64)
    start = 0
    for block in blocks:
        n, length = block.shape
        out[start : start + n, :length] = block
        start += n
    return out


def _chunks(lengths: NDArray[np.int64], budget: int) -> list[NDArray[np.intp]]:
    """Row indices, shortest first, in runs whose padded size (rows x longest) stays within ``budget``."""
    order = np.argsort(lengths, kind="stable")
    chunks: list[NDArray[np.intp]] = []
    begin = 0
    for end in range(1, len(order) + 1):
        if end == len(order) or (end - begin + 1) * int(lengths[order[end]]) > budget:
            chunks.append(order[begin:end])
            begin = end
    return chunks


def _pool(states: FloatArray, mask: IntArray, pooling: Pooling) -> FloatArray:
    """``[B, T, dim]`` to ``[B, dim]``: the mean over the mask's tokens, or the first token's state."""
    if pooling == "cls":
        return np.ascontiguousarray(states[:, 0, :])
    weights = mask.astype(np.float32)
    summed = np.einsum("btd,bt->bd", states, weights, optimize=False)
    counts = np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)  # sentence-transformers' clamp
    return np.asarray(summed / counts, dtype=np.float32)


def _l2_normalize(x: FloatArray) -> FloatArray:
    norms = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # torch's F.normalize eps
    return np.asarray(x / norms, dtype=np.float32)


def _logit_column(out: FloatArray, total: int) -> FloatArray:
    if out.shape in ((total,), (total, 1)):
        return out.reshape(total, 1)
    raise ValueError(f"score output is {list(out.shape)}; expected [{total}] or [{total}, 1]")
