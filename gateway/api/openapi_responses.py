"""JSON Schemas of what the REST API answers, for the OpenAPI document (:mod:`gateway.api.openapi`).

Responses are built as dicts and byte templates, not models (see :mod:`gateway.api.schema`), so their
shapes are written here: the fields each answer always has are required, additional fields allowed (as
OpenAI's own shapes grow). Each schema is a component: ``{"$ref": ref("Usage")}`` points at one.
"""

from __future__ import annotations

from typing import Any

from gateway.batches.catalog import STATUS_TIMES
from gateway.core.types import FinishReason

Schema = dict[str, Any]

REF = "#/components/schemas/{model}"


def ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None, **extra: Any) -> Schema:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}, **extra}


def _const(value: str) -> Schema:
    return {"type": "string", "const": value}


def _array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _events(schema: str, done: bool) -> Schema:
    """One server-sent event whose ``data`` is JSON text of ``schema`` or, after the first byte, of an
    Error (and the ``[DONE]`` marker where ``done``). OpenAPI 3.1 has a media type's schema describe one
    event of a stream; schemathesis checks the JSON inside against ``contentSchema``."""
    data: Schema = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [ref(schema), ref("Error")]},
    }
    if done:
        data = {"anyOf": [{"const": "[DONE]"}, data]}
    return _object({"data": data}, {"event": {"type": "string"}, "id": {"type": "string"}})


def _page(item: str) -> Schema:
    return _object(
        {
            "object": _const("list"),
            "data": _array(ref(item)),
            "first_id": _nullable(STRING),
            "last_id": _nullable(STRING),
            "has_more": {"type": "boolean"},
        }
    )


STRING, INTEGER, NUMBER = {"type": "string"}, {"type": "integer"}, {"type": "number"}
BOOLEAN: Schema = {"type": "boolean"}
COUNT = {"type": "integer", "minimum": 0}
FINISH = {"type": "string", "enum": [str(reason) for reason in FinishReason]}

SCHEMAS: dict[str, Schema] = {
    "Error": _object(
        {
            "error": _object(
                {
                    "message": STRING,
                    "type": STRING,
                    "param": _nullable(STRING),
                    "code": _nullable(STRING),
                }
            )
        },
        description="OpenAI's error object: `type` and `code` name the kind (see the error table).",
    ),
    "Usage": _object({"prompt_tokens": COUNT, "completion_tokens": COUNT, "total_tokens": COUNT}),
    "PromptUsage": _object({"prompt_tokens": COUNT, "total_tokens": COUNT}),
    # chat completions
    "TopLogprob": _object({"token": STRING, "logprob": NUMBER, "bytes": _array(INTEGER)}),
    "TokenLogprob": _object(
        {"token": STRING, "logprob": NUMBER, "bytes": _array(INTEGER), "top_logprobs": _array(ref("TopLogprob"))}
    ),
    "ChatLogprobs": _object({"content": _array(ref("TokenLogprob"))}),
    "ToolCall": _object(
        {
            "id": STRING,
            "type": _const("function"),
            "function": _object({"name": STRING, "arguments": STRING}),
        }
    ),
    "AssistantMessage": _object(
        {"role": _const("assistant"), "content": _nullable(STRING), "refusal": {"type": "null"}},
        {"tool_calls": _array(ref("ToolCall"))},
    ),
    "ChatCompletion": _object(
        {
            "id": STRING,
            "object": _const("chat.completion"),
            "created": INTEGER,
            "model": STRING,
            "choices": _array(
                _object(
                    {
                        "index": COUNT,
                        "message": ref("AssistantMessage"),
                        "logprobs": _nullable(ref("ChatLogprobs")),
                        "finish_reason": FINISH,
                    }
                )
            ),
            "usage": ref("Usage"),
        },
        {"system_fingerprint": {"type": "null"}},
    ),
    "ChatCompletionChunk": _object(
        {
            "id": STRING,
            "object": _const("chat.completion.chunk"),
            "created": INTEGER,
            "model": STRING,
            "choices": _array(
                _object(
                    {
                        "index": COUNT,
                        "delta": _object(
                            {},
                            {
                                "role": _const("assistant"),
                                "content": STRING,
                                "tool_calls": _array(
                                    _object(
                                        {
                                            "index": COUNT,
                                            "function": _object({}, {"name": STRING, "arguments": STRING}),
                                        },
                                        {"id": STRING, "type": _const("function")},
                                    )
                                ),
                            },
                        ),
                        "logprobs": _nullable(ref("ChatLogprobs")),
                        "finish_reason": _nullable(FINISH),
                    }
                ),
                description="Empty on the usage chunk (`stream_options.include_usage`).",
            ),
        },
        {"usage": ref("Usage")},
        description="One `data:` event of a chat stream; the stream ends with `data: [DONE]`. After the first "
        'byte an error arrives in-band as `data: {"error": ...}` (the Error schema) and the stream ends.',
    ),
    # completions
    "CompletionLogprobs": _object(
        {
            "tokens": _array(STRING),
            "token_logprobs": _array(NUMBER),
            "top_logprobs": _nullable(_array(_nullable({"type": "object", "additionalProperties": NUMBER}))),
            "text_offset": _array(INTEGER),
        }
    ),
    "Completion": _object(
        {
            "id": STRING,
            "object": _const("text_completion"),
            "created": INTEGER,
            "model": STRING,
            "choices": _array(
                _object(
                    {
                        "index": COUNT,
                        "text": STRING,
                        "logprobs": _nullable(ref("CompletionLogprobs")),
                        "finish_reason": _nullable(FINISH),
                    }
                )
            ),
        },
        {"usage": ref("Usage"), "system_fingerprint": {"type": "null"}},
        description="A whole completion, or one `data:` event of its stream (which ends with `data: [DONE]`).",
    ),
    # the Responses API
    "ResponseOutputText": _object(
        {"type": _const("output_text"), "text": STRING, "annotations": _array({}), "logprobs": _array({})}
    ),
    "ResponseOutputMessage": _object(
        {
            "id": STRING,
            "type": _const("message"),
            "status": {"type": "string", "enum": ["in_progress", "completed", "incomplete"]},
            "role": _const("assistant"),
            "content": _array(ref("ResponseOutputText")),
        }
    ),
    "ResponseFunctionCall": _object(
        {
            "id": STRING,
            "type": _const("function_call"),
            "status": {"type": "string", "enum": ["in_progress", "completed", "incomplete"]},
            "call_id": STRING,
            "name": STRING,
            "arguments": STRING,
        }
    ),
    "ResponseUsage": _object(
        {
            "input_tokens": COUNT,
            "input_tokens_details": _object({"cached_tokens": COUNT}),
            "output_tokens": COUNT,
            "output_tokens_details": _object({"reasoning_tokens": COUNT}),
            "total_tokens": COUNT,
        }
    ),
    "Response": _object(
        {
            "id": STRING,
            "object": _const("response"),
            "created_at": INTEGER,
            "status": {"type": "string", "enum": ["in_progress", "completed", "incomplete", "failed"]},
            "completed_at": _nullable(INTEGER),
            "error": _nullable(_object({"code": STRING, "message": STRING})),
            "incomplete_details": _nullable(_object({"reason": STRING})),
            "model": STRING,
            "output": _array({"oneOf": [ref("ResponseOutputMessage"), ref("ResponseFunctionCall")]}),
            "usage": _nullable(ref("ResponseUsage")),
        },
        description="A Response object; the request's settings are repeated beside these fields, as OpenAI does.",
    ),
    "ResponseStreamEvent": _object(
        {"type": STRING, "sequence_number": COUNT},
        description="One event of a Responses stream: `response.created`, `response.in_progress`, "
        "`response.output_item.added`, `response.content_part.added`, `response.output_text.delta`, "
        "`response.output_text.done`, `response.content_part.done`, "
        "`response.function_call_arguments.delta`/`.done`, `response.output_item.done`, then "
        "`response.completed` or `response.incomplete`; after the first byte a failure is an `error` "
        "event followed by `response.failed`.",
    ),
    # embeddings, rerank, score
    "Embeddings": _object(
        {
            "object": _const("list"),
            "data": _array(
                _object(
                    {
                        "object": _const("embedding"),
                        "index": COUNT,
                        "embedding": {
                            "oneOf": [_array(NUMBER), STRING],
                            "description": "floats, or base64 of little-endian float32 (`encoding_format`)",
                        },
                    }
                )
            ),
            "model": STRING,
            "usage": ref("PromptUsage"),
        }
    ),
    "Rerank": _object(
        {
            "id": STRING,
            "model": STRING,
            "results": _array(
                _object({"index": COUNT, "relevance_score": NUMBER}, {"document": _object({"text": STRING})}),
                description="Best first; `document` unless `return_documents` is false.",
            ),
            "usage": ref("PromptUsage"),
        }
    ),
    "Score": _object(
        {
            "id": STRING,
            "object": _const("list"),
            "created": INTEGER,
            "model": STRING,
            "data": _array(_object({"index": COUNT, "object": _const("score"), "score": NUMBER})),
            "usage": ref("PromptUsage"),
        }
    ),
    # tokenization
    "Tokenized": _object(
        {"count": COUNT, "max_model_len": COUNT, "tokens": _array(COUNT)},
        {"token_strs": _array(STRING, description="with `return_token_strs`")},
    ),
    "Detokenized": _object({"prompt": STRING}),
    # audio
    "AudioUsage": _object({"type": _const("duration"), "seconds": COUNT}),
    "Transcription": _object({"text": STRING, "usage": ref("AudioUsage")}),
    "TranscriptionVerbose": _object(
        {
            "task": {"type": "string", "enum": ["transcribe", "translate"]},
            "language": STRING,
            "duration": NUMBER,
            "text": STRING,
            "segments": _array(
                _object(
                    {
                        "id": COUNT,
                        "seek": COUNT,
                        "start": NUMBER,
                        "end": NUMBER,
                        "text": STRING,
                        "tokens": _array(INTEGER),
                        "temperature": NUMBER,
                        "avg_logprob": NUMBER,
                        "compression_ratio": NUMBER,
                        "no_speech_prob": NUMBER,
                    }
                )
            ),
            "usage": ref("AudioUsage"),
        }
    ),
    "TranscriptionStreamEvent": _object(
        {"type": {"type": "string", "enum": ["transcript.text.delta", "transcript.text.done"]}},
        {"delta": STRING, "text": STRING, "usage": ref("AudioUsage")},
    ),
    # models, version, probes
    "Model": _object(
        {
            "id": STRING,
            "object": _const("model"),
            "created": INTEGER,
            "owned_by": STRING,
            "task": STRING,
            "capabilities": _array(STRING),
        },
        {
            "max_model_len": COUNT,
            "rerank_method": {"type": "string", "enum": ["embedding-cosine", "cross-encoder"]},
            "matryoshka": {"type": "boolean"},
        },
    ),
    "ModelList": _object({"object": _const("list"), "data": _array(ref("Model"))}),
    "Version": _object(
        {
            "name": STRING,
            "version": STRING,
            "upstreams": _array(
                _object(
                    {"url": STRING, "status": {"type": "string", "enum": ["ok", "unreachable", "error"]}},
                    {"name": STRING, "version": STRING, "extensions": _array(STRING), "error": STRING},
                )
            ),
            "models": _array(_object({"id": STRING, "task": STRING, "upstreams": _array(STRING)})),
        }
    ),
    # files, batches, usage
    "File": _object(
        {
            "id": STRING,
            "object": _const("file"),
            "bytes": COUNT,
            "created_at": INTEGER,
            "filename": STRING,
            "purpose": STRING,
            "status": STRING,
        },
        {"expires_at": _nullable(INTEGER), "status_details": _nullable(STRING)},
    ),
    "FileList": _page("File"),
    "FileDeleted": _object({"id": STRING, "object": _const("file"), "deleted": {"type": "boolean"}}),
    "Batch": _object(
        {
            "id": STRING,
            "object": _const("batch"),
            "endpoint": STRING,
            "input_file_id": STRING,
            "completion_window": STRING,
            "status": {"type": "string", "enum": ["validating", *STATUS_TIMES]},
            "created_at": INTEGER,
            "request_counts": _object({"total": COUNT, "completed": COUNT, "failed": COUNT}),
        },
        {
            "model": _nullable(STRING),
            "errors": _nullable(_object({"object": _const("list"), "data": _array({"type": "object"})})),
            "output_file_id": _nullable(STRING),
            "error_file_id": _nullable(STRING),
            "expires_at": _nullable(INTEGER),
            "usage": ref("ResponseUsage"),
            "metadata": _nullable({"type": "object", "additionalProperties": STRING}),
        },
        description="A batch; `<status>_at` fields give when it entered each status it has been in.",
    ),
    "BatchList": _page("Batch"),
    "UsageCost": _object({"input": NUMBER, "output": NUMBER, "total": NUMBER}),
    "UsagePage": _object(
        {
            "object": _const("page"),
            "group_by": {"type": "string", "enum": ["day", "hour"]},
            "start_time": _nullable(NUMBER),
            "end_time": _nullable(NUMBER),
            "data": _array(
                _object(
                    {
                        "object": _const("bucket"),
                        "start_time": INTEGER,
                        "end_time": INTEGER,
                        "results": _array(
                            _object(
                                {
                                    "object": _const("usage.result"),
                                    "project_id": STRING,
                                    "model": STRING,
                                    "batch": {"type": "boolean"},
                                    "num_requests": COUNT,
                                    "input_tokens": COUNT,
                                    "output_tokens": COUNT,
                                    "cost": ref("UsageCost"),
                                }
                            )
                        ),
                    }
                )
            ),
            "totals": _object(
                {"num_requests": COUNT, "input_tokens": COUNT, "output_tokens": COUNT, "cost": ref("UsageCost")}
            ),
            "has_more": {"type": "boolean"},
        }
    ),
    "Deployment": _object(
        {
            "id": STRING,
            "object": _const("deployment"),
            "name": STRING,
            "model_id": STRING,
            "triton_model": STRING,
            "status": {"type": "string", "enum": ["creating", "deploying", "ready", "error", "deleting"]},
            "size": COUNT,
            "placement": _array(STRING),
            "endpoints": _array(
                _object({"id": STRING, "visibility": {"enum": ["public", "private"]}, "disable_auth": BOOLEAN})
            ),
            "acls": _array(ref("AclRule")),
        },
        {
            "task": STRING,
            "tokenizer_dir": STRING,
            "upstreams": _array(STRING),
            "min_size": COUNT,
            "max_size": COUNT,
            "limits": {"type": "object"},
            "tags": _array(STRING),
            "error_message": _nullable(STRING),
            "created_at": INTEGER,
            "updated_at": INTEGER,
        },
        description="A model loaded on Triton servers and served under `model_id` while `ready`.",
    ),
    "DeploymentList": _object({"deployments": _array(ref("Deployment")), "total_count": COUNT}),
    "AclRule": _object({"id": STRING, "ip": STRING, "description": STRING}),
    "AclRuleList": _object({"acls": _array(ref("AclRule")), "total_count": COUNT}),
    "UpstreamList": _object(
        {
            "upstreams": _array(
                _object(
                    {"url": STRING, "healthy": BOOLEAN, "models_loaded": _array(STRING), "in_flight": COUNT},
                    {"group": _nullable(STRING), "capacity": _nullable(COUNT)},
                )
            ),
            "total_count": COUNT,
        }
    ),
    "Catalogue": _object(
        {
            "models": _array(
                _object(
                    {
                        "name": STRING,
                        "upstreams": _array(_object({"url": STRING, "state": STRING}, {"reason": STRING})),
                        "tokenizer": BOOLEAN,
                    }
                )
            ),
            "total_count": COUNT,
        }
    ),
    "Health": _object({"status": _const("ok")}),
    "Readiness": _object(
        {"status": {"type": "string", "enum": ["ready", "unavailable", "draining"]}},
        {"models": {"type": "object", "additionalProperties": {"type": "string", "enum": ["ready", "unavailable"]}}},
    ),
}

# the event-stream forms: one event each
SCHEMAS["ChatCompletionEvent"] = _events("ChatCompletionChunk", done=True)
SCHEMAS["CompletionEvent"] = _events("Completion", done=True)
SCHEMAS["ResponseEvent"] = _events("ResponseStreamEvent", done=False)
SCHEMAS["TranscriptionEvent"] = _events("TranscriptionStreamEvent", done=False)
