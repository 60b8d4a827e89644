"""The OpenAPI document's table: one :class:`Spec` per REST handler, what it takes and answers.

A new route's handler gets a row here (the tests fail on a route without one); its paths come from
the router (:mod:`gateway.api.openapi`). A JSON body is given as its wire type, a multipart form
as the name of one of :data:`FORMS`; answers name schemas of :mod:`gateway.api.openapi_responses`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel

from gateway.api.admin import (
    add_acls,
    create_deployment,
    create_endpoint,
    delete_acl,
    delete_deployment,
    delete_endpoint,
    get_deployment,
    list_acls,
    list_catalogue,
    list_deployments,
    list_upstreams,
    patch_deployment,
    put_acls,
)
from gateway.api.admin_schema import ORDERS, AclList, AclSpec, DeploymentCreate, DeploymentPatch, EndpointSpec
from gateway.api.audio import transcriptions, translations
from gateway.api.batches import BatchCreateRequest, cancel_batch, create_batch, get_batch, list_batches
from gateway.api.chat import chat_completions
from gateway.api.completions import completions
from gateway.api.docs import docs, openapi_json
from gateway.api.embeddings import create_embeddings
from gateway.api.files import PURPOSES, create_file, delete_file, file_content, get_file, list_files
from gateway.api.health import health, ready
from gateway.api.models import get_model, list_models
from gateway.api.observe import metrics
from gateway.api.openapi_responses import Schema, ref
from gateway.api.rerank import rerank, score
from gateway.api.responses import create_response
from gateway.api.responses_schema import ResponsesRequest
from gateway.api.retrieval_schema import (
    DetokenizeRequest,
    EmbeddingRequest,
    RerankRequest,
    ScoreRequest,
    TokenizeRequest,
)
from gateway.api.schema import ChatCompletionRequest, CompletionRequest
from gateway.api.tokenize import detokenize, tokenize
from gateway.api.usage import get_usage
from gateway.api.version import version
from gateway.audio.formats import RESPONSE_FORMATS, TIMESTAMP_GRANULARITIES
from gateway.core.transcription import TEMPERATURE_RANGE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Content = dict[str, Schema]


@dataclass(frozen=True, slots=True)
class Spec:
    """What one handler takes and answers."""

    summary: str
    tag: str
    ok: Content  # the 200 answer's schema by media type
    body: type[BaseModel] | str | None = None  # a JSON wire type, or the name of a multipart form (FORMS)
    errors: tuple[int, ...] = ()  # the error statuses it can answer with
    description: str = ""
    also: tuple[int, ...] = ()  # other statuses answered with the 200's body
    query: Mapping[str, Schema] = field(default_factory=dict)  # its query parameters
    headers: Mapping[str, Schema] = field(default_factory=dict)  # the 200 answer's headers, by name


def as_json(name: str) -> Content:
    return {"application/json": ref(name)}


def as_events(name: str) -> Content:
    return {"text/event-stream": ref(name)}


# the error statuses of a route, by what it does
KEYED = (401, 403, 500, 503)  # a key (when keys exist), draining, anything unforeseen
BODY = (400, 413, 415, 417)  # a body: invalid, too large, of another media type, an Expect other than 100-continue
FOUND = (404,)  # names a model, file or batch
UPSTREAM = (429, 502, 504)  # limits, then Triton
INFERENCE = tuple(sorted(KEYED + BODY + FOUND + UPSTREAM))
LOOKUP = tuple(sorted(KEYED + BODY + FOUND))
QUERY = tuple(sorted((*KEYED, 400)))  # a listing with query parameters
ONE = tuple(sorted(KEYED + FOUND))  # one object, by id
ADMIN_BODY = tuple(sorted((*KEYED, *BODY, *FOUND, 409)))  # an operator's change: may conflict

STRING: Schema = {"type": "string"}
FORMS: dict[str, Schema] = {
    "TranscriptionRequest": {  # the fields gateway.api.audio reads, no others
        "type": "object",
        "required": ["file", "model"],
        "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "wav, flac, ogg or mp3"},
            "model": {"type": "string", "minLength": 1},
            "language": {"type": "string", "description": "ISO-639-1 code or name (transcriptions only)"},
            "prompt": STRING,
            "temperature": {"type": "number", "minimum": TEMPERATURE_RANGE[0], "maximum": TEMPERATURE_RANGE[1]},
            "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
            "stream": {"type": "boolean", "default": False, "description": "json and text only"},
            "timestamp_granularities[]": {
                "type": "array",
                "items": {"type": "string", "enum": list(TIMESTAMP_GRANULARITIES)},
                "description": "segment, with verbose_json (word timestamps are refused)",
            },
            "timestamp_granularities": {"type": "array", "items": STRING, "description": "as above"},
            "chunking_strategy": {"type": "string", "enum": ["auto"]},
            "include[]": {"type": "array", "items": STRING, "maxItems": 0, "description": "refused"},
        },
    },
    "FileUploadRequest": {
        "type": "object",
        "required": ["file", "purpose"],
        "additionalProperties": False,
        "properties": {
            "file": {"type": "string", "format": "binary", "description": "a batch's input: JSON lines"},
            "purpose": {"type": "string", "enum": list(PURPOSES)},
        },
    },
}
_TRANSCRIPTION: Content = {
    "application/json": {"anyOf": [ref("Transcription"), ref("TranscriptionVerbose")]},
    "text/plain": {"type": "string", "description": "text, srt or vtt"},
    **as_events("TranscriptionEvent"),
}
_PAGE: dict[str, Schema] = {
    "limit": {"type": "integer", "minimum": 1},
    "after": {"type": "string", "description": "an id: the page after it"},
}
_TIME: Schema = {"type": "string", "description": "unix seconds or an ISO 8601 date or time (UTC unless it says)"}
_NAMES: Schema = {"type": "array", "items": STRING}
_SERVED_BY: dict[str, Schema] = {  # set by gateway.api.observe.stamp_headers on every answer that generated
    "x-upstream": {
        "description": "The Triton server that served the generation: `group/host:port`, or `host:port` "
        "outside groups (after a retry, the second server).",
        "required": True,
        "schema": STRING,
    }
}

OPERATIONS: dict[Handler, Spec] = {
    chat_completions: Spec(
        "Create a chat completion",
        "Generation",
        {**as_json("ChatCompletion"), **as_events("ChatCompletionEvent")},
        ChatCompletionRequest,
        INFERENCE,
        "OpenAI's chat completions, whole or streamed (`stream: true`) as server-sent events.",
        headers=_SERVED_BY,
    ),
    completions: Spec(
        "Create a completion",
        "Generation",
        {**as_json("Completion"), **as_events("CompletionEvent")},
        CompletionRequest,
        INFERENCE,
        headers=_SERVED_BY,
    ),
    create_response: Spec(
        "Create a response (stateless)",
        "Generation",
        {**as_json("Response"), **as_events("ResponseEvent")},
        ResponsesRequest,
        INFERENCE,
        "OpenAI's Responses API without stored state: the conversation travels in `input`; `store`, "
        "`previous_response_id`, `background` and `conversation` are refused by name.",
        headers=_SERVED_BY,
    ),
    create_embeddings: Spec("Create embeddings", "Retrieval", as_json("Embeddings"), EmbeddingRequest, INFERENCE),
    rerank: Spec(
        "Rerank documents",
        "Retrieval",
        as_json("Rerank"),
        RerankRequest,
        INFERENCE,
        "Cohere's and Jina's shape: the documents by relevance to the query.",
    ),
    score: Spec("Score text pairs", "Retrieval", as_json("Score"), ScoreRequest, INFERENCE, "vLLM's /score."),
    transcriptions: Spec("Transcribe audio", "Audio", _TRANSCRIPTION, "TranscriptionRequest", INFERENCE),
    translations: Spec("Translate audio into English", "Audio", _TRANSCRIPTION, "TranscriptionRequest", INFERENCE),
    tokenize: Spec(
        "Tokenize a prompt or chat messages", "Tokenization", as_json("Tokenized"), TokenizeRequest, LOOKUP, "vLLM's."
    ),
    detokenize: Spec(
        "Detokenize token ids", "Tokenization", as_json("Detokenized"), DetokenizeRequest, LOOKUP, "vLLM's."
    ),
    list_models: Spec("List models", "Models", as_json("ModelList"), errors=KEYED),
    get_model: Spec("Retrieve a model", "Models", as_json("Model"), errors=ONE),
    create_file: Spec(
        "Upload a file", "Files", as_json("File"), "FileUploadRequest", tuple(sorted(KEYED + BODY)), "A batch's input."
    ),
    list_files: Spec(
        "List files",
        "Files",
        as_json("FileList"),
        errors=QUERY,
        query={**_PAGE, "order": {"type": "string", "enum": ["asc", "desc"]}, "purpose": STRING},
    ),
    get_file: Spec("Retrieve a file", "Files", as_json("File"), errors=ONE),
    delete_file: Spec("Delete a file", "Files", as_json("FileDeleted"), errors=ONE),
    file_content: Spec(
        "Download a file's content", "Files", {"application/octet-stream": {"type": "string"}}, errors=ONE
    ),
    create_batch: Spec(
        "Create a batch",
        "Batches",
        as_json("Batch"),
        BatchCreateRequest,
        LOOKUP,
        "Runs an uploaded file's requests as the key that creates it, at most within `completion_window`.",
    ),
    list_batches: Spec("List batches", "Batches", as_json("BatchList"), errors=QUERY, query=_PAGE),
    get_batch: Spec("Retrieve a batch", "Batches", as_json("Batch"), errors=ONE),
    cancel_batch: Spec("Cancel a batch", "Batches", as_json("Batch"), errors=tuple(sorted((*ONE, 400)))),
    get_usage: Spec(
        "Usage and cost",
        "Usage",
        as_json("UsagePage"),
        errors=QUERY,
        description="Requests, tokens and cost per time bucket, project, model and kind (batch or not). An admin "
        "key reads every project, a project's key its own (another: 403).",
        query={
            "start": _TIME,
            "end": _TIME,
            "group_by": {"type": "string", "enum": ["day", "hour"], "default": "day"},
            "project": _NAMES,
            "model": _NAMES,
            "batch": {"type": "boolean"},
        },
    ),
    list_upstreams: Spec("List the Triton servers", "Operator", as_json("UpstreamList"), errors=KEYED),
    list_catalogue: Spec(
        "The model catalogue",
        "Operator",
        as_json("Catalogue"),
        errors=KEYED,
        description="Every model in each Triton server's repository (RepositoryIndex), with its state there.",
    ),
    create_deployment: Spec(
        "Create a deployment",
        "Operator",
        as_json("Deployment"),
        DeploymentCreate,
        ADMIN_BODY,
        "Loads the model on Triton (explicit model control) and serves it under its `model_id` once ready; 201.",
        also=(201,),
    ),
    list_deployments: Spec(
        "List deployments",
        "Operator",
        as_json("DeploymentList"),
        errors=QUERY,
        description="Paginated; the total is also in the `X-Total-Count` header.",
        query={
            "page": {"type": "integer", "minimum": 1, "default": 1},
            "per_page": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50},
            "name": STRING,
            "tag": STRING,
            "status": STRING,
            "order_by": {"type": "string", "enum": list(ORDERS), "default": "created_at_asc"},
        },
    ),
    get_deployment: Spec("Retrieve a deployment", "Operator", as_json("Deployment"), errors=ONE),
    patch_deployment: Spec(
        "Update a deployment", "Operator", as_json("Deployment"), DeploymentPatch, ADMIN_BODY, "Limits, tags, sizes."
    ),
    delete_deployment: Spec(
        "Delete a deployment",
        "Operator",
        as_json("Deployment"),
        errors=ONE,
        description="`deleting`: new requests get 404 at once, running ones finish, then the model is unloaded.",
    ),
    create_endpoint: Spec("Add an endpoint", "Operator", as_json("Deployment"), EndpointSpec, ADMIN_BODY, also=(201,)),
    delete_endpoint: Spec("Remove an endpoint", "Operator", as_json("Deployment"), errors=ADMIN_BODY),
    list_acls: Spec("List ACL rules", "Operator", as_json("AclRuleList"), errors=ONE),
    put_acls: Spec("Replace ACL rules", "Operator", as_json("AclRuleList"), AclList, ADMIN_BODY),
    add_acls: Spec(
        "Add ACL rules",
        "Operator",
        as_json("AclRuleList"),
        AclSpec,
        ADMIN_BODY,
        'One rule, or `{"acls": [...]}`.',
        also=(201,),
    ),
    delete_acl: Spec("Remove an ACL rule", "Operator", as_json("AclRuleList"), errors=ONE),
    version: Spec(
        "Gateway, Triton and model versions",
        "Operations",
        as_json("Version"),
        errors=KEYED,
        description="Each Triton server's ServerMetadata (asked at most every 10 s); 200 whatever they say.",
    ),
    health: Spec("Liveness", "Operations", as_json("Health")),
    ready: Spec(
        "Readiness",
        "Operations",
        as_json("Readiness"),
        description="200 when every model's Triton is ready; 503 with the same body otherwise or while draining.",
        also=(503,),
    ),
    metrics: Spec("Prometheus metrics", "Operations", {"text/plain": {"type": "string"}}),
    openapi_json: Spec("This document", "Documentation", {"application/json": {"type": "object"}}),
    docs: Spec("This document as a page", "Documentation", {"text/html": {"type": "string"}}),
}
