"""The usage ledger's cost: what a request pays to be recorded, and how fast the records reach the file.

- ``append``: per round, ``--records`` records built and appended in a tight loop, as the request path
  does (a ``UsageRecord`` made, then ``Ledger.append``), with the flusher thread running at its defaults
  (a write every 0.5 s or 1,000 records). Reported in CPU µs of the appending thread per record (its
  thread time: what the event loop would pay; waits for the GIL or a busy machine's cores are not
  counted): build, append, and the two together; a bare ``list.append`` of a prebuilt record for scale.
- ``flush``: per batch size (``--batches``), that many records buffered, then ``Ledger.flush()`` timed
  (one transaction into a WAL file): records/s and the process's CPU µs per record written.

The file lives in a temporary directory, removed at the end. Writes perf/results/ledger.json and
ledger.png, and prints a table.

    python -m perf.ledger [--records 100000] [--rounds 5] [--batches 100,1000,10000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.config import REPO_ROOT
from gateway.usage.ledger import Ledger
from gateway.usage.records import UsageRecord
from perf.stack import positive_ints, save_results


def _record(i: int) -> UsageRecord:
    return UsageRecord(
        project="team-a",
        model="llama-3.1-8b-instruct",
        endpoint="/v1/chat/completions",
        input_tokens=120 + i % 7,
        output_tokens=i % 300,
        status=200,
        key_id="1a2b3c4d",
        request_id=f"req_{i:024x}",
    )


def measure_append(path: Path, records: int, rounds: int) -> dict[str, Any]:
    """CPU µs of this thread per record to build it and to append it, the flusher running at its defaults."""
    ledger = Ledger(path)
    build, append, both, bare = [], [], [], []
    try:
        for _ in range(rounds):
            started = time.thread_time()
            made = [_record(i) for i in range(records)]
            build.append((time.thread_time() - started) / records * 1e6)
            started = time.thread_time()
            for record in made:
                ledger.append(record)
            append.append((time.thread_time() - started) / records * 1e6)
            started = time.thread_time()
            for i in range(records):
                ledger.append(_record(i))
            both.append((time.thread_time() - started) / records * 1e6)
            sink: list[UsageRecord] = []
            started = time.thread_time()
            for record in made:
                sink.append(record)
            bare.append((time.thread_time() - started) / records * 1e6)
        ledger.flush(timeout=300)
    finally:
        ledger.close()
    return {
        "records_per_round": records,
        "build_us": build,
        "append_us": append,
        "build_and_append_us": both,
        "list_append_us": bare,
        "written": ledger.written,
    }


def measure_flush(path: Path, batches: list[int], rounds: int) -> list[dict[str, Any]]:
    """Records/s of one flush of ``batch`` buffered records (nothing written in between)."""
    ledger = Ledger(path, flush_interval=3600, flush_records=10**9)
    results = []
    try:
        for batch in batches:
            per_s, cpu_us = [], []
            for _ in range(rounds):
                for i in range(batch):
                    ledger.append(_record(i))
                cpu, started = time.process_time(), time.perf_counter()
                assert ledger.flush(timeout=300)
                elapsed = time.perf_counter() - started
                per_s.append(batch / elapsed)
                cpu_us.append((time.process_time() - cpu) / batch * 1e6)
            results.append({"batch": batch, "records_per_s": per_s, "cpu_us_per_record": cpu_us})
    finally:
        ledger.close()
    return results


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    append = result["append"]
    names = ["build_us", "append_us", "build_and_append_us", "list_append_us"]
    labels = ["build", "Ledger.append", "build + append", "list.append"]
    medians = [statistics.median(append[n]) for n in names]
    left.bar(labels, medians, color=["tab:gray", "tab:blue", "tab:purple", "tab:green"])
    for x, n in enumerate(names):
        left.plot([x] * len(append[n]), append[n], "k.", alpha=0.5)
    left.set(title=f"request path: CPU µs per record (median; dots: {len(append['append_us'])} rounds)", ylabel="µs")
    flush = result["flush"]
    batches = [f["batch"] for f in flush]
    right.plot(batches, [statistics.median(f["records_per_s"]) for f in flush], "o-", label="records/s (median)")
    right.set(title="one flush (one transaction, WAL)", xscale="log", xlabel="records buffered", ylabel="records/s")
    right.set_ylim(bottom=0)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(result: dict[str, Any]) -> str:
    append = result["append"]
    lines = [
        f"append ({append['records_per_round']} records x {len(append['append_us'])} rounds, flusher running):",
        "  CPU µs per record    median    min    max",
    ]
    for name, label in (
        ("build_us", "build UsageRecord"),
        ("append_us", "Ledger.append"),
        ("build_and_append_us", "build + append"),
        ("list_append_us", "list.append"),
    ):
        values = append[name]
        lines.append(f"  {label:<18} {statistics.median(values):7.3f} {min(values):6.3f} {max(values):6.3f}")
    lines += ["flush (one transaction):", "  records   records/s   CPU µs/record"]
    for f in result["flush"]:
        rate, cpu = statistics.median(f["records_per_s"]), statistics.median(f["cpu_us_per_record"])
        lines.append(f"  {f['batch']:>7}   {rate:>9,.0f}   {cpu:>13.2f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.ledger", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000, help="records appended per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=positive_ints, default=[100, 1000, 10000], help="records per flush")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        append = measure_append(Path(tmp) / "append.sqlite", args.records, args.rounds)
        flush = measure_flush(Path(tmp) / "flush.sqlite", args.batches, args.rounds)
    _, wrote = save_results(args, "ledger", {"append": append, "flush": flush}, started, plot, table)
    print(wrote)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
