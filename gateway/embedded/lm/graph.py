"""Build the CPU engine's ONNX graph from a llama GGUF, keeping its quantized weights exact.

The graph runs on ONNX Runtime's CPU provider with its contrib ops (domain ``com.microsoft``):

* every linear layer is a ``MatMulNBits`` over the GGUF blocks of 32: Q4_0 as 4-bit with the default
  zero point 8, Q8_0 as 8-bit with the default zero point 128 (the int8 values shifted to uint8),
  Q4_1 (``d * q + m``) as 4-bit with zero point 0 plus ``m`` times each block's input sum, a small
  float MatMul (a float zero point ``-m/d`` would be exact too, but ONNX Runtime then dequantizes the
  whole weight on every call). Other tensor types are dequantized to a float32 MatMul;
* Q/K/V and gate/up are fused into one MatMulNBits each; llama.cpp's Q/K row permutation is undone
  by permuting whole rows (blocks run along the input dimension, so rows move intact);
* the embedding lookup is ``GatherBlockQuantized`` over the Q8_0 table, the tied LM head a
  MatMulNBits over the same blocks, applied to the last position of each row only;
* RMSNorm is ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization`` (which also
  yields the residual sum); attention is ``GroupQueryAttention`` with rotary embedding and a KV
  buffer shared between past and present (BNSH ``[batch, kv_heads, capacity, head_dim]``), so rows of
  different lengths decode together: ``seqlens_k[b]`` is row b's length after the step, minus one.

The GGUF blocks are repacked into these ops' layouts, exactly, by :mod:`gateway.embedded.lm.quant`;
this module builds the graph around them.

Two graphs share one weights file: ``model.onnx`` runs the layers' MatMulNBits with float32
activations (``accuracy_level`` 0: its logits match a float32 forward pass of the dequantized GGUF),
``model.int8.onnx`` with int8 activations quantized per block of 32 (``accuracy_level`` 4, what
llama.cpp does for these types: faster, above all in batches, but logits off by up to a few units,
so greedy choices between near-ties can differ). Both recompute the LM head's top logits exactly.

Inputs: ``input_ids`` int64 [batch, seq], ``seqlens_k`` int32 [batch], ``total_sequence_length``
int32 scalar (the longest row after the step), ``past_key.<i>`` / ``past_value.<i>`` float32.
Outputs: ``logits`` float32 [batch, vocab] after each row's last position, ``present_key.<i>`` /
``present_value.<i>`` (the same buffers when bound to the past ones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.embedded.lm.quant import BLOCK, Linear, concat, read_linear, unpermute_rows

log = logging.getLogger(__name__)

FORMAT_VERSION = "onnx-1"  # bump when the graph's interface or layout changes
MODEL_FILE = "model.onnx"  # float32 activations: logits as the dequantized weights give them
INT8_MODEL_FILE = "model.int8.onnx"  # int8 activations (as llama.cpp computes): faster, esp. batched
DATA_FILE = "model.onnx.data"  # the weights, shared by both graphs
EXACT_LEVEL, INT8_LEVEL = 0, 4  # MatMulNBits accuracy_level: float32 / int8 activations
HEAD_EXACT_TOP = 64  # LM-head logits recomputed in float32 (see _lm_head)
ONNX_OPSET = 17
MS_DOMAIN = "com.microsoft"

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    n_layers: int
    n_head: int
    n_head_kv: int
    hidden: int
    ffn: int
    vocab: int
    context_length: int
    rope_base: float
    eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_head

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], vocab: int) -> LlamaConfig:
        n_head = int(meta["llama.attention.head_count"])
        hidden = int(meta["llama.embedding_length"])
        rope_dim = int(meta.get("llama.rope.dimension_count", hidden // n_head))
        if rope_dim != hidden // n_head:
            raise ValueError("partial rotary embeddings are not supported")
        if meta.get("llama.rope.scaling.type", "none") not in ("none", None):
            raise ValueError("rope scaling is not supported")
        return cls(
            n_layers=int(meta["llama.block_count"]),
            n_head=n_head,
            n_head_kv=int(meta.get("llama.attention.head_count_kv", n_head)),
            hidden=hidden,
            ffn=int(meta["llama.feed_forward_length"]),
            vocab=vocab,
            context_length=int(meta.get("llama.context_length", 2048)),
            rope_base=float(meta.get("llama.rope.freq_base", 10000.0)),
            eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        )


def rope_cache(cfg: LlamaConfig, length: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """cos and sin ``[length, head_dim / 2]`` (rotate-half layout)."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# graph


class _Graph:
    """Nodes and initializers of the graph being built, with unique names."""

    def __init__(self, accuracy_level: int) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.accuracy_level = accuracy_level
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()
        self._block_ones: dict[int, str] = {}

    def _unique(self, name: str) -> str:
        base, i = name, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def const(self, name: str, array: NDArray[Any]) -> str:
        name = self._unique(name)
        self.initializers.append(self._numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, name: str, *values: int) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def node(
        self, op_type: str, inputs: Sequence[str], name: str, outputs: Sequence[str | None] = (None,),
        domain: str = "", **attrs: Any,
    ) -> list[str]:  # fmt: skip
        """Add a node; an output given as None gets a generated name, "" leaves it out."""
        node_name = self._unique(name)
        outs = [f"{node_name}/out{i}" if out is None else out for i, out in enumerate(outputs)]
        self.nodes.append(self._helper.make_node(op_type, list(inputs), outs, name=node_name, domain=domain, **attrs))
        return outs

    def op(self, op_type: str, inputs: Sequence[str], name: str, domain: str = "", **attrs: Any) -> str:
        """Add a node with one output; its name."""
        return self.node(op_type, inputs, name, (None,), domain, **attrs)[0]

    def linear(self, x: str, w: Linear, name: str, output: str | None = None, accuracy_level: int | None = None) -> str:
        """x [rows, k] @ w^T: [rows, n]."""
        level = self.accuracy_level if accuracy_level is None else accuracy_level
        out: tuple[str | None] = (output,)
        if w.bits == 0:
            assert w.dense is not None
            return self.node("MatMul", [x, self.const(name + ".weight", w.dense.T)], name, out)[0]
        assert w.blob is not None and w.scales is not None
        inputs = [x, self.const(name + ".qweight", w.blob), self.const(name + ".scales", w.scales)]
        if w.zero is not None:
            inputs.append(self.const(name + ".zero_points", w.zero))
        attrs = {"K": w.k, "N": w.n, "bits": w.bits, "block_size": BLOCK, "accuracy_level": level}
        if w.mins is None:
            return self.node("MatMulNBits", inputs, name, out, MS_DOMAIN, **attrs)[0]
        y = self.op("MatMulNBits", inputs, name, MS_DOMAIN, **attrs)
        # Q4_1: + m[n, b] * (sum of block b of x), one Gemm with the 4-bit product as C
        sums = self.op("MatMul", [x, self.block_ones(w.k)], name + ".block_sums")
        return self.node("Gemm", [sums, self.const(name + ".mins", w.mins.T), y], name + ".min_term", out)[0]

    def block_ones(self, k: int) -> str:
        """[k, k/32]: column b sums the inputs of block b."""
        if k not in self._block_ones:
            ones = np.kron(np.eye(k // BLOCK, dtype=np.float32), np.ones((BLOCK, 1), dtype=np.float32))
            self._block_ones[k] = self.const(f"block_ones.{k}", ones)
        return self._block_ones[k]

    def gather_q8(self, table: tuple[str, str], ids: str, name: str) -> str:
        """Rows ``ids`` of a Q8_0 table (uint8 values + 128, scales), dequantized exactly."""
        return self.op(
            "GatherBlockQuantized", [table[0], ids, table[1]], name, MS_DOMAIN,
            bits=8, block_size=BLOCK, gather_axis=0, quantize_axis=1,
        )  # fmt: skip

    def rms_norm(self, x: str, skip: str | None, gamma: NDArray[np.float32], eps: float, name: str) -> tuple[str, str]:
        """RMSNorm of ``x`` (+ ``skip``): the normalized rows and the sum (``x`` without a skip)."""
        weight = self.const(name, gamma)
        if skip is None:
            return self.op("SimplifiedLayerNormalization", [x, weight], name, axis=-1, epsilon=eps, stash_type=1), x
        normed, _, _, total = self.node(
            "SkipSimplifiedLayerNormalization", [x, skip, weight], name, (None, "", "", None), MS_DOMAIN, epsilon=eps
        )
        return normed, total


def build(
    reader: Any, meta: dict[str, Any], accuracy_level: int = EXACT_LEVEL, progress: Progress | None = None
) -> Any:
    """The ONNX model (an ``onnx.ModelProto``) of the llama GGUF read by ``reader``."""
    from onnx import TensorProto, helper

    say = progress or (lambda msg: log.info("%s", msg))
    tensors = {t.name: t for t in reader.tensors}
    cfg = LlamaConfig.from_metadata(meta, vocab=int(tensors["token_embd.weight"].shape[1]))
    g = _Graph(accuracy_level)
    hd, kvh = cfg.head_dim, cfg.n_head_kv

    def weight(name: str) -> Linear:
        return read_linear(tensors[name + ".weight"])

    def gamma(name: str) -> NDArray[np.float32]:
        return np.asarray(tensors[name + ".weight"].data, dtype=np.float32).reshape(-1)

    # hidden states are 2-D [tokens, hidden] (batch x sequence flattened), 3-D only around attention
    ids = g.op("Reshape", ["input_ids", g.ints("flat", -1)], "flat_ids")
    ids_shape = g.op("Shape", ["input_ids"], "ids_shape")
    qkv_3d = g.op("Concat", [ids_shape, g.ints("qkv_width", (cfg.n_head + 2 * kvh) * hd)], "qkv_3d_shape", axis=0)
    hidden_3d = g.op("Concat", [ids_shape, g.ints("hidden_width", cfg.hidden)], "hidden_3d_shape", axis=0)
    rows_2d = g.ints("rows_shape", -1, cfg.hidden)

    emb = weight("token_embd")
    table: tuple[str, str] | None = None
    if emb.bits == 8 and emb.zero is None:
        assert emb.blob is not None and emb.scales is not None
        table = (g.const("token_embd.q8", emb.blob.reshape(cfg.vocab, cfg.hidden)), g.const("token_embd.d", emb.scales))
        h = g.gather_q8(table, ids, "embed")
    else:
        dense = emb.to_dense().dense
        assert dense is not None
        h = g.op("Gather", [g.const("token_embd.weight", dense), ids], "embed", axis=0)

    cos, sin = rope_cache(cfg, cfg.context_length)
    cos_cache, sin_cache = g.const("rope.cos", cos), g.const("rope.sin", sin)
    q_rows, k_rows = unpermute_rows(cfg.n_head * hd, cfg.n_head), unpermute_rows(kvh * hd, kvh)
    x, _ = g.rms_norm(h, None, gamma("blk.0.attn_norm"), cfg.eps, "blk.0.attn_norm")
    ffn_out = ""
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        qkv = concat([weight(p + "attn_q").rows(q_rows), weight(p + "attn_k").rows(k_rows), weight(p + "attn_v")])
        packed = g.op("Reshape", [g.linear(x, qkv, p + "attn_qkv"), qkv_3d], p + "qkv_3d")
        cache = [f"past_key.{i}", f"past_value.{i}", "seqlens_k", "total_sequence_length", cos_cache, sin_cache]
        attn = g.node(
            "GroupQueryAttention", [packed, "", "", *cache], p + "attn",
            (None, f"present_key.{i}", f"present_value.{i}"), MS_DOMAIN,
            num_heads=cfg.n_head, kv_num_heads=kvh, do_rotary=1, rotary_interleaved=0, local_window_size=-1,
        )[0]  # fmt: skip
        attn = g.op("Reshape", [attn, rows_2d], p + "attn_2d")
        o = g.linear(attn, weight(p + "attn_output"), p + "attn_output")
        x, h = g.rms_norm(o, h, gamma(p + "ffn_norm"), cfg.eps, p + "ffn_norm")
        gate_up = g.linear(x, concat([weight(p + "ffn_gate"), weight(p + "ffn_up")]), p + "ffn_gate_up")
        gate, up = g.node("Split", [gate_up, g.ints(p + "ffn_split", cfg.ffn, cfg.ffn)], p + "ffn_split", (None, None),
                          axis=-1)  # fmt: skip
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate], p + "sigmoid")], p + "silu")
        ffn_out = g.linear(g.op("Mul", [silu, up], p + "glu"), weight(p + "ffn_down"), p + "ffn_down")
        if i + 1 < cfg.n_layers:
            x, h = g.rms_norm(ffn_out, h, gamma(f"blk.{i + 1}.attn_norm"), cfg.eps, f"blk.{i + 1}.attn_norm")
        if (i + 1) % 10 == 0 or i + 1 == cfg.n_layers:
            say(f"graph: layer {i + 1}/{cfg.n_layers}")

    # the last position of each row only: the final norm, then the LM head
    last = [g.ints("last.start", -1), g.ints("last.end", np.iinfo(np.int64).max), g.ints("last.axis", 1)]

    def last_rows(t: str, name: str) -> str:
        t3 = g.op("Reshape", [t, hidden_3d], name + "_3d")
        return g.op("Reshape", [g.op("Slice", [t3, *last], name), rows_2d], name + "_2d")

    final, _ = g.rms_norm(
        last_rows(ffn_out, "last_ffn"), last_rows(h, "last_residual"), gamma("output_norm"), cfg.eps, "output_norm"
    )
    head = weight("output") if "output.weight" in tensors else emb
    _lm_head(g, final, head, table if head is emb else None)

    cache_shape: list[int | str] = ["batch", kvh, "capacity", hd]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.vocab])]
    for i in range(cfg.n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}.{i}", TensorProto.FLOAT, cache_shape))
            outputs.append(helper.make_tensor_value_info(f"present_{kind}.{i}", TensorProto.FLOAT, cache_shape))
    model = helper.make_model(
        helper.make_graph(g.nodes, "llama", inputs, outputs, g.initializers),
        opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="gateway.embedded.lm.graph",
    )
    model.ir_version = 8
    props = {
        "format": FORMAT_VERSION,
        "context_length": cfg.context_length,
        "vocab_size": cfg.vocab,
        "n_layers": cfg.n_layers,
        "n_head_kv": kvh,
        "head_dim": hd,
        "accuracy_level": accuracy_level,
    }
    helper.set_model_props(model, {k: str(v) for k, v in props.items()})
    return model


def _lm_head(g: _Graph, x: str, head: Linear, table: tuple[str, str] | None) -> None:
    """``logits`` [rows, vocab] = x @ head^T.

    A Q8_0 head runs as an 8-bit MatMulNBits with int8 activations (logits within a few tenths),
    then its ``HEAD_EXACT_TOP`` largest logits are recomputed in float32 from exactly dequantized
    rows, so the tokens that matter (the greedy choice, the top-k/top-p mass and their logprobs) get
    exact logits at the cost of a TopK and a 64-row gather.
    """
    if head.bits != 8 or head.zero is not None:
        g.linear(x, head, "lm_head", output="logits")
        return
    assert head.blob is not None and head.scales is not None
    if table is None:
        table = (g.const("output.q8", head.blob.reshape(head.n, head.k)), g.const("output.d", head.scales))
    # int8 activations: at level 0 ONNX Runtime would dequantize the whole 8-bit head on every call
    approx = g.linear(x, head, "lm_head", accuracy_level=INT8_LEVEL)
    top = g.node("TopK", [approx, g.ints("lm_head.k", min(HEAD_EXACT_TOP, head.n))], "lm_head.top", (None, None),
                 axis=-1, largest=1, sorted=0)[1]  # fmt: skip
    rows = g.gather_q8(table, top, "lm_head.top_rows")  # [batch, top, hidden]
    column = g.op("Unsqueeze", [x, g.ints("lm_head.axis", 2)], "lm_head.column")  # [batch, hidden, 1]
    exact = g.op("Squeeze", [g.op("MatMul", [rows, column], "lm_head.exact"), g.ints("lm_head.axis", 2)], "lm_head.2d")
    g.node("ScatterElements", [approx, top, exact], "lm_head.scatter", ("logits",), axis=1)


def export(reader: Any, meta: dict[str, Any], out_dir: Path, progress: Progress | None = None) -> Path:
    """Write ``model.onnx`` (float32 activations), ``model.int8.onnx`` (int8 activations) and their
    shared external data ``model.onnx.data`` into ``out_dir``; the path of ``model.onnx``."""
    import onnx

    model = build(reader, meta, EXACT_LEVEL, progress)
    path = out_dir / MODEL_FILE
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE,
        size_threshold=1024,
    )  # fmt: skip
    # the same graph and weights (now references into DATA_FILE), int8 activations in the layers
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            for attr in node.attribute:
                if attr.name == "accuracy_level":
                    attr.i = INT8_LEVEL
    for prop in model.metadata_props:
        if prop.key == "accuracy_level":
            prop.value = str(INT8_LEVEL)
    onnx.save_model(model, str(out_dir / INT8_MODEL_FILE))
    for name in (MODEL_FILE, INT8_MODEL_FILE, DATA_FILE):
        (out_dir / name).chmod(0o644)
    return path
