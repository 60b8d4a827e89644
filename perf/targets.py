"""What the load generator can aim at. Each function runs one request and returns its record.

- ``gateway-chat``: POST /v1/chat/completions, SSE, parsed incrementally
- ``gateway-completions``: POST /v1/completions with the prompt as token ids (exact input length)
- ``gateway-grpc``: the gateway's own gRPC API, ``StreamChatCompletion`` with the chat messages
- ``direct``: Triton's ModelStreamInfer on a bare ``grpc.aio`` stub with the same token ids the
  gateway sends for the chat target; no gateway code involved

The byte checks below keep the generator cheap: a chunk is only JSON-parsed when it carries usage.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
from tritonclient.grpc import service_pb2

from perf.metrics import RequestRecord
from perf.sse import SSEParser


@dataclass(frozen=True, slots=True)
class Workload:
    """One request's shape, identical for every target."""

    messages: list[dict[str, str]]
    chat_ids: list[int]  # the chat template rendered and tokenized, as the gateway does
    prompt_ids: list[int]  # the completions prompt, sent as token ids
    output_tokens: int


async def _sse(record: RequestRecord, resp: aiohttp.ClientResponse, content_marker: bytes, empty_marker: bytes) -> None:
    parser = SSEParser()
    async for chunk in resp.content.iter_any():
        now = time.monotonic()
        for data in parser.feed(chunk):
            if data == b"[DONE]":
                return
            if data.startswith(b'{"error"'):
                record.error = orjson.loads(data)["error"].get("code") or "stream_error"
                return
            if b'"usage":{' in data:
                record.output_tokens = orjson.loads(data)["usage"]["completion_tokens"]
            elif content_marker in data and empty_marker not in data:
                if not record.first_token:
                    record.first_token = now
                record.chunk_times.append(now)


def _body(model: str, w: Workload, **payload: Any) -> dict[str, Any]:
    return {
        "model": model,
        **payload,
        "max_tokens": w.output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def gateway_chat(session: aiohttp.ClientSession, base: str, model: str, w: Workload) -> RequestRecord:
    body = _body(model, w, messages=w.messages)
    return await _post(session, base + "/v1/chat/completions", body, "gateway-chat", len(w.chat_ids), b'"content":')


async def gateway_completions(session: aiohttp.ClientSession, base: str, model: str, w: Workload) -> RequestRecord:
    body = _body(model, w, prompt=w.prompt_ids)
    return await _post(session, base + "/v1/completions", body, "gateway-completions", len(w.prompt_ids), b'"text":')


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], target: str, input_tokens: int, marker: bytes
) -> RequestRecord:
    record = RequestRecord(target, time.monotonic(), input_tokens=input_tokens)
    try:
        async with session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                record.error = f"http_{resp.status}"
            else:
                await _sse(record, resp, marker, marker + b'""')
    except asyncio.CancelledError:
        record.cancelled = True
        raise
    except (aiohttp.ClientError, OSError) as exc:
        record.error = type(exc).__name__
    record.end = time.monotonic()
    return record


def direct_request(model: str, w: Workload) -> service_pb2.ModelInferRequest:
    """Triton's ModelInferRequest for ``w``: greedy, exactly ``output_tokens`` tokens, streamed."""
    req = service_pb2.ModelInferRequest(model_name=model)
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    tensors: list[tuple[str, str, list[int], bytes]] = [
        ("input_ids", "INT32", [1, len(w.chat_ids)], np.asarray(w.chat_ids, dtype=np.int32).tobytes()),
        ("input_lengths", "INT32", [1, 1], np.int32(len(w.chat_ids)).tobytes()),
        ("request_output_len", "INT32", [1, 1], np.int32(w.output_tokens).tobytes()),
        ("min_tokens", "INT32", [1, 1], np.int32(w.output_tokens).tobytes()),
        ("runtime_top_k", "INT32", [1, 1], np.int32(1).tobytes()),
        ("streaming", "BOOL", [1, 1], b"\x01"),
    ]
    for name, datatype, shape, raw in tensors:
        tensor = req.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(shape)
        req.raw_input_contents.append(raw)
    req.outputs.add(name="output_ids")
    return req


async def triton_direct(stub: Any, request: service_pb2.ModelInferRequest, w: Workload) -> RequestRecord:
    """One ModelStreamInfer call per request on a bare grpc.aio stub: the cheapest client there is
    in Python, so that direct is never slowed by its client more than the gateway targets are.

    Like the gateway, it half-closes and reads the call to its end: cancelling a call as Triton
    sends its last response crashes the embedded tritonserver (seen here within a minute at 32 streams)."""
    record = RequestRecord("direct", time.monotonic(), input_tokens=len(w.chat_ids))
    call = stub.ModelStreamInfer()
    try:
        await call.write(request)
        await call.done_writing()
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                break
            if response.error_message:
                record.error = "triton_error"
                break
            now = time.monotonic()
            raw = response.infer_response.raw_output_contents
            new = len(raw[0]) // 4 if raw else 0  # INT32 output_ids, counted without decoding
            if new:
                if not record.first_token:
                    record.first_token = now
                record.chunk_times.append(now)
                record.output_tokens += new
    except asyncio.CancelledError:
        record.cancelled = True
        raise
    except grpc.aio.AioRpcError as exc:
        record.error = exc.code().name
    finally:
        if not call.done():
            call.cancel()  # an error or a cancelled run: nothing else ends it
    record.end = time.monotonic()
    return record


async def gateway_grpc(stub: Any, model: str, w: Workload) -> RequestRecord:
    from gateway.grpcapi.stubs import pb

    request = pb.ChatCompletionRequest(
        model=model,
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in w.messages],
        sampling=pb.SamplingParams(max_tokens=w.output_tokens, temperature=0, ignore_eos=True),
    )
    record = RequestRecord("gateway-grpc", time.monotonic(), input_tokens=len(w.chat_ids))
    try:
        async for chunk in stub.StreamChatCompletion(request):
            if chunk.text:
                now = time.monotonic()
                if not record.first_token:
                    record.first_token = now
                record.chunk_times.append(now)
            if chunk.HasField("usage"):
                record.output_tokens = chunk.usage.completion_tokens
    except asyncio.CancelledError:
        record.cancelled = True
        raise
    except Exception as exc:
        record.error = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
    record.end = time.monotonic()
    return record
