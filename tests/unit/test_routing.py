"""Routing policies (gateway.engine.routing) on stand-in upstreams, then through UpstreamGroup and the
registry's ``model:policy`` ids over in-process engines. The same against real tritonservers (one
slowed, one killed) is tests/e2e/test_routing.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import random
import sys
import time
import types
from typing import cast

import pytest

from gateway.auth.keys import ANONYMOUS
from gateway.config import LimitsConfig, ModelConfig, UpstreamGroupConfig
from gateway.core.models import ModelRegistry
from gateway.core.types import GenerateRequest, RequestStats, SamplingParams
from gateway.engine.base import Engine
from gateway.engine.contract import ModelContract
from gateway.engine.routing import (
    CHEAPEST,
    FASTEST,
    FASTEST_TOKENS,
    GroupInfo,
    Meter,
    PrefixTable,
    Route,
    fastest,
    group_tiers,
    policy_route,
)
from gateway.engine.upstreams import UpstreamGroup
from gateway.errors import ModelNotFound, UpstreamUnavailable
from tests.conftest import MODEL_REPOSITORY, WEIGHTS
from tests.integration.fake_engine import FakeEngine

SYNTHETIC_PY = MODEL_REPOSITORY / "synthetic" / "1" / "model.py"


@dataclasses.dataclass(eq=False)
class Up:
    """A stand-in upstream: what routing reads."""

    name: str
    group: GroupInfo = dataclasses.field(default_factory=GroupInfo)
    in_flight: int = 0
    healthy: bool = True
    meter: Meter = dataclasses.field(default_factory=Meter)

    @property
    def available(self) -> bool:
        return self.healthy

    @property
    def load(self) -> int:
        return self.in_flight

    def __repr__(self) -> str:
        return self.name


A = GroupInfo("a", price=3.0, capacity=2)
B = GroupInfo("b", price=1.0, capacity=2)
C = GroupInfo("c", price=1.0)


def fleet() -> list[Up]:
    """Groups a (2 servers), b and c (1 each), in that order of preference."""
    return [Up("a0", A), Up("a1", A), Up("b0", B), Up("c0", C)]


def names(route: Route[Up], n: int = 1, **kw: object) -> list[str]:
    return [str(route.choose(turn=t, **kw)) for t in range(n)]  # type: ignore[arg-type]


# --- tiers, saturation, fallback ---


def test_the_preferred_group_first_least_in_flight_within_ties_rotating() -> None:
    ups = fleet()
    route = Route("", group_tiers(ups))
    assert [[u.name for u in t] for t in route.tiers] == [["a0", "a1"], ["b0"], ["c0"]]
    assert set(names(route, 4)) == {"a0", "a1"}  # ties rotate with the turn
    ups[0].in_flight = 1
    assert names(route, 4) == ["a1"] * 4


def test_a_saturated_or_unhealthy_group_falls_to_the_next() -> None:
    a0, a1, b0, c0 = ups = fleet()
    route = Route("", group_tiers(ups))
    a0.in_flight = a1.in_flight = 2  # capacity 2: saturated
    assert names(route) == ["b0"]
    b0.healthy = False
    assert names(route) == ["c0"]  # c has no capacity: never saturated
    c0.healthy = False
    b0.healthy = True
    b0.in_flight = 3
    a1.in_flight = 3  # every available one saturated: the least loaded for its capacity
    assert names(route) == ["a0"]
    for u in ups:
        u.healthy = False
    assert route.choose() is not None  # none available: still one (a wrong verdict must not stop a model)


def test_a_retry_goes_to_the_next_server_then_the_next_group() -> None:
    a0, a1, b0, _ = ups = fleet()
    route = Route("", group_tiers(ups))
    assert route.choose(exclude=(a0,)) is a1
    assert route.choose(exclude=(a0, a1)) is b0
    assert route.choose(exclude=tuple(ups)) is None


def test_a_pinned_group_is_never_left() -> None:
    ups = fleet()
    b0 = ups[2]
    route = policy_route("b", ups)
    assert route is not None
    assert names(route, 3) == ["b0"] * 3
    b0.in_flight = 5  # saturated, unhealthy, failed: still b (there is nothing else in it)
    b0.healthy = False
    assert route.choose() is b0
    assert route.choose(exclude=(b0,)) is None
    assert policy_route("nope", ups) is None
    assert policy_route("", ups) is None


def test_cheapest_orders_groups_by_price_equal_prices_sharing_a_tier() -> None:
    a0, a1, b0, c0 = ups = fleet()
    route = policy_route(CHEAPEST, ups)
    assert route is not None
    assert [[u.name for u in t] for t in route.tiers] == [["b0", "c0"], ["a0", "a1"]]
    b0.in_flight = 1
    assert names(route, 2) == ["c0", "c0"]
    b0.in_flight = 2  # b saturated (capacity 2); c has none
    c0.healthy = False
    assert route.choose() in (a0, a1)  # the dearer group, only when the cheap ones cannot take it


# --- fastest ---


def test_meter_ewma_and_score() -> None:
    m = Meter()
    assert m.score == math.inf
    m.first_token(0.100, now=1.0)
    assert m.score == pytest.approx(0.100)  # no per-token figure yet
    m.first_token(0.200, now=2.0)
    assert m.ttft == pytest.approx(0.120)  # 0.1 + 0.2 x (0.2 - 0.1)
    m.per_token(0.010)
    m.per_token(0.020)
    assert m.tpot == pytest.approx(0.012)
    assert m.score == pytest.approx(0.120 + FASTEST_TOKENS * 0.012)
    assert m.updated == 2.0


def test_fastest_measures_every_upstream_once_then_keeps_to_the_best() -> None:
    ups = fleet()
    route = policy_route(FASTEST, ups)
    assert route is not None and route.fastest
    now = 100.0
    first = [route.choose(now=now) for _ in ups]
    assert sorted(u.name for u in first if u) == ["a0", "a1", "b0", "c0"]  # each claimed once, to measure it
    for u, ttft in zip(ups, (0.30, 0.05, 0.20, 0.40), strict=True):
        u.meter.first_token(ttft, now)
        u.meter.per_token(0.01)
    assert names(route, 5, now=now + 1) == ["a1"] * 5
    ups[1].in_flight = 2  # saturated (capacity 2): the next best
    assert names(route, now=now + 1) == ["b0"]


def test_fastest_gives_a_stale_upstream_one_request_to_refresh_its_figures() -> None:
    slow, quick = Up("slow"), Up("quick")
    slow.meter.first_token(1.0, now=0.0)
    quick.meter.first_token(0.1, now=50.0)
    assert fastest([slow, quick], now=51.0, stale_s=30.0) is slow  # measured 51 s ago: once
    assert fastest([slow, quick], now=51.5, stale_s=30.0) is quick  # claimed: the others wait for its figures


# --- prefix ---


def prompt(system: int, user: int, system_tokens: int = 640, user_tokens: int = 20) -> list[int]:
    rng = random.Random(system)
    head = [rng.randrange(1000, 50000) for _ in range(system_tokens)]
    return head + [user] * user_tokens


def test_prefix_keys_are_chained_per_whole_block() -> None:
    table: PrefixTable[Up] = PrefixTable(4)
    assert table.keys([1, 2, 3]) == []  # no whole block
    k = table.keys([1, 2, 3, 4, 1, 2, 3, 4, 9])
    assert len(k) == 2 and k[0] != k[1]  # the same block at another position: another key
    assert table.keys([1, 2, 3, 4, 5, 5, 5, 5])[0] == k[0]
    assert table.keys([0, 2, 3, 4, 1, 2, 3, 4])[1] != k[1]  # a different head changes every later key


def test_prompts_sharing_a_prefix_stick_to_one_upstream() -> None:
    ups = [Up("u0"), Up("u1")]
    table: PrefixTable[Up] = PrefixTable(64)
    route = Route("", [ups], table)
    plain = Route("", [ups])
    chosen = {route.choose(keys=route.keys(prompt(1, user)), turn=user) for user in range(10)}
    assert len(chosen) == 1  # least in flight alone would alternate (ties rotate)
    assert {plain.choose(turn=t) for t in range(10)} == set(ups)
    owner = chosen.pop()
    assert owner is not None
    other = ups[1] if owner is ups[0] else ups[0]
    owner.in_flight = 1  # a new prefix goes to the least loaded
    assert route.choose(keys=route.keys(prompt(2, 0)), turn=0) is other
    assert route.choose(keys=route.keys(prompt(1, 99)), turn=0) is owner  # still sticky with one more in flight


def test_an_overloaded_owner_spills_and_keeps_its_prefix() -> None:
    u0, u1 = ups = [Up("u0"), Up("u1")]
    table: PrefixTable[Up] = PrefixTable(64, spill_abs=4, spill_rel=0.5)
    route = Route("", [ups], table)
    keys = route.keys(prompt(1, 0))
    table.record(keys, u0)
    u0.in_flight, u1.in_flight = 4, 0
    assert route.choose(keys=keys) is u0  # 4 more: within the margin
    u0.in_flight = 5
    assert route.choose(keys=keys) is u1  # 5 more than 0: spilled
    assert table.owner(keys) is u0  # the prefix stays with its owner
    u0.in_flight, u1.in_flight = 16, 11  # margin max(4, 0.5 x 11) = 5.5
    assert route.choose(keys=keys) is u0
    u0.in_flight = 17
    assert route.choose(keys=keys) is u1
    u0.in_flight = 0
    assert route.choose(keys=keys) is u0


def test_a_prefix_whose_owner_is_gone_moves() -> None:
    u0, u1 = ups = [Up("u0"), Up("u1")]
    table: PrefixTable[Up] = PrefixTable(64)
    route = Route("", [ups], table)
    keys = route.keys(prompt(1, 0))
    table.record(keys, u0)
    assert route.choose(keys=keys, exclude=(u0,)) is u1  # a retry after u0 failed
    assert table.owner(keys) is u1
    u1.healthy = False
    assert route.choose(keys=keys) is u0
    assert table.owner(keys) is u0


def test_the_prefix_table_is_a_bounded_lru() -> None:
    ups = [Up("u0"), Up("u1")]
    table: PrefixTable[Up] = PrefixTable(64, size=50)
    route = Route("", [ups], table)
    first = route.keys(prompt(0, 0))  # 10 whole blocks
    route.choose(keys=first)
    for system in range(1, 30):
        route.choose(keys=route.keys(prompt(system, 0)))
        assert len(table) <= 50
    assert table.owner(first) is None  # evicted
    recent = route.keys(prompt(29, 0))
    assert table.owner(recent) is not None


def test_prefix_keys_cost_of_a_2k_token_prompt() -> None:
    """The hot-path figure (printed, not asserted: this machine is shared)."""
    ups = [Up("u0"), Up("u1")]
    route = Route("", [ups], PrefixTable(64))
    ids = prompt(7, 1, system_tokens=2000, user_tokens=48)
    runs = 2000
    begun = time.perf_counter()
    for _ in range(runs):
        keys = route.keys(ids)
    hashed = time.perf_counter()
    for i in range(runs):
        route.choose(keys=keys, turn=i)
    done = time.perf_counter()
    print(
        f"\nprefix routing, {len(ids)}-token prompt ({len(keys)} blocks of 64): keys "
        f"{(hashed - begun) / runs * 1e6:.1f} µs, choose {(done - hashed) / runs * 1e6:.1f} µs per request"
    )


# --- through UpstreamGroup and the registry ---

SCRIPT = [[1], [2], [3], [4]]


def request(i: int = 0) -> GenerateRequest:
    return GenerateRequest(f"req-{i}", prompt(1, i), SamplingParams(max_tokens=16))


async def drain(group: UpstreamGroup, i: int = 0, stats: RequestStats | None = None) -> list[int]:
    return [t for r in [r async for r in group.generate(request(i), None, None, stats)] for t in r.ids]


def grouped(contract: ModelContract, routing: str = "least_in_flight") -> tuple[UpstreamGroup, list[FakeEngine]]:
    fakes = [FakeEngine(contract, SCRIPT, url=f"up-{i}:8001") for i in range(3)]
    groups = [A, A, B]
    engines = [cast(Engine, f) for f in fakes]
    return UpstreamGroup("m-routing", "synthetic", engines, groups=groups, routing=routing), fakes


async def test_views_share_upstreams_health_and_measurements(contract: ModelContract) -> None:
    group, _ = grouped(contract)
    await group.check()
    assert group.policies == ("fastest", "cheapest", "a", "b")
    view = group.routed("b")
    assert view is not None and view is group.routed("b") and view.policy == "b"
    assert group.routed("zzz") is None
    assert view.upstreams is group.upstreams
    stats = RequestStats(time.monotonic())
    assert await drain(view, 0, stats) == [1, 2, 3, 4]
    b0 = group.upstreams[2]
    assert stats.upstream == "b/up-2:8001" == b0.label
    assert b0.meter.samples == 1 and b0.meter.tpot is not None  # measured: first token and per token
    assert all(u.in_flight == 0 for u in group.upstreams)
    view.start()  # a view's health task is its group's
    assert view._health is group._health and group._health._task is not None
    await view.close()
    assert group._health._task is None


async def test_the_upstream_a_retry_used_is_named_and_a_retry_falls_to_the_next_group(
    contract: ModelContract,
) -> None:
    group, fakes = grouped(contract)
    await group.check()
    a0 = group.upstreams[0]
    fakes[1].unavailable = True  # a1 fails before the first token
    for i in range(4):  # whichever of a's it tries first, the one that answered is named
        stats = RequestStats(time.monotonic())
        assert await drain(group, i, stats) == [1, 2, 3, 4]
        assert stats.upstream == "a/up-0:8001"
    a0.healthy = False  # a's other server is down: the retry leaves group a for b
    stats = RequestStats(time.monotonic())
    assert await drain(group, 9, stats) == [1, 2, 3, 4]
    assert stats.upstream == "b/up-2:8001"
    pinned = group.routed("a")
    assert pinned is not None
    fakes[0].unavailable = True
    with pytest.raises(UpstreamUnavailable):  # pinned: never falls to b
        await drain(pinned, 10, RequestStats(time.monotonic()))
    assert all(u.in_flight == 0 for u in group.upstreams)


async def test_prefix_routing_through_the_group(contract: ModelContract) -> None:
    group, fakes = grouped(contract, routing="prefix")
    await group.check()
    for i in range(6):
        await drain(group, i)  # one system prompt, six user turns
    used = [f for f in fakes if f.requests]
    assert len(used) == 1 and len(used[0].requests) == 6


def registry(contract: ModelContract) -> ModelRegistry:
    groups = [
        UpstreamGroupConfig(name="gpu", urls=["g0:8001", "g1:8001"], price_input_per_1k=2.0, capacity=4),
        UpstreamGroupConfig(name="spot", urls=["s0:8001"], price_input_per_1k=0.5),
    ]
    cfg = ModelConfig(id="m", triton_model="synthetic", tokenizer_dir=WEIGHTS, upstream_groups=["gpu", "spot"])
    return ModelRegistry([cfg], lambda url: cast(Engine, FakeEngine(contract, SCRIPT, url=url)), upstream_groups=groups)


def test_model_policy_ids_are_views_of_the_model_built_once(contract: ModelContract) -> None:
    reg = registry(contract)
    base = reg.get("m", ANONYMOUS)
    assert [u.label for u in base.upstreams.upstreams] == ["gpu/g0:8001", "gpu/g1:8001", "spot/s0:8001"]
    assert base.upstreams.upstreams[0].group == GroupInfo("gpu", 2.0, 4)
    view = reg.get("m:cheapest", ANONYMOUS)
    assert view is reg.get("m:cheapest", ANONYMOUS)  # cached: no allocation per request
    assert view.id == "m" and view.admission is base.admission and view.config is base.config
    assert view.upstreams.policy == "cheapest" and view.upstreams.upstreams is base.upstreams.upstreams
    assert reg.get("m:spot", ANONYMOUS).upstreams.policy == "spot"
    with pytest.raises(ModelNotFound, match="'m:fastest', 'm:cheapest', 'm:gpu', 'm:spot'"):
        reg.get("m:nope", ANONYMOUS)
    with pytest.raises(ModelNotFound, match="does not exist or you do not have access"):
        reg.get("x:fastest", ANONYMOUS)
    scoped = dataclasses.replace(ANONYMOUS, models=frozenset({"other"}))  # the access check is the base model's
    for model_id in ("m:fastest", "m:nope"):
        with pytest.raises(ModelNotFound, match="does not exist or you do not have access"):
            reg.get(model_id, scoped)
    allowed = dataclasses.replace(ANONYMOUS, models=frozenset({"m"}), key_limits=LimitsConfig())
    assert reg.get("m:gpu", allowed).id == "m"


def test_a_replaced_model_gets_new_views(contract: ModelContract) -> None:
    reg = registry(contract)
    view = reg.get("m:fastest", ANONYMOUS)
    old = reg.get("m", ANONYMOUS)
    reg.add(reg.build(old.config))
    fresh = reg.get("m:fastest", ANONYMOUS)
    assert fresh is not view and fresh.upstreams.upstreams is reg.get("m", ANONYMOUS).upstreams.upstreams


# --- the synthetic upstream's prefix cache (model_repository/synthetic/1/model.py) ---


def test_the_synthetic_prefix_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("synthetic_model", SYNTHETIC_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = module._PrefixCache(64, 30)
    first, second = prompt(1, 1), prompt(1, 2)  # 660 tokens: 10 whole blocks of one system prompt, then the user's
    assert cache.uncached(first) == 660  # cold
    assert cache.uncached(second) == 660 - 640  # the shared 10 blocks hit; the user's 20 tokens do not
    assert cache.uncached(prompt(2, 1)) == 660
    assert cache.uncached(prompt(3, 1)) == 660
    assert cache.uncached(second) == 20  # 30 blocks held: the first prompt's are still there
    assert cache.uncached(prompt(4, 1)) == 660
    assert cache.uncached(prompt(2, 1)) == 660  # the least recently used (prompt 2's) made room for prompt 4's
    assert cache.summary() == "prefix cache: 7 requests, 1280 of 4620 prompt tokens cached (27.7%)"


async def test_models_on_one_server_share_its_load_and_capacity(contract: ModelContract) -> None:
    """Two models (e.g. two deployments of one Triton model) on the same two servers: what one sends to a
    server counts against that server's capacity for the other, while each model drains on its own."""
    tight = GroupInfo("tight", 0.0, 1)
    fakes = [FakeEngine(contract, SCRIPT, url=f"shared-{i}:8001") for i in range(2)]
    engines = [cast(Engine, f) for f in fakes]
    first = UpstreamGroup("m-one", "synthetic", engines, groups=[tight, tight])
    second = UpstreamGroup("m-two", "synthetic", engines, groups=[tight, tight])
    for group in (first, second):
        await group.check()
    busy = first.upstreams[0]
    busy.begin()  # the first model holds server 0 at its capacity
    try:
        assert second.upstreams[0].load == 1 and second.upstreams[0].in_flight == 0
        assert [second.pick().url for _ in range(4)] == ["shared-1:8001"] * 4  # server 0 is saturated
    finally:
        busy.end()
    assert second.upstreams[0].load == 0
    await first.close()
    await second.close()
