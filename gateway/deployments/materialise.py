"""Models the gateway carries itself and can put on any Triton server in explicit model-control mode,
whatever that server's repository holds: RepositoryModelLoad with the model's config (JSON) and its
files (``file:1/model.py``), under a name of their own (``gateway-<name>``) so that they never replace
a model of the server's repository.

Only self-contained Python-backend models qualify: their ``model.py`` imports nothing but numpy and
Triton's ``triton_python_backend_utils``. Today that is ``synthetic`` (the benchmark upstream).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from gateway.config import REPO_ROOT

PREFIX = "gateway/"  # catalogue names: gateway/synthetic
REPOSITORY = REPO_ROOT / "model_repository"
MATERIALISABLE = ("synthetic",)


def names() -> list[str]:
    """The catalogue names of the models the gateway can materialise."""
    return [PREFIX + name for name in MATERIALISABLE]


def source_of(catalogue_name: str) -> str | None:
    """The model directory's name of ``gateway/<name>``; None for any other name."""
    if not catalogue_name.startswith(PREFIX):
        return None
    name = catalogue_name[len(PREFIX) :]
    return name if name in MATERIALISABLE else None


def triton_name(source: str) -> str:
    return f"gateway-{source}"


def materials(source: str, directory: Path = REPOSITORY) -> tuple[dict[str, object], dict[str, bytes]]:
    """The config (as Triton's JSON, renamed) and the files that load ``source`` as its own model."""
    folder = directory / source
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config.name = triton_name(source)
    files = {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.glob("[0-9]*/*.py"))  # the versions' code: no caches, no weights
    }
    return json_format.MessageToDict(config, preserving_proto_field_name=True), files
