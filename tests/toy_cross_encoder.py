"""A contract-test cross-encoder: RANDOM WEIGHTS, scores mean nothing.

It exists so tests can drive the ``score`` task end to end (Triton model, tensor contract, gateway)
without a real reranker: it takes the same three inputs as a BERT cross-encoder and returns ``logits``
``[B, 1]``, computed as token embeddings ``[vocab, 32]`` plus a token-type embedding, mean-pooled over
the attention mask, then one MatMul and Add. Built with the ``onnx`` package from a seeded generator,
so one seed always gives the same model. Never serve it as a model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

HIDDEN = 32
TYPE_VOCAB = 2
OPSET = 17
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_cross_encoder(out_dir: Path, tokenizer_src: Path, seed: int = 0) -> Path:
    """Write ``model.onnx`` (random weights, contract tests only) and ``tokenizer_src``'s tokenizer files
    into ``out_dir``; the vocabulary is the tokenizer's. Returns ``out_dir``."""
    vocab = Tokenizer.from_file(str(tokenizer_src / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(_graph(vocab, seed), str(out_dir / "model.onnx"))
    for name in TOKENIZER_FILES:
        if (tokenizer_src / name).is_file():
            shutil.copyfile(tokenizer_src / name, out_dir / name)
    return out_dir


def _graph(vocab: int, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {
        "token_embeddings": rng.standard_normal((vocab, HIDDEN)),
        "type_embeddings": rng.standard_normal((TYPE_VOCAB, HIDDEN)),
        "head_weight": rng.standard_normal((HIDDEN, 1)) / np.sqrt(HIDDEN),
        "head_bias": np.zeros(1),
        "eps": np.full(1, 1e-9),
    }
    initializers = [numpy_helper.from_array(v.astype(np.float32), name=k) for k, v in weights.items()]
    initializers += [
        numpy_helper.from_array(np.array([1], dtype=np.int64), name="axis_tokens"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), name="axis_last"),
    ]
    node = helper.make_node
    nodes = [
        node("Gather", ["token_embeddings", "input_ids"], ["tokens"]),  # [B, T, H]
        node("Gather", ["type_embeddings", "token_type_ids"], ["types"]),
        node("Add", ["tokens", "types"], ["states"]),
        node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),  # [B, T]
        node("Unsqueeze", ["mask", "axis_last"], ["mask3"]),  # [B, T, 1]
        node("Mul", ["states", "mask3"], ["masked"]),
        node("ReduceSum", ["masked", "axis_tokens"], ["summed"], keepdims=0),  # [B, H]
        node("ReduceSum", ["mask3", "axis_tokens"], ["counts"], keepdims=0),  # [B, 1]
        node("Max", ["counts", "eps"], ["safe_counts"]),
        node("Div", ["summed", "safe_counts"], ["pooled"]),
        node("MatMul", ["pooled", "head_weight"], ["projected"]),  # [B, 1]
        node("Add", ["projected", "head_bias"], ["logits"]),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])]
    graph = helper.make_graph(nodes, "toy_cross_encoder", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.doc_string = "contract-test cross-encoder with random weights; its scores mean nothing"
    onnx.checker.check_model(model)
    return model
