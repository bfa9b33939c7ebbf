"""Bodies in and out, by the proto3 JSON mapping and nothing else.

A body is parsed into the request's proto message with
`json_format.ParseDict(..., ignore_unknown_fields=False)`, so the proto is the
only schema: an unknown field, a wrong JSON type or an enum name that does not
exist is a 400, never silently dropped. Before that, a route may narrow the
top-level fields a client may set (`allowed`): fields that come from the path
or the route (account id, transfer kind) and output-only fields are refused
rather than quietly overwritten, so a client never believes it set something
it did not. Responses are `MessageToDict` with proto field names and every
field printed (a zero balance shows as "0", not as a missing key), written
by `orjson` (several times faster than `json.dumps`; the text differs only
in whitespace and in sending non-ASCII as UTF-8 rather than `\\u` escapes).
Bodies are still read by the standard library: its hooks refuse duplicate
keys and inexact numbers, which orjson cannot.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Collection
from typing import Any, TypeVar

import grpc
import orjson
from aiohttp import web
from google.protobuf import descriptor, json_format, message

from gateway.http import limits
from gateway.http.errors import (
    INVALID_BODY,
    MALFORMED_JSON,
    UNSUPPORTED_MEDIA_TYPE,
    HttpError,
    body_too_large,
)
from shardbank import errors

M = TypeVar("M", bound=message.Message)

JSON_CONTENT_TYPE = "application/json"
# Parser messages can quote the input; keep what we echo back short.
_ERROR_MESSAGE_LENGTH_MAX = 300


def to_json(msg: message.Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def json_body(
    value: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """`web.json_response` (same Content-Type) serialized by orjson."""
    return web.Response(
        body=orjson.dumps(value),
        status=status,
        headers=headers,
        content_type=JSON_CONTENT_TYPE,
        charset="utf-8",
    )


def invalid_body(text: str) -> errors.BankError:
    return errors.invalid(INVALID_BODY, text[:_ERROR_MESSAGE_LENGTH_MAX])


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is `{}`.

    JSON bodies must say so (Content-Type: application/json): besides being
    honest, a browser cannot send that cross-site without a CORS preflight.
    """
    if request.content_length is not None and request.content_length > limits.BODY_BYTES_MAX:
        raise body_too_large()
    raw = await request.read()  # aiohttp refuses > client_max_size with 413
    if not raw.strip():
        return {}
    if request.content_type != JSON_CONTENT_TYPE:
        raise HttpError(
            grpc.StatusCode.INVALID_ARGUMENT,
            UNSUPPORTED_MEDIA_TYPE,
            f"bodies are {JSON_CONTENT_TYPE}, not {request.content_type}",
            http_status=415,
        )
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_nan,
            parse_float=_exact_float,
        )
    except _InexactNumber as exc:
        raise invalid_body(str(exc)) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.invalid(
            MALFORMED_JSON, f"the body is not valid JSON: {exc}"[:_ERROR_MESSAGE_LENGTH_MAX]
        ) from None
    except RecursionError:
        # json's scanner recurses per nesting level: [[[[...]]]] in 1 MiB is
        # far deeper than any body of ours, and must not be a 500.
        raise errors.invalid(MALFORMED_JSON, "the body is nested too deeply") from None
    if not isinstance(value, dict):
        raise invalid_body("the body must be a JSON object")
    return value


def parse_message(value: dict[str, Any], target: M, allowed: Collection[str] | None = None) -> M:
    """Fill `target` from a JSON object by the proto3 JSON mapping.

    `allowed`: proto names of the top-level fields a client may set here
    (None: all of them).
    """
    fields = _fields_by_json_key(target.DESCRIPTOR)
    _check_integers(value, target.DESCRIPTOR)
    for key in value:
        field = fields.get(key)
        if field is None:
            raise invalid_body(f"unknown field {key!r} in {target.DESCRIPTOR.name}")
        if allowed is not None and field.name not in allowed:
            raise invalid_body(f"field {field.name!r} cannot be set on this route")
    try:
        json_format.ParseDict(value, target, ignore_unknown_fields=False)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise invalid_body(str(exc)) from None
    check_string_lengths(target)
    return target


def check_string_lengths(msg: message.Message) -> None:
    """Every string of the message (nested too) within STRING_LENGTH_MAX."""
    for field, value in msg.ListFields():
        if field.type == descriptor.FieldDescriptor.TYPE_STRING:
            texts = value if _is_repeated(field) else [value]
            for text in texts:
                if len(text) > limits.STRING_LENGTH_MAX:
                    raise invalid_body(f"{field.name} is longer than {limits.STRING_LENGTH_MAX} characters")
        elif field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            items = value if _is_repeated(field) else [value]
            for item in items:
                if isinstance(item, message.Message):
                    check_string_lengths(item)


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _fields_by_json_key(desc: Any) -> dict[str, descriptor.FieldDescriptor]:
    """ParseDict accepts both the proto name and the lowerCamel JSON name."""
    fields: dict[str, descriptor.FieldDescriptor] = {}
    for field in desc.fields:
        fields[field.name] = field
        fields[field.json_name] = field
    return fields


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice is ambiguous (which amount did they mean?): refuse."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_nan(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _InexactNumber(ValueError):
    pass


def _exact_float(text: str) -> float:
    """A JSON number with a fraction or exponent, kept only when the float is
    exactly that number: 100.0000000000000001 would otherwise become 100.0 and
    pass as the integer 100 (and a 16-digit account id could turn into a
    neighbour's). No field of the API is a float, so nothing exact is lost."""
    value = float(text)
    if not math.isfinite(value) or decimal.Decimal(text) != decimal.Decimal(value):
        raise _InexactNumber(f"the number {text[:40]} cannot be represented exactly")
    return value


_INTEGER_TYPES = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_SINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
        descriptor.FieldDescriptor.TYPE_INT32,
        descriptor.FieldDescriptor.TYPE_UINT32,
        descriptor.FieldDescriptor.TYPE_SINT32,
        descriptor.FieldDescriptor.TYPE_FIXED32,
        descriptor.FieldDescriptor.TYPE_SFIXED32,
    }
)
# What the OpenAPI document promises for 64-bit integers as strings. json_format
# alone also reads "1e3", "+100", "1_000", "١٠٠" and "100.0000000000000001"
# (the last through float(), silently dropping the fraction).
_INTEGER_TEXT = re.compile(r"-?[0-9]+")


def _check_integers(value: Any, desc: Any) -> None:
    """Integer fields given as strings must be plain decimal digits (nested too)."""
    if not isinstance(value, dict):
        return  # ParseDict refuses a non-object where a message belongs
    fields = _fields_by_json_key(desc)
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue  # unknown fields are refused by the caller / ParseDict
        items = item if _is_repeated(field) and isinstance(item, list) else [item]
        for one in items:
            if field.message_type is not None and not field.message_type.GetOptions().map_entry:
                _check_integers(one, field.message_type)
            elif field.type in _INTEGER_TYPES and isinstance(one, str) and not _INTEGER_TEXT.fullmatch(one):
                raise invalid_body(f"{field.name} must be an integer in decimal digits, got {one[:40]!r}")
