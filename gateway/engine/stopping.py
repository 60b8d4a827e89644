"""Ending a Triton call early without racing Triton.

Cancelling a ``ModelStreamInfer`` call while Triton still sends on it is a race in Triton's stream
handler that crashes or deadlocks it (server issues #7368, #7472, #8034). So a call the gateway must
end early (its client went away, a stop string matched inside a token, a consumer error) is ended the
way TensorRT-LLM offers: a second request with the same id and its ``stop`` input true, after which
the model ends the first request itself, and the first call is read to its end. The stop request is
sent only once the model has answered the first at least once (before that the model may not know the
request yet, and would ignore the stop). A model without ``stop`` can only be cancelled, as can a call
that stays silent past its deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from gateway.core.types import GenerateRequest
from gateway.engine.contract import ModelContract, build_stop_request

log = logging.getLogger(__name__)

# ModelStreamInfer made as a unary-stream call: one request written and half-closed, responses read
StreamInfer = grpc.aio.UnaryStreamMultiCallable[service_pb2.ModelInferRequest, service_pb2.ModelStreamInferResponse]
StreamCall = grpc.aio.UnaryStreamCall[service_pb2.ModelInferRequest, service_pb2.ModelStreamInferResponse]


class Stopper:
    """The background work of ending calls on one Triton server: stop requests, calls read to their end."""

    def __init__(self, stream_infer: StreamInfer, url: str, timeout: float) -> None:
        self._stream_infer = stream_infer
        self._url = url
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send_stop(self, contract: ModelContract, request_id: str) -> None:
        """One stop request, on a call of its own, read to its end."""
        call = self._stream_infer(build_stop_request(contract, request_id))
        try:
            async with asyncio.timeout(self._timeout):
                async for response in call:
                    if response.error_message:
                        log.info("stop of %s on %s: %s", request_id, self._url, response.error_message)
        except TimeoutError:
            log.warning("stop of %s on %s got no answer in %gs", request_id, self._url, self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.info("stop of %s on %s failed: %s", request_id, self._url, exc.code().name)
        finally:
            if not call.done():
                call.cancel()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LiveCall:
    """One call in flight: how it is stopped and released. Its reader calls :meth:`answered` once."""

    __slots__ = ("_stop_sent", "_stop_wanted", "_stopper", "call", "contract", "has_answered", "request")

    def __init__(
        self,
        stopper: Stopper,
        call: StreamCall,
        contract: ModelContract,
        request: GenerateRequest,
    ) -> None:
        self._stopper = stopper
        self.call = call
        self.contract = contract
        self.request = request
        self.has_answered = False
        self._stop_wanted = False
        self._stop_sent = False

    def answered(self) -> None:
        """The model answered for the first time: it knows the request, a stop can reach it."""
        self.has_answered = True
        if self._stop_wanted:
            self._send_stop()

    def halt(self) -> None:
        """Stop the model; its reader goes on reading the call to its end."""
        self._end(read_rest=False)

    def release(self) -> None:
        """The reader stops reading a call that has not ended: stop the model, read the rest in the background."""
        self._end(read_rest=True)

    def _end(self, read_rest: bool) -> None:
        if self.call.done():
            return
        if not self.contract.stoppable:
            self.call.cancel()
            return
        self._stop_wanted = True
        if read_rest:
            self._stopper.spawn(self._read_to_end())
        elif self.has_answered:
            self._send_stop()

    def _send_stop(self) -> None:
        if not self._stop_sent:
            self._stop_sent = True
            self._stopper.spawn(self._stopper.send_stop(self.contract, self.request.request_id))

    async def _read_to_end(self) -> None:
        call = self.call
        try:
            if not self.has_answered:
                async with asyncio.timeout(self.request.first_token_timeout):
                    if await call.read() is grpc.aio.EOF:
                        return
                self.has_answered = True
            self._send_stop()
            while True:
                async with asyncio.timeout(self.request.idle_timeout):
                    if await call.read() is grpc.aio.EOF:
                        return
        except TimeoutError:
            log.warning("%s did not end after its stop request; cancelling the call", self.request.request_id)
        except grpc.aio.AioRpcError:
            pass  # it ended, badly: nothing is left to stop
        finally:
            if not call.done():
                call.cancel()
