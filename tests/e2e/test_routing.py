"""Routing policies across two real tritonservers: `model:<group>` pins, `:cheapest`, `:fastest` after
measurements with one server slowed, a saturated group spilling to the next, fallback when the
preferred server is SIGKILLed, and prefix routing keeping a conversation on one server.

Both servers serve the synthetic model; the "slow" one from a copy of the model repository whose
synthetic config has a 500 ms TTFT (the other's is 20 ms). The gateway runs in-process (its upstream
state can be read) and is reached over real HTTP with the official openai SDK; the chosen upstream is
read from the `x-upstream` header. Assertions wait on conditions, never on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncStream

from gateway.api.app import create_app
from gateway.api.context import REGISTRY
from gateway.auth.keys import ANONYMOUS
from gateway.config import GatewayConfig, ModelConfig, UpstreamGroupConfig
from gateway.embedded.tritonserver import TritonPorts, TritonServer
from gateway.engine.upstreams import UpstreamGroup
from perf.capacity import model_repository
from perf.stack import free_port
from tests.conftest import MODEL_REPOSITORY, WEIGHTS, until

pytestmark = pytest.mark.e2e

MODEL = "pair"
SLOW_TTFT_MS = "500"
RULE = "answer plainly, cite the section, and keep the tone of a careful clerk."
SYSTEM = " ".join(f"Rule {i}: {RULE}" for i in range(40))  # about 800 tokens: a long shared prefix
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


class Pair:
    def __init__(self, fast: TritonServer, slow: TritonServer) -> None:
        self.fast = fast
        self.slow = slow

    def groups(self, fast_capacity: int | None = None) -> list[UpstreamGroupConfig]:
        return [
            UpstreamGroupConfig(
                name="fast",
                urls=[self.fast.grpc_url],
                price_input_per_1k=2.0,
                price_output_per_1k=6.0,
                capacity=fast_capacity,
            ),
            UpstreamGroupConfig(
                name="slow", urls=[self.slow.grpc_url], price_input_per_1k=0.5, price_output_per_1k=1.5
            ),
        ]


def start_triton(repository: Path, cache: Path) -> TritonServer:
    server = TritonServer(repository, cache, TritonPorts(free_port(), free_port(), free_port()), models=("synthetic",))
    server.start()
    return server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("routing")
    with model_repository(MODEL_REPOSITORY, {"ttft_ms": SLOW_TTFT_MS}) as slow_repository:
        servers = Pair(start_triton(MODEL_REPOSITORY, tmp / "fast"), start_triton(slow_repository, tmp / "slow"))
        try:
            for server in (servers.fast, servers.slow):
                server.wait_ready(timeout=180)
            yield servers
        finally:
            servers.fast.stop()
            servers.slow.stop()


def model(**fields: object) -> ModelConfig:
    return ModelConfig(id=MODEL, triton_model="synthetic", tokenizer_dir=WEIGHTS, **fields)  # type: ignore[arg-type]


@asynccontextmanager
async def gateway(
    aiohttp_server: ServerFactory, config: GatewayConfig
) -> AsyncIterator[tuple[openai.AsyncOpenAI, UpstreamGroup]]:
    app = create_app(config)
    server = await aiohttp_server(app)
    group = app[REGISTRY].get(MODEL, ANONYMOUS).upstreams
    await until(lambda: all(u.available for u in group.upstreams), 120, "every upstream healthy")
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="unused", max_retries=0)
    try:
        yield client, group
    finally:
        await client.close()


def config(models: list[ModelConfig], groups: list[UpstreamGroupConfig] | None = None) -> GatewayConfig:
    return GatewayConfig(grpc_port=None, health_check_interval=0.5, upstream_groups=groups or [], models=models)


async def ask(
    client: openai.AsyncOpenAI,
    model_id: str,
    content: str = "hello",
    stream: bool = False,
    max_tokens: int = 4,
    messages: list[dict[str, str]] | None = None,
) -> str:
    """The x-upstream of one chat request, read to its end (which must succeed)."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model_id,
        messages=messages or [{"role": "user", "content": content}],  # type: ignore[arg-type]
        max_tokens=max_tokens,
        stream=stream,
    )
    parsed = raw.parse()
    if isinstance(parsed, AsyncStream):
        text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
    else:
        assert parsed.model == MODEL  # the response is the model's, not the policy's
        text = parsed.choices[0].message.content or ""
    assert text
    return raw.headers["x-upstream"]


async def test_a_group_is_pinned_and_cheapest_picks_the_cheap_group(
    pair: Pair, aiohttp_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    fast, slow = f"fast/{pair.fast.grpc_url}", f"slow/{pair.slow.grpc_url}"
    cfg = config([model(upstream_groups=["fast", "slow"])], pair.groups())
    caplog.set_level(logging.INFO, logger="gateway.access")
    async with gateway(aiohttp_server, cfg) as (client, _):
        assert [await ask(client, MODEL) for _ in range(3)] == [fast] * 3  # the preferred group
        assert [await ask(client, f"{MODEL}:slow") for _ in range(3)] == [slow] * 3
        assert [await ask(client, f"{MODEL}:fast", stream=True) for _ in range(3)] == [fast] * 3
        assert [await ask(client, f"{MODEL}:cheapest") for _ in range(3)] == [slow] * 3
        assert await ask(client, f"{MODEL}:cheapest", stream=True) == slow
        with pytest.raises(openai.NotFoundError, match="'pair:fastest', 'pair:cheapest', 'pair:fast', 'pair:slow'"):
            await ask(client, f"{MODEL}:dearest")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    logged = [line.get("upstream") for line in lines if line["path"] == "/v1/chat/completions"]
    assert logged[:3] == [fast] * 3 and logged[3:6] == [slow] * 3 and logged[-1] is None  # the 404: none


async def test_fastest_moves_to_the_faster_upstream_once_measured(pair: Pair, aiohttp_server: ServerFactory) -> None:
    fast = f"fast/{pair.fast.grpc_url}"
    cfg = config([model(upstream_groups=["slow", "fast"])], pair.groups())  # the slow group preferred
    async with gateway(aiohttp_server, cfg) as (client, group):
        assert await ask(client, MODEL) == f"slow/{pair.slow.grpc_url}"
        chosen = [await ask(client, f"{MODEL}:fastest") for _ in range(2)]  # the unmeasured one is measured
        assert fast in chosen
        assert all(u.meter.samples for u in group.upstreams)
        streak, tries = 0, 0
        while streak < 5:  # 5 in a row to the fast one (a stale figure may send one to the slow one)
            tries += 1
            assert tries <= 30, [(u.label, u.meter.ttft, u.meter.tpot) for u in group.upstreams]
            streak = streak + 1 if await ask(client, f"{MODEL}:fastest") == fast else 0
        by_label = {u.label: u.meter for u in group.upstreams}
        assert by_label[fast].score < by_label[f"slow/{pair.slow.grpc_url}"].score


async def test_a_saturated_group_spills_to_the_next(pair: Pair, aiohttp_server: ServerFactory) -> None:
    fast, slow = f"fast/{pair.fast.grpc_url}", f"slow/{pair.slow.grpc_url}"
    cfg = config([model(upstream_groups=["fast", "slow"])], pair.groups(fast_capacity=1))
    async with gateway(aiohttp_server, cfg) as (client, group):
        up_fast = group.upstreams[0]
        long = asyncio.create_task(ask(client, MODEL, stream=True, max_tokens=2000))  # ~10 s at 5 ms a token
        await until(lambda: up_fast.in_flight == 1, 60, "the long stream on the fast group")
        assert await ask(client, MODEL) == slow  # fast is at its capacity of 1
        assert await long == fast
        assert await ask(client, MODEL) == fast


async def test_prefix_routing_keeps_a_conversation_on_one_upstream(pair: Pair, aiohttp_server: ServerFactory) -> None:
    urls = [pair.fast.grpc_url, pair.slow.grpc_url]
    cfg = config([model(triton_urls=urls, routing="prefix")])
    async with gateway(aiohttp_server, cfg) as (client, _):
        messages = [{"role": "system", "content": SYSTEM}]
        used = []
        for turn in range(6):  # each turn's prompt extends the last one's
            messages.append({"role": "user", "content": f"question {turn}: what does rule {turn} say?"})
            used.append(await ask(client, MODEL, messages=messages))
            messages.append({"role": "assistant", "content": "it says to answer plainly."})
        assert len(set(used)) == 1, used
        # a new conversation with the same system prompt goes where its prefix was served
        again = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "another question"}]
        assert await ask(client, MODEL, messages=again) == used[0]
    cfg = config([model(triton_urls=urls)])  # least in flight: the same turns alternate (ties rotate)
    async with gateway(aiohttp_server, cfg) as (client, _):
        plain = [await ask(client, MODEL, messages=messages[:2]) for _ in range(4)]
        assert set(plain) == set(urls), plain


async def test_the_next_group_serves_when_the_preferred_server_is_killed(
    pair: Pair, aiohttp_server: ServerFactory
) -> None:
    """Last in this module: the fast server stays down."""
    slow = f"slow/{pair.slow.grpc_url}"
    cfg = config([model(upstream_groups=["fast", "slow"])], pair.groups())
    async with gateway(aiohttp_server, cfg) as (client, group):
        up_fast = group.upstreams[0]
        assert await ask(client, MODEL) == f"fast/{pair.fast.grpc_url}"
        pair.fast.kill()  # SIGKILL
        # at once: the fast upstream may still count as healthy, so this request is sent there, fails
        # before its first token and is retried on the next group; or a health check took it out first
        assert await ask(client, MODEL) == slow
        assert await ask(client, MODEL, stream=True) == slow
        await until(lambda: not up_fast.available, 60, "the killed server taken out")
        assert [await ask(client, MODEL) for _ in range(3)] == [slow] * 3
        with pytest.raises(openai.InternalServerError):  # pinned to the dead group: no fallback
            await ask(client, f"{MODEL}:fast")
