"""Prepare the embedded CPU model: a llama GGUF becomes a CTranslate2 int8 model.

The output directory holds everything both sides need and nothing else:

* ``model.bin``, ``config.json``, ``vocabulary.json``: the CTranslate2 model (read by Triton's
  Python-backend model in ``model_repository/``);
* ``tokenizer.json``: a Hugging Face ``tokenizers`` byte-level BPE rebuilt from the GGUF vocabulary
  and merges (read by the gateway);
* ``tokenizer_config.json``: the chat template and the special tokens (read by the gateway).

No torch, no transformers: ``gguf`` dequantizes with numpy and CTranslate2's spec API takes numpy
arrays. The step is idempotent; a finished directory is marked by ``.complete``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
# GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*)
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

Progress = Callable[[str], None]


def is_prepared(out_dir: Path) -> bool:
    return (out_dir / COMPLETE_MARKER).is_file()


def prepare(gguf_path: Path, out_dir: Path, progress: Progress | None = None) -> Path:
    """Convert ``gguf_path`` into ``out_dir`` unless that was done already. Returns ``out_dir``."""
    say = progress or (lambda msg: log.info("%s", msg))
    if is_prepared(out_dir):
        say(f"model ready in {out_dir}")
        return out_dir
    from gguf import GGUFReader  # heavy import, only when converting

    say(f"reading {gguf_path.name}")
    reader = GGUFReader(str(gguf_path))
    meta = _metadata(reader)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        _write_tokenizer(meta, tmp)
        say("tokenizer.json and chat template written")
        _write_ctranslate2(reader, meta, tmp, say)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"model prepared in {out_dir}")
    return out_dir


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


# ---------------------------------------------------------------------------------------------
# weights


def _unpermute(weight: NDArray[np.float32], n_head: int) -> NDArray[np.float32]:
    """Undo llama.cpp's rotary row permutation of q/k projections (HF layout back)."""
    rows, cols = weight.shape
    return weight.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _write_ctranslate2(reader: Any, meta: dict[str, Any], out: Path, say: Progress) -> None:
    from ctranslate2.specs import common_spec, transformer_spec
    from gguf.quants import dequantize

    n_layers = int(meta["llama.block_count"])
    n_head = int(meta["llama.attention.head_count"])
    n_head_kv = int(meta.get("llama.attention.head_count_kv", n_head))
    tensors = {t.name: t for t in reader.tensors}

    def load(name: str) -> NDArray[np.float32]:
        t = tensors[name]
        return np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)

    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        n_layers,
        n_head,
        activation=common_spec.Activation.SWISH,
        pre_norm=True,
        ffn_glu=True,
        rms_norm=True,
        rotary_dim=0,
        rotary_interleave=False,
        rotary_base=float(meta.get("llama.rope.freq_base", 10000.0)),
        num_heads_kv=None if n_head_kv == n_head else n_head_kv,
    )
    decoder = spec.decoder
    decoder.scale_embeddings = False
    embedding = load("token_embd.weight")
    decoder.embeddings.weight = embedding
    decoder.layer_norm.gamma = load("output_norm.weight")
    decoder.projection.weight = load("output.weight") if "output.weight" in tensors else embedding
    for i, layer in enumerate(decoder.layer):
        p = f"blk.{i}."
        attn = layer.self_attention
        attn.layer_norm.gamma = load(p + "attn_norm.weight")
        q = _unpermute(load(p + "attn_q.weight"), n_head)
        k = _unpermute(load(p + "attn_k.weight"), n_head_kv)
        attn.linear[0].weight = np.concatenate([q, k, load(p + "attn_v.weight")])
        attn.linear[1].weight = load(p + "attn_output.weight")
        layer.ffn.layer_norm.gamma = load(p + "ffn_norm.weight")
        layer.ffn.linear_0.weight = load(p + "ffn_gate.weight")
        layer.ffn.linear_0_noact.weight = load(p + "ffn_up.weight")
        layer.ffn.linear_1.weight = load(p + "ffn_down.weight")
        if (i + 1) % 10 == 0 or i + 1 == n_layers:
            say(f"dequantized layer {i + 1}/{n_layers}")

    tokens = list(meta["tokenizer.ggml.tokens"])
    spec.register_vocabulary(tokens)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    spec.config.bos_token = cfg["bos_token"]
    spec.config.eos_token = cfg["eos_token"]
    spec.config.unk_token = cfg["unk_token"] or ""
    spec.config.layer_norm_epsilon = float(meta["llama.attention.layer_norm_rms_epsilon"])
    spec.validate()
    say("quantizing to int8")
    spec.optimize(quantization="int8")
    spec.save(str(out))
