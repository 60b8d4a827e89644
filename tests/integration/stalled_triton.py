"""A stand-in Triton over real gRPC that records how the gateway ends each call.

It answers ServerReady, ModelReady and ModelConfig (the synthetic model's config, which declares
TensorRT-LLM's ``stop`` and ``stop_words_list`` inputs) like a healthy server. Each ModelStreamInfer
call streams the token ``260`` (" the") every ``delay`` seconds, up to ``request_output_len`` tokens,
then the final response; or, with ``stall_after``, goes silent after that many tokens (a deadlocked
server as the gateway sees it). Like TensorRT-LLM, it ends a request after a one-token stop sequence
that matches, and when a request with the same id and ``stop`` true arrives.

Per call it records whether the client half-closed its side (done writing) and whether it
cancelled the call, and it records every stop request: what the gateway did, not what it meant.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from perf.stack import free_port
from tests.conftest import read_model_config

TOKEN = 260  # " the" in SmolLM2's vocabulary


def token_response(token: int) -> service_pb2.ModelStreamInferResponse:
    out = service_pb2.ModelInferResponse.InferOutputTensor(name="output_ids", datatype="INT32", shape=[1, 1, 1])
    infer = service_pb2.ModelInferResponse(model_name="synthetic", outputs=[out])
    infer.raw_output_contents.append(struct.pack("<i", token))
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


def final_response() -> service_pb2.ModelStreamInferResponse:
    infer = service_pb2.ModelInferResponse(model_name="synthetic")
    infer.parameters["triton_final_response"].bool_param = True
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


def _input(request: service_pb2.ModelInferRequest, name: str, code: str) -> list[int] | None:
    for i, tensor in enumerate(request.inputs):
        if tensor.name == name:
            raw = request.raw_input_contents[i]
            return list(struct.unpack(f"<{len(raw) // struct.calcsize(code)}{code}", raw))
    return None


@dataclass
class Call:
    request_id: str = ""
    sent: int = 0
    half_closed: bool = False
    cancelled: bool = False
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


class StalledTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, stall_after: int | None = 0, delay: float = 0.0, stoppable: bool = True) -> None:
        self.stall_after = stall_after
        self.delay = delay
        self.stoppable = stoppable  # declares the `stop` input
        self.calls: list[Call] = []  # generation calls, in order
        self.stops: list[str] = []  # ids of the stop requests received
        self.address = ""
        self._server: grpc.aio.Server | None = None

    @property
    def cancelled(self) -> int:
        return sum(c.cancelled for c in self.calls)

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
        config = read_model_config("synthetic")
        if not self.stoppable:
            kept = [i for i in config.input if i.name != "stop"]
            del config.input[:]
            config.input.extend(kept)
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[service_pb2.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        requests = aiter(request_iterator)
        request = await anext(requests)
        if _input(request, "stop", "?") == [True]:
            self.stops.append(request.id)
            for call in self.calls:
                if call.request_id == request.id:
                    call.stopped.set()
            yield final_response()
            return
        call = Call(request.id)
        self.calls.append(call)
        rest = asyncio.ensure_future(self._half_close(requests, call))
        ended = False
        try:
            async for response in self._generate(request, call):
                yield response
            await rest  # Triton ends the call once the client is done writing and the request is done
            ended = True
        finally:
            # only the client's cancel breaks a call off here (as CancelledError, or as GeneratorExit
            # when it lands while grpc sends a response)
            call.cancelled = not ended
            rest.cancel()

    async def _generate(
        self, request: service_pb2.ModelInferRequest, call: Call
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        length = (_input(request, "request_output_len", "i") or [16])[0]
        rows = _input(request, "stop_words_list", "i") or []
        ids, offsets = rows[: len(rows) // 2], rows[len(rows) // 2 :]
        stops_on_token = any(
            ids[start:end] == [TOKEN] for start, end in zip([0, *offsets], offsets, strict=False) if end > 0
        )
        while call.sent < length and not call.stopped.is_set():
            if self.stall_after is not None and call.sent >= self.stall_after:
                await asyncio.Event().wait()  # and never a word more
            await asyncio.sleep(self.delay)
            if call.stopped.is_set():
                break
            call.sent += 1
            yield token_response(TOKEN)
            if stops_on_token:
                break  # its text ends with a stop sequence: the model ends the request itself
        yield final_response()

    @staticmethod
    async def _half_close(requests: AsyncIterator[service_pb2.ModelInferRequest], call: Call) -> None:
        async for _ in requests:
            pass
        call.half_closed = True

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
