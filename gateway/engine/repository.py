"""Triton's model repository under explicit model control: what it holds, loading and unloading models.

:class:`ModelControl` is what the deployments manager needs of a server; :class:`TritonClient
<gateway.engine.triton.TritonClient>` implements it over ``RepositoryIndex``, ``RepositoryModelLoad`` and
``RepositoryModelUnload``. What the ``tritonserver`` of the ``nvidia-pytriton`` 0.7.0 wheel does
(measured with the synthetic model, tests/e2e/test_model_control.py):

- Load and unload work only in explicit model-control mode; otherwise Triton answers UNAVAILABLE,
  "explicit model load / unload is not allowed if polling is enabled" (here: :class:`ModelLoadFailed`).
- Loading a model that is loaded already, with the same config (none, or the same ``config`` again),
  is a no-op: OK at once, the model stays READY and is not reloaded. With a different ``config`` Triton
  reloads it in place: the new config takes effect, and the model answers ready throughout (the new
  instance is loaded before the old one goes). Unloading first is not needed.
- ``config`` replaces the repository's config.pbtxt entirely (nothing is merged): send the whole
  config. Files (``file:<path>``) make a model that need not be in the repository at all; such a model
  is missing from the index, and once unloaded it cannot be loaded again without its files.
- A malformed or unknown-field ``config``, a model the repository lacks, or files without a config all
  get INTERNAL "failed to load '<name>', failed to poll from model repository": Triton says no more.
  So the config is checked here against the ModelConfig message first, for a message that says what
  is wrong. A config Triton parses but cannot load (an unknown backend) gets INVALID_ARGUMENT with the
  reason, which the index then shows as the model's ``reason``.
- Unload returns once the unload has begun (state UNLOADING, about a second for the synthetic model,
  longer while requests are in flight); :func:`wait_unloaded` waits for it to end. Unloading a model
  that is not loaded, or one the repository lacks, is OK.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import orjson
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.errors import GatewayError, ModelLoadFailed, UpstreamTimeout, UpstreamUnavailable

_REFUSED_UNAVAILABLE = "not allowed"  # Triton's UNAVAILABLE for load/unload outside explicit mode
UNLOAD_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class RepositoryModel:
    """One model of a server's repository, as its index lists it."""

    name: str
    version: str  # "" for a model never loaded
    state: str  # READY, LOADING, UNLOADING, UNAVAILABLE; "" for a model never loaded
    reason: str  # why it is UNAVAILABLE ("unloaded", a load error), or ""

    @property
    def ready(self) -> bool:
        return self.state == "READY"


class ModelControl(Protocol):
    """Loading and unloading models on one server (explicit model-control mode)."""

    url: str

    async def repository_index(self) -> list[RepositoryModel]:
        """Every model of the server's repository, loaded or not (a model loaded from files is absent)."""
        ...

    async def load_model(
        self,
        name: str,
        config: dict[str, object] | None = None,
        files: dict[str, bytes] | None = None,
        timeout_s: float = 300,
    ) -> None:
        """Load ``name`` (again), with ``config`` in place of its config.pbtxt and ``files`` (paths in the model
        directory, such as ``1/model.py``) in place of its directory; returns once it is ready."""
        ...

    async def unload_model(self, name: str, unload_dependents: bool = False, timeout_s: float = 120) -> None:
        """Unload ``name``; returns once it is unloaded (its in-flight requests finished)."""
        ...

    def let_go(self) -> None:
        """Let go of what this client's open streams hold on the server (Triton keeps a model loaded while a
        stream that carried its requests is open): they end once their requests have, new ones are opened."""
        ...

    async def model_ready(self, model: str) -> bool:
        """The server and the model answer ready (False, not an error, when the server is out of reach)."""
        ...


def index_models(response: Any) -> list[RepositoryModel]:
    """The models of a ``RepositoryIndexResponse``."""
    return [RepositoryModel(m.name, m.version, m.state, m.reason) for m in response.models]


def load_request(name: str, config: dict[str, object] | None, files: dict[str, bytes] | None) -> Any:
    """A ``RepositoryModelLoadRequest``; a config Triton could not parse raises :class:`ModelLoadFailed`.

    Files without a config are a caller's mistake (Triton needs the config with them): ValueError.
    """
    parameters: dict[str, Any] = {}
    if config is not None:
        try:
            json_format.ParseDict(config, model_config_pb2.ModelConfig())
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise ModelLoadFailed(f"the config for model {name!r} is not a Triton model config: {exc}") from None
        parameters["config"] = service_pb2.ModelRepositoryParameter(string_param=orjson.dumps(config).decode())
    if files:
        if config is None:
            raise ValueError(f"loading model {name!r} from files needs its config")
        for path, content in files.items():
            parameters[f"file:{path}"] = service_pb2.ModelRepositoryParameter(bytes_param=content)
    return service_pb2.RepositoryModelLoadRequest(model_name=name, parameters=parameters)


def unload_request(name: str, unload_dependents: bool) -> Any:
    parameters: dict[str, Any] = {}
    if unload_dependents:
        parameters["unload_dependents"] = service_pb2.ModelRepositoryParameter(bool_param=True)
    return service_pb2.RepositoryModelUnloadRequest(model_name=name, parameters=parameters)


def control_error(exc: grpc.aio.AioRpcError, url: str, action: str) -> GatewayError:
    """A failed load or unload call: the server out of reach, out of time, or Triton's refusal."""
    code = exc.code()
    detail = exc.details() or code.name
    if code == grpc.StatusCode.UNAVAILABLE and _REFUSED_UNAVAILABLE not in detail:
        return UpstreamUnavailable(f"Triton at {url} is unavailable: {detail}", retry_after=1.0)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeout(f"Triton at {url} did not {action} in time (it may still be at it)")
    return ModelLoadFailed(f"Triton at {url} could not {action}: {detail}")


async def wait_unloaded(control: ModelControl, name: str, timeout_s: float) -> None:
    """Wait until the index no longer shows ``name`` UNLOADING; UpstreamTimeout after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while any(m.name == name and m.state == "UNLOADING" for m in await control.repository_index()):
        if loop.time() >= deadline:
            raise UpstreamTimeout(f"Triton at {control.url} is still unloading model {name!r} after {timeout_s:g}s")
        await asyncio.sleep(UNLOAD_POLL_S)
