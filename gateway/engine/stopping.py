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


class InBandStop:
    """One request's stop request: sent at most once, and only once the model knows the request (it has
    answered), unless :meth:`send` is called directly (a request silent past its deadline)."""

    __slots__ = ("_sent", "_stopper", "answered", "contract", "request_id", "wanted")

    def __init__(self, stopper: Stopper, contract: ModelContract, request_id: str) -> None:
        self._stopper = stopper
        self.contract = contract
        self.request_id = request_id
        self.answered = False
        self.wanted = False
        self._sent = False

    def on_answer(self) -> None:
        """The model answered for the first time: a stop wanted so far goes now."""
        self.answered = True
        if self.wanted:
            self.send()

    def want(self) -> None:
        """Stop the model: now if it answered already, else with its first answer."""
        self.wanted = True
        if self.answered:
            self.send()

    def send(self) -> None:
        if not self._sent:
            self._sent = True
            self._stopper.spawn(self._stopper.send_stop(self.contract, self.request_id))


class LiveCall:
    """One call in flight: how it is stopped and released. Its reader calls :meth:`answered` once."""

    __slots__ = ("_stop", "_stopper", "call", "request")

    def __init__(
        self,
        stopper: Stopper,
        call: StreamCall,
        contract: ModelContract,
        request: GenerateRequest,
    ) -> None:
        self._stopper = stopper
        self.call = call
        self.request = request
        self._stop = InBandStop(stopper, contract, request.request_id)

    @property
    def has_answered(self) -> bool:
        return self._stop.answered

    def answered(self) -> None:
        """The model answered for the first time: it knows the request, a stop can reach it."""
        self._stop.on_answer()

    def halt(self) -> None:
        """Stop the model; its reader goes on reading the call to its end."""
        self._end(read_rest=False)

    def release(self) -> None:
        """The reader stops reading a call that has not ended: stop the model, read the rest in the background."""
        self._end(read_rest=True)

    def _end(self, read_rest: bool) -> None:
        if self.call.done():
            return
        if not self._stop.contract.stoppable:
            self.call.cancel()
            return
        if read_rest:
            self._stopper.spawn(self._read_to_end())  # which stops the model once it answered
        else:
            self._stop.want()

    async def _read_to_end(self) -> None:
        call = self.call
        try:
            if not self._stop.answered:
                async with asyncio.timeout(self.request.first_token_timeout):
                    if await call.read() is grpc.aio.EOF:
                        return
                self._stop.on_answer()
            self._stop.want()
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
