#!/usr/bin/env python3
"""Write a served copy of model_repository/tensorrt_llm/config.pbtxt with one engine's settings.

The template is parsed into Triton's own ``ModelConfig`` message (so a typo fails here, not at
load time), the given settings are set, and the result is written as
``<output-repo>/<model-name>/config.pbtxt`` beside an empty version directory ``1/``. Settings not
given keep the template's values. Paths are as the serving Triton sees them (inside its container),
not as this machine does.

Two settings follow from how the engine was built and decide what the gateway offers:
``--guided-decoding-tokenizer-info`` turns on xgrammar guided decoding (``response_format`` and forced
tool calls), and ``--no-generation-logits`` declares an engine built without
``--gather_generation_logits`` (no ``top_logprobs``).

Needs ``tritonclient[grpc]`` (for ``model_config_pb2``) and ``protobuf``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

LOG = logging.getLogger("fill_config")
TEMPLATE = Path(__file__).resolve().parents[2] / "model_repository" / "tensorrt_llm" / "config.pbtxt"
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
# Two inputs as TensorRT-LLM <= 0.19 names them (1.x: seed, min_tokens). A backend ignores inputs
# under names it does not know, so serving an old release needs these; the gateway maps them back
# (gateway/engine/contract.py, LEGACY_NAMES).
LEGACY_NAMES = {"seed": "random_seed", "min_tokens": "min_length"}
# the only grammar backend of TensorRT-LLM's C++ runtime (llguidance is Python-runtime only)
GUIDED_DECODING_BACKEND = "xgrammar"
# filled only by an engine built with --gather_generation_logits (the gateway's top_logprobs)
GENERATION_LOGITS = "generation_logits"


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fill_config.py",
        description="Write a Triton model repository entry for a TensorRT-LLM engine, from the gateway's "
        "tensorrt_llm config template.",
    )
    p.add_argument(
        "--template",
        type=Path,
        default=TEMPLATE,
        metavar="FILE",
        help="the config.pbtxt to start from (default: the gateway's)",
    )
    p.add_argument(
        "--output-repo", type=Path, required=True, metavar="DIR", help="model repository to write the model into"
    )
    p.add_argument(
        "--model-name",
        default="tensorrt_llm",
        metavar="NAME",
        help="Triton model name and directory (default: %(default)s)",
    )
    p.add_argument(
        "--engine-dir", required=True, metavar="DIR", help="trtllm-build's output directory, as Triton sees it"
    )
    p.add_argument(
        "--tokenizer-dir", required=True, metavar="DIR", help="the model's Hugging Face tokenizer, as Triton sees it"
    )
    p.add_argument("--max-batch-size", type=_positive, metavar="N", help="requests Triton passes the backend at once")
    p.add_argument(
        "--kv-cache-free-gpu-mem-fraction", type=_fraction, metavar="F", help="of the GPU memory left after weights"
    )
    p.add_argument("--max-tokens-in-paged-kv-cache", type=_positive, metavar="N", help="caps the KV cache (tokens)")
    p.add_argument("--enable-kv-cache-reuse", choices=("true", "false"), help="prefix (KV block) reuse")
    p.add_argument("--enable-chunked-context", choices=("true", "false"), help="prefill long prompts in chunks")
    p.add_argument(
        "--batch-scheduler-policy",
        choices=SCHEDULER_POLICIES,
        help="guaranteed_no_evict never pauses a started request",
    )
    p.add_argument("--max-beam-width", type=_positive, metavar="N", help="at most the engine's --max_beam_width")
    p.add_argument(
        "--max-queue-delay-us", type=_non_negative, metavar="N", help="dynamic batching's max_queue_delay_microseconds"
    )
    p.add_argument(
        "--max-queue-size", type=_non_negative, metavar="N", help="requests queued before rejecting (0: unbounded)"
    )
    p.add_argument(
        "--cancellation-check-period-ms",
        type=_positive,
        metavar="N",
        help="how often cancelled requests are looked for",
    )
    p.add_argument(
        "--gpu-device-ids", metavar="IDS", help="comma-separated GPU ids for this model (default: all visible)"
    )
    p.add_argument(
        "--guided-decoding-tokenizer-info",
        metavar="FILE",
        help="turn guided decoding on: guided_decoding_backend=xgrammar and xgrammar_tokenizer_info_path=FILE, "
        "the JSON xgrammar_info.py writes, as Triton sees it (default: off, as in the template)",
    )
    p.add_argument(
        "--no-generation-logits",
        action="store_true",
        help="the engine was built without --gather_generation_logits: leave the generation_logits output out, "
        "so the gateway refuses top_logprobs (400) instead of the engine failing each such request",
    )
    p.add_argument(
        "--legacy-names",
        action="store_true",
        help="name the seed and min_tokens inputs random_seed and min_length, for TensorRT-LLM <= 0.19",
    )
    p.add_argument(
        "--set",
        dest="extra",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other backend parameter (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing config.pbtxt")
    return p


def load(path: Path) -> Any:
    """The template as Triton's ModelConfig message (raises text_format.ParseError on a bad file)."""
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def guided_decoding(tokenizer_info: str | None) -> dict[str, str]:
    """The parameters that turn on the backend's guided decoding (none: the template's, off).

    The C++ backend reads ``xgrammar_tokenizer_info_path`` itself (``tokenizer_dir`` plays no part);
    the gateway offers ``response_format`` and forced tool calls only when ``guided_decoding_backend``
    is set (gateway/engine/contract.py).
    """
    if tokenizer_info is None:
        return {}
    if not tokenizer_info.strip():
        raise ValueError("--guided-decoding-tokenizer-info is empty")
    return {"guided_decoding_backend": GUIDED_DECODING_BACKEND, "xgrammar_tokenizer_info_path": tokenizer_info}


def fill(config: Any, args: argparse.Namespace) -> Any:
    """Set the given settings on a copy of ``config``; the rest keep the template's values."""
    out = model_config_pb2.ModelConfig()
    out.CopyFrom(config)
    out.name = args.model_name
    if args.legacy_names:
        for tensor in out.input:
            tensor.name = LEGACY_NAMES.get(tensor.name, tensor.name)
    if args.no_generation_logits:
        # The gateway offers top_logprobs only for a model that declares this output
        # (gateway/engine/contract.py, PARAM_OUTPUTS). The backend takes the logits datatype from
        # generation_logits or context_logits, whichever it meets first: context_logits stays.
        kept = [copy.deepcopy(tensor) for tensor in out.output if tensor.name != GENERATION_LOGITS]
        if not any(tensor.name == "context_logits" for tensor in kept):
            raise ValueError("--no-generation-logits: the template declares no context_logits to keep")
        del out.output[:]
        out.output.extend(kept)
    if args.max_batch_size is not None:
        out.max_batch_size = args.max_batch_size
        if out.HasField("dynamic_batching"):
            del out.dynamic_batching.preferred_batch_size[:]
            out.dynamic_batching.preferred_batch_size.append(args.max_batch_size)
    if args.max_queue_delay_us is not None:
        out.dynamic_batching.max_queue_delay_microseconds = args.max_queue_delay_us
    if args.max_queue_size is not None:
        out.dynamic_batching.default_queue_policy.max_queue_size = args.max_queue_size
    params: dict[str, object] = {
        "gpt_model_path": args.engine_dir,
        "tokenizer_dir": args.tokenizer_dir,
        "kv_cache_free_gpu_mem_fraction": args.kv_cache_free_gpu_mem_fraction,
        "max_tokens_in_paged_kv_cache": args.max_tokens_in_paged_kv_cache,
        "enable_kv_cache_reuse": args.enable_kv_cache_reuse,
        "enable_chunked_context": args.enable_chunked_context,
        "batch_scheduler_policy": args.batch_scheduler_policy,
        "max_beam_width": args.max_beam_width,
        "cancellation_check_period_ms": args.cancellation_check_period_ms,
        "gpu_device_ids": args.gpu_device_ids,
        **guided_decoding(args.guided_decoding_tokenizer_info),
        **dict(args.extra),
    }
    for key, value in params.items():
        if value is not None:
            out.parameters[key].string_value = str(value)
    return out


def write(config: Any, output_repo: Path, template: Path, force: bool = False) -> Path:
    """``<output_repo>/<name>/config.pbtxt`` and the version directory ``1/``; the path written."""
    name: str = config.name
    model_dir = output_repo / name
    target = model_dir / "config.pbtxt"
    if target.resolve() == template.resolve():
        raise ValueError(f"{target} is the template itself: choose another --output-repo")
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists (--force overwrites it)")
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    header = (
        f"# Written by deploy/tensorrt_llm/fill_config.py from {template}.\n"
        "# What each setting does: the comments in the gateway's model_repository/tensorrt_llm/config.pbtxt.\n"
    )
    target.write_text(header + text_format.MessageToString(config))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    try:
        config = fill(load(args.template), args)
        target = write(config, args.output_repo, args.template, force=args.force)
    except (OSError, ValueError, text_format.ParseError) as exc:
        LOG.error("fill_config: %s", exc)
        return 1
    params = config.parameters
    guided = params["guided_decoding_backend"].string_value if "guided_decoding_backend" in params else ""
    top = any(tensor.name == GENERATION_LOGITS for tensor in config.output)
    LOG.info(
        "wrote %s (max_batch_size %d, engine %s, guided decoding %s, generation_logits %s)",
        target,
        config.max_batch_size,
        args.engine_dir,
        guided or "off",
        "declared" if top else "left out",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
