"""Encoder models on Triton (contract: :mod:`gateway.engine.encoder`): token ids in, one vector
(embed) or one logit (score) per input out.

A request of many inputs is sorted by length (little padding), split into batches of the model's
``max_batch_size`` (or ``max_batch``), and at most :data:`BATCHES_IN_FLIGHT` of its batches are sent
at a time: enough to keep a dynamic batcher full, few enough that a short request arriving meanwhile
queues behind two batches, not behind the whole of a big request. Each batch holds an admission slot
of the model until Triton has answered it (even when the client has gone). Results come back in the
caller's order.
"""

from __future__ import annotations

import asyncio

import numpy as np
from numpy.typing import NDArray

from gateway.auth.keys import Principal
from gateway.core.job import Job, counted
from gateway.core.models import ServedModel
from gateway.core.types import RequestStats
from gateway.engine.encoder import EncoderContract
from gateway.errors import ContextLengthExceeded, InvalidRequest, UpstreamError
from gateway.limits.ratelimit import RateLimiter

Encoded = tuple[list[int], list[int]]  # token ids, token type ids
BATCHES_IN_FLIGHT = 2  # per request
# (model id, id of the config object its upstream cached) -> contract: parsed once per upstream
_CONTRACTS: dict[tuple[str, int], EncoderContract] = {}


async def encoder_contract(model: ServedModel) -> EncoderContract:
    config = await model.upstreams.model_config()
    key = (model.id, id(config))
    contract = _CONTRACTS.get(key)
    if contract is None:
        contract = _CONTRACTS[key] = EncoderContract.from_config(config, model.config.task, model.config.max_batch)
    return contract


def fit(rows: list[Encoded], limit: int, frame: tuple[int, int], truncate: int | None, param: str) -> list[Encoded]:
    """Each row within the model's context: a 400 naming the first input that is too long, or, with
    ``truncate`` (vLLM's ``truncate_prompt_tokens``), its body cut to fit, special tokens kept."""
    cap = min(limit, truncate) if truncate is not None else limit
    head, tail = frame
    out: list[Encoded] = []
    for index, (ids, types) in enumerate(rows):
        if len(ids) <= cap:
            out.append((ids, types))
            continue
        if truncate is None:
            raise ContextLengthExceeded(
                f"{param}[{index}] is {len(ids)} tokens; this model's maximum context length is {limit} tokens"
                " (set truncate_prompt_tokens to truncate inputs instead)",
                param=param,
            )
        keep = max(cap - tail, head)
        out.append((ids[:keep] + ids[len(ids) - tail :], types[:keep] + types[len(types) - tail :]))
    return out


def _pool(hidden: NDArray[np.float32], mask: NDArray[np.int64], pooling: str) -> NDArray[np.float32]:
    if pooling == "cls":
        first: NDArray[np.float32] = hidden[:, 0, :]
        return first
    weights = mask[:, :, None].astype(np.float32)
    summed: NDArray[np.float32] = (hidden * weights).sum(axis=1)
    mean: NDArray[np.float32] = summed / np.maximum(weights.sum(axis=1), 1.0)
    return mean


def normalize(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: NDArray[np.float32] = (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out


async def run_encoder(
    model: ServedModel, contract: EncoderContract, rows: list[Encoded], request_id: str, stats: RequestStats
) -> NDArray[np.float32]:
    """Vectors (embed: [n, dim], normalised) or logits (score: [n]) of ``rows``, in their order."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    batches = [order[at : at + contract.max_batch] for at in range(0, len(order), contract.max_batch)]
    pad = model.tokenizer.pad_token_id or 0
    timeout_s = model.config.infer_timeout
    turns = asyncio.Semaphore(BATCHES_IN_FLIGHT)

    failed = asyncio.Event()

    async def one(k: int, batch: list[int]) -> NDArray[np.float32]:
        async with turns:
            if failed.is_set():  # another batch failed: the request has, send nothing more
                raise asyncio.CancelledError
            try:
                return await _send(k, batch)
            except BaseException:
                failed.set()
                raise

    async def _send(k: int, batch: list[int]) -> NDArray[np.float32]:  # the semaphore only bounds waiting
        width = max(len(rows[i][0]) for i in batch)
        ids = np.full((len(batch), width), pad, dtype=contract.id_type)
        mask = np.zeros((len(batch), width), dtype=contract.id_type)
        types = np.zeros((len(batch), width), dtype=contract.id_type)
        for r, i in enumerate(batch):
            row_ids, row_types = rows[i]
            ids[r, : len(row_ids)] = row_ids
            mask[r, : len(row_ids)] = 1
            types[r, : len(row_types)] = row_types
        given = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        tensors = {name: given[name] for name in contract.inputs}
        slot = model.admission.slot(stats)
        call = model.upstreams.infer(f"{request_id}-{k}", tensors, (contract.output,), timeout_s, slot)
        out = await counted(model.id, call)
        return _read(out[contract.output], len(batch), mask, model.config.pooling, contract.output)

    tasks = [asyncio.ensure_future(one(k, batch)) for k, batch in enumerate(batches)]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # a failed request sends no more batches (those sent run to their end)
            task.cancel()
        raise
    first = results[0]
    merged = np.empty((len(rows), *first.shape[1:]), dtype=np.float32)
    for batch, result in zip(batches, results, strict=True):
        merged[batch] = result
    return merged


def _read(
    array: NDArray[np.generic], n: int, mask: NDArray[np.int64], pooling: str, output: str
) -> NDArray[np.float32]:
    values = np.asarray(array, dtype=np.float32)
    if output == "logits":
        if values.size != n:
            raise UpstreamError(f"the model returned {values.size} logits for {n} inputs")
        return values.reshape(n)
    if output == "last_hidden_state":
        if values.ndim != 3 or values.shape[0] != n:
            raise UpstreamError(f"last_hidden_state of shape {list(values.shape)} for {n} inputs")
        values = _pool(values, mask, pooling)
    if values.ndim != 2 or values.shape[0] != n:
        raise UpstreamError(f"embeddings of shape {list(values.shape)} for {n} inputs")
    return normalize(values)


def check_ids(rows: list[list[int]], vocab: int, param: str) -> None:
    for index, ids in enumerate(rows):
        if not ids:
            raise InvalidRequest(f"{param}[{index}] must not be empty", param=param)
        if max(ids) >= vocab:  # builtins over a list of ints: C speed; the wire checked they are >= 0
            raise InvalidRequest(f"{param}[{index}]: token ids must be in [0, {vocab})", param=param)


async def encode(
    job: Job,
    principal: Principal,
    limiter: RateLimiter | None,
    contract: EncoderContract,
    rows: list[Encoded],
) -> NDArray[np.float32]:
    """Run ``rows`` (already fitted to the context) through the job's model: admitted by the limits (the
    exact token count is reserved), each batch in an upstream slot, settled when done."""
    job.stats.prompt_tokens = sum(len(ids) for ids, _ in rows)
    if limiter is not None:
        job.grant = await limiter.acquire(principal, job.model.id, job.stats.prompt_tokens)
    job.dispatched()
    try:
        return await run_encoder(job.model, contract, rows, job.request_id, job.stats)
    finally:
        await job.settle()
