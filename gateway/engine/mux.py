"""Token streams multiplexed on a few long-lived ``ModelStreamInfer`` streams per Triton server.

A gRPC call per request costs its creation, a task of grpc's to send it, and three or four completion
events; on a shared stream a request is one message written (handed to gRPC in the caller's own step,
:func:`gateway.core.eager.eager_task`) and its responses, which Triton tags with the request's id,
are handed by the stream's reader to that request's :class:`Sink`. Triton ends every request with a
final response (``triton_enable_empty_final_response``), or with an error response carrying its id.

A shared stream is never cancelled while it carries requests (cancelling a ``ModelStreamInfer``
call as Triton sends on it is the race that crashes Triton): one request is ended in-band, by a stop
request (:mod:`gateway.engine.stopping`), after which the reader drops what is left of it. So only
models with a ``stop`` input use shared streams; the others get a call each, which can be cancelled.
A stream that breaks fails the requests on it with the error, as a call of their own would have;
the next request opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TypeAlias, cast

import grpc
from tritonclient.grpc import service_pb2

from gateway.core.eager import eager_task
from gateway.engine.contract import is_final
from gateway.errors import GatewayError, UpstreamInterrupted

log = logging.getLogger(__name__)

READER_TASK = "shared-stream-reader:"  # the name of a shared stream's reader task, before the server's url

SharedCall = grpc.aio.StreamStreamCall[service_pb2.ModelInferRequest, service_pb2.ModelStreamInferResponse]
OpenStream = Callable[[], SharedCall]
Response: TypeAlias = service_pb2.ModelStreamInferResponse


class Sink:
    """One request's responses, as the stream's reader hands them over; its consumer takes them in runs."""

    __slots__ = ("_answered", "_items", "_loop", "_waiter", "dropped", "ended", "error", "on_first")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[Response] = []
        self._waiter: asyncio.Future[None] | None = None
        self._answered = False  # a first response came: on_first was called
        self.ended = False  # the final response (or an error response) came, or the stream ended
        self.dropped = False  # the consumer left: what still comes is thrown away
        self.error: GatewayError | None = None  # raised by take(): the stream broke, or a deadline passed
        self.on_first: Callable[[], object] | None = None  # called once, with the first response

    def put(self, response: Response) -> None:
        if not self._answered:
            self._answered = True
            if self.on_first is not None:
                self.on_first()
        if not self.dropped:
            self._items.append(response)
            self._wake()

    def drop(self) -> None:
        """The consumer left before the end: what still comes is thrown away. The sink stays registered
        until the request's last response, so a first response can still send the stop (``on_first``)."""
        self.dropped = True
        self._items.clear()

    def fail(self, error: GatewayError) -> None:
        """The consumer's next take (once what came is taken) raises ``error``."""
        if self.error is None:
            self.error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def take(self) -> list[Response]:
        """Every response that came since the last take (at least one), or raises the stream's error."""
        while not self._items:
            if self.error is not None:
                raise self.error
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        items, self._items = self._items, []
        return items


class SharedStream:
    """One long-lived ``ModelStreamInfer`` stream: requests written one at a time, responses routed by id."""

    def __init__(self, open_stream: OpenStream, url: str, translate: Callable[[grpc.aio.AioRpcError], GatewayError]):
        self._loop = asyncio.get_running_loop()
        self._url = url
        self._translate = translate
        self.call = open_stream()
        self.sinks: dict[str, Sink] = {}  # the requests in flight, by id, until their last response
        self._queue: deque[tuple[service_pb2.ModelInferRequest, Sink]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self.broken = False
        self.retired = False  # takes no new request: half-closed once its writes are done
        self._reader = self._loop.create_task(self._read(), name=f"{READER_TASK}{url}")

    @property
    def load(self) -> int:
        return len(self.sinks)

    @property
    def writing(self) -> bool:
        """A write is under way: a request sent now waits for it (and for the loop to see it done)."""
        return self._writer is not None

    @property
    def usable(self) -> bool:
        return not self.broken and not self.retired and not self.call.done()

    def retire(self) -> None:
        """Take no new request; half-close once the writes under way are done. Triton then ends the
        stream when it has ended the requests on it, and lets go of what the stream held."""
        self.retired = True
        self._half_close_when_written()

    def _half_close_when_written(self) -> None:
        if self.retired and self._writer is None and self._closer is None:
            self._closer = self._loop.create_task(self._half_close())

    async def _half_close(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):  # it ended already
            await self.call.done_writing()

    def send(self, request: service_pb2.ModelInferRequest) -> Sink:
        """Register the request's sink and write it (at once when no other write is under way)."""
        sink = self.sinks[request.id] = Sink(self._loop)
        self._queue.append((request, sink))
        if self._writer is None:
            self._writer = eager_task(self._write())
        return sink

    async def _write(self) -> None:
        queue = self._queue
        try:
            while queue:
                await self.call.write(queue[0][0])
                queue.popleft()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            # the stream ended under the write: what was not written fails as the stream does
            error = self._translate(exc) if isinstance(exc, grpc.aio.AioRpcError) else None
            why = error.message if error is not None else "the stream ended"
            log.info("shared stream to %s: a write failed: %s", self._url, why)
            self.broken = True
            while queue:
                request, sink = queue.popleft()
                self.sinks.pop(request.id, None)
                sink.ended = True
                sink.fail(error or UpstreamInterrupted(f"Triton at {self._url} ended the stream before the request"))
        finally:
            self._writer = None
            self._half_close_when_written()

    async def _read(self) -> None:
        error: GatewayError = UpstreamInterrupted(f"Triton at {self._url} ended the stream")
        sinks = self.sinks
        try:
            while True:
                read = await self.call.read()
                if read is grpc.aio.EOF:
                    break
                response = cast(Response, read)
                infer = response.infer_response
                rid = infer.id
                last = bool(response.error_message) or is_final(infer)
                sink = sinks.get(rid)
                if sink is None:
                    continue
                if last:
                    del sinks[rid]
                    sink.ended = True
                sink.put(response)
        except grpc.aio.AioRpcError as exc:
            error = self._translate(exc)
        except asyncio.CancelledError:
            error = UpstreamInterrupted(f"the gateway closed its stream to Triton at {self._url}")
            raise
        finally:
            self.broken = True
            for sink in self.sinks.values():
                sink.ended = True
                sink.fail(error)
            self.sinks.clear()

    def on_end(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` once the stream has ended (its reader is done)."""
        self._reader.add_done_callback(lambda _: callback())

    async def close(self, grace: float) -> None:
        """Half-close, let Triton end what it still runs (up to ``grace`` s), then cancel."""
        try:
            if not self.broken:
                async with asyncio.timeout(grace):
                    await self.call.done_writing()
                    await asyncio.shield(self._reader)
        except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        finally:
            self.call.cancel()
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class StreamPool:
    """A Triton server's shared streams: up to ``size``, opened as needed, the least loaded chosen."""

    def __init__(
        self, open_stream: OpenStream, url: str, size: int, translate: Callable[[grpc.aio.AioRpcError], GatewayError]
    ) -> None:
        self._open = open_stream
        self._url = url
        self._size = size
        self._translate = translate
        self._streams: list[SharedStream] = []
        self._retired: set[SharedStream] = set()  # half-closed, until Triton ends them

    def pick(self, request_id: str) -> SharedStream | None:
        """The stream for a new request: an idle one, else a new one while under ``size``, else the least
        loaded of those not writing (a burst's requests go out at once, each on a stream of its own,
        instead of queueing behind writes whose completion the busy event loop sees late), else the
        least loaded. None when ``request_id`` is in flight on every one (a client reusing its request id)."""
        streams = self._streams
        best: SharedStream | None = None
        for stream in streams:
            if not stream.usable:
                streams[:] = [s for s in streams if s.usable]
                return self.pick(request_id)
            if request_id in stream.sinks:
                continue
            if best is None or (stream.writing, stream.load) < (best.writing, best.load):
                best = stream
        if (best is None or best.load) and len(streams) < self._size:
            best = SharedStream(self._open, self._url, self._translate)
            streams.append(best)
        return best

    def retire(self) -> None:
        """Open new streams from now on; the open ones take no new request and end once Triton has ended
        theirs. A model is unloaded only once no open stream holds a request of it (Triton keeps what a
        stream carried until the stream ends), so unloading a model retires the server's streams."""
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.retire()
            self._retired.add(stream)
            stream.on_end(partial(self._retired.discard, stream))

    async def close(self, grace: float) -> None:
        streams = [*self._streams, *self._retired]
        self._streams, self._retired = [], set()
        await asyncio.gather(*(s.close(grace) for s in streams), return_exceptions=True)
