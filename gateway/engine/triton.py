"""Triton over gRPC (KServe v2): token streams on ``ModelStreamInfer``, unary calls on ``ModelInfer``.

A model that can be stopped in-band (a ``stop`` input, as TensorRT-LLM has) gets its requests on a
few shared streams per server (:mod:`gateway.engine.mux`, ``triton_streams``): a request is then one
message written, not a call made. A model that can only be cancelled gets a call per request, made as
gRPC's unary-stream kind (one request written and half-closed; the bytes on the wire are a
bidirectional stream's), so the call's start, request and half-close go out as one batch of gRPC
operations. A call is read to its end and cancelled only when the model must be stopped (see
:meth:`TritonClient.generate`). grpc errors are translated into gateway errors here, where they enter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import cast

import grpc
import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.base import ServerMetadata
from gateway.engine.contract import (
    ContractError,
    ModelContract,
    build_request,
    is_final,
    parse_logprobs,
    parse_tokens,
)
from gateway.engine.deadline import StreamDeadline
from gateway.engine.mux import Sink, StreamPool
from gateway.engine.repository import (
    RepositoryModel,
    control_error,
    index_models,
    load_request,
    unload_request,
    wait_unloaded,
)
from gateway.engine.stopping import InBandStop, LiveCall, Stopper
from gateway.engine.tensors import TensorError, Tensors, infer_request, response_tensors
from gateway.errors import (
    GatewayError,
    Overloaded,
    UpstreamError,
    UpstreamInterrupted,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # a restarted server is used again within seconds, however long it was gone
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
_UNAVAILABLE_MARKERS = ("unknown model", "is not ready", "not found", "unavailable")
_INTERRUPTED = (
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DATA_LOSS,
)


def translate_rpc_error(exc: grpc.aio.AioRpcError, url: str) -> GatewayError:
    code = exc.code()
    detail = exc.details() or code.name
    if "maximum queue size" in detail.lower():  # a unary call refused by a full dynamic-batching queue
        return Overloaded(f"the model's queue at {url} is full: {detail}", retry_after=1.0)
    if code == grpc.StatusCode.UNAVAILABLE:
        return UpstreamUnavailable(f"Triton at {url} is unavailable: {detail}", retry_after=1.0)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return UpstreamTimeout(f"Triton at {url} did not answer in time")
    if code == grpc.StatusCode.NOT_FOUND:
        return UpstreamUnavailable(f"Triton at {url}: {detail}")
    if code in _INTERRUPTED:
        return UpstreamInterrupted(f"Triton at {url} broke off the request ({code.name}): {detail}")
    return UpstreamError(f"Triton at {url} failed the request ({code.name}): {detail}")


def upstream_message_error(message: str) -> GatewayError:
    """The error a model reported in-band (a stream response's error_message)."""
    lowered = message.lower()
    if "maximum queue size" in lowered:  # TensorRT-LLM's executor queue (max_queue_size) is full
        return Overloaded(f"the model's queue upstream is full: {message}", retry_after=1.0)
    if any(marker in lowered for marker in _UNAVAILABLE_MARKERS):
        return UpstreamUnavailable(f"model unavailable upstream: {message}")
    return UpstreamError(f"upstream model error: {message}")


class TritonClient:
    """One Triton server: a gRPC channel, its token streams, health and model configs."""

    def __init__(self, url: str, timeout: float = 5.0, streams: int = 4) -> None:
        self.url = url
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(url, options=_CHANNEL_OPTIONS)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._contracts: dict[str, ModelContract] = {}
        self._configs: dict[str, model_config_pb2.ModelConfig] = {}
        self._stream_infer = self._channel.unary_stream(
            _STREAM_INFER,
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        self._stopper = Stopper(self._stream_infer, url, timeout)
        self._shared = (
            StreamPool(self._stub.ModelStreamInfer, url, streams, lambda exc: translate_rpc_error(exc, url))
            if streams
            else None
        )

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close(self.timeout)
        await self._stopper.close()
        await self._channel.close()

    async def model_ready(self, model: str) -> bool:
        """The server is ready (not starting or shutting down) and so is the model."""
        try:
            server = await self._stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=self.timeout)
            if not server.ready:
                return False
            resp = await self._stub.ModelReady(service_pb2.ModelReadyRequest(name=model), timeout=self.timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.ready)

    async def server_metadata(self, timeout_s: float) -> ServerMetadata:
        """Triton's name, version and extensions (one ServerMetadata call, not cached here)."""
        try:
            resp = await self._stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self.url) from None
        return ServerMetadata(resp.name, resp.version, tuple(resp.extensions))

    async def model_config(self, model: str) -> model_config_pb2.ModelConfig:
        """The model's config, read once over gRPC and then cached."""
        cached = self._configs.get(model)
        if cached is not None:
            return cached
        try:
            resp = await self._stub.ModelConfig(service_pb2.ModelConfigRequest(name=model), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self.url) from None
        self._configs[model] = resp.config
        return resp.config

    async def contract(self, model: str) -> ModelContract:
        """The model's token contract, read once from its config and then cached."""
        cached = self._contracts.get(model)
        if cached is not None:
            return cached
        config = await self.model_config(model)
        try:
            contract = ModelContract.from_config(config)
        except ContractError as exc:
            raise UpstreamError(str(exc)) from None
        self._contracts[model] = contract
        return contract

    async def infer(
        self, model: str, request_id: str, inputs: Tensors, outputs: tuple[str, ...], timeout_s: float
    ) -> dict[str, NDArray[np.generic]]:
        """One unary ModelInfer call within ``timeout_s`` seconds: ``inputs`` in, the named ``outputs`` back."""
        request = infer_request(model, request_id, inputs, outputs)
        try:
            response = await self._stub.ModelInfer(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self.url) from None
        try:
            tensors = response_tensors(response)
        except TensorError as exc:
            raise UpstreamError(f"Triton at {self.url}, model {model}: {exc}") from None
        missing = [name for name in outputs if name not in tensors]
        if missing:
            raise UpstreamError(f"Triton at {self.url}, model {model} did not return {', '.join(missing)}")
        return tensors

    def generate(
        self,
        contract: ModelContract,
        request: GenerateRequest,
        end_id: int | None,
        pad_id: int | None,
    ) -> AsyncGenerator[Tokens, None]:
        """New token ids (and their logprobs, when asked) as Triton streams them.

        A shareable model's request is written on a shared stream now, and its responses are read from
        its sink (:class:`_SharedRequest`); any other's gets a call of its own (:meth:`_call_tokens`).
        """
        sampling = request.sampling
        infer = build_request(
            contract, request.request_id, request.prompt_ids, sampling, end_id, pad_id, request.vocab_size
        )
        if self._shared is not None and contract.shareable and not request.halt.halted:
            stream = self._shared.pick(request.request_id)
            if stream is not None:
                return _SharedRequest(self._stopper, contract, request, stream.send(infer)).tokens(self.url)
        return self._call_tokens(contract, request, infer)

    async def _call_tokens(
        self, contract: ModelContract, request: GenerateRequest, infer: service_pb2.ModelInferRequest
    ) -> AsyncGenerator[Tokens, None]:
        """The tokens of a request on a call of its own, which ends with the call.

        The request stream is half-closed once the request is written, and the call is read to its
        end (the final response, then the server's end of the call). A call the gateway stops reading
        early (closing this iterator: a stop string matched, an error) or whose request is halted (the
        client went away) is ended without cancelling it under Triton (:mod:`gateway.engine.stopping`).
        A stream that waits on Triton past its deadline is cancelled and ends with :class:`UpstreamTimeout`.
        """
        if request.halt.halted:
            return  # the client went away before this call began
        sampling = request.sampling
        call = self._stream_infer(infer)
        live = LiveCall(self._stopper, call, contract, request)
        deadline = StreamDeadline(request.first_token_timeout, request.idle_timeout, call.cancel)
        request.halt.on_halt(live.halt)
        final = False
        try:
            while True:
                deadline.waiting()
                read = await call.read()
                deadline.answered()
                if not live.has_answered:
                    live.answered()
                if read is grpc.aio.EOF:
                    return
                response = cast(service_pb2.ModelStreamInferResponse, read)
                if response.error_message:
                    raise upstream_message_error(response.error_message)
                if final:
                    continue  # nothing follows the final response but the end of the call
                infer_response = response.infer_response
                final = is_final(infer_response)
                got = tokens_of(infer_response, sampling.logprobs, sampling.top_logprobs, self.url)
                if got is not None:
                    yield got
        except grpc.aio.AioRpcError as exc:
            if deadline.expired:
                raise timed_out(self.url, deadline) from None
            raise translate_rpc_error(exc, self.url) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if deadline.expired and (task is None or not task.cancelling()):
                raise timed_out(self.url, deadline) from None  # our own cancel of the call, not the task's
            raise
        finally:
            deadline.cancel()
            if not call.done():
                live.release()  # stopped early: the model must stop, without racing Triton

    # model control (explicit mode; what Triton does: gateway.engine.repository)

    async def repository_index(self) -> list[RepositoryModel]:
        """Every model of the server's repository, loaded or not, with its state (RepositoryIndex)."""
        try:
            resp = await self._stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc, self.url) from None
        return index_models(resp)

    async def load_model(
        self,
        name: str,
        config: dict[str, object] | None = None,
        files: dict[str, bytes] | None = None,
        timeout_s: float = 300,
    ) -> None:
        """Load ``name`` and return once it is ready (RepositoryModelLoad). ``config`` (a model config as JSON
        would spell it) replaces its config.pbtxt whole; ``files`` maps paths in the model directory
        (``1/model.py``) to their bytes and needs ``config``. Loaded already with the same config: a no-op;
        with another: reloaded in place, ready throughout. Raises ModelLoadFailed with Triton's reason.
        """
        request = load_request(name, config, files)
        self._forget(name)
        try:
            await self._stub.RepositoryModelLoad(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise control_error(exc, self.url, f"load model {name!r}") from None
        finally:
            self._forget(name)

    async def unload_model(self, name: str, unload_dependents: bool = False, timeout_s: float = 120) -> None:
        """Unload ``name`` (RepositoryModelUnload) and wait, up to ``timeout_s`` in all, until it is unloaded
        (its in-flight requests finish first). A model not loaded: nothing to do, no error."""
        loop = asyncio.get_running_loop()
        begun = loop.time()
        self._forget(name)
        self.let_go()
        try:
            await self._stub.RepositoryModelUnload(unload_request(name, unload_dependents), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise control_error(exc, self.url, f"unload model {name!r}") from None
        await wait_unloaded(self, name, max(0.0, timeout_s - (loop.time() - begun)))

    def let_go(self) -> None:
        """The shared streams open now take no new request and end once Triton has ended theirs: Triton
        keeps a model loaded while a stream that carried its requests is open (found by unloading one)."""
        if self._shared is not None:
            self._shared.retire()

    def _forget(self, model: str) -> None:
        """Drop the cached config and contract of a model being loaded or unloaded."""
        self._configs.pop(model, None)
        self._contracts.pop(model, None)


def timed_out(url: str, deadline: StreamDeadline) -> UpstreamTimeout:
    return UpstreamTimeout(f"Triton at {url} sent nothing for {deadline.limit:g}s; the request was stopped")


def tokens_of(response: service_pb2.ModelInferResponse, logprobs: bool, top: int, url: str) -> Tokens | None:
    """The new tokens of one streamed response (None for the empty final one)."""
    ids = parse_tokens(response)
    if not ids:
        return None
    if not logprobs:
        return Tokens(ids)
    try:
        return Tokens(ids, parse_logprobs(response, ids, top))
    except ContractError as exc:
        raise UpstreamError(f"Triton at {url}: {exc}") from None


class _SharedRequest:
    """One request on a shared stream: its responses read in runs, stopped in-band when it must end early.

    Every response that came while the consumer was busy is taken at once and given as one
    :class:`Tokens` (one SSE event downstream): no token waits for another, and none is sent alone
    when several are ready.
    """

    __slots__ = ("_stop", "request", "sink")

    def __init__(self, stopper: Stopper, contract: ModelContract, request: GenerateRequest, sink: Sink) -> None:
        self.request = request
        self.sink = sink
        self._stop = InBandStop(stopper, contract, request.request_id)
        sink.on_first = self._stop.on_answer

    async def tokens(self, url: str) -> AsyncGenerator[Tokens, None]:
        request, sink = self.request, self.sink
        sampling = request.sampling
        want_logprobs, top = sampling.logprobs, sampling.top_logprobs
        first, idle = request.first_token_timeout, request.idle_timeout
        deadline = StreamDeadline(first, idle, lambda: self._expire(url, deadline))
        request.halt.on_halt(self.stop)
        ended = False
        try:
            while not ended:
                deadline.waiting()
                responses = await sink.take()
                deadline.answered()
                run: Tokens | None = None
                for response in responses:
                    if response.error_message:
                        ended = True
                        raise upstream_message_error(response.error_message)
                    infer_response = response.infer_response
                    ended = is_final(infer_response)
                    tokens = tokens_of(infer_response, want_logprobs, top, url)
                    if tokens is None:
                        continue
                    if run is None:
                        run = tokens
                    else:
                        run.ids.extend(tokens.ids)
                        if run.logprobs is not None and tokens.logprobs is not None:
                            run.logprobs.extend(tokens.logprobs)
                if run is not None:
                    yield run
        finally:
            deadline.cancel()
            if not ended:
                self.sink.drop()
                self.stop()

    def _expire(self, url: str, deadline: StreamDeadline) -> None:
        """Silent past its deadline: the consumer gets the timeout, and the model a stop at once (a request
        the model has not answered in so long is one it knows)."""
        self.sink.fail(timed_out(url, deadline))
        if not self.sink.ended:
            self._stop.send()

    def stop(self) -> None:
        """Stop the model in-band: now if it answered already, else with its first response."""
        if not self.sink.ended:
            self._stop.want()


class TritonPool:
    """The Triton servers the gateway knows, one client per URL (``streams``: shared streams per server)."""

    def __init__(self, timeout: float = 5.0, streams: int = 4) -> None:
        self._timeout = timeout
        self._streams = streams
        self._clients: dict[str, TritonClient] = {}

    def client(self, url: str) -> TritonClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = TritonClient(url, self._timeout, self._streams)
        return client

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)
        self._clients.clear()
