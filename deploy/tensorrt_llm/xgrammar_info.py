#!/usr/bin/env python3
"""Write the tokenizer-info JSON that guided decoding needs in TensorRT-LLM's C++ Triton backend.

The ``tensorrt_llm`` model builds its xgrammar grammar compiler from this file, named by the config
parameter ``xgrammar_tokenizer_info_path`` (with ``guided_decoding_backend=xgrammar``); it never reads
``tokenizer_dir`` for this. Only the ``tokenizers`` library is needed: no transformers, torch or xgrammar.

The format, as TensorRT-LLM reads and writes it:

* read by ``ModelInstanceState::getGuidedDecodingConfigFromParams`` in
  ``triton_backend/inflight_batcher_llm/src/model_instance_state.cc``: a JSON object with
  ``encoded_vocab`` (list of strings), ``tokenizer_str`` (string) and ``stop_token_ids`` (list of
  ints), passed to ``executor::GuidedDecodingConfig`` and from there to
  ``xgrammar::TokenizerInfo::FromHuggingFace(encoded_vocab, tokenizer_str, vocab_size_padded,
  stop_token_ids)`` (``cpp/tensorrt_llm/batch_manager/guidedDecoder.cpp``);
* written by ``examples/generate_xgrammar_tokenizer_info.py`` through ``_xgrammar_tokenizer_info`` in
  ``tensorrt_llm/llmapi/tokenizer.py``: ``encoded_vocab`` is the tokenizer's vocabulary (added tokens
  included) as its raw token strings (byte-level ``Ġ``/``Ċ`` or ``▁``/``<0x0A>`` forms, undecoded),
  ordered by token id; ``tokenizer_str`` is the serialized ``tokenizer.json`` (the fast tokenizer's
  ``to_str()``), from which xgrammar detects the vocabulary's encoding; ``stop_token_ids`` is
  ``[eos_token_id]``.

xgrammar takes a token's position in ``encoded_vocab`` as its id, so an id the vocabulary skips is
written as an empty string (as xgrammar's own ``TokenizerInfo.from_huggingface`` does) rather than
shifting every later token. The engine's padded vocabulary may be larger; xgrammar masks ids past the
list. The end-of-sequence token comes from ``tokenizer_config.json`` (else ``special_tokens_map.json``),
the same one the gateway sends as ``end_id``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from tokenizers import Tokenizer

LOG = logging.getLogger("xgrammar_info")
FILENAME = "xgrammar_tokenizer_info.json"


class TokenizerInfo(TypedDict):
    encoded_vocab: list[str]
    tokenizer_str: str
    stop_token_ids: list[int]


class TokenizerInfoError(ValueError):
    """The tokenizer directory cannot give what the backend needs."""


def _special(value: object) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _json_object(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TokenizerInfoError(f"{path} is not a JSON object")
    return data


def eos_token(directory: Path) -> str | None:
    """The end-of-sequence token of a Hugging Face tokenizer directory, or None if it names none."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        token = _special(_json_object(directory / name).get("eos_token"))
        if token is not None:
            return token
    return None


def encoded_vocab(tokenizer: Tokenizer) -> list[str]:
    """Every token's raw string, the one with id i at position i ("" where no token has an id)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if not vocab:
        raise TokenizerInfoError("the tokenizer has an empty vocabulary")
    out = [""] * (max(vocab.values()) + 1)
    for token, token_id in vocab.items():
        if token_id < 0:
            raise TokenizerInfoError(f"token {token!r} has a negative id {token_id}")
        out[token_id] = token
    if holes := len(out) - len(vocab):
        LOG.warning("%d ids between 0 and %d have no token: written as empty strings", holes, len(out) - 1)
    return out


def tokenizer_info(directory: Path, extra_stop_ids: Sequence[int] = ()) -> TokenizerInfo:
    """The backend's tokenizer info for the Hugging Face tokenizer in ``directory``."""
    path = directory / "tokenizer.json"
    if not path.is_file():
        raise TokenizerInfoError(f"{path} not found: a fast (Rust) tokenizer file is needed")
    tokenizer = Tokenizer.from_file(str(path))
    vocab = encoded_vocab(tokenizer)

    stop_ids: list[int] = []
    eos = eos_token(directory)
    if eos is not None:
        eos_id = tokenizer.token_to_id(eos)
        if eos_id is None:
            raise TokenizerInfoError(f"the eos token {eos!r} is not in the vocabulary")
        stop_ids.append(eos_id)
    for token_id in extra_stop_ids:
        if not 0 <= token_id < len(vocab):
            raise TokenizerInfoError(f"stop token id {token_id} is not in [0, {len(vocab)})")
        if token_id not in stop_ids:
            stop_ids.append(token_id)
    if not stop_ids:
        raise TokenizerInfoError(
            f"no eos_token in {directory}/tokenizer_config.json or special_tokens_map.json: give --stop-token-id"
        )
    return {"encoded_vocab": vocab, "tokenizer_str": tokenizer.to_str(), "stop_token_ids": stop_ids}


def write(info: TokenizerInfo, output: Path) -> None:
    """Write ``info`` to ``output`` whole or not at all (a temporary file renamed into place)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(info, f, ensure_ascii=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xgrammar_info.py",
        description="Write the xgrammar tokenizer info (xgrammar_tokenizer_info_path) that TensorRT-LLM's "
        "tensorrt_llm Triton model needs for guided decoding, from a Hugging Face tokenizer directory.",
    )
    p.add_argument(
        "tokenizer_dir", type=Path, metavar="TOKENIZER_DIR", help="holds tokenizer.json and tokenizer_config.json"
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help=f"the JSON file to write; a directory (or a path ending in /) gets {FILENAME} inside "
        f"(default: TOKENIZER_DIR/{FILENAME})",
    )
    p.add_argument(
        "--stop-token-id",
        dest="stop_token_ids",
        type=int,
        action="append",
        default=[],
        metavar="ID",
        help="another token a finished grammar may end on, after the eos token (repeatable)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    directory: Path = args.tokenizer_dir
    given: str | None = args.output
    output = Path(given) if given is not None else directory / FILENAME
    if output.is_dir() or (given is not None and given.endswith(("/", os.sep))):
        output /= FILENAME
    try:
        info = tokenizer_info(directory, args.stop_token_ids)
        write(info, output)
    except (OSError, ValueError) as exc:  # TokenizerInfoError, a malformed tokenizer_config.json
        LOG.error("xgrammar_info: %s", exc)
        return 1
    except Exception as exc:  # tokenizers raises its own (Rust) exception type for a malformed file
        LOG.error("xgrammar_info: cannot read %s: %s", directory / "tokenizer.json", exc)
        return 1
    LOG.info("wrote %s (%d tokens, stop token ids %s)", output, len(info["encoded_vocab"]), info["stop_token_ids"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
