"""``python -m gateway deployments ...``: the operator API's verbs from a shell (a thin HTTP client).

It talks to a running gateway (``--url``, ``GATEWAY_URL``) with an admin key (``--key``,
``GATEWAY_ADMIN_KEY``; none with auth off, from the gateway's own machine) and prints the JSON answer.
An error answer is printed to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

ENVIRONMENT = (("GATEWAY_URL", "--url"), ("GATEWAY_ADMIN_KEY", "--key"))


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "deployments", help="deployments on the Triton servers (the operator API)", parents=[common]
    )
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"), help="the gateway")
    parser.add_argument("--key", default=os.environ.get("GATEWAY_ADMIN_KEY"), help="an admin key")
    verbs = parser.add_subparsers(dest="verb", required=True)

    create = verbs.add_parser("create", help="load a model on Triton and serve it under an id")
    create.add_argument("name")
    create.add_argument("--model", required=True, help="the Triton model (see `deployments models`)")
    create.add_argument("--model-id", help="the OpenAI model id (default: the name)")
    create.add_argument("--task", default="generate", choices=("generate", "embed", "score", "transcribe"))
    create.add_argument("--tokenizer", help="directory with tokenizer.json")
    create.add_argument("--upstream", action="append", default=[], help="a Triton server to use (repeatable)")
    create.add_argument("--min-size", type=int, default=1)
    create.add_argument("--max-size", type=int)
    create.add_argument("--max-in-flight", type=int)
    create.add_argument("--tag", action="append", default=[])
    create.add_argument("--private", action="store_true", help="only on the private listener")
    create.add_argument("--no-auth", action="store_true", help="callers need no API key")
    create.add_argument("--acl", action="append", default=[], help="an allowed CIDR (repeatable)")
    create.add_argument("--wait", action="store_true", help="until it is ready (or failed)")

    listing = verbs.add_parser("list", help="list deployments (paginated)")
    listing.add_argument("--page", type=int, default=1)
    listing.add_argument("--per-page", type=int, default=50)
    listing.add_argument("--name")
    listing.add_argument("--tag")
    listing.add_argument("--status")

    for verb, what in (("get", "show one"), ("delete", "drain, unload and remove one")):
        one = verbs.add_parser(verb, help=what)
        one.add_argument("id")

    patch = verbs.add_parser("patch", help="change sizes, limits or tags")
    patch.add_argument("id")
    patch.add_argument("--min-size", type=int)
    patch.add_argument("--max-size", type=int)
    patch.add_argument("--max-in-flight", type=int)
    patch.add_argument("--max-queue", type=int)
    patch.add_argument("--tag", action="append")

    verbs.add_parser("models", help="the model catalogue: what each Triton's repository holds")
    verbs.add_parser("upstreams", help="the Triton servers the gateway knows")


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(args.url.rstrip("/") + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"error: {exc.code} {exc.read().decode(errors='replace')}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"error: cannot reach {args.url}: {exc.reason}") from None


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name, "model": args.model, "task": args.task, "min_size": args.min_size}
    optional = {"model_id": args.model_id, "tokenizer": args.tokenizer, "max_size": args.max_size}
    body.update({k: v for k, v in optional.items() if v is not None})
    if args.upstream:
        body["upstreams"] = args.upstream
    if args.tag:
        body["tags"] = args.tag
    if args.max_in_flight:
        body["limits"] = {"max_in_flight": args.max_in_flight}
    body["endpoints"] = [{"visibility": "private" if args.private else "public", "disable_auth": args.no_auth}]
    body["acls"] = [{"ip": ip} for ip in args.acl]
    return body


def _patch_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {k: v for k, v in (("min_size", args.min_size), ("max_size", args.max_size)) if v}
    limits = {k: v for k, v in (("max_in_flight", args.max_in_flight), ("max_queue", args.max_queue)) if v is not None}
    if limits:
        body["limits"] = limits
    if args.tag is not None:
        body["tags"] = args.tag
    return body


def run(args: argparse.Namespace) -> int:
    base = "/admin/v1/deployments"
    if args.verb == "create":
        answer = _call(args, "POST", base, _create_body(args))
        while args.wait and answer["status"] in ("creating", "deploying"):
            time.sleep(0.5)
            answer = _call(args, "GET", f"{base}/{answer['id']}")
    elif args.verb == "list":
        query = {
            "page": args.page,
            "per_page": args.per_page,
            "name": args.name,
            "tag": args.tag,
            "status": args.status,
        }
        answer = _call(args, "GET", f"{base}?{urllib.parse.urlencode({k: v for k, v in query.items() if v})}")
    elif args.verb == "get":
        answer = _call(args, "GET", f"{base}/{urllib.parse.quote(args.id)}")
    elif args.verb == "delete":
        answer = _call(args, "DELETE", f"{base}/{urllib.parse.quote(args.id)}")
    elif args.verb == "patch":
        answer = _call(args, "PATCH", f"{base}/{urllib.parse.quote(args.id)}", _patch_body(args))
    else:  # models, upstreams
        answer = _call(args, "GET", f"/admin/v1/{args.verb}")
    json.dump(answer, sys.stdout, indent=2)
    print()
    return 1 if args.verb == "create" and answer.get("status") == "error" else 0
