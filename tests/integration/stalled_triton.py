"""A stand-in Triton over real gRPC that says it is ready, then stops answering streams.

It answers ServerReady, ModelReady and ModelConfig (the synthetic model's config) like a healthy
server, sends ``tokens`` responses on each ModelStreamInfer call, and then sends nothing more: a
deadlocked server as the gateway sees it. It records each call it saw cancelled.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perf.stack import free_port
from tests.conftest import read_model_config


def token_response(token: int) -> service_pb2.ModelStreamInferResponse:
    out = service_pb2.ModelInferResponse.InferOutputTensor(name="output_ids", datatype="INT32", shape=[1, 1, 1])
    infer = service_pb2.ModelInferResponse(model_name="synthetic", outputs=[out])
    infer.raw_output_contents.append(struct.pack("<i", token))
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


class StalledTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, tokens: int = 0) -> None:
        self.tokens = tokens
        self.calls = 0
        self.cancelled = 0
        self.address = ""
        self._server: grpc.aio.Server | None = None

    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelReadyResponse:
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelConfigResponse:
        return service_pb2.ModelConfigResponse(config=read_model_config("synthetic"))

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        self.calls += 1
        await anext(aiter(request_iterator))
        try:
            for _ in range(self.tokens):
                yield token_response(260)
            await asyncio.Event().wait()  # and never a word more
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def start(self) -> str:
        self._server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        port = free_port()
        self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
