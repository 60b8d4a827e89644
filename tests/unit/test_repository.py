"""Model-control requests and errors, without a server (tests/e2e/test_model_control.py has the real one)."""

from __future__ import annotations

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from gateway.engine.repository import control_error, load_request, unload_request
from gateway.errors import ModelLoadFailed, UpstreamTimeout, UpstreamUnavailable

URL = "triton:8001"


def rpc_error(code: grpc.StatusCode, details: str) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details)


def test_a_load_request_carries_the_config_as_json_and_files_as_bytes() -> None:
    config: dict[str, object] = {"name": "m", "backend": "python", "max_batch_size": 8}
    request = load_request("m", config, {"1/model.py": b"print()"})
    assert request.model_name == "m"
    assert request.parameters["config"].string_param == '{"name":"m","backend":"python","max_batch_size":8}'
    assert request.parameters["file:1/model.py"].bytes_param == b"print()"
    assert set(request.parameters) == {"config", "file:1/model.py"}
    assert not load_request("m", None, None).parameters


def test_files_need_a_config() -> None:
    with pytest.raises(ValueError, match="needs its config"):
        load_request("m", None, {"1/model.py": b""})


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"bogus_field": 1}, "bogus_field"),
        ({"max_batch_size": "eight"}, "max_batch_size"),
        ({"input": {"name": "x"}}, "input"),
    ],
)
def test_a_config_that_is_no_model_config_is_refused_before_triton(config: dict[str, object], words: str) -> None:
    with pytest.raises(ModelLoadFailed, match=words):
        load_request("m", config, None)


def test_an_unload_request_names_the_dependents_only_when_asked() -> None:
    assert not unload_request("m", False).parameters
    assert unload_request("m", True).parameters["unload_dependents"].bool_param is True


@pytest.mark.parametrize(
    ("code", "details", "error"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", UpstreamUnavailable),
        (
            grpc.StatusCode.UNAVAILABLE,
            "explicit model load / unload is not allowed if polling is enabled",
            ModelLoadFailed,
        ),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", UpstreamTimeout),
        (grpc.StatusCode.INTERNAL, "failed to load 'x', failed to poll from model repository", ModelLoadFailed),
        (grpc.StatusCode.INVALID_ARGUMENT, "load failed for model 'x': unable to find backend", ModelLoadFailed),
    ],
)
def test_control_errors(code: grpc.StatusCode, details: str, error: type[Exception]) -> None:
    translated = control_error(rpc_error(code, details), URL, "load model 'x'")
    assert type(translated) is error
    if error is ModelLoadFailed:
        assert details in translated.message and URL in translated.message
        assert translated.kind.http_status == 502 and translated.kind.code == "model_load_failed"
