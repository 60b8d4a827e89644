"""The transport floor: the gateway's architecture with nothing but its transports (issue 13).

An aiohttp server on uvloop (the gateway's HTTP side) answering ``POST /v1/chat/completions``. It sends
one fixed ModelInferRequest (the prompt's token ids, given on the command line) on one of a few shared
``ModelStreamInfer`` streams to Triton (the gateway's Triton side, as ``triton_streams`` runs it), and
writes what comes back as an OpenAI chat response: an SSE event per response as it comes, or one JSON
body. The request's body is read and parsed, and otherwise ignored: the prompt and the tokens are fixed
at launch (``--ids``, ``--tokens``).

No validation, chat template, tokenizer, keys, limits, metrics, logs or usage: what is left is what
aiohttp and grpc.aio cost per request. perf/tiny.py measures it beside the gateway (``--floor``): the
gateway's own share is its CPU per request less this one's, in the same run. perf/bench.py (``--floor``)
puts its TTFT beside the gateway's.

    python -m perf.floor --port 8090 --triton 127.0.0.1:8001 --model synthetic --ids 1,2,3 --tokens 1

Not a server to use: one model, one prompt, no error handling beyond a 500.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import AsyncIterator, Callable

from gateway import grpc_env

grpc_env.apply()  # the gateway's gRPC core settings, before grpc loads

import grpc  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

from perf import targets  # noqa: E402
from perf.stack import run_loop  # noqa: E402

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
CHUNK = (
    b'data: {"id":"chatcmpl-floor","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"content":"%d"}}]}\n\n'
)
WHOLE = (
    b'{"id":"chatcmpl-floor","object":"chat.completion",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"%d"},"finish_reason":"length"}]}'
)
DONE = (  # the finish, the usage (as stream_options.include_usage asks), the end
    b'data: {"id":"chatcmpl-floor","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
    b'data: {"id":"chatcmpl-floor","choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}\n\n'
    b"data: [DONE]\n\n"
)
Call = grpc.aio.StreamStreamCall[service_pb2.ModelInferRequest, service_pb2.ModelStreamInferResponse]


class Streams:
    """A few long-lived ModelStreamInfer streams; each request is one message, its responses found by id."""

    def __init__(self, target: str, count: int) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.calls = [self.stub.ModelStreamInfer() for _ in range(count)]
        self.waiting: dict[str, asyncio.Queue[service_pb2.ModelStreamInferResponse]] = {}
        self.readers = [asyncio.create_task(self._read(call)) for call in self.calls]
        self.ids = itertools.count()
        self.turn = itertools.cycle([(call, asyncio.Lock()) for call in self.calls])  # one write at a time

    async def _read(self, call: Call) -> None:
        async for response in call:
            queue = self.waiting.get(response.infer_response.id)
            if queue is not None:
                queue.put_nowait(response)

    async def generate(self, request: service_pb2.ModelInferRequest) -> AsyncIterator[list[int]]:
        """Each response's token ids as it comes, to the final one."""
        rid = str(next(self.ids))
        request.id = rid
        queue: asyncio.Queue[service_pb2.ModelStreamInferResponse] = asyncio.Queue()
        self.waiting[rid] = queue
        try:
            call, lock = next(self.turn)
            async with lock:
                await call.write(request)
            while True:
                response = await queue.get()
                if response.error_message:
                    raise RuntimeError(response.error_message)
                answer = response.infer_response
                if answer.raw_output_contents:
                    yield list(memoryview(answer.raw_output_contents[0]).cast("i"))
                if answer.parameters["triton_final_response"].bool_param:
                    return
        finally:
            del self.waiting[rid]


TokenSource = Callable[[], AsyncIterator[list[int]]]  # one request's token ids, response by response


def app(tokens_of: TokenSource, prompt_tokens: int) -> web.Application:
    """The floor's HTTP side over any token source (perf/overhead.py also puts it in front of the
    gateway's own Triton client, and of no upstream at all)."""

    async def chat(http: web.Request) -> web.StreamResponse:
        body = orjson.loads(await http.read())
        tokens = tokens_of()
        if not body.get("stream"):
            count = sum([len(ids) async for ids in tokens])
            return web.Response(body=WHOLE % count, content_type="application/json")
        response = web.StreamResponse(headers=SSE_HEADERS)
        count = 0
        async for ids in tokens:
            if not response.prepared:
                await response.prepare(http)
            count += len(ids)
            await response.write(CHUNK % len(ids))
        await response.write_eof(DONE % (prompt_tokens, count))
        return response

    application = web.Application()
    application.router.add_post("/v1/chat/completions", chat)
    application.router.add_get("/ready", lambda _: _ok())
    return application


def on_streams(streams: Streams, request: service_pb2.ModelInferRequest) -> TokenSource:
    """The floor's own source: a copy of the fixed ``request`` sent on ``streams`` each time."""

    def tokens() -> AsyncIterator[list[int]]:
        msg = service_pb2.ModelInferRequest()
        msg.CopyFrom(request)
        return streams.generate(msg)

    return tokens


def prompt_length(request: service_pb2.ModelInferRequest) -> int:
    return len(request.raw_input_contents[0]) // 4  # input_ids: INT32


async def _ok() -> web.Response:
    return web.Response(text="ok")


async def main(args: argparse.Namespace) -> None:
    ids = [int(x) for x in args.ids.split(",")]
    request = targets.direct_request(args.model, targets.Workload([], ids, ids, args.tokens))
    streams = Streams(args.triton, args.streams)
    runner = web.AppRunner(app(on_streams(streams, request), prompt_length(request)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"[floor] listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m perf.floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--triton", required=True, help="Triton's gRPC HOST:PORT")
    parser.add_argument("--model", default="synthetic")
    parser.add_argument("--ids", required=True, help="the prompt's token ids, comma-separated")
    parser.add_argument("--tokens", type=int, default=1, help="tokens per request")
    parser.add_argument("--streams", type=int, default=4, help="shared streams (the gateway's triton_streams)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_loop(main(parse_args()))
