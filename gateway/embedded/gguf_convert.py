"""Prepare the embedded CPU model: a llama GGUF becomes an ONNX Runtime graph over its own quantized blocks.

The output directory holds everything both sides need and nothing else:

* ``model.onnx``, ``model.int8.onnx``, ``model.onnx.data``: the CPU engine's ONNX Runtime graphs
  (float32 / int8 activations) over the GGUF's own quantized blocks (``gateway.embedded.lm``);
* ``tokenizer.json``: a Hugging Face ``tokenizers`` byte-level BPE rebuilt from the GGUF vocabulary
  and merges (read by the gateway);
* ``tokenizer_config.json``: the chat template and the special tokens (read by the gateway).

No torch, no transformers: ``gguf`` reads the tensors with numpy and the ``onnx`` package writes the
graph. The step is idempotent and atomic (:mod:`gateway.embedded.prepared`): a finished directory's
``.complete`` marker names the graph's format, so a directory of an older format is rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.embedded import prepared
from gateway.embedded.lm.graph import FORMAT_VERSION as GRAPH_FORMAT
from gateway.embedded.lm.graph import MODEL_FILE as GRAPH_FILE
from gateway.embedded.lm.graph import export as export_graph
from gateway.embedded.prepared import Progress

# what a finished directory holds; a marker with other text (or none, from older versions) means rebuild
PREPARED_FORMAT = GRAPH_FORMAT
# GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*)
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4


def is_prepared(out_dir: Path) -> bool:
    return prepared.is_prepared(out_dir, PREPARED_FORMAT, (GRAPH_FILE,))


def prepare(gguf_path: Path, out_dir: Path, progress: Progress | None = None) -> Path:
    """Convert ``gguf_path`` into ``out_dir`` unless that was done already. Returns ``out_dir``."""

    def build(out: Path, say: Progress) -> None:
        from gguf import GGUFReader  # heavy import, only when converting

        say(f"reading {gguf_path.name}")
        reader = GGUFReader(str(gguf_path))
        meta = _metadata(reader)
        _write_tokenizer(meta, out)
        say("tokenizer.json and chat template written")
        say("building the ONNX graph")
        export_graph(reader, meta, out, say)

    return prepared.prepare_dir(out_dir, PREPARED_FORMAT, (GRAPH_FILE,), "model", build, progress)


def _metadata(reader: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"only llama GGUF models are supported, got {meta.get('general.architecture')!r}")
    return meta


# ---------------------------------------------------------------------------------------------
# tokenizer


def _write_tokenizer(meta: dict[str, Any], out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError("only byte-level BPE ('gpt2') GGUF tokenizers are supported")
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types: list[int] = list(meta["tokenizer.ggml.token_type"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre: list[pre_tokenizers.PreTokenizer] = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if meta.get("tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):
        # these pre-tokenizers split every digit on its own before the GPT-2 regex
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(tok, special=True, normalized=False)
        for tok, kind in zip(tokens, types, strict=True)
        if kind in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)
    ]
    tokenizer.add_special_tokens(special)
    tokenizer.save(str(out / "tokenizer.json"))

    def token(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(idx)] if idx is not None else None

    config = {
        "chat_template": meta.get("tokenizer.chat_template"),
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "model_max_length": int(meta.get("llama.context_length", 2048)),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
