"""The liveness probe against an in-process gRPC Triton: what it sends, how it ends the call, what it reports."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.embedded.liveness import generation_probe
from perf.stack import free_port


def token(final: bool) -> service_pb2.ModelStreamInferResponse:
    out = service_pb2.ModelInferResponse.InferOutputTensor(name="output_ids", datatype="INT32", shape=[1, 1, 1])
    infer = service_pb2.ModelInferResponse(model_name="synthetic", outputs=[out])
    infer.raw_output_contents.append(struct.pack("<i", 260))
    infer.parameters["triton_final_response"].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


class Triton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Reads the whole request stream (so the probe must half-close it), then answers as ``mode`` says."""

    def __init__(self) -> None:
        self.mode = "answer"
        self.requests: list[service_pb2.ModelInferRequest] = []

    def ModelStreamInfer(
        self, request_iterator: Iterator[service_pb2.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[service_pb2.ModelStreamInferResponse]:
        self.requests += list(request_iterator)  # ends only when the client is done writing
        if self.mode == "answer":
            yield token(final=False)
            yield token(final=True)
        elif self.mode == "error":
            yield service_pb2.ModelStreamInferResponse(error_message="Request for unknown model: 'synthetic'")
        elif self.mode == "unfinished":
            yield token(final=False)
        elif self.mode == "hang":
            ended = threading.Event()
            context.add_callback(ended.set)
            ended.wait()


@pytest.fixture(scope="module")
def triton() -> Iterator[tuple[Triton, str]]:
    servicer = Triton()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    url = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(url)
    server.start()
    yield servicer, url
    server.stop(0)


def test_one_request_half_closed_and_streamed_to_its_final_response(triton: tuple[Triton, str]) -> None:
    servicer, url = triton
    servicer.mode, servicer.requests = "answer", []
    assert generation_probe(url) is None
    [request] = servicer.requests
    assert request.model_name == "synthetic"
    assert request.parameters["triton_enable_empty_final_response"].bool_param
    tensors = {t.name: (t.datatype, list(t.shape)) for t in request.inputs}
    assert tensors == {
        "input_ids": ("INT32", [1, 1]),
        "input_lengths": ("INT32", [1, 1]),
        "request_output_len": ("INT32", [1, 1]),
        "streaming": ("BOOL", [1, 1]),
    }
    raw = dict(zip((t.name for t in request.inputs), request.raw_input_contents, strict=True))
    assert struct.unpack("<i", raw["request_output_len"]) == (1,) and raw["streaming"] == b"\x01"


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        ("error", "the model answered an error: Request for unknown model: 'synthetic'"),
        ("unfinished", "the stream ended without a final response"),
        ("hang", "no answer within 0.5s"),
    ],
)
def test_what_a_failed_probe_reports(triton: tuple[Triton, str], mode: str, problem: str) -> None:
    servicer, url = triton
    servicer.mode = mode
    assert generation_probe(url, timeout=0.5) == problem


def test_nothing_listening_is_unavailable() -> None:
    problem = generation_probe(f"127.0.0.1:{free_port()}", timeout=5.0)
    assert problem is not None and problem.startswith("UNAVAILABLE: ")
