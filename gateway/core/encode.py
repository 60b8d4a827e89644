"""Encoder models on Triton: token ids in, one vector (embed) or one logit (score) per input out.

The tensor contract (documented for deployments in model_repository/minilm/config.pbtxt):

- in: ``input_ids`` and, when the model declares them, ``attention_mask`` and ``token_type_ids``,
  INT64 (or INT32) ``[batch, tokens]``, right-padded with the tokenizer's pad id;
- out, embed: ``embeddings`` FP32 ``[batch, dim]`` (pooled in the model), or ``last_hidden_state``
  FP32 ``[batch, tokens, dim]`` (a plain encoder export: the gateway pools it as ``pooling`` says);
  either way the gateway L2-normalises;
- out, score: ``logits`` FP32 ``[batch, 1]`` (or ``[batch]``), one per (query, document) pair.

A request of many inputs is sorted by length (little padding), split into batches of the model's
``max_batch_size`` (or ``max_batch``), and at most :data:`BATCHES_IN_FLIGHT` of its batches are sent
at a time: enough to keep a dynamic batcher full, few enough that a short request arriving meanwhile
queues behind two batches, not behind the whole of a big request. Results come back in the caller's
order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2

from gateway.auth.keys import Principal
from gateway.core.models import ModelRegistry, ServedModel
from gateway.core.plan import new_id
from gateway.core.types import RequestStats
from gateway.engine.contract import kserve_datatype
from gateway.errors import ContextLengthExceeded, InvalidRequest, UpstreamError
from gateway.limits.ratelimit import Grant, RateLimiter
from gateway.observability.metrics import OVERHEAD, TOKENS

Encoded = tuple[list[int], list[int]]  # token ids, token type ids
BATCHES_IN_FLIGHT = 2  # per request
_ID_TYPES: dict[str, type[np.signedinteger[Any]]] = {"INT64": np.int64, "INT32": np.int32}
_OUTPUTS = {"embed": ("embeddings", "last_hidden_state"), "score": ("logits",)}


@dataclass(frozen=True, slots=True)
class EncoderContract:
    """What one encoder model takes and returns, read from its config."""

    inputs: tuple[str, ...]  # of input_ids, attention_mask, token_type_ids: those the model declares
    id_type: type[np.signedinteger[Any]]  # np.int64 or np.int32, as the model declares input_ids
    output: str
    max_batch: int
    dim: int | None  # the embedding width, when the config states it

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig, task: str, max_batch: int | None) -> EncoderContract:
        declared = {i.name: i for i in config.input}
        if "input_ids" not in declared:
            raise UpstreamError(f"model {config.name!r} has no input_ids input: not an encoder")
        id_type = _ID_TYPES.get(kserve_datatype(declared["input_ids"].data_type))
        if id_type is None:
            raise UpstreamError(f"model {config.name!r}: input_ids must be INT64 or INT32")
        outputs = {o.name: o for o in config.output}
        output = next((name for name in _OUTPUTS[task] if name in outputs), None)
        if output is None:
            raise UpstreamError(f"model {config.name!r} returns none of {', '.join(_OUTPUTS[task])}")
        if config.max_batch_size < 1:
            raise UpstreamError(f"model {config.name!r} must batch (max_batch_size > 0) to serve as an encoder")
        dims = list(outputs[output].dims)
        dim = dims[-1] if output != "logits" and dims and dims[-1] > 0 else None
        return cls(
            inputs=tuple(n for n in ("input_ids", "attention_mask", "token_type_ids") if n in declared),
            id_type=id_type,
            output=output,
            max_batch=min(max_batch or config.max_batch_size, config.max_batch_size),
            dim=dim,
        )


_CONTRACTS: dict[str, tuple[model_config_pb2.ModelConfig, EncoderContract]] = {}


async def encoder_contract(model: ServedModel) -> EncoderContract:
    config = await model.upstreams.model_config()
    cached = _CONTRACTS.get(model.id)
    if cached is not None and cached[0] is config:
        return cached[1]
    contract = EncoderContract.from_config(config, model.config.task, model.config.max_batch)
    _CONTRACTS[model.id] = (config, contract)
    return contract


@dataclass(slots=True)
class EncodeJob:
    """One request to an encoder model, for the access log, metrics and limits (as a generation's Plan)."""

    model: ServedModel
    request_id: str
    project: str
    stats: RequestStats
    grant: Grant | None = None
    done: bool = field(default=False)

    async def settle(self) -> None:
        """Count the tokens and settle the limits once the work has ended (or failed)."""
        if self.done:
            return
        self.done = True
        if self.grant is not None:
            await self.grant.release(self.stats.prompt_tokens)
        TOKENS.labels(self.model.id, self.project, "input_tokens").inc(self.stats.prompt_tokens)

    def dispatched(self) -> None:
        self.stats.dispatched = time.monotonic()
        OVERHEAD.labels(self.model.id).observe(self.stats.dispatched - self.stats.started)


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
    model: ServedModel, contract: EncoderContract, rows: list[Encoded], request_id: str
) -> NDArray[np.float32]:
    """Vectors (embed: [n, dim], normalised) or logits (score: [n]) of ``rows``, in their order."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    batches = [order[at : at + contract.max_batch] for at in range(0, len(order), contract.max_batch)]
    pad = model.tokenizer.pad_token_id or 0
    deadline = model.config.first_token_timeout
    turns = asyncio.Semaphore(BATCHES_IN_FLIGHT)

    async def one(k: int, batch: list[int]) -> NDArray[np.float32]:
        async with turns:
            return await _send(k, batch)

    async def _send(k: int, batch: list[int]) -> NDArray[np.float32]:
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
        out = await model.upstreams.infer(f"{request_id}-{k}", tensors, (contract.output,), deadline)
        return _read(out[contract.output], len(batch), mask, model.config.pooling, contract.output)

    results = await asyncio.gather(*(one(k, batch) for k, batch in enumerate(batches)))
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
        if any(not 0 <= t < vocab for t in ids):
            raise InvalidRequest(f"{param}[{index}]: token ids must be in [0, {vocab})", param=param)


def start_job(
    principal: Principal, registry: ModelRegistry, model_id: str, tasks: tuple[str, ...], started: float, prefix: str
) -> EncodeJob:
    """The job of a request to an encoder (or transcription) model: the model checked for this caller
    and this API; ``prefix`` starts its id."""
    model = registry.get(model_id, principal, tasks)
    return EncodeJob(model, new_id(prefix), principal.project, RequestStats(started))


async def encode(
    job: EncodeJob,
    principal: Principal,
    limiter: RateLimiter | None,
    rows: list[Encoded],
) -> NDArray[np.float32]:
    """Run ``rows`` (already fitted to the context) through the job's model: admitted by the limits (the
    exact token count is reserved), queued for an upstream slot, settled when done."""
    job.stats.prompt_tokens = sum(len(ids) for ids, _ in rows)
    contract = await encoder_contract(job.model)
    if limiter is not None:
        job.grant = await limiter.acquire(principal, job.model.id, job.stats.prompt_tokens)
    job.dispatched()
    try:
        async with job.model.admission.slot(job.stats):
            return await run_encoder(job.model, contract, rows, job.request_id)
    finally:
        await job.settle()
