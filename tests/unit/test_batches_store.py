"""The file store, the catalog (files, batches, per-line progress) and the output files' assembly."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.batches.assemble import assemble, output_file_id
from gateway.batches.catalog import Catalog
from gateway.batches.records import BatchRecord, FileRecord, LineSpan, NewLine
from gateway.batches.results import ResultsLog, result_line
from gateway.batches.store import DirectoryStore


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "db" / "batches.sqlite3")


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


def test_catalog_is_created_on_first_use(catalog: Catalog) -> None:
    assert not catalog.exists() and not catalog.path.parent.exists()
    assert catalog.file("file-x", "p") is None
    assert catalog.exists()


def test_files_by_project_in_pages(catalog: Catalog) -> None:
    for i in range(5):
        catalog.add_file(FileRecord(f"file-{i}", "p" if i != 2 else "q", f"f{i}", "batch", i, 100 + i))
    assert catalog.file("file-2", "p") is None and catalog.file("file-2", "q") is not None
    newest = catalog.files("p", None, None, 10, True)
    assert [f.id for f in newest] == ["file-4", "file-3", "file-1", "file-0"]
    after = catalog.file_seq("file-3", "p")
    assert [f.id for f in catalog.files("p", None, after, 2, True)] == ["file-1", "file-0"]
    assert [f.id for f in catalog.files("p", None, after, 2, False)] == ["file-4"]
    assert catalog.files("p", "batch_output", None, 10, True) == []
    assert catalog.delete_file("file-1", "p") and not catalog.delete_file("file-1", "p")
    assert not catalog.delete_file("file-2", "p")


def test_batch_transitions_and_cancel(catalog: Catalog) -> None:
    catalog.add_batch(batch())
    assert catalog.candidates(0) == ["batch_1"]
    assert catalog.batch("batch_1", "other") is None
    assert not catalog.transition("batch_1", ("in_progress",), "finalizing", 150)
    assert catalog.cancel("batch_1", "p", 120)
    assert not catalog.cancel("batch_1", "p", 121)  # cancelling already
    record = catalog.batch("batch_1", "p")
    assert record is not None and record.status == "cancelling" and record.times == {"cancelling": 120}


def test_lines_are_recorded_once_and_counted(catalog: Catalog) -> None:
    catalog.add_batch(batch())
    lines = [NewLine(LineSpan(i, i * 10, 9, f"c{i}")) for i in range(4)]
    lines[2] = NewLine(lines[2].span, (0, 5))  # invalid: done, failed
    assert catalog.start_lines("batch_1", lines, "m", 110)
    assert not catalog.start_lines("batch_1", lines, "m", 110)  # in progress already
    assert [s.idx for s in catalog.pending_lines("batch_1")] == [0, 1, 3]
    assert catalog.record_line("batch_1", 1, True, (5, 7), (3, 4))
    assert not catalog.record_line("batch_1", 1, True, (12, 7), (3, 4))  # at most once
    assert catalog.record_line("batch_1", 3, False, (12, 7))
    record = catalog.batch("batch_1")
    assert record is not None and record.status == "in_progress" and record.model == "m"
    assert (record.total, record.completed, record.failed) == (4, 1, 2)
    assert (record.input_tokens, record.output_tokens) == (3, 4)
    assert [s.idx for s in catalog.pending_lines("batch_1")] == [0]
    states = catalog.lines("batch_1", -1, 10)
    assert [(s.idx, s.done, s.ok, s.result_offset) for s in states] == [
        (0, False, False, None),
        (1, True, True, 5),
        (2, True, False, 0),
        (3, True, False, 12),
    ]
    assert [s.idx for s in catalog.lines("batch_1", 1, 10)] == [2, 3]


def test_a_line_is_recorded_only_under_the_lease(catalog: Catalog) -> None:
    catalog.add_batch(batch())
    catalog.start_lines("batch_1", [NewLine(LineSpan(0, 0, 1, "a"))], None, 110)
    assert catalog.lease_acquire("batch_1", "me", 1e12, 0)
    assert not catalog.record_line("batch_1", 0, True, (0, 1), owner="someone-else")
    assert catalog.record_line("batch_1", 0, True, (0, 1), owner="me")


def test_the_state_survives_a_new_connection(catalog: Catalog) -> None:
    catalog.add_batch(batch())
    catalog.start_lines("batch_1", [NewLine(LineSpan(0, 0, 1, "a")), NewLine(LineSpan(1, 2, 1, "b"))], None, 110)
    catalog.record_line("batch_1", 0, True, (0, 1))
    catalog.close()
    again = Catalog(catalog.path)
    assert [s.custom_id for s in again.pending_lines("batch_1")] == ["b"]


def test_results_log(tmp_path: Path) -> None:
    log = ResultsLog(tmp_path / "batches")
    assert log.append("b", b"one\n") == (0, 4)
    assert log.append_many("b", [b"two\n", b"three\n"]) == [(4, 4), (8, 6)]
    reader = log.reader("b")
    assert reader.read(4, 4) == b"two\n"
    with pytest.raises(OSError):
        reader.read(12, 10)
    reader.close()
    log.remove("b")
    assert not (tmp_path / "batches" / "b.jsonl").exists()


async def test_assemble_in_input_order(catalog: Catalog, tmp_path: Path) -> None:
    store, results = DirectoryStore(tmp_path / "files"), ResultsLog(tmp_path / "batches")
    catalog.add_batch(batch())
    catalog.start_lines("batch_1", [NewLine(LineSpan(i, 0, 1, f"c{i}")) for i in range(4)], "m", 110)
    # finished out of order: 2, then 0 (failed), then 1; 3 never ran
    for idx, ok in ((2, True), (0, False), (1, True)):
        spot = results.append("batch_1", result_line(f"c{idx}", "req", {"n": idx}))
        catalog.record_line("batch_1", idx, ok, spot)
    record = catalog.batch("batch_1")
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
    assert catalog.finish(
        "batch_1", ("validating", "in_progress"), "expired", 300, made.files, made.output_file_id, made.error_file_id
    )
    assert catalog.file(made.output_file_id, "p") is not None
    assert catalog.lines("batch_1", -1, 10) == []
    # again (a holder that died while finalizing): the same files, nothing left behind
    catalog.add_batch(batch("batch_2"))
    catalog.start_lines("batch_2", [NewLine(LineSpan(0, 0, 1, "x"))], "m", 110)
    catalog.record_line("batch_2", 0, True, results.append("batch_2", b"{}\n"))
    second = catalog.batch("batch_2")
    assert second is not None
    one = await assemble(catalog, store, results, second, expired=False, now=300)
    two = await assemble(catalog, store, results, second, expired=False, now=300)
    assert one == two and one.error_file_id is None
    assert sorted(p.name for p in (tmp_path / "files").iterdir() if p.is_file()) == sorted(
        [made.output_file_id, made.error_file_id, one.output_file_id]
    )
