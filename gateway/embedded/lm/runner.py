"""Run the engine's ONNX graph: KV-cache slots, prefill, and decode steps batched over slots.

Each open slot owns one row of a K and a V buffer per layer (``[max_sequences, kv_heads, capacity,
head_dim]`` float32, capacity = ``context_length``), in anonymous memory the OS commits page by page
as rows fill and takes back when a slot closes: 45 KiB per cached token for SmolLM2-135M, at most
``max_sequences * context_length * 45 KiB`` (2.8 GiB for 8 slots of 8192). ONNX Runtime reads and
writes those buffers in place (IOBinding, past and present bound to the same memory), so a step
copies no cache. Open slots occupy rows ``0..n-1``: closing a slot moves the last row's cache into
the freed row (one copy of that sequence's cache), so a decode over every open slot is one
contiguous batch. A decode over a subset runs the rows between the lowest and the highest asked
for; rows in between that were not asked for take a throwaway step (it writes one scratch position
past their end, which their next step overwrites, and their logits are dropped).

Not thread-safe: one thread (the scheduler) makes every call.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.embedded.lm.graph import FORMAT_VERSION, INT8_MODEL_FILE, MODEL_FILE
from gateway.embedded.ort_session import cpu_session

log = logging.getLogger(__name__)

MAX_CONTEXT = 8192  # per-slot cap on tokens (prompt + output), whatever the model was trained on
PREFILL_CHUNK = 256  # prompt tokens per run: bounds attention scratch (heads x chunk x context floats, 75 MiB)


class CausalLM:
    """A causal LM over an ONNX graph built by :mod:`gateway.embedded.lm.graph`."""

    vocab_size: int
    context_length: int

    def __init__(
        self, weights_dir: Path, *, max_sequences: int = 8, threads: int = 0, int8_activations: bool = False
    ) -> None:
        """Load the graph from ``weights_dir`` (``model.int8.onnx`` with ``int8_activations``).

        ``threads``: ONNX Runtime's intra-op threads, 0 for its default (one per physical core).
        """
        if max_sequences < 1:
            raise ValueError("max_sequences must be at least 1")
        path = Path(weights_dir) / (INT8_MODEL_FILE if int8_activations else MODEL_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"no {path.name} in {weights_dir}: run `python -m gateway prepare-model`")
        self._session = cpu_session(path, threads)
        meta: dict[str, str] = self._session.get_modelmeta().custom_metadata_map
        if meta.get("format") != FORMAT_VERSION:
            raise RuntimeError(
                f"{path} has format {meta.get('format')!r}, expected {FORMAT_VERSION!r}: "
                "run `python -m gateway prepare-model`"
            )
        self.vocab_size = int(meta["vocab_size"])
        self.context_length = min(int(meta["context_length"]), MAX_CONTEXT)
        self._layers = int(meta["n_layers"])
        kv_heads, head_dim = int(meta["n_head_kv"]), int(meta["head_dim"])
        self._max = max_sequences
        shape = (max_sequences, kv_heads, self.context_length, head_dim)
        self._kv = _KVMemory(2 * self._layers, shape)
        self._caches = self._kv.caches
        self._cache_names = [f"{kind}.{i}" for i in range(self._layers) for kind in ("key", "value")]
        self._logits = np.empty((max_sequences, self.vocab_size), np.float32)
        self._lengths = np.zeros(max_sequences, np.int32)  # tokens cached, by row
        self._row_of: dict[int, int] = {}  # open slot -> row
        self._slot_at: list[int] = []  # row -> slot, for rows 0..n_open-1
        self._decoders: dict[tuple[int, int], _DecodeBinding] = {}
        log.info(
            "engine: %s, vocab %d, context %d, %d slots, KV cache up to %.0f MiB",
            path,
            self.vocab_size,
            self.context_length,
            max_sequences,
            self._kv.nbytes / 2**20,
        )

    # ------------------------------------------------------------------------------------------
    # slots

    def open(self) -> int:
        """A free slot (its cache empty); RuntimeError when all are taken."""
        if len(self._slot_at) >= self._max:
            raise RuntimeError(f"all {self._max} sequence slots are taken")
        slot = min(set(range(self._max)) - self._row_of.keys())
        row = len(self._slot_at)
        self._row_of[slot] = row
        self._slot_at.append(slot)
        self._lengths[row] = 0
        return slot

    def close(self, slot: int) -> None:
        """Free ``slot``; the last row's cache moves into its row."""
        row = self._row(slot)
        last = len(self._slot_at) - 1
        if row != last:
            n = int(self._lengths[last])
            for cache in self._caches:
                cache[row, :, :n] = cache[last, :, :n]
            moved = self._slot_at[last]
            self._slot_at[row] = moved
            self._row_of[moved] = row
            self._lengths[row] = n
        self._slot_at.pop()
        del self._row_of[slot]
        self._lengths[last] = 0
        self._kv.release(last)

    def length(self, slot: int) -> int:
        """Tokens held in ``slot``'s cache."""
        return int(self._lengths[self._row(slot)])

    def _row(self, slot: int) -> int:
        try:
            return self._row_of[slot]
        except KeyError:
            raise ValueError(f"slot {slot} is not open") from None

    # ------------------------------------------------------------------------------------------
    # steps

    def prefill(self, slot: int, ids: Sequence[int]) -> NDArray[np.float32]:
        """Append ``ids`` to ``slot``'s sequence; the logits ``[vocab]`` after the last of them."""
        row = self._row(slot)
        tokens = self._check_ids(ids)
        if len(tokens) == 0:
            raise ValueError("prefill needs at least one token")
        start = int(self._lengths[row])
        if start + len(tokens) > self.context_length:
            raise ValueError(f"{start} + {len(tokens)} tokens exceed the context length {self.context_length}")
        for begin in range(0, len(tokens), PREFILL_CHUNK):
            chunk = tokens[begin : begin + PREFILL_CHUNK]
            past = start + begin
            feeds = {  # kept referenced until the run: the binding reads their memory
                "input_ids": np.ascontiguousarray(chunk.reshape(1, -1)),
                "seqlens_k": np.array([past + len(chunk) - 1], np.int32),
                "total_sequence_length": np.array(past + len(chunk), np.int32),
            }
            binding = self._session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            self._bind_caches(binding, row, 1)
            self._bind_logits(binding, 1)
            self._session.run_with_iobinding(binding)
            self._lengths[row] = past + len(chunk)
        logits: NDArray[np.float32] = self._logits[0].copy()
        return logits

    def decode(self, slots: Sequence[int], ids: Sequence[int]) -> NDArray[np.float32]:
        """One step for each slot with its next id, batched; logits ``[len(slots), vocab]`` in that order."""
        if len(slots) != len(ids):
            raise ValueError("decode needs one id per slot")
        if not slots:
            return np.empty((0, self.vocab_size), np.float32)
        rows = np.array([self._row(s) for s in slots], dtype=np.intp)
        if len(set(rows.tolist())) != len(rows):
            raise ValueError("a slot appears twice in one decode step")
        tokens = self._check_ids(ids)
        if int(self._lengths[rows].max()) >= self.context_length:
            raise ValueError(f"a sequence is at the context length {self.context_length}")
        lo, hi = int(rows.min()), int(rows.max()) + 1
        step = self._decoder(lo, hi - lo)
        # rows not asked for: a scratch step at their end (row capacity - 1 when full: never read again)
        step.seqlens[:] = np.minimum(self._lengths[lo:hi], self.context_length - 1)
        step.ids[:] = 0
        step.ids[rows - lo, 0] = tokens
        step.seqlens[rows - lo] = self._lengths[rows]
        step.total[...] = int(step.seqlens.max()) + 1
        self._session.run_with_iobinding(step.binding)
        self._lengths[rows] += 1
        logits: NDArray[np.float32] = self._logits[rows - lo]  # fancy indexing: a copy
        return logits

    def _check_ids(self, ids: Sequence[int]) -> NDArray[np.int64]:
        tokens = np.asarray(ids, dtype=np.int64).reshape(-1)
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        return tokens

    # ------------------------------------------------------------------------------------------
    # bindings

    def _decoder(self, lo: int, batch: int) -> _DecodeBinding:
        step = self._decoders.get((lo, batch))
        if step is None:
            step = _DecodeBinding(self._session.io_binding(), batch)
            binding = step.binding
            binding.bind_input("input_ids", "cpu", 0, np.int64, [batch, 1], step.ids.ctypes.data)
            binding.bind_input("seqlens_k", "cpu", 0, np.int32, [batch], step.seqlens.ctypes.data)
            binding.bind_input("total_sequence_length", "cpu", 0, np.int32, [], step.total.ctypes.data)
            self._bind_caches(binding, lo, batch)
            self._bind_logits(binding, batch)
            self._decoders[(lo, batch)] = step
        return step

    def _bind_caches(self, binding: Any, row: int, batch: int) -> None:
        for name, cache in zip(self._cache_names, self._caches, strict=True):
            shape = [batch, *cache.shape[1:]]
            ptr = cache.ctypes.data + row * cache.strides[0]
            binding.bind_input("past_" + name, "cpu", 0, np.float32, shape, ptr)
            binding.bind_output("present_" + name, "cpu", 0, np.float32, shape, ptr)

    def _bind_logits(self, binding: Any, batch: int) -> None:
        binding.bind_output("logits", "cpu", 0, np.float32, [batch, self.vocab_size], self._logits.ctypes.data)


class _KVMemory:
    """Every layer's K and V buffers in one anonymous mapping, committed page by page as rows fill.

    Not numpy's allocator: numpy asks for transparent huge pages on large arrays, which commits 2 MiB
    for the first token of every head. A closed slot's row is handed back to the OS.
    """

    def __init__(self, count: int, shape: tuple[int, int, int, int]) -> None:
        self.row_bytes = int(np.prod(shape[1:])) * 4
        self.per_cache = shape[0] * self.row_bytes
        self.nbytes = count * self.per_cache
        self._map = mmap.mmap(-1, self.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            self._map.madvise(mmap.MADV_NOHUGEPAGE)
        flat = np.frombuffer(self._map, dtype=np.float32)
        self.caches: list[NDArray[np.float32]] = [
            flat[i * self.per_cache // 4 : (i + 1) * self.per_cache // 4].reshape(shape) for i in range(count)
        ]

    def release(self, row: int) -> None:
        """Drop ``row``'s pages in every buffer (they read as zeros again)."""
        if not hasattr(mmap, "MADV_DONTNEED") or self.row_bytes % mmap.PAGESIZE:
            return
        for i in range(len(self.caches)):
            self._map.madvise(mmap.MADV_DONTNEED, i * self.per_cache + row * self.row_bytes, self.row_bytes)


class _DecodeBinding:
    """A decode step's IOBinding over rows ``lo..lo+batch-1``, with the input buffers it reads."""

    __slots__ = ("binding", "ids", "seqlens", "total")

    def __init__(self, binding: Any, batch: int) -> None:
        self.binding = binding
        self.ids = np.zeros((batch, 1), np.int64)
        self.seqlens = np.zeros(batch, np.int32)
        self.total = np.zeros((), np.int32)
