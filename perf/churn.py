"""Churn: sustained mixed load against the gateway, as a gate for leaks, hangs and Triton crashes.

A closed loop of ``--concurrency`` workers sends requests back to back for ``--duration`` seconds,
each one of a kind drawn from ``--mix``: 1-token streams, long streams, stop-string streams, n=2,
non-streaming requests and streams the client drops after 1-3 SSE events, mostly on the
``synthetic`` model and a small share on the real CPU model; the same over the Responses API (whole,
streamed, dropped after 1-3 events, and a required function call on the real model); and a small
share of the other APIs: embeddings (1-64 texts, rarely 300), rerank (5-20 documents), large
embeddings requests the client drops right after sending, invalid embeddings requests (each must get
a 400) and transcriptions of a short wav spoken by ``espeak-ng`` at start-up. Every outcome is
classified (see ``perf/churn_outcome.py``). Every few seconds the gateway's RSS and open fds and the
tritonserver pid are sampled; at the end /health, /ready and a plain request per model are checked.

Exits 1 when Triton restarted or went away, or any request failed, hung or broke unexpectedly.

    python -m perf.churn --launch [--duration 600] [--concurrency 16] [--mix one_token=20,...]
    python -m perf.churn --url http://HOST:8080 [--gateway-pid PID] [--gateway-log FILE]

Writes perf/results/churn_<time>.json (every figure), .png (over time) and .csv (every request);
with --launch also the gateway's and Triton's logs beside them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config import EMBEDDING_MODEL_ID, REPO_ROOT, TRANSCRIPTION_MODEL_ID
from perf.churn_load import churn
from perf.churn_mix import DEFAULT_MIX, KINDS, TRANSCRIPTIONS, parse_mix
from perf.churn_report import format_summary, write_outputs
from perf.churn_sampler import Sampler, alive, listener_pid
from perf.churn_summary import build_result
from perf.stack import launch_stack, run_loop


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perf.churn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--launch", action="store_true", help="start `python -m gateway serve` on free ports")
    where.add_argument("--url", default="http://127.0.0.1:8080", help="a running gateway (default %(default)s)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop workers (default %(default)s)")
    parser.add_argument(
        "--mix",
        default=DEFAULT_MIX,
        help=f"KIND=WEIGHT,... over {', '.join(KINDS)}; kinds left out get no traffic (default %(default)s)",
    )
    parser.add_argument("--synthetic-model", default="synthetic", help="model id of the synthetic upstream")
    parser.add_argument("--real-model", default="smollm2-135m-instruct", help="model id of the real CPU model")
    parser.add_argument("--real-max-tokens", type=int, default=8, help="max_tokens of real_stream/real_nonstream")
    parser.add_argument("--embed-model", default=EMBEDDING_MODEL_ID, help="model id of the embed* and rerank kinds")
    parser.add_argument("--transcribe-model", default=TRANSCRIPTION_MODEL_ID, help="model id of the transcribe kind")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="per request; past it: 'hung'")
    parser.add_argument("--sample-interval", type=float, default=2.0, help="seconds between RSS/fd/pid samples")
    parser.add_argument("--progress-interval", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--error-backoff", type=float, default=0.05, help="a worker's pause after a failed request (s)")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="OUTCOME",
        help="outcome prefixes that do not fail the gate, e.g. http_503:server_overloaded (repeatable, or commas)",
    )
    parser.add_argument("--gateway-pid", type=int, default=0, help="with --url (default: who listens on its port)")
    parser.add_argument("--gateway-log", type=Path, default=None, help="with --url: the gateway's log, to scan")
    parser.add_argument(
        "--deployment-cycles",
        action="store_true",
        help="one more task: create a deployment of synthetic, stream from it, delete it mid-stream, check, "
        "again (perf/churn_deployments.py; the operator API: with keys, --api-key must be an admin's)",
    )
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""), help="sent as a Bearer token")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    try:
        args.weights = parse_mix(args.mix)
    except ValueError as exc:
        parser.error(str(exc))
    args.allow = [a.strip() for item in args.allow for a in item.split(",") if a.strip()]
    for name in ("duration", "request_timeout", "sample_interval", "progress_interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    if args.real_max_tokens < 1:
        parser.error("--real-max-tokens must be >= 1")
    if args.error_backoff < 0:
        parser.error("--error-backoff must be >= 0")
    return args


SPEECH = "The quick brown fox jumps over the lazy dog."


def make_speech(directory: Path) -> bytes:
    """A short wav of :data:`SPEECH` spoken by espeak-ng, for the transcribe kind."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit(
            "[churn] the transcribe kind needs espeak-ng to make its speech: install it "
            "(apt-get install -y espeak-ng, or `make debs`), or leave transcribe out of --mix"
        )
    path = directory / "speech.wav"
    done = subprocess.run([espeak, "-w", str(path), SPEECH], capture_output=True, check=False)
    if done.returncode != 0 or not path.exists() or path.stat().st_size < 1000:
        raise SystemExit(f"[churn] espeak-ng failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return path.read_bytes()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base = args.out / f"churn_{stamp}"
    args.out.mkdir(parents=True, exist_ok=True)
    stack = None
    cache: str | None = None
    extra: list[Path] = []
    speech = None
    if any(KINDS[name].api == TRANSCRIPTIONS for name in args.weights):  # before the stack: fail fast
        with tempfile.TemporaryDirectory(prefix="churn-speech-") as tmp:
            speech = make_speech(Path(tmp))
    try:
        if args.launch:
            if "GATEWAY_CACHE_DIR" not in os.environ:  # its own Triton log and backend dir, beside other stacks
                cache = tempfile.mkdtemp(prefix="churn-cache-")
                os.environ["GATEWAY_CACHE_DIR"] = cache
                # and its own data dir: no deployment left in another stack's store is resumed here
                os.environ.setdefault("GATEWAY_DATA_DIR", str(Path(cache) / "data"))
            log = Path(f"{base}_gateway.log")
            stack = launch_stack(log=log)
            url, pid, extra = stack.gateway, stack.pid, [log]
            process = stack.process

            def proc_alive() -> bool:
                return process.poll() is None

        else:
            url = args.url.rstrip("/")
            log = args.gateway_log
            pid = args.gateway_pid or listener_pid(urlsplit(url).port or 80) or 0
            if not pid:
                print("[churn] gateway pid unknown (pass --gateway-pid): no RSS/fd samples", file=sys.stderr)

            def proc_alive() -> bool:
                return not pid or alive(pid)

        sampler = Sampler(pid, log)
        run = run_loop(churn(args, url, sampler, proc_alive, speech))
    finally:
        if stack is not None:
            stack.stop()
        if cache is not None:
            triton_log = Path(cache) / "tritonserver.log"
            if triton_log.exists():
                shutil.copy(triton_log, f"{base}_triton.log")
                extra.append(Path(f"{base}_triton.log"))
            shutil.rmtree(cache, ignore_errors=True)
    result = build_result(args, run, sampler.samples)
    paths = write_outputs(base, result, run["records"])
    print(format_summary(result))
    print("\nwrote " + ", ".join(str(p) for p in [*paths, *extra]))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
