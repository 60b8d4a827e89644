"""The deployment stores, each against its real backing: a SQLite file, a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.deployments.records import Deployment
from gateway.deployments.store import DeploymentStore, RedisDeploymentStore, SqliteDeploymentStore
from gateway.errors import Conflict, RevisionMismatch
from tests.conftest import until

WAIT_S = 30.0  # a bound against a hang, not a measure: changes arrive within a poll interval


@dataclass(frozen=True)
class Backing:
    kind: str
    location: str  # the SQLite file, or the Redis URL
    prefix: str = ""


def open_store(backing: Backing) -> DeploymentStore:
    if backing.kind == "sqlite":
        return SqliteDeploymentStore(Path(backing.location), poll_interval=0.05)
    return RedisDeploymentStore(backing.location, prefix=backing.prefix)


@pytest.fixture(params=["sqlite", "redis"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Backing:
    if request.param == "sqlite":
        return Backing("sqlite", str(tmp_path / "deployments.sqlite"))
    url: str = request.getfixturevalue("redis_url")
    return Backing("redis", url, f"test:{uuid.uuid4().hex}:")  # a server for the session: keys of this test's own


Opener = Callable[[], DeploymentStore]


@pytest.fixture
async def opener(backing: Backing) -> AsyncIterator[Opener]:
    """Opens stores on the same file or server: several processes' or replicas' views of one state."""
    opened: list[DeploymentStore] = []

    def open_one() -> DeploymentStore:
        opened.append(open_store(backing))
        return opened[-1]

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
def store(opener: Opener) -> DeploymentStore:
    return opener()


def deployment(name: str, *, model_id: str | None = None, tags: list[str] | None = None, at: int = 0) -> Deployment:
    extra = {"created_at": at, "updated_at": at} if at else {}
    return Deployment(
        name=name,
        model_id=model_id or f"model-{name}",
        triton_model="synthetic",
        tokenizer_dir="/models/tokenizer",
        tags=tags or [],
        **extra,  # type: ignore[arg-type]
    )


async def test_create_get_update_delete(store: DeploymentStore) -> None:
    created = await store.create(deployment("alpha", tags=["a"]))
    assert created.revision == 1 and created.status == "creating"
    assert await store.get(created.id) == created
    assert await store.get_by_model_id("model-alpha") == created
    assert await store.get("dep_missing") is None and await store.get_by_model_id("missing") is None

    updated = await store.update(created.id, None, status="ready", placement=["triton:8001"])
    assert updated is not None
    assert (updated.revision, updated.status, updated.placement) == (2, "ready", ["triton:8001"])
    assert updated.updated_at >= created.updated_at and updated.created_at == created.created_at
    assert await store.get(created.id) == updated
    again = await store.update(created.id, 2, tags=["a", "b"])
    assert again is not None and again.revision == 3 and again.tags == ["a", "b"]
    assert await store.all() == [again]

    assert await store.update("dep_missing", None, status="ready") is None
    assert await store.update("dep_missing", 1, status="ready") is None
    assert await store.delete(created.id) is True
    assert await store.get(created.id) is None and await store.get_by_model_id("model-alpha") is None
    assert await store.delete(created.id) is False
    assert await store.all() == []


async def test_what_an_update_may_not_do(store: DeploymentStore) -> None:
    created = await store.create(deployment("alpha"))
    for changes in ({"no_such_field": 1}, {"status": "sleeping"}, {"min_size": "many"}, {"revision": 9}, {"id": "x"}):
        with pytest.raises(ValueError):
            await store.update(created.id, None, **changes)
    assert await store.get(created.id) == created


async def test_names_model_ids_and_revisions_conflict(store: DeploymentStore) -> None:
    a = await store.create(deployment("alpha"))
    b = await store.create(deployment("beta"))
    with pytest.raises(Conflict, match="alpha"):
        await store.create(deployment("alpha", model_id="other"))
    with pytest.raises(Conflict, match="model-alpha") as taken:
        await store.create(deployment("gamma", model_id="model-alpha"))
    assert a.id in taken.value.message and not isinstance(taken.value, RevisionMismatch)
    with pytest.raises(Conflict, match=a.id):
        await store.create(a.model_copy(update={"name": "delta", "model_id": "model-delta"}))
    with pytest.raises(Conflict, match="alpha"):
        await store.update(b.id, None, name="alpha")
    with pytest.raises(Conflict, match="model-alpha"):
        await store.update(b.id, None, model_id="model-alpha")
    with pytest.raises(RevisionMismatch, match="revision 1"):
        await store.update(a.id, 7, status="ready")
    assert [await store.get(a.id), await store.get(b.id)] == [a, b]
    assert len(await store.all()) == 2

    renamed = await store.update(a.id, 1, name="alpha-2", model_id="model-alpha-2")  # frees both
    assert renamed is not None and renamed.revision == 2
    taker = await store.update(b.id, 1, name="alpha", model_id="model-alpha")
    assert taker is not None and await store.get_by_model_id("model-alpha") == taker
    assert await store.get_by_model_id("model-alpha-2") == renamed
    await store.delete(renamed.id)  # frees them again
    assert (await store.create(deployment("alpha-2"))).name == "alpha-2"


async def test_pages_and_orders(store: DeploymentStore) -> None:
    names = [f"dep-{i:03d}" for i in range(125)]
    random.Random(7).shuffle(names)  # creation order is not name order
    created = [await store.create(deployment(name, at=1_700_000_000 + i)) for i, name in enumerate(names)]

    pages = [await store.list(page=page, per_page=50) for page in (1, 2, 3, 4)]
    assert [len(rows) for rows, _ in pages] == [50, 50, 25, 0]
    assert {total for _, total in pages} == {125}
    assert [d for rows, _ in pages for d in rows] == created
    newest, _ = await store.list(order_by="created_at_desc", page=2, per_page=50)
    assert newest == created[::-1][50:100]
    by_name, total = await store.list(order_by="name_asc", page=3, per_page=40)
    assert [d.name for d in by_name] == sorted(names)[80:120] and total == 125
    by_name_desc, _ = await store.list(order_by="name_desc", page=1, per_page=10)
    assert [d.name for d in by_name_desc] == sorted(names, reverse=True)[:10]


async def test_filters(store: DeploymentStore) -> None:
    same_second = 1_700_000_000
    made = [
        await store.create(deployment("llama-small", tags=["gpu", "prod"], at=same_second)),
        await store.create(deployment("llama-large", tags=["gpu-large"], at=same_second)),
        await store.create(deployment("whisper", tags=["audio", "prod"], at=same_second + 1)),
        await store.create(deployment("Llama-cased", tags=["gpu"], at=same_second + 2)),
    ]
    small, large, whisper, cased = made
    await store.update(whisper.id, None, status="ready")
    await store.update(small.id, None, status="ready")

    async def names(**query: object) -> tuple[list[str], int]:
        rows, total = await store.list(**query)  # type: ignore[arg-type]
        return [d.name for d in rows], total

    tied = sorted([small, large], key=lambda d: d.id)  # one second: ties go by id
    assert await names() == ([d.name for d in [*tied, whisper, cased]], 4)
    assert await names(name="llama") == ([d.name for d in tied], 2)  # a substring, and case counts
    assert await names(name="ama-", order_by="name_asc") == (["Llama-cased", "llama-large", "llama-small"], 3)
    assert await names(tag="gpu", order_by="name_desc") == (["llama-small", "Llama-cased"], 2)  # not gpu-large
    assert await names(tag="prod", status="ready") == (["llama-small", "whisper"], 2)
    assert await names(status="creating") == ([d.name for d in [large, cased]], 2)
    assert await names(tag="gpu", name="llama", status="ready") == (["llama-small"], 1)
    assert await names(tag="prod", page=2, per_page=1) == (["whisper"], 2)
    assert await names(tag="nothing") == ([], 0)
    assert await names(name="", tag="", status="") == ([d.name for d in [*tied, whisper, cased]], 4)
    assert await names(order_by="created_at_desc", per_page=2) == ([cased.name, whisper.name], 4)


async def test_list_arguments_are_checked(store: DeploymentStore) -> None:
    for query in ({"order_by": "size_asc"}, {"page": 0}, {"per_page": 0}):
        with pytest.raises(ValueError):
            await store.list(**query)


async def test_deployments_outlive_the_store(opener: Opener) -> None:
    first = opener()
    kept = await first.create(deployment("alpha", tags=["x"]))
    kept = await first.update(kept.id, 1, status="ready") or kept
    await first.close()
    again = opener()
    assert await again.get(kept.id) == kept
    assert await again.get_by_model_id(kept.model_id) == kept
    assert await again.list(tag="x") == ([kept], 1)
    with pytest.raises(Conflict):
        await again.create(deployment("alpha"))


async def next_change(changes: asyncio.Queue[str], wanted: str, within: float = WAIT_S) -> None:
    """Wait for ``wanted`` among the ids the watcher reported (others, and repeats, pass by)."""

    async def seen() -> None:
        while await changes.get() != wanted:
            pass

    await asyncio.wait_for(seen(), within)


async def test_another_instance_is_told_of_every_change(opener: Opener) -> None:
    writer, watcher = opener(), opener()
    changes: asyncio.Queue[str] = asyncio.Queue()

    async def watch() -> None:
        async for deployment_id in watcher.changes():
            changes.put_nowait(deployment_id)

    task = asyncio.create_task(watch())
    try:
        # the watcher begins to look at some moment after the task starts: change until it has seen one
        probe = await writer.create(deployment("probe"))

        async def poke() -> None:
            while True:
                await writer.update(probe.id, None, status="ready")
                await asyncio.sleep(0.2)

        poker = asyncio.create_task(poke())
        try:
            await next_change(changes, probe.id)
        finally:
            poker.cancel()
        created = await writer.create(deployment("alpha"))
        await next_change(changes, created.id)
        await writer.update(created.id, 1, status="deploying")
        await next_change(changes, created.id)
        await writer.delete(created.id)
        await next_change(changes, created.id)
        assert await watcher.get(created.id) is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_watcher_that_lost_redis_catches_up(redis_url: str) -> None:
    """A change published while the watcher's connection is down is reported once it is back."""
    backing = Backing("redis", redis_url, f"test:{uuid.uuid4().hex}:")
    writer, watcher = open_store(backing), open_store(backing)
    changes: asyncio.Queue[str] = asyncio.Queue()

    async def watch() -> None:
        async for deployment_id in watcher.changes():
            changes.put_nowait(deployment_id)

    task = asyncio.create_task(watch())
    admin = Redis.from_url(redis_url)
    try:
        probe = await writer.create(deployment("probe"))
        while True:  # until the watcher is subscribed
            await writer.update(probe.id, None, status="ready")
            with contextlib.suppress(TimeoutError):
                await next_change(changes, probe.id, within=0.2)
                break
        await admin.client_kill_filter(_type="pubsub")
        created = await writer.create(deployment("alpha"))  # published to no one: the watcher is away
        await next_change(changes, created.id)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await admin.aclose()
        await writer.close()
        await watcher.close()


async def test_one_compare_and_set_wins(opener: Opener) -> None:
    created = await opener().create(deployment("alpha"))
    contenders = [opener() for _ in range(6)]
    outcomes = await asyncio.gather(
        *(s.update(created.id, 1, error_message=f"by {i}") for i, s in enumerate(contenders)), return_exceptions=True
    )
    winners = [o for o in outcomes if isinstance(o, Deployment)]
    assert len(winners) == 1 and winners[0].revision == 2
    assert all(isinstance(o, RevisionMismatch) for o in outcomes if o is not winners[0])
    assert await contenders[0].get(created.id) == winners[0]


async def append_tags(backing: Backing, deployment_id: str, tag: str, count: int, rendezvous: Path) -> int:
    """Append ``count`` tags by compare-and-set, reading again after each lost race; the races lost.

    Begins when every process is ready (``rendezvous``/go exists), so that they contend.
    """
    store = open_store(backing)
    (rendezvous / f"ready-{tag}").touch()
    deadline = time.monotonic() + WAIT_S
    while not (rendezvous / "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the other processes never got ready")
        await asyncio.sleep(0.005)
    lost = 0
    try:
        for k in range(count):
            while True:
                current = await store.get(deployment_id)
                assert current is not None
                try:
                    await store.update(deployment_id, current.revision, tags=[*current.tags, f"{tag}-{k}"])
                    break
                except RevisionMismatch:
                    lost += 1
    finally:
        await store.close()
    return lost


def append_tags_in_process(backing: Backing, deployment_id: str, tag: str, count: int, rendezvous: Path) -> int:
    return asyncio.run(append_tags(backing, deployment_id, tag, count, rendezvous))


async def test_processes_changing_one_deployment_lose_no_change(
    backing: Backing, opener: Opener, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = opener()
    created = await store.create(deployment("alpha"))
    processes, count = 3, 40
    rendezvous = tmp_path_factory.mktemp("rendezvous")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = asyncio.gather(
            *(
                loop.run_in_executor(pool, append_tags_in_process, backing, created.id, f"p{p}", count, rendezvous)
                for p in range(processes)
            )
        )
        await until(lambda: len(list(rendezvous.glob("ready-*"))) == processes or runs.done(), WAIT_S, "all ready")
        (rendezvous / "go").touch()
        lost = await asyncio.wait_for(runs, 120)
    final = await store.get(created.id)
    assert final is not None
    assert final.revision == 1 + processes * count, f"races lost: {lost}"
    assert sorted(final.tags) == sorted(f"p{p}-{k}" for p in range(processes) for k in range(count))
