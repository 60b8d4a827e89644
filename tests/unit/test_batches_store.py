"""The file store, the catalog (files, batches, per-line progress), the results log and the output
files' assembly. The catalog's and the results log's tests run on both implementations: SQLite and
local files, and a real redis-server (several machines)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from gateway.batches.assemble import assemble, output_file_id
from gateway.batches.catalog import Catalog
from gateway.batches.catalog_redis import RedisCatalog
from gateway.batches.catalogs import BatchCatalog, LocalCatalog
from gateway.batches.records import BatchRecord, FileRecord, LineSpan, NewLine
from gateway.batches.results import Results, ResultsLog, result_line
from gateway.batches.results_redis import RedisResults
from gateway.batches.store import DirectoryStore

KINDS = ["sqlite", "redis"]
Opener = Callable[[], BatchCatalog]


@pytest.fixture(params=KINDS)
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens a catalog on one store (a new connection each time: another process's), closed after the test."""
    opened: list[BatchCatalog] = []

    def open_one() -> BatchCatalog:
        if request.param == "sqlite":
            catalog: BatchCatalog = LocalCatalog(tmp_path / "db" / "batches.sqlite3")
        else:
            url = request.getfixturevalue("redis_url")
            catalog = RedisCatalog(url, prefix=f"test:{tmp_path.name}:", lease_prefix=f"test:{tmp_path.name}:lease:")
        opened.append(catalog)
        return catalog

    yield open_one
    for catalog in opened:
        await catalog.close()


@pytest.fixture
def catalog(opener: Opener) -> BatchCatalog:
    return opener()


@pytest.fixture(params=KINDS)
async def results(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Results]:
    made: Results
    if request.param == "sqlite":
        made = ResultsLog(tmp_path / "batches")
    else:
        made = RedisResults(request.getfixturevalue("redis_url"), prefix=f"test:{tmp_path.name}:")
    yield made
    await made.close()


def batch(batch_id: str = "batch_1", project: str = "p", status: str = "validating") -> BatchRecord:
    return BatchRecord(batch_id, project, "key", "/v1/chat/completions", "file-in", "24h", status, 100, 200)


async def test_directory_store(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "files")
    writer = store.writer("file-a")
    await writer.write(b"hello ")
    await writer.write(b"world")
    with pytest.raises(FileNotFoundError):  # nothing visible before the commit
        await store.read("file-a", 0, 1)
    assert await writer.commit() == 11
    assert await store.read("file-a", 6, 5) == b"world"
    assert b"".join([c async for c in store.chunks("file-a")]) == b"hello world"
    aborted = store.writer("file-b")
    await aborted.write(b"x")
    await aborted.abort()
    assert not (tmp_path / "files" / "file-b").exists()
    assert list((tmp_path / "files" / ".partial").iterdir()) == []
    await store.delete("file-a")
    await store.delete("file-a")  # twice: nothing to do
    with pytest.raises(FileNotFoundError):
        [c async for c in store.chunks("file-a")]
    with pytest.raises(ValueError):
        store.writer("../escape")


def test_catalog_is_created_on_first_use(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "db" / "batches.sqlite3")
    assert not catalog.exists() and not catalog.path.parent.exists()
    assert catalog.file("file-x", "p") is None
    assert catalog.exists()
    catalog.close()


async def test_files_by_project_in_pages(catalog: BatchCatalog) -> None:
    for i in range(5):
        await catalog.add_file(FileRecord(f"file-{i}", "p" if i != 2 else "q", f"f{i}", "batch", i, 100 + i))
    assert await catalog.file("file-2", "p") is None and await catalog.file("file-2", "q") is not None
    assert await catalog.file("file-3", "p") == FileRecord("file-3", "p", "f3", "batch", 3, 103)
    newest = await catalog.files("p", None, None, 10, True)
    assert [f.id for f in newest] == ["file-4", "file-3", "file-1", "file-0"]
    after = await catalog.file_seq("file-3", "p")
    assert after is not None and await catalog.file_seq("file-3", "q") is None
    assert [f.id for f in await catalog.files("p", None, after, 2, True)] == ["file-1", "file-0"]
    assert [f.id for f in await catalog.files("p", None, after, 2, False)] == ["file-4"]
    assert [f.id for f in await catalog.files("p", "batch", None, 2, False)] == ["file-0", "file-1"]
    assert await catalog.files("p", "batch_output", None, 10, True) == []
    assert await catalog.delete_file("file-1", "p") and not await catalog.delete_file("file-1", "p")
    assert not await catalog.delete_file("file-2", "p")
    assert [f.id for f in await catalog.files("p", "batch", None, 10, False)] == ["file-0", "file-3", "file-4"]


async def test_batches_in_pages(catalog: BatchCatalog) -> None:
    for i in range(4):
        await catalog.add_batch(batch(f"batch_{i}", "p" if i != 1 else "q"))
    assert [b.id for b in await catalog.batches("p", None, 10)] == ["batch_3", "batch_2", "batch_0"]
    after = await catalog.batch_seq("batch_2", "p")
    assert after is not None and await catalog.batch_seq("batch_2", "q") is None
    assert [b.id for b in await catalog.batches("p", after, 10)] == ["batch_0"]
    assert [b.id for b in await catalog.batches("q", None, 1)] == ["batch_1"]


async def test_batch_transitions_and_cancel(catalog: BatchCatalog) -> None:
    first = batch()
    first.metadata = {"run": "t"}
    await catalog.add_batch(first)
    assert await catalog.candidates(0) == ["batch_1"]
    assert await catalog.batch("batch_1", "other") is None
    assert not await catalog.transition("batch_1", ("in_progress",), "finalizing", 150)
    assert not await catalog.cancel("batch_1", "other", 120)  # another project's
    assert await catalog.cancel("batch_1", "p", 120)
    assert not await catalog.cancel("batch_1", "p", 121)  # cancelling already
    record = await catalog.batch("batch_1", "p")
    assert record is not None and record.status == "cancelling" and record.times == {"cancelling": 120}
    assert record.metadata == {"run": "t"} and record.errors is None and record.model is None
    assert await catalog.status("batch_1") == "cancelling" and await catalog.status("batch_nope") is None
    await catalog.add_batch(batch("batch_2"))
    errors = [{"code": "empty_file", "message": "no", "param": None, "line": None}]
    data = orjson.dumps(errors).decode()
    assert await catalog.transition("batch_2", ("validating",), "failed", 130, errors=data)
    assert await catalog.candidates(0) == ["batch_1"]  # failed: no work left
    failed = await catalog.batch("batch_2")
    assert failed is not None and failed.status == "failed" and failed.errors == errors
    assert failed.times == {"failed": 130}


async def test_lines_are_recorded_once_and_counted(catalog: BatchCatalog) -> None:
    await catalog.add_batch(batch())
    lines = [NewLine(LineSpan(i, i * 10, 9, f"c{i}")) for i in range(4)]
    lines[2] = NewLine(lines[2].span, (0, 5))  # invalid: done, failed
    assert not await catalog.record_line("batch_1", 0, True, (5, 7))  # no lines yet
    assert await catalog.start_lines("batch_1", lines, "m", 110)
    assert not await catalog.start_lines("batch_1", lines, "m", 110)  # in progress already
    assert [s.idx for s in await catalog.pending_lines("batch_1")] == [0, 1, 3]
    assert await catalog.record_line("batch_1", 1, True, (5, 7), (3, 4))
    assert not await catalog.record_line("batch_1", 1, True, (12, 7), (3, 4))  # at most once
    assert await catalog.record_line("batch_1", 3, False, (12, 7))
    assert not await catalog.record_line("batch_1", 4, True, (20, 7))  # no such line
    record = await catalog.batch("batch_1")
    assert record is not None and record.status == "in_progress" and record.model == "m"
    assert record.times == {"in_progress": 110}
    assert (record.total, record.completed, record.failed) == (4, 1, 2)
    assert (record.input_tokens, record.output_tokens) == (3, 4)
    assert await catalog.pending_lines("batch_1") == [LineSpan(0, 0, 9, "c0")]
    states = await catalog.lines("batch_1", -1, 10)
    assert [(s.idx, s.custom_id, s.done, s.ok, s.result_offset, s.result_length) for s in states] == [
        (0, "c0", False, False, None, None),
        (1, "c1", True, True, 5, 7),
        (2, "c2", True, False, 0, 5),
        (3, "c3", True, False, 12, 7),
    ]
    assert [s.idx for s in await catalog.lines("batch_1", 1, 10)] == [2, 3]
    assert [s.idx for s in await catalog.lines("batch_1", 0, 2)] == [1, 2]


async def test_lines_of_a_batch_cancelled_while_validating_are_not_recorded(catalog: BatchCatalog) -> None:
    await catalog.add_batch(batch())
    assert await catalog.cancel("batch_1", "p", 105)
    assert not await catalog.start_lines("batch_1", [NewLine(LineSpan(0, 0, 1, "a"))], "m", 110)
    assert await catalog.pending_lines("batch_1") == [] and await catalog.lines("batch_1", -1, 10) == []


async def test_many_lines(catalog: BatchCatalog) -> None:
    """More lines than one command sends, and pages of them."""
    await catalog.add_batch(batch())
    n = 2500
    lines = [
        NewLine(LineSpan(i, i * 3, 2, None if i % 7 else f"c{i}"), (i, 1) if i % 5 == 0 else None) for i in range(n)
    ]
    assert await catalog.start_lines("batch_1", lines, None, 110)
    pending = await catalog.pending_lines("batch_1")
    assert pending == [line.span for line in lines if line.result is None]
    seen = []
    after = -1
    while page := await catalog.lines("batch_1", after, 1000):
        seen += page
        after = page[-1].idx
    assert [s.idx for s in seen] == list(range(n))
    assert [s.done for s in seen] == [i % 5 == 0 for i in range(n)]
    assert [s.custom_id for s in seen] == [line.span.custom_id for line in lines]


async def test_a_line_is_recorded_only_under_the_lease(catalog: BatchCatalog) -> None:
    await catalog.add_batch(batch())
    await catalog.start_lines("batch_1", [NewLine(LineSpan(0, 0, 1, "a")), NewLine(LineSpan(1, 1, 1, "b"))], None, 110)
    mine, theirs = catalog.lease("me", ttl=30), catalog.lease("someone-else", ttl=30)
    try:
        assert mine.fence == "me"
        assert await mine.acquire("batch_1") and not await theirs.acquire("batch_1")
        assert await catalog.candidates(0) == []  # held: no candidate for anyone else
        assert not await catalog.record_line("batch_1", 0, True, (0, 1), owner="someone-else")
        assert await catalog.record_line("batch_1", 0, True, (0, 1), owner="me")
        await mine.release("batch_1")
        assert await catalog.candidates(0) == ["batch_1"]
        assert not await catalog.record_line("batch_1", 1, True, (1, 1), owner="me")  # released: not mine
    finally:
        await mine.close()
        await theirs.close()


async def test_the_state_survives_a_new_connection(opener: Opener) -> None:
    catalog = opener()
    await catalog.add_batch(batch())
    await catalog.start_lines("batch_1", [NewLine(LineSpan(0, 0, 1, "a")), NewLine(LineSpan(1, 2, 1, "b"))], None, 110)
    await catalog.record_line("batch_1", 0, True, (0, 1))
    await catalog.close()
    again = opener()
    assert [s.custom_id for s in await again.pending_lines("batch_1")] == ["b"]
    assert not await again.record_line("batch_1", 0, True, (0, 1))  # recorded by the first


async def test_results_log(results: Results) -> None:
    one = await results.append("b", b"one\n")
    spots = await results.append_many("b", [b"two\n", b"three\n"])
    assert await results.append_many("b", []) == []
    assert [length for _, length in (one, *spots)] == [4, 4, 6]
    assert await results.read("b", [spots[0], one, spots[1]]) == [b"two\n", b"one\n", b"three\n"]
    offset, _ = spots[1]
    assert await results.read("b", [(offset, 10), (offset + 1000, 3)]) == [None, None]  # not there
    assert await results.read("other", [one]) == [None]
    await results.remove("b")
    assert await results.read("b", [one]) == [None]
    await results.remove("b")  # twice: nothing to do


async def test_assemble_in_input_order(catalog: BatchCatalog, results: Results, tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "files")
    await catalog.add_batch(batch())
    await catalog.start_lines("batch_1", [NewLine(LineSpan(i, 0, 1, f"c{i}")) for i in range(4)], "m", 110)
    # finished out of order: 2, then 0 (failed), then 1; 3 never ran
    for idx, ok in ((2, True), (0, False), (1, True)):
        spot = await results.append("batch_1", result_line(f"c{idx}", "req", {"n": idx}))
        await catalog.record_line("batch_1", idx, ok, spot)
    record = await catalog.batch("batch_1")
    assert record is not None
    made = await assemble(catalog, store, results, record, expired=True, now=300)
    assert made.output_file_id == output_file_id("batch_1", "output")
    assert made.error_file_id == output_file_id("batch_1", "error")
    out = [orjson.loads(x) for x in (await store.read(made.output_file_id, 0, 10_000)).splitlines()]
    assert [x["custom_id"] for x in out] == ["c1", "c2"]
    errors = [orjson.loads(x) for x in (await store.read(made.error_file_id, 0, 10_000)).splitlines()]
    assert [(x["custom_id"], x["error"]) for x in errors][1] == (
        "c3",
        {"code": "batch_expired", "message": errors[1]["error"]["message"]},
    )
    assert errors[0]["custom_id"] == "c0"
    assert {f.purpose for f in made.files} == {"batch_output"}
    assert not await catalog.finish("batch_1", ("finalizing",), "completed", 300, made.files, None, None)
    assert await catalog.finish(
        "batch_1", ("validating", "in_progress"), "expired", 300, made.files, made.output_file_id, made.error_file_id
    )
    assert await catalog.candidates(0) == []
    finished = await catalog.batch("batch_1")
    assert finished is not None and finished.status == "expired" and finished.times["expired"] == 300
    assert (finished.output_file_id, finished.error_file_id) == (made.output_file_id, made.error_file_id)
    output = await catalog.file(made.output_file_id, "p")
    assert output is not None and output.purpose == "batch_output"
    assert output.bytes == len(await store.read(made.output_file_id, 0, 10_000))
    listed = await catalog.files("p", "batch_output", None, 10, False)
    assert sorted(f.id for f in listed) == sorted([made.output_file_id, made.error_file_id])
    assert await catalog.lines("batch_1", -1, 10) == []
    assert not await catalog.record_line("batch_1", 3, True, (0, 1))  # finished: its lines are gone
    # again (a holder that died while finalizing): the same files, nothing left behind
    await catalog.add_batch(batch("batch_2"))
    await catalog.start_lines("batch_2", [NewLine(LineSpan(0, 0, 1, "x"))], "m", 110)
    await catalog.record_line("batch_2", 0, True, await results.append("batch_2", b"{}\n"))
    second = await catalog.batch("batch_2")
    assert second is not None
    one = await assemble(catalog, store, results, second, expired=False, now=300)
    two = await assemble(catalog, store, results, second, expired=False, now=300)
    assert one == two and one.error_file_id is None
    assert sorted(p.name for p in (tmp_path / "files").iterdir() if p.is_file()) == sorted(
        [made.output_file_id, made.error_file_id, one.output_file_id]
    )


async def test_a_lost_result_is_reported_not_dropped(catalog: BatchCatalog, results: Results, tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "files")
    await catalog.add_batch(batch())
    await catalog.start_lines("batch_1", [NewLine(LineSpan(0, 0, 1, "a"))], "m", 110)
    await catalog.record_line("batch_1", 0, True, await results.append("batch_1", b"{}\n"))
    await results.remove("batch_1")  # its log went with a machine
    record = await catalog.batch("batch_1")
    assert record is not None
    made = await assemble(catalog, store, results, record, expired=False, now=300)
    assert made.output_file_id is None and made.error_file_id is not None
    lost = orjson.loads(await store.read(made.error_file_id, 0, 10_000))
    assert (lost["custom_id"], lost["error"]["code"]) == ("a", "result_lost")
