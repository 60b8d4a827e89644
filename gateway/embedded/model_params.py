"""The ``parameters`` of a Python-backend model's config (model_repository/*/config.pbtxt).

Triton hands ``initialize`` the config as JSON (``args["model_config"]``) and the model's directory
(``args["model_repository"]``); every parameter is a ``string_value``. :class:`ModelParams` reads
them as text, integers, flags or one of a few choices, and resolves ``weights_dir`` against the
model's directory. A bad value raises :class:`ParameterError` naming the parameter, which fails the
model's load with that message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound=str)

PREPARE_HINT = "run `python -m gateway prepare-model` first"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ParameterError(ValueError):
    """A parameter of the model's config is malformed, or its weights are not prepared."""


class ModelParams:
    """One model's config and its string parameters."""

    def __init__(self, args: Mapping[str, str]) -> None:
        """``args``: what Triton hands ``TritonPythonModel.initialize``."""
        self.config: dict[str, Any] = json.loads(args["model_config"])
        self.directory = Path(args["model_repository"])
        self.values: dict[str, str] = {
            name: str(value.get("string_value", "")) for name, value in self.config.get("parameters", {}).items()
        }

    def text(self, name: str, default: str = "") -> str:
        """The parameter stripped of white space; ``default`` when unset or blank."""
        return self.values.get(name, "").strip() or default

    def integer(self, name: str, default: int, minimum: int) -> int:
        raw = self.text(name)
        try:
            value = int(raw) if raw else default
        except ValueError:
            raise ParameterError(f"parameter {name} must be an integer, not {raw!r}") from None
        if value < minimum:
            raise ParameterError(f"parameter {name} must be at least {minimum}, not {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.text(name).lower()
        if not raw:
            return default
        if raw in _TRUE or raw in _FALSE:
            return raw in _TRUE
        raise ParameterError(f"parameter {name} must be true or false, not {raw!r}")

    def choice(self, name: str, allowed: tuple[T, ...]) -> T:
        """One of ``allowed`` (case-insensitive); the first when unset."""
        raw = self.text(name).lower()
        if not raw:
            return allowed[0]
        for value in allowed:
            if raw == value:
                return value
        raise ParameterError(f"parameter {name} must be one of {', '.join(allowed)}, not {raw!r}")

    def weights_dir(self, *required: str) -> Path:
        """``weights_dir`` (default ``weights``), relative to the model's directory unless absolute;
        ParameterError when any of the ``required`` files is not in it."""
        weights = Path(self.text("weights_dir", "weights"))
        if not weights.is_absolute():
            weights = self.directory / weights
        missing = [name for name in required if not (weights / name).is_file()]
        if missing:
            raise ParameterError(f"no prepared model in {weights} (no {', '.join(missing)}): {PREPARE_HINT}")
        return weights
