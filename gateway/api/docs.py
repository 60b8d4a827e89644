"""GET /openapi.json and GET /docs: the OpenAPI document (:mod:`gateway.api.openapi`) and its page.

Both are built once at startup and served as bytes. The page is rendered from the document itself
(:func:`render`), with inline styles and no script: nothing is loaded from anywhere, so it works
without internet access and under a strict Content-Security-Policy. Operations are grouped by tag,
an alias path (``x-alias-of``) is listed under the operation it serves, the shared error answers
once, and every schema is a table of its fields, linked where referenced.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from aiohttp import web

OPENAPI = web.AppKey("openapi", bytes)  # the document, as served
DOCS = web.AppKey("docs", bytes)  # its page, as served
_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_MAX_DEPTH = 4  # inline objects nested deeper are shown as "object"
_ERROR = {"$ref": "#/components/schemas/Error"}
_CONSTRAINTS = {
    "minimum": "≥ {}",
    "exclusiveMinimum": "> {}",
    "maximum": "≤ {}",
    "exclusiveMaximum": "< {}",
    "minLength": "length ≥ {}",
    "maxLength": "length ≤ {}",
    "minItems": "≥ {} items",
    "maxItems": "≤ {} items",
    "maxProperties": "≤ {} entries",
    "pattern": "matches <code>{}</code>",
}
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:72rem;padding:1rem 2rem;color:#1b1f24}
code{font:13px ui-monospace,monospace;background:#f2f4f7;padding:0 .2em;border-radius:3px}
h2{border-bottom:2px solid #d0d7de;margin-top:2.5rem}h3{margin-bottom:.3rem}
article{border:1px solid #d0d7de;border-radius:6px;padding:.2rem 1rem 1rem;margin:1rem 0}
table{border-collapse:collapse;width:100%;margin:.4rem 0}
td,th{border:1px solid #e1e4e8;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}.m{font-weight:700;color:#fff;border-radius:4px;padding:.1rem .45rem;font-size:13px}
.get{background:#1f883d}.post{background:#0969da}.put,.patch{background:#9a6700}.delete{background:#cf222e}
.req{color:#cf222e}.note{color:#57606a}nav ul{columns:3}
"""


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[DOCS], content_type="text/html", charset="utf-8", headers={"Content-Security-Policy": _CSP}
    )


def render(document: dict[str, Any]) -> str:
    """The page of an OpenAPI 3.1 ``document``."""
    info = document["info"]
    operations = [
        (path, method, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if "x-alias-of" not in op
    ]
    aliases: dict[str, list[str]] = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            if "x-alias-of" in op:
                aliases.setdefault(op["x-alias-of"], []).append(f"{method.upper()} {path}")
    tags = [tag["name"] for tag in document.get("tags", [])]
    tags += sorted({op["tags"][0] for _, _, op in operations if op.get("tags")} - set(tags))
    out = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(info['title'])}</title>",
        f"<meta name=viewport content='width=device-width'><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} <small class=note>{escape(info['version'])}</small></h1>",
        f"<p>{_text(info.get('description', ''))}</p>",
        "<p>The machine-readable document: <a href='openapi.json'><code>/openapi.json</code></a> (OpenAPI 3.1).</p>",
        "<nav><ul>",
    ]
    for tag in tags:
        for path, method, op in operations:
            if op.get("tags", ["Other"])[0] == tag:
                out.append(f"<li><a href='#{op['operationId']}'>{method.upper()} {escape(path)}</a></li>")
    out.append("<li><a href='#errors'>Errors</a></li><li><a href='#schemas'>Schemas</a></li></ul></nav>")
    for tag in tags:
        out.append(f"<h2>{escape(tag)}</h2>")
        for path, method, op in operations:
            if op.get("tags", ["Other"])[0] == tag:
                out.append(_operation(path, method, op, aliases.get(op["operationId"], [])))
    out.append("<h2 id=errors>Errors</h2><p>Every error is the <a href='#schema-Error'>Error</a> object.</p>")
    out.append(_errors(document["components"].get("responses", {})))
    out.append("<h2 id=schemas>Schemas</h2>")
    for name, schema in document["components"]["schemas"].items():
        out.append(f"<h3 id='schema-{escape(name)}'>{escape(name)}</h3>{_schema_block(schema)}")
    out.append("</body></html>")
    return "\n".join(out)


def _operation(path: str, method: str, op: dict[str, Any], aliases: list[str]) -> str:
    parts = [
        f"<article id='{op['operationId']}'><h3><span class='m {method}'>{method.upper()}</span> "
        f"<code>{escape(path)}</code> {escape(op.get('summary', ''))}</h3>"
    ]
    if op.get("description"):
        parts.append(f"<p>{_text(op['description'])}</p>")
    if aliases:
        parts.append("<p class=note>Also at: " + ", ".join(f"<code>{escape(a)}</code>" for a in aliases) + "</p>")
    if op.get("security") == []:
        parts.append("<p class=note>No key needed.</p>")
    params = op.get("parameters", [])
    if params:
        listed = "".join(
            f"<tr><td><code>{escape(p['name'])}</code> ({p['in']})</td><td>{_type(p.get('schema', {}), 1)}</td>"
            f"<td>{_text(p.get('description', ''))}</td></tr>"
            for p in params
        )
        parts.append(f"<table><tr><th>Parameter</th><th>Type</th><th></th></tr>{listed}</table>")
    for media, content in op.get("requestBody", {}).get("content", {}).items():
        parts.append(f"<p><b>Request body</b> <code>{escape(media)}</code>: {_type(content['schema'], 0)}</p>")
    rows = []
    errors = []  # the shared error answers: one row, their codes under Errors
    for status, response in op["responses"].items():
        if "$ref" in response:
            errors.append(f"<a href='#error-{escape(status)}'>{escape(status)}</a>")
            continue
        rows.append(f"<tr><td>{escape(status)}</td><td>{_text(response.get('description', ''))}</td>")
        rows.append(f"<td>{_content(response)}</td></tr>")
    if errors:
        rows.append(f"<tr><td>{', '.join(errors)}</td><td>errors</td><td>{_type(_ERROR, 0)}</td></tr>")
    parts.append(f"<table><tr><th>Status</th><th>Meaning</th><th>Body</th></tr>{''.join(rows)}</table></article>")
    return "".join(parts)


def _errors(responses: dict[str, Any]) -> str:
    rows = [
        f"<tr><td id='error-{escape(status)}'>{escape(status)}</td><td>{_text(response.get('description', ''))}</td>"
        f"<td>{', '.join(f'<code>{escape(h)}</code>' for h in response.get('headers', {}))}</td></tr>"
        for status, response in responses.items()
    ]
    return f"<table><tr><th>Status</th><th>Code</th><th>Headers</th></tr>{''.join(rows)}</table>"


def _content(response: dict[str, Any]) -> str:
    return "<br>".join(
        f"<code>{escape(media)}</code>: {_type(c.get('schema', {}), 0)}"
        for media, c in response.get("content", {}).items()
    )


def _schema_block(schema: dict[str, Any], depth: int = 0) -> str:
    """An object schema as a table of its fields; anything else as its type."""
    note = f"<p>{_text(schema['description'])}</p>" if schema.get("description") and depth == 0 else ""
    properties = schema.get("properties")
    if not properties:
        return note + f"<p>{_type(schema, depth)}</p>"
    required = set(schema.get("required", []))
    rows = []
    for name, field in properties.items():
        mark = " <span class=req title=required>*</span>" if name in required else ""
        detail = [_text(field["description"])] if field.get("description") else []
        if "default" in field:
            detail.append(f"default <code>{escape(_json(field['default']))}</code>")
        rows.append(
            f"<tr><td><code>{escape(name)}</code>{mark}</td><td>{_type(field, depth + 1)}</td>"
            f"<td>{'; '.join(detail)}</td></tr>"
        )
    extra = "" if schema.get("additionalProperties") is not False else "<p class=note>No other fields.</p>"
    return note + f"<table><tr><th>Field</th><th>Type</th><th>Notes</th></tr>{''.join(rows)}</table>{extra}"


def _type(schema: dict[str, Any], depth: int) -> str:
    """A schema as a short type expression, with links to the named schemas it uses."""
    if "$ref" in schema:
        name = escape(schema["$ref"].rsplit("/", 1)[1])
        return f"<a href='#schema-{name}'>{name}</a>"
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            joiner = " &amp; " if combinator == "allOf" else " | "
            return joiner.join(_type(option, depth) for option in schema[combinator]) + _constraints(schema)
    if "const" in schema:
        return f"<code>{escape(_json(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{escape(_json(v))}</code>" for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        kind = " | ".join(kind)
    if kind == "array":
        return "array of " + _type(schema.get("items", {}), depth) + _constraints(schema)
    if kind == "object" and schema.get("properties"):
        return _schema_block(schema, depth) if depth < _MAX_DEPTH else "object"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "map of " + _type(schema["additionalProperties"], depth) + _constraints(schema)
    if schema.get("format") == "binary":
        kind = "file"
    return escape(kind) + _constraints(schema)


def _constraints(schema: dict[str, Any]) -> str:
    found = [text.format(escape(_json(schema[key]))) for key, text in _CONSTRAINTS.items() if key in schema]
    return f" <span class=note>({', '.join(found)})</span>" if found else ""


def _text(text: str) -> str:
    """Escaped prose with `backticks` as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
