"""Schemathesis against the gateway over the fake engine and encoders, served on a free loopback port:
requests generated from the /openapi.json it serves, for every operation listed, and each answer
checked: no 5xx at all (nothing here fills a queue or trips a limit, so not even admission's 503
with Retry-After is expected), and a status, media type, body (each event of a stream included)
and headers that the document gives for that operation.

Cases are derandomized: a run repeats exactly. The suite runs :data:`CASES` positive cases per
operation and a fifth as many negative ones (bodies and parameters the document does not allow);
``GATEWAY_FUZZ_SCALE`` multiplies them, and ``make fuzz`` runs 5 x: 1,000 positive cases per JSON
operation. A generated ``model`` is most often swapped for one the route serves, and an audio upload
for a real WAV file, so that most cases reach the engine instead of stopping at a 404 or 400.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.app import create_app
from gateway.api.openapi import build
from gateway.auth.keys import new_key
from gateway.config import GatewayConfig, ProjectConfig
from gateway.core.types import GenerateRequest, Tokens
from gateway.engine.contract import ModelContract, build_request
from gateway.text.tokenizer import Tokenizer
from tests.integration.conftest import MODEL, REPLY
from tests.integration.fake_encoder import (
    EMBEDDER,
    ENCODERS,
    MATRYOSHKA,
    SCORER,
    WHISPER,
    FakeEncoders,
    gateway_models,
    wav,
)
from tests.integration.fake_engine import FakeEngine

PROJECT = "team"
KEY, RECORD = new_key(PROJECT, "fuzz")
ADMIN_KEY, ADMIN_RECORD = new_key("ops", "fuzz-admin")
ADMIN_RECORD = ADMIN_RECORD.model_copy(update={"admin": True})
DEPLOYMENT_IDS: list[str] = []  # made by the `deployment` fixture
TRITON_MODEL = next(m.triton_model for m in gateway_models() if m.id == MODEL)
MODELS = (MODEL, EMBEDDER, MATRYOSHKA, SCORER, WHISPER)
TRANSCRIPT = "<|en|><|transcribe|><|0.00|> Hello.<|0.50|><|0.50|> World.<|1.00|>"
BATCH_LINE = (
    b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "embedder", "input": "x"}}\n'
)
SCALE = float(os.environ.get("GATEWAY_FUZZ_SCALE", "1"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]

# positive cases per operation (x GATEWAY_FUZZ_SCALE): the JSON operations most, the multipart ones
# fewer (each upload is decoded or stored), the rest a few (aliases of the same handlers, and GETs)
JSON_OPERATIONS = (
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/responses",
    "POST /v1/embeddings",
    "POST /v1/rerank",
    "POST /v1/score",
    "POST /v1/tokenize",
    "POST /v1/detokenize",
    "POST /v1/batches",
)
# the operator API's: fewer (a created deployment is loaded on the fakes; most cases name no deployment)
ADMIN_JSON_OPERATIONS = (
    "POST /admin/v1/deployments",
    "PATCH /admin/v1/deployments/{deployment_id}",
    "POST /admin/v1/deployments/{deployment_id}/endpoints",
    "PUT /admin/v1/deployments/{deployment_id}/acls",
    "POST /admin/v1/deployments/{deployment_id}/acls",
)
CASES: dict[str, int] = (
    dict.fromkeys(JSON_OPERATIONS, 200)
    | dict.fromkeys(ADMIN_JSON_OPERATIONS, 60)
    | {
        "POST /v1/audio/transcriptions": 30,
        "POST /v1/audio/translations": 30,
        "POST /v1/files": 30,
    }
)
OTHERS = 10
NEGATIVE_SHARE = 5  # one negative case for every five positive ones
# the models each route serves, so that most cases get past the model check (first match wins)
SERVES = {
    "/chat/completions": (MODEL,),
    "/completions": (MODEL,),
    "/responses": (MODEL,),
    "/embeddings": (EMBEDDER, MATRYOSHKA),
    "/rerank": (SCORER, EMBEDDER),
    "/score": (SCORER, EMBEDDER),
    "/tokenize": (MODEL, EMBEDDER),
    "/detokenize": (MODEL, EMBEDDER),
    "/transcriptions": (WHISPER,),
    "/translations": (WHISPER,),
}


def _document() -> dict[str, Any]:
    """The document of the app's routes, without starting it (to name the tests)."""
    return build(create_app(GatewayConfig(grpc_port=None, models=gateway_models())).router)


DOCUMENT = _document()
OPERATIONS = [
    (f"{method.upper()} {path}", op) for path, item in DOCUMENT["paths"].items() for method, op in item.items()
]
# negative cases need something to get wrong: a body, a parameter, or the key
RUNS = [(label, GenerationMode.POSITIVE) for label, _ in OPERATIONS] + [
    (label, GenerationMode.NEGATIVE)
    for label, op in OPERATIONS
    if "requestBody" in op or "parameters" in op or op.get("security") != []
]


class WireCheckingEngine(FakeEngine):
    """The fake engine, building each request's Triton message first as the real client does: a value
    that cannot be packed into its tensor fails here as it would in front of Triton."""

    async def generate(
        self, contract: ModelContract, request: GenerateRequest, end_id: int | None, pad_id: int | None
    ) -> AsyncGenerator[Tokens, None]:
        build_request(
            contract, request.request_id, request.prompt_ids, request.sampling, end_id, pad_id, request.vocab_size
        )
        async for tokens in super().generate(contract, request, end_id, pad_id):
            yield tokens


class LiveGateway:
    """The app on 127.0.0.1 (a free port), on an event loop of its own in a thread: schemathesis's
    requests are synchronous."""

    def __init__(self, app: web.Application) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-gateway", daemon=True)
        self.url = ""

    def __enter__(self) -> LiveGateway:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


@pytest.fixture(scope="module")
def encoders() -> FakeEncoders:
    return FakeEncoders()


@pytest.fixture(scope="module")
def gateway(
    contract: ModelContract,
    tokenizer: Tokenizer,
    encoders: FakeEncoders,
    minilm: Tokenizer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    engine = WireCheckingEngine(contract, [[t] for t in tokenizer.encode(REPLY)])
    config = GatewayConfig(
        grpc_port=None,
        models=gateway_models(),
        projects=[ProjectConfig(id=PROJECT), ProjectConfig(id="ops")],
        keys=[RECORD, ADMIN_RECORD],
        data_dir=Path(tmp_path_factory.mktemp("fuzz-data")),
    )
    with LiveGateway(create_app(config, lambda url: encoders if url == ENCODERS else engine)) as live:
        yield live.url


@pytest.fixture
def deployment(gateway: str) -> str:
    """A deployment on the fakes, whose id most operator cases name (else they stop at a 404); made
    again when a fuzzed DELETE took the last one."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    if DEPLOYMENT_IDS:
        found = requests.get(f"{gateway}/admin/v1/deployments/{DEPLOYMENT_IDS[0]}", headers=admin, timeout=30)
        if found.status_code == 200 and found.json()["status"] != "deleting":
            return DEPLOYMENT_IDS[0]
    answer = requests.post(
        f"{gateway}/admin/v1/deployments",
        json={"name": f"fuzzed-{len(DEPLOYMENT_IDS)}", "model": TRITON_MODEL, "acls": [{"ip": "127.0.0.1"}]},
        headers=admin,
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    DEPLOYMENT_IDS[:] = [answer.json()["id"], *DEPLOYMENT_IDS]
    return DEPLOYMENT_IDS[0]


@pytest.fixture(scope="module")
def served(gateway: str) -> dict[str, Any]:
    """The document as the gateway serves it."""
    document: dict[str, Any] = requests.get(f"{gateway}/openapi.json", timeout=10).json()
    return document


@pytest.fixture
def schema(served: dict[str, Any]) -> Any:
    """Loaded afresh for each test: schemathesis learns from the answers it gets, and a test's cases
    should not depend on the tests that ran before it."""
    return schemathesis.openapi.from_dict(copy.deepcopy(served))


def test_every_json_operation_is_fuzzed_most() -> None:
    takes_json = {
        label
        for label, op in OPERATIONS
        if "application/json" in op.get("requestBody", {}).get("content", {}) and "x-alias-of" not in op
    }
    assert takes_json == {*JSON_OPERATIONS, *ADMIN_JSON_OPERATIONS}, "a new JSON operation: give it a row"


@pytest.mark.parametrize(("label", "mode"), RUNS, ids=[f"{label} {mode}" for label, mode in RUNS])
def test_generated_requests(
    schema: Any, gateway: str, encoders: FakeEncoders, deployment: str, label: str, mode: GenerationMode
) -> None:
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    cases = CASES.get(label, OTHERS) * SCALE / (1 if mode is GenerationMode.POSITIVE else NEGATIVE_SHARE)
    serves = next((models for route, models in SERVES.items() if path.endswith(route)), MODELS)
    audio = wav(0.5)
    session = requests.Session()
    admin = path.startswith(("/admin/", "/inference/"))  # the operator API: an admin key
    headers = {"Authorization": f"Bearer {ADMIN_KEY if admin else KEY}"}
    statuses: list[int] = []

    @settings(
        max_examples=max(1, round(cases)),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        _steer(case, data, serves, audio)
        if "/audio/" in path:
            encoders.transcripts[:] = [TRANSCRIPT] * 8  # one per 30 s window: none runs out
        response = case.call(base_url=gateway, session=session, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=headers)
        statuses.append(response.status_code)

    begun = time.monotonic()
    run()
    counts = {status: statuses.count(status) for status in sorted(set(statuses))}
    print(f"\n{label} ({mode}): {len(statuses)} cases in {time.monotonic() - begun:.1f}s, statuses {counts}")
    assert statuses


def _steer(case: Any, data: st.DataObject, serves: tuple[str, ...], audio: bytes) -> None:
    """Most cases name a model the route serves (in the key's project, with a real audio file): the
    generated values alone would stop at a 404, 403 or 400 before any engine is asked."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        pick = data.draw(st.integers(0, 9))
        if pick < 7:
            body["model"] = data.draw(st.sampled_from(serves))
        elif pick == 7:
            body["model"] = data.draw(st.sampled_from(MODELS))
    if isinstance(body, dict) and "file" in body and data.draw(st.integers(0, 9)) < 7:
        body["file"] = BATCH_LINE if "purpose" in body else audio
        if "language" in body:
            body["language"] = data.draw(st.sampled_from(["en", "de", "english"]))
    params = case.path_parameters or {}
    if "project_id" in params and data.draw(st.integers(0, 9)) < 8:
        params["project_id"] = PROJECT
    if "deployment_id" in params and DEPLOYMENT_IDS and data.draw(st.integers(0, 9)) < 7:
        params["deployment_id"] = DEPLOYMENT_IDS[0]
    if "model_id" in params and data.draw(st.booleans()):
        params["model_id"] = data.draw(st.sampled_from(MODELS))
