"""A prepared weights directory: built once, atomically, and marked with the format it holds.

Every ``prepare-model`` step (the LM's GGUF conversion, MiniLM, Whisper) fills its directory the same
way: the files are written into a temporary directory beside the target, a ``.complete`` marker holding
the format's name goes in last, and the whole directory is renamed into place. A directory whose marker
names another format (or has none, from an interrupted run) is rebuilt; one with the right marker and
its files is left alone, so the step is idempotent.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"

Progress = Callable[[str], None]
Build = Callable[[Path, Progress], None]  # (the temporary directory to fill, progress)


def is_prepared(out_dir: Path, fmt: str, files: Iterable[str]) -> bool:
    """``out_dir``'s marker names ``fmt`` and each of ``files`` is in it."""
    try:
        written = (out_dir / COMPLETE_MARKER).read_text().strip()
    except OSError:
        return False
    return written == fmt and all((out_dir / name).is_file() for name in files)


def prepare_dir(
    out_dir: Path, fmt: str, files: Iterable[str], what: str, build: Build, progress: Progress | None = None
) -> Path:
    """Fill ``out_dir`` with ``build`` unless it holds ``fmt`` already. Returns ``out_dir``.

    ``what`` names the model in the progress lines ("{what} ready in ...", "{what} prepared in ...").
    """
    say = progress or _log
    if is_prepared(out_dir, fmt, files):
        say(f"{what} ready in {out_dir}")
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the weights from a server run as another user
        build(tmp, say)
        (tmp / COMPLETE_MARKER).write_text(fmt + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"{what} prepared in {out_dir}")
    return out_dir


def _log(message: str) -> None:
    log.info("%s", message)
