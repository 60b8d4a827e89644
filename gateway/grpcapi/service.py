"""The LLMGateway gRPC service: thin adapters over the same core as REST (the plan and generate
path; the encoder jobs of embeddings, rerank and score; a transcription's run)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextvars import ContextVar
from typing import Any

from gateway.auth.keys import KeyStore, Principal
from gateway.core.embed import EMBED, embeddings
from gateway.core.generate import collect, generate
from gateway.core.halt import guarded
from gateway.core.job import Job, start_job
from gateway.core.lifecycle import LIFECYCLE
from gateway.core.models import TASKS, ModelRegistry
from gateway.core.plan import Plan, plan_chat, plan_completion
from gateway.core.rerank import RERANK, pair_scores, ranked, score_pairs
from gateway.core.transcription import TRANSCRIBE, transcribing
from gateway.core.types import Usage
from gateway.errors import InvalidRequest
from gateway.grpcapi import convert
from gateway.grpcapi.errors import streaming, unary
from gateway.grpcapi.stubs import pb, pb_grpc
from gateway.limits.ratelimit import RateLimiter
from gateway.usage.account import account
from gateway.usage.ledger import Ledger

Context = Any  # grpc.aio.ServicerContext

# the caller and the work of the call being served, for its ledger record: grpc.aio serves each call in
# a task of its own, so these are the call's own
_CALLER: ContextVar[Principal | None] = ContextVar("grpc_caller", default=None)
_WORK: ContextVar[Plan | Job | None] = ContextVar("grpc_work", default=None)


class LLMGatewayService(pb_grpc.LLMGatewayServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        keys: KeyStore,
        limiter: RateLimiter,
        *,
        max_audio_bytes: int,
        max_audio_seconds: float,
        ledger: Ledger | None = None,
    ) -> None:
        self._registry = registry
        self._ledger = ledger
        self._keys = keys
        self._limiter = limiter
        self._max_audio_bytes = max_audio_bytes
        self._max_audio_seconds = max_audio_seconds

    def _principal(self, context: Context) -> Principal:
        """The caller, from ``authorization: Bearer ...`` metadata (the REST API's keys)."""
        LIFECYCLE.accept()
        metadata = dict(context.invocation_metadata() or ())
        principal = self._keys.authenticate(metadata.get("authorization"))
        _CALLER.set(principal)
        return principal

    def account(self, method: str, status: int) -> None:
        """The ledger record of a finished call of an authenticated caller (the translation point in
        :mod:`gateway.grpcapi.errors` calls this with the HTTP status of the call's outcome)."""
        principal, work = _CALLER.get(), _WORK.get()
        if self._ledger is not None and principal is not None:
            account(self._ledger, principal, method, status, work.request_id if work else "", work)

    def _job(self, principal: Principal, model_id: str, tasks: tuple[str, ...], started: float, prefix: str) -> Job:
        job = start_job(principal, self._registry, model_id, tasks, started, prefix)
        _WORK.set(job)
        return job

    async def _chat_plan(self, request: pb.ChatCompletionRequest, context: Context) -> Plan:
        plan = await plan_chat(
            self._principal(context),
            self._registry,
            request.model,
            convert.messages(request.messages),
            convert.choices_count(request.n),
            convert.sampling_input(request.sampling),
            limiter=self._limiter,
            shape=convert.output_shape(request),
        )
        _WORK.set(plan)
        return plan

    async def _completion_plan(self, request: pb.CompletionRequest, context: Context) -> Plan:
        plan = await plan_completion(
            self._principal(context),
            self._registry,
            request.model,
            convert.prompt(request),
            convert.choices_count(request.n),
            request.echo,
            convert.sampling_input(request.sampling),
            limiter=self._limiter,
            response_format=convert.response_format(request.response_format),
        )
        _WORK.set(plan)
        return plan

    # Generation runs under guarded(): a cancelled call (the client went away, its deadline passed)
    # halts the request's models in-band instead of cancelling a task that reads from Triton.

    @unary
    async def ChatCompletion(self, request: pb.ChatCompletionRequest, context: Context) -> pb.CompletionResponse:
        plan = await self._chat_plan(request, context)
        return await guarded(plan.halt, _whole(plan))

    @unary
    async def Completion(self, request: pb.CompletionRequest, context: Context) -> pb.CompletionResponse:
        plan = await self._completion_plan(request, context)
        return await guarded(plan.halt, _whole(plan))

    @streaming
    async def StreamChatCompletion(self, request: pb.ChatCompletionRequest, context: Context) -> None:
        plan = await self._chat_plan(request, context)
        await guarded(plan.halt, _write(plan, context))

    @streaming
    async def StreamCompletion(self, request: pb.CompletionRequest, context: Context) -> None:
        plan = await self._completion_plan(request, context)
        await guarded(plan.halt, _write(plan, context))

    @unary
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[
                pb.Model(
                    id=m.id,
                    created=m.created,
                    owned_by=m.config.owned_by,
                    context_length=m.context_length,
                    max_output_tokens=m.config.max_output_tokens,
                    task=TASKS[m.config.task].kind,
                    capabilities=TASKS[m.config.task].apis,
                )
                for m in self._registry.visible(self._principal(context))
            ]
        )

    @unary
    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        tokenizer = self._registry.get(request.model, self._principal(context)).tokenizer
        kind = request.WhichOneof("input")
        if kind == "text":
            ids = await tokenizer.encode_async(request.text)
        elif kind == "messages":
            ids = await tokenizer.encode_chat(convert.messages(request.messages.messages))
        else:
            raise InvalidRequest("Missing required parameter: 'text' or 'messages'", param="input")
        return pb.TokenizeResponse(ids=ids, count=len(ids))

    @unary
    async def Detokenize(self, request: pb.DetokenizeRequest, context: Context) -> pb.DetokenizeResponse:
        tokenizer = self._registry.get(request.model, self._principal(context)).tokenizer
        vocab = tokenizer.vocab_size
        if any(i >= vocab for i in request.ids):
            raise InvalidRequest(f"token ids must be in [0, {vocab})", param="ids")
        return pb.DetokenizeResponse(text=tokenizer.decode(list(request.ids)))

    # Encoders and transcription: the same core calls as REST's handlers, with the request checks
    # REST's wire models make done on the protobuf message (convert).

    @unary
    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        started = time.monotonic()
        principal = self._principal(context)
        inputs = convert.embed_inputs(request)
        dimensions = convert.at_least_one(request, "dimensions")
        truncate = convert.at_least_one(request, "truncate_prompt_tokens")
        job = self._job(principal, request.model, EMBED, started, "embd")
        vectors = await embeddings(job, principal, self._limiter, inputs, dimensions, truncate)
        return pb.EmbedResponse(
            id=job.request_id,
            model=job.model.id,
            embeddings=convert.embeddings(vectors),
            usage=convert.encoder_usage(job.stats.prompt_tokens),
        )

    @unary
    async def Rerank(self, request: pb.RerankRequest, context: Context) -> pb.RerankResponse:
        started = time.monotonic()
        principal = self._principal(context)
        documents = convert.rerank_documents(request)
        top_n = convert.at_least_one(request, "top_n")
        with_documents = request.return_documents if request.HasField("return_documents") else True  # as REST
        job = self._job(principal, request.model, RERANK, started, "rerank")
        scores = await pair_scores(job, principal, self._limiter, [(request.query, d) for d in documents])
        return pb.RerankResponse(
            id=job.request_id,
            model=job.model.id,
            results=[
                pb.RerankResult(
                    index=i,
                    relevance_score=float(scores[i]),
                    document=documents[i] if with_documents else None,
                )
                for i in ranked(scores, top_n)
            ],
            usage=convert.encoder_usage(job.stats.prompt_tokens),
        )

    @unary
    async def Score(self, request: pb.ScoreRequest, context: Context) -> pb.ScoreResponse:
        started = time.monotonic()
        principal = self._principal(context)
        pairs = score_pairs(*convert.score_texts(request))
        job = self._job(principal, request.model, RERANK, started, "score")
        scores = await pair_scores(job, principal, self._limiter, pairs)
        return pb.ScoreResponse(
            id=job.request_id,
            model=job.model.id,
            scores=scores.tolist(),
            usage=convert.encoder_usage(job.stats.prompt_tokens),
        )

    @streaming
    async def Transcribe(self, request: pb.TranscribeRequest, context: Context) -> None:
        started = time.monotonic()
        principal = self._principal(context)
        audio = convert.audio(request, self._max_audio_bytes)
        options = convert.transcribe_options(request)
        job = self._job(principal, request.model, TRANSCRIBE, started, "transcr")
        filename = request.filename or None
        async with transcribing(
            job, principal, self._limiter, audio, filename, options, max_seconds=self._max_audio_seconds
        ) as run:
            segments = aiter(run)
            assert isinstance(segments, AsyncGenerator)
            async with contextlib.aclosing(segments):  # a cancelled call stops at the window in flight
                async for segment in segments:
                    await context.write(convert.segment_event(segment))
            transcription = await run.result()
        await context.write(convert.done_event(transcription))


async def _whole(plan: Plan) -> pb.CompletionResponse:
    created = int(time.time())
    outputs, usage = await collect(plan)
    echo = plan.echo
    piece = plan.model.tokenizer.piece
    return pb.CompletionResponse(
        id=plan.request_id,
        model=plan.model.id,
        created=created,
        choices=[
            pb.Choice(
                index=i,
                text=(echo[i] if echo else "") + output.text,
                finish_reason=convert.FINISH[output.finish_reason],
                tool_calls=convert.tool_calls(output.tool_calls),
                logprobs=convert.logprobs(output.logprobs, piece),
            )
            for i, output in enumerate(outputs)
        ],
        usage=convert.usage(usage),
    )


async def _write(plan: Plan, context: Context) -> None:
    async for chunk in _stream(plan):
        await context.write(chunk)


async def _stream(plan: Plan) -> AsyncIterator[pb.CompletionChunk]:
    request_id, model, created = plan.request_id, plan.model.id, int(time.time())
    usage = Usage(prompt_tokens=plan.prompt_tokens)
    if plan.echo:
        for i, text in enumerate(plan.echo):
            yield pb.CompletionChunk(id=request_id, model=model, created=created, index=i, text=text)
    deltas = generate(plan)
    try:
        async for delta in deltas:
            chunk = pb.CompletionChunk(id=request_id, model=model, created=created, index=delta.index, text=delta.text)
            if delta.tool_calls:
                chunk.tool_calls.extend(
                    pb.ToolCallDelta(index=c.index, id=c.id or "", name=c.name or "", arguments=c.arguments)
                    for c in delta.tool_calls
                )
            if delta.logprobs:
                chunk.logprobs.extend(convert.logprobs(delta.logprobs, plan.model.tokenizer.piece))
            if delta.finish_reason is not None:
                usage.completion_tokens += delta.completion_tokens
                chunk.finish_reason = convert.FINISH[delta.finish_reason]
            yield chunk
    finally:
        await deltas.aclose()  # a cancelled call or a passed deadline cancels the Triton requests
    yield pb.CompletionChunk(id=request_id, model=model, created=created, usage=convert.usage(usage))
