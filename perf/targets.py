"""What the load generator can aim at. Each function runs one request and returns its record.

- ``gateway-chat``: POST /v1/chat/completions, SSE, parsed incrementally
- ``gateway-completions``: POST /v1/completions with the prompt as token ids (exact input length)
- ``gateway-grpc``: the gateway's own gRPC API, ``StreamChatCompletion`` with the chat messages
- ``direct``: Triton's ModelStreamInfer through ``tritonclient.grpc.aio.stream_infer``, the same
  token ids the gateway sends for the chat target, no gateway code involved

The byte checks below keep the generator cheap: a chunk is only JSON-parsed when it carries usage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import numpy as np
import orjson
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput, InferRequestedOutput

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


def _int32(name: str, values: list[int]) -> InferInput:
    tensor = InferInput(name, [1, len(values)], "INT32")
    tensor.set_data_from_numpy(np.asarray([values], dtype=np.int32))
    return tensor


async def triton_direct(client: grpcclient.InferenceServerClient, model: str, w: Workload) -> RequestRecord:
    """One stream per request, ended by the client once it has every token (lengths are exact)."""
    streaming = InferInput("streaming", [1, 1], "BOOL")
    streaming.set_data_from_numpy(np.asarray([[True]]))
    inputs = [
        _int32("input_ids", w.chat_ids),
        _int32("input_lengths", [len(w.chat_ids)]),
        _int32("request_output_len", [w.output_tokens]),
        _int32("min_tokens", [w.output_tokens]),
        _int32("runtime_top_k", [1]),
        streaming,
    ]
    done = asyncio.Event()

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": model, "inputs": inputs, "outputs": [InferRequestedOutput("output_ids")]}
        await done.wait()  # keep the stream open until every token arrived

    record = RequestRecord("direct", time.monotonic(), input_tokens=len(w.chat_ids))
    responses = client.stream_infer(requests())
    try:
        async for result, error in responses:
            now = time.monotonic()
            if error is not None:
                record.error = "triton_error"
                break
            # the token count from the raw bytes (INT32): as_numpy per response would cost the generator
            # more CPU than the gateway spends per token
            raw = result.get_response().raw_output_contents
            new = len(raw[0]) // 4 if raw else 0
            if new:
                if not record.first_token:
                    record.first_token = now
                record.chunk_times.append(now)
                record.output_tokens += new
            if record.output_tokens >= w.output_tokens:
                break
    except asyncio.CancelledError:
        record.cancelled = True
        raise
    except Exception as exc:
        record.error = type(exc).__name__
    finally:
        done.set()
        responses.cancel()
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
