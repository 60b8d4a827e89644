"""Synthetic `tensorrt_llm`-contract model: a timed, deterministic token stream, no compute.

One scheduler thread serves every stream: a heap of (due time, stream), so thousands of
concurrent streams cost one thread and a sleep until the next due token. Tokens cycle through a
fixed list of ordinary word ids, so the gateway detokenizes realistic text. Every stream is
exactly ``request_output_len`` tokens long (as with ``ignore_eos``): output lengths are exact,
unless it ends earlier on one of its ``stop_words_list`` sequences, as TensorRT-LLM does (the stop
sequence is the last thing it sends), or is stopped: a request with the same id and ``stop`` true
ends it at its next token (TensorRT-LLM's in-band stop), as does a cancellation. The last token
goes out with the final flag in one response, as TensorRT-LLM's backend sends it (a stopped stream
ends with an empty final response).

Timing, from the config's parameters (milliseconds, as text):
- ``ttft_ms`` (20) + ``ttft_per_stream_ms`` (0) x N: a request's first token, N being the streams
  already running when it arrives (prefill waiting behind a busy engine; with the default 0, TTFT
  is constant);
- ``token_delay_ms`` (5): every further token after the one before;
- ``cancel_check_ms`` (20): how often a stream asks whether its call was cancelled;
- ``prefill_us_per_token`` (0: off): a prefix cache, as TensorRT-LLM's KV-cache reuse: TTFT adds this
  many microseconds per prompt token that is not in the cache. The cache holds the chained hashes of
  whole prompt blocks of ``prefix_block_tokens`` (64) tokens, an LRU of ``prefix_cache_blocks`` (4096)
  blocks per server; a prompt's cached part is its longest run of cached blocks from the start, and
  every block of a prompt is cached once it arrives (its head the most recent: tails are evicted
  first, as from a radix tree's leaves). Unloading the model logs the cache's totals
  (``prefix cache: N requests, C of T prompt tokens cached``: perf/prefix.py reads it).
The repository's config keeps the cheap defaults. perf/capacity.py writes one that plays
TensorRT-LLM serving an 8B model on an H100: 10 ms + 1.1 ms per stream (~120 ms at 100 streams),
10 ms per token (100 tokens/s per stream).
"""

from __future__ import annotations

import heapq
import json
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# " the quick brown fox jumps over the lazy dog ." in SmolLM2's vocabulary (any ids in range work)
_WORDS = [260, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30]
_FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class _Stream:
    __slots__ = ("last_check", "left", "position", "request_id", "sender", "stops", "streaming", "tokens")

    def __init__(self, request_id: str, sender: Any, count: int, streaming: bool, stops: list[list[int]]) -> None:
        self.request_id = request_id
        self.sender = sender
        self.left = count
        self.position = 0
        self.streaming = streaming
        self.tokens: list[int] = []
        self.last_check = 0.0
        self.stops = stops

    def stopped(self) -> bool:
        """The tokens so far end with a stop sequence (the whole output is needed only then)."""
        n = self.position
        return any(n >= len(s) and all(_WORDS[(n - len(s) + i) % len(_WORDS)] == t for i, t in enumerate(s))
                   for s in self.stops)  # fmt: skip


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self._ttft = float(params.get("ttft_ms", "20")) / 1000
        self._ttft_per_stream = float(params.get("ttft_per_stream_ms", "0")) / 1000
        self._delay = float(params.get("token_delay_ms", "5")) / 1000
        self._cancel_check = float(params.get("cancel_check_ms", "20")) / 1000
        prefill = float(params.get("prefill_us_per_token", "0")) / 1e6
        self._cache = (
            _PrefixCache(int(params.get("prefix_block_tokens", "64")), int(params.get("prefix_cache_blocks", "4096")))
            if prefill > 0
            else None
        )
        self._prefill = prefill
        self._heap: list[tuple[float, int, _Stream]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._live: set[str] = set()  # ids of the streams running, and those of them asked to stop
        self._running = 0  # streams running (ids may repeat or be empty: not len(self._live))
        self._stopped: set[str] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="synthetic", daemon=True)
        self._thread.start()

    def execute(self, requests: list[Any]) -> None:
        now = time.monotonic()
        with self._cond:
            for request in requests:
                sender = request.get_response_sender()
                if _scalar(request, "stop", False):  # stop the running request of this id, if any
                    if request.request_id() in self._live:
                        self._stopped.add(request.request_id())
                    sender.send(flags=_FINAL)
                    continue
                count = int(_scalar(request, "request_output_len", 16))
                if count < 1:
                    sender.send(
                        pb_utils.InferenceResponse(error=pb_utils.TritonError("request_output_len must be at least 1")),
                        flags=_FINAL,
                    )
                    continue
                streaming = bool(_scalar(request, "streaming", False))
                stream = _Stream(request.request_id(), sender, count, streaming, _stop_words(request))
                stream.last_check = now
                ttft = self._ttft + self._ttft_per_stream * self._running
                if self._cache is not None:
                    ttft += self._prefill * self._cache.uncached(_prompt(request))
                self._live.add(stream.request_id)
                self._running += 1
                self._seq += 1
                heapq.heappush(self._heap, (now + ttft, self._seq, stream))
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic())
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                due, seq, stream = heapq.heappop(self._heap)
            if self._step(stream, due):
                with self._cond:
                    heapq.heappush(self._heap, (due + self._delay, seq, stream))

    def _step(self, stream: _Stream, due: float) -> bool:
        """Send one token; True while the stream goes on."""
        if stream.request_id in self._stopped:
            return self._end(stream, "(stop request)")
        if due - stream.last_check >= self._cancel_check:
            stream.last_check = due
            if stream.sender.is_cancelled():
                return self._end(stream, "(call cancelled)")
        token = _WORDS[stream.position % len(_WORDS)]
        stream.position += 1
        stream.left -= 1
        more = stream.left > 0 and not (stream.stops and stream.stopped())
        if stream.streaming:
            if more:
                stream.sender.send(_response([token]))
                return True
            return self._end(stream, None, _response([token]))
        stream.tokens.append(token)
        return more or self._end(stream, None, _response(stream.tokens))

    def _end(self, stream: _Stream, stopped_by: str | None, last: Any = None) -> bool:
        """The final response, carrying the ``last`` tokens as TensorRT-LLM's last response does (or
        nothing: a stopped stream); a line in the log when the request was stopped or cancelled (tests
        rely on it)."""
        with self._cond:
            self._live.discard(stream.request_id)
            self._stopped.discard(stream.request_id)
            self._running -= 1
        if stopped_by is not None:
            done = stream.position
            pb_utils.Logger.log_info(f"request {stream.request_id!r} cancelled after {done} tokens {stopped_by}")
        stream.sender.send(last, flags=_FINAL)
        return False

    def finalize(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=5)
        if self._cache is not None:
            pb_utils.Logger.log_info(self._cache.summary())


def _scalar(request: Any, name: str, default: Any) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


class _PrefixCache:
    """The server's KV-cache blocks, as far as reuse goes: an LRU of chained block hashes."""

    def __init__(self, block_tokens: int, blocks: int) -> None:
        self._block = max(1, block_tokens)
        self._size = max(1, blocks)
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self.requests = self.prompt_tokens = self.cached_tokens = 0

    def summary(self) -> str:
        share = self.cached_tokens / self.prompt_tokens * 100 if self.prompt_tokens else 0.0
        return (
            f"prefix cache: {self.requests} requests, {self.cached_tokens} of {self.prompt_tokens} prompt tokens"
            f" cached ({share:.1f}%)"
        )

    def uncached(self, prompt: list[int]) -> int:
        """The prompt's tokens past its longest cached prefix of whole blocks; its blocks are cached now."""
        b, blocks = self._block, self._blocks
        keys, key, hit, cached = [], 0, True, 0
        for end in range(b, len(prompt) + 1, b):
            key = hash((key, tuple(prompt[end - b : end])))
            keys.append(key)
            if hit and key in blocks:
                cached = end
            else:
                hit = False
        for key in reversed(keys):  # the head last: the most recent, evicted after the tails (as a radix tree)
            blocks[key] = None
            blocks.move_to_end(key)
        while len(blocks) > self._size:
            blocks.popitem(last=False)
        self.requests += 1
        self.prompt_tokens += len(prompt)
        self.cached_tokens += cached
        return len(prompt) - cached


def _prompt(request: Any) -> list[int]:
    tensor = pb_utils.get_input_tensor_by_name(request, "input_ids")
    if tensor is None:
        return []
    ids: list[int] = tensor.as_numpy().reshape(-1).tolist()
    length = pb_utils.get_input_tensor_by_name(request, "input_lengths")
    return ids if length is None else ids[: int(length.as_numpy().reshape(-1)[0])]


def _stop_words(request: Any) -> list[list[int]]:
    """TensorRT-LLM's ``stop_words_list`` [2, L]: ids, then each sequence's end offset (-1 padded)."""
    tensor = pb_utils.get_input_tensor_by_name(request, "stop_words_list")
    if tensor is None:
        return []
    rows = tensor.as_numpy().reshape(2, -1)
    ids, offsets = rows[0].tolist(), rows[1].tolist()
    seqs, start = [], 0
    for end in offsets:
        if end < 0:
            break
        if end > start:
            seqs.append(ids[start:end])
        start = end
    return seqs


def _response(tokens: list[int]) -> Any:
    ids = np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1)
    length = np.asarray([[len(tokens)]], dtype=np.int32)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor("output_ids", ids), pb_utils.Tensor("sequence_length", length)]
    )
