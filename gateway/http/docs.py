"""`/docs`: a static HTML page rendered from the OpenAPI document.

No JavaScript and no CDN (the machines have no internet): the page is built
once at start-up from the same document `/openapi.json` serves, so the two
always agree — routes, parameters, example bodies, schemas, the limits and
the status table.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
    "text-align:left;vertical-align:top}code,pre{background:#f4f4f4}pre{padding:.5em;overflow:auto}"
    "h3 code{font-size:1em}.m{font-weight:bold;color:#05a}"
)


def _type_of(schema: dict[str, Any]) -> str:
    """One cell: a link for a $ref, the element type for an array, else type and constraints."""
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'
    if schema.get("type") == "array":
        return "array of " + _type_of(schema["items"])
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{escape(str(v))}</code>" for v in schema["enum"])
    parts = [escape(str(schema.get("type", "any")))]
    for key in ("format", "pattern", "minimum", "maximum", "maxLength", "contentEncoding"):
        if key in schema:
            parts.append(f"{key} <code>{escape(str(schema[key]))}</code>")
    return ", ".join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [
        f'<h3 id="op-{escape(op["operationId"])}"><span class="m">{method.upper()}</span> '
        f"<code>{escape(path)}</code></h3>",
        f"<p><b>{escape(op['summary'])}</b>. {escape(op['description'])}</p>",
    ]
    params = [p for p in op["parameters"] if "$ref" not in p]
    if params:
        rows = [
            [
                f"<code>{escape(p['name'])}</code>",
                p["in"],
                "yes" if p["required"] else "no",
                _type_of(p["schema"]),
                escape(p["description"]),
            ]
            for p in params
        ]
        parts.append(_table(["parameter", "in", "required", "type", "meaning"], rows))
    body = op.get("requestBody")
    if body is not None:
        media = body["content"]["application/json"]
        parts.append(f"<p>Body: {_type_of(media['schema'])}, for example</p>")
        parts.append(f"<pre>{escape(json.dumps(media['example'], indent=2, ensure_ascii=False))}</pre>")
    replies = []
    for status, reply in op["responses"].items():
        if "$ref" in reply:
            continue
        schema = next(iter(reply["content"].values()))["schema"]
        replies.append([status, escape(reply["description"]), _type_of(schema)])
    parts.append(_table(["status", "meaning", "body"], replies))
    errors = [s for s, r in op["responses"].items() if "$ref" in r]
    parts.append(f"<p>Errors (<a href='#schema-Error'>Error</a>): {', '.join(errors)}</p>")
    return "\n".join(parts)


def _schema(name: str, schema: dict[str, Any]) -> str:
    head = f'<h3 id="schema-{escape(name)}"><code>{escape(name)}</code></h3>'
    if "properties" not in schema:
        return f"{head}<p>{_type_of(schema)}</p>"
    rows = [
        [f"<code>{escape(field)}</code>", _type_of(sub), escape(str(sub.get("description", "")))]
        for field, sub in schema["properties"].items()
    ]
    note = escape(str(schema.get("description", "")))
    return f"{head}<p>{note}</p>{_table(['field', 'type', 'notes'], rows)}"


def render(document: dict[str, Any]) -> str:
    info = document["info"]
    limits_rows = [
        [f"<code>{escape(x['name'])}</code>", escape(str(x["value"])), escape(x["unit"]), escape(x["reason"])]
        for x in document["x-shardbank-limits"]
    ]
    status_rows = [
        [f"<code>{x['code']}</code>", str(x["http_status"])] for x in document["x-shardbank-status-codes"]
    ]
    operations = [
        _operation(path, method, op)
        for path, methods in document["paths"].items()
        for method, op in methods.items()
    ]
    schemas = [_schema(name, schema) for name, schema in document["components"]["schemas"].items()]
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(info['title'])}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{escape(info['title'])} ({escape(info['version'])})</h1>",
            f"<p>{escape(info['description'])}</p>",
            '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>',
            '<h2>Errors</h2><p>Every error body is <code>{"code", "reason", "message", "details"}</code>; '
            "any other code is 500 with a request id in <code>details</code>. 429 and 503 carry "
            "<code>Retry-After</code> except for BATCH_TOO_LARGE.</p>",
            _table(["gRPC code", "HTTP status"], status_rows),
            "<h2>Limits</h2>",
            _table(["name", "value", "unit", "why / what happens"], limits_rows),
            "<h2>Routes</h2>",
            *operations,
            "<h2>Schemas</h2>",
            *schemas,
            "</body></html>",
        ]
    )
