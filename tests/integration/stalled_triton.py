"""A stand-in Triton over real gRPC that records how the gateway ends each call.

It answers ServerReady, ModelReady and ModelConfig (the synthetic model's config, which declares
TensorRT-LLM's ``stop`` and ``stop_words_list`` inputs) like a healthy server. Each ModelStreamInfer
stream takes any number of requests, as Triton's does, and answers each, tagged with its id: the token
``260`` (" the") every ``delay`` seconds, up to ``request_output_len`` tokens, then the final response;
or, with ``stall_after``, it goes silent after that many tokens (a deadlocked server as the gateway
sees it). Like TensorRT-LLM, it ends a request after a one-token stop sequence that matches, and when
a request with the same id and ``stop`` true arrives (on any stream).

Per request it records whether it ended by itself (its final response sent), whether the client
half-closed the stream it came on (done writing) and whether the client cancelled that stream before
the request ended, and it records every stop request: what the gateway did, not what it meant.
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


def token_response(request_id: str, token: int) -> service_pb2.ModelStreamInferResponse:
    out = service_pb2.ModelInferResponse.InferOutputTensor(name="output_ids", datatype="INT32", shape=[1, 1, 1])
    infer = service_pb2.ModelInferResponse(model_name="synthetic", id=request_id, outputs=[out])
    infer.raw_output_contents.append(struct.pack("<i", token))
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


def final_response(request_id: str) -> service_pb2.ModelStreamInferResponse:
    infer = service_pb2.ModelInferResponse(model_name="synthetic", id=request_id)
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
    finished: bool = False  # its final response was sent
    half_closed: bool = False  # the client was done writing on its stream
    cancelled: bool = False  # the client cancelled its stream before it finished
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


class StalledTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, stall_after: int | None = 0, delay: float = 0.0, stoppable: bool = True) -> None:
        self.stall_after = stall_after
        self.delay = delay
        self.stoppable = stoppable  # declares the `stop` input
        self.calls: list[Call] = []  # generation calls, in order
        self.stops: list[str] = []  # ids of the stop requests received
        self.streams_opened = 0  # ModelStreamInfer calls, whatever they carried
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
        self.streams_opened += 1
        out: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        here: list[Call] = []  # the requests that came on this stream
        running: set[asyncio.Task[None]] = set()
        reading = True

        def maybe_end() -> None:
            if not reading and not running:
                out.put_nowait(None)  # Triton ends a stream once the client is done writing and its requests are

        def generated(task: asyncio.Task[None]) -> None:
            running.discard(task)
            maybe_end()

        async def take_requests() -> None:
            nonlocal reading
            async for request in request_iterator:
                if _input(request, "stop", "?") == [True]:
                    self.stops.append(request.id)
                    for call in self.calls:
                        if call.request_id == request.id:
                            call.stopped.set()
                    out.put_nowait(final_response(request.id))
                    continue
                call = Call(request.id)
                self.calls.append(call)
                here.append(call)
                task = asyncio.ensure_future(self._generate(request, call, out))
                running.add(task)
                task.add_done_callback(generated)
            for call in here:
                call.half_closed = True
            reading = False
            maybe_end()

        reader = asyncio.ensure_future(take_requests())
        try:
            while (response := await out.get()) is not None:
                yield response
        finally:
            # only the client's cancel breaks a stream off here (as CancelledError, or as GeneratorExit
            # when it lands while grpc sends a response)
            for call in here:
                call.cancelled = not call.finished
            reader.cancel()
            for task in running:
                task.cancel()

    async def _generate(
        self,
        request: service_pb2.ModelInferRequest,
        call: Call,
        out: asyncio.Queue[service_pb2.ModelStreamInferResponse | None],
    ) -> None:
        length = (_input(request, "request_output_len", "i") or [16])[0]
        rows = _input(request, "stop_words_list", "i") or []
        ids, offsets = rows[: len(rows) // 2], rows[len(rows) // 2 :]
        stops_on_token = any(
            ids[start:end] == [TOKEN] for start, end in zip([0, *offsets], offsets, strict=False) if end > 0
        )
        while call.sent < length and not call.stopped.is_set():
            if self.stall_after is not None and call.sent >= self.stall_after:
                await call.stopped.wait()  # not a word more, unless stopped
                break
            await asyncio.sleep(self.delay)
            if call.stopped.is_set():
                break
            call.sent += 1
            out.put_nowait(token_response(call.request_id, TOKEN))
            if stops_on_token:
                break  # its text ends with a stop sequence: the model ends the request itself
        call.finished = True
        out.put_nowait(final_response(call.request_id))

    async def start(self, address: str = "") -> str:
        """Serve on ``address`` (host:port; a free port when empty)."""
        self._server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, self._server)
        self.address = address or f"127.0.0.1:{free_port()}"
        self._server.add_insecure_port(self.address)
        await self._server.start()
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
