"""Loading and unloading models on a real tritonserver in explicit model-control mode, started with none.

One server for the module; every test leaves the synthetic model unloaded, as it found it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from google.protobuf import json_format

from gateway.embedded.tritonserver import TritonPorts, TritonServer
from gateway.engine.repository import ModelControl, RepositoryModel
from gateway.engine.triton import TritonClient
from gateway.errors import ModelLoadFailed, UpstreamUnavailable
from perf.stack import free_port
from tests.conftest import MODEL_REPOSITORY, read_model_config

pytestmark = pytest.mark.e2e

MODEL = "synthetic"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    ports = TritonPorts(free_port(), free_port(), free_port())
    server = TritonServer(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton"), ports, explicit=True)
    server.start()
    try:
        server.wait_ready(timeout=180)
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(triton: TritonServer) -> AsyncIterator[TritonClient]:
    client = TritonClient(triton.grpc_url)
    try:
        yield client
    finally:
        await client.unload_model(MODEL)
        await client.close()


async def entry(control: ModelControl, name: str = MODEL) -> RepositoryModel:
    return next(m for m in await control.repository_index() if m.name == name)


async def served_config(client: TritonClient, name: str = MODEL) -> dict[str, object]:
    return json_format.MessageToDict(await client.model_config(name), preserving_proto_field_name=True)


def repository_config() -> dict[str, object]:
    """The synthetic model's config.pbtxt as the JSON a ``config`` parameter carries."""
    return json_format.MessageToDict(read_model_config(MODEL), preserving_proto_field_name=True)


def ttft_ms(config: dict[str, object]) -> object:
    parameters = config["parameters"]
    assert isinstance(parameters, dict)
    return parameters["ttft_ms"]["string_value"]


def with_ttft_ms(config: dict[str, object], value: str) -> dict[str, object]:
    """The config with the synthetic model's time to first token changed."""
    parameters = config["parameters"]
    assert isinstance(parameters, dict)
    return {**config, "parameters": {**parameters, "ttft_ms": {"string_value": value}}}


async def test_the_index_lists_the_repository_and_nothing_is_loaded(client: TritonClient) -> None:
    models = await client.repository_index()
    assert {MODEL, "smollm2", "minilm"} <= {m.name for m in models}
    assert not any(m.ready for m in models)
    assert not await client.model_ready(MODEL)


async def test_load_then_unload(client: TritonClient) -> None:
    await client.load_model(MODEL)
    assert await client.model_ready(MODEL)
    loaded = await entry(client)
    assert loaded.ready and loaded.state == "READY" and loaded.version == "1"

    await client.load_model(MODEL)  # loaded already, the same config: a no-op
    assert await client.model_ready(MODEL)

    await client.unload_model(MODEL)  # returns once unloaded, not while it is UNLOADING
    assert not await client.model_ready(MODEL)
    unloaded = await entry(client)
    assert unloaded.state == "UNAVAILABLE" and unloaded.reason == "unloaded"

    await client.unload_model(MODEL)  # not loaded: nothing to do


async def test_a_config_override_is_loaded_and_reloads_a_loaded_model(client: TritonClient) -> None:
    config = repository_config()
    assert ttft_ms(config) == "20"
    await client.load_model(MODEL, config=with_ttft_ms(config, "7"))
    assert await client.model_ready(MODEL)
    assert ttft_ms(await served_config(client)) == "7"

    await client.load_model(MODEL, config=with_ttft_ms(config, "3"))  # loaded, another config: reloaded in place
    assert await client.model_ready(MODEL)
    assert ttft_ms(await served_config(client)) == "3"  # read again, not the config cached before


async def test_a_model_from_files(client: TritonClient) -> None:
    config = {**repository_config(), "name": "synthetic_files"}
    files = {"1/model.py": (MODEL_REPOSITORY / MODEL / "1" / "model.py").read_bytes()}
    await client.load_model("synthetic_files", config=config, files=files)
    try:
        assert await client.model_ready("synthetic_files")
        assert ttft_ms(await served_config(client, "synthetic_files")) == "20"
    finally:
        await client.unload_model("synthetic_files")
    assert not await client.model_ready("synthetic_files")


async def test_an_unknown_model_is_refused_with_tritons_message(client: TritonClient) -> None:
    with pytest.raises(ModelLoadFailed, match="failed to load 'no_such_model', failed to poll from model repository"):
        await client.load_model("no_such_model")


async def test_a_bad_config_is_refused(client: TritonClient) -> None:
    with pytest.raises(ModelLoadFailed, match="unable to find backend library for backend 'no_such_backend'"):
        await client.load_model(MODEL, config={"backend": "no_such_backend"})  # Triton's refusal
    assert "no_such_backend" in (await entry(client)).reason
    with pytest.raises(ModelLoadFailed, match="bogus_field"):  # refused before Triton, which would say less
        await client.load_model(MODEL, config={"backend": "python", "bogus_field": 1})
    assert not await client.model_ready(MODEL)


async def test_a_server_out_of_reach_is_unavailable() -> None:
    client = TritonClient(f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(UpstreamUnavailable):
            await client.load_model(MODEL, timeout_s=10)
        with pytest.raises(UpstreamUnavailable):
            await client.unload_model(MODEL, timeout_s=10)
        with pytest.raises(UpstreamUnavailable):
            await client.repository_index()
    finally:
        await client.close()
