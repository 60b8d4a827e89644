"""GGUF quantized weights repacked, exactly, into the layouts of ONNX Runtime's contrib ops.

A :class:`Linear` is one weight ``[n, k]`` (GGUF row order: one row per output feature) in the form
the graph (:mod:`gateway.embedded.lm.graph`) uses, read from a GGUF tensor by :func:`read_linear`:

* Q4_0 and Q4_1 blocks of 32 become ``MatMulNBits`` 4-bit blobs (element 2j in the low nibble, 2j+1
  in the high one) with their float16 scales as float32; Q4_0 keeps the default zero point 8, Q4_1
  gets an all-zero zero point and its block minima ``m`` (``d * q + m``) as a separate array;
* Q8_0 blocks become 8-bit blobs, the int8 values shifted to uint8 (default zero point 128): the
  layout of both ``MatMulNBits`` and ``GatherBlockQuantized``;
* any other type, or a row length that is not a whole number of blocks, is dequantized to float32.

:func:`concat` stacks weights along the output dimension (fused Q/K/V and gate/up, dequantized when
their layouts differ), :meth:`Linear.rows` reorders rows, and :func:`unpermute_rows` gives the order
that undoes llama.cpp's rotary permutation of the Q/K projections (blocks run along the input
dimension, so rows move intact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

BLOCK = 32  # GGUF Q4_0/Q4_1/Q8_0 block length, also the MatMulNBits block size

# GGML tensor type ids (gguf.GGMLQuantizationType)
_F32, _F16, _Q4_0, _Q4_1, _Q8_0 = 0, 1, 2, 3, 8


@dataclass(frozen=True, slots=True)
class Linear:
    """A weight ``[n, k]`` (GGUF row order: one row per output feature) in a form the graph uses."""

    n: int
    k: int
    bits: int = 0  # 4 or 8: MatMulNBits; 0: float32 ``dense``
    blob: NDArray[np.uint8] | None = None  # [n, k/32, 32*bits/8], element 2j in the low nibble
    scales: NDArray[np.float32] | None = None  # [n, k/32]
    zero: NDArray[np.uint8] | None = None  # packed zero points; None: the default 2**(bits-1)
    mins: NDArray[np.float32] | None = None  # [n, k/32] Q4_1 block minima
    dense: NDArray[np.float32] | None = None  # [n, k]

    def rows(self, index: NDArray[np.intp]) -> Linear:
        def take(a: Any) -> Any:
            return None if a is None else np.ascontiguousarray(a[index])

        return Linear(
            len(index), self.k, self.bits, take(self.blob), take(self.scales), take(self.zero), take(self.mins),
            take(self.dense),
        )  # fmt: skip

    def to_dense(self) -> Linear:
        if self.bits == 0:
            return self
        assert self.blob is not None and self.scales is not None
        if self.bits == 4:
            q = np.stack([self.blob & 0x0F, self.blob >> 4], axis=-1).reshape(self.n, -1, BLOCK)
        else:
            q = self.blob
        if self.zero is None:
            zp = np.float32(2 ** (self.bits - 1))
            w = (q.astype(np.float32) - zp) * self.scales[..., None]
        else:  # only ever all-zero (Q4_1)
            w = q.astype(np.float32) * self.scales[..., None]
        if self.mins is not None:
            w += self.mins[..., None]
        return Linear(self.n, self.k, dense=np.ascontiguousarray(w.reshape(self.n, self.k), dtype=np.float32))


def read_linear(tensor: Any) -> Linear:
    from gguf.quants import dequantize

    kind = int(tensor.tensor_type)
    k, n = (int(x) for x in tensor.shape)
    data = np.asarray(tensor.data)
    nb = k // BLOCK
    if kind in (_Q4_0, _Q4_1, _Q8_0) and k % BLOCK == 0:
        head = 2 if kind != _Q4_1 else 4
        blocks = data.reshape(n, nb, -1)
        scales = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
        if kind == _Q8_0:
            blob = blocks[..., head:] ^ np.uint8(0x80)  # int8 q -> uint8 q + 128
            return Linear(n, k, 8, np.ascontiguousarray(blob), scales)
        qs = blocks[..., head:]  # 16 bytes: elements j (low nibble) and j + 16 (high nibble)
        values = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
        blob = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
        if kind == _Q4_0:
            return Linear(n, k, 4, np.ascontiguousarray(blob), scales)
        mins = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        zero = np.zeros((n, (nb + 1) // 2), dtype=np.uint8)
        return Linear(n, k, 4, np.ascontiguousarray(blob), scales, zero, mins)
    dense = np.asarray(dequantize(data, tensor.tensor_type), dtype=np.float32).reshape(n, k)
    return Linear(n, k, dense=np.ascontiguousarray(dense))


def concat(parts: Sequence[Linear]) -> Linear:
    """Stack weights along the output dimension (one MatMulNBits for Q/K/V, one for gate/up)."""
    k = parts[0].k
    same = all(p.bits == parts[0].bits and (p.zero is None) == (parts[0].zero is None) and p.k == k for p in parts)
    if not same:
        parts = [p.to_dense() for p in parts]

    def cat(name: str) -> Any:
        arrays = [getattr(p, name) for p in parts]
        return None if arrays[0] is None else np.concatenate(arrays, axis=0)

    n = sum(p.n for p in parts)
    return Linear(n, k, parts[0].bits, cat("blob"), cat("scales"), cat("zero"), cat("mins"), cat("dense"))


def unpermute_rows(n_rows: int, n_head: int) -> NDArray[np.intp]:
    """Row order undoing llama.cpp's rotary permutation of the q/k projections (back to HF order)."""
    return np.arange(n_rows).reshape(n_head, n_rows // n_head // 2, 2).swapaxes(1, 2).reshape(-1)
