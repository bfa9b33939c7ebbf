"""The OpenAPI 3.1 document, generated from the proto descriptors and the
route table; nothing in it is a second hand-written copy of a message.

Schemas follow the proto3 JSON mapping (what `json_format` reads and
writes): proto field names, 64-bit integers as decimal strings (JSON numbers
lose precision above 2**53, and 16-digit account ids are above it), enums as
their names, repeated fields as arrays, messages as `$ref`s. Only the error
envelope is written by hand: it is the HTTP edge's own shape, not a proto
message.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor

from gateway.http import errors as http_errors
from gateway.http import limits
from gateway.http.routes import ROUTES, Body, Param, Route

FD = descriptor.FieldDescriptor
_REF = "#/components/schemas/"
# Statuses any route may answer (auth is the gRPC side's, load and deadline are everyone's).
COMMON_ERROR_STATUSES = (400, 401, 403, 429, 500, 503, 504)

_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_SCALARS: dict[int, dict[str, Any]] = {
    FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    FD.TYPE_INT64: _INT64,
    FD.TYPE_SINT64: _INT64,
    FD.TYPE_SFIXED64: _INT64,
    FD.TYPE_UINT64: _UINT64,
    FD.TYPE_FIXED64: _UINT64,
    FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FD.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    FD.TYPE_FIXED32: {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}


def schema_name(desc: descriptor.Descriptor | descriptor.EnumDescriptor) -> str:
    """`shardbank.v1.Account` -> `Account`; other packages keep a short prefix-free name too."""
    package = desc.file.package
    return desc.full_name[len(package) + 1 :] if package else desc.full_name


class SchemaBuilder:
    """Collects `components.schemas`: each message/enum once, by name."""

    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, desc: descriptor.Descriptor) -> dict[str, Any]:
        name = schema_name(desc)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive messages terminate
            self.schemas[name] = self.message_schema(desc)
        return {"$ref": _REF + name}

    def enum_ref(self, desc: descriptor.EnumDescriptor) -> dict[str, Any]:
        name = schema_name(desc)
        if name not in self.schemas:
            self.schemas[name] = {
                "type": "string",
                "enum": [value.name for value in desc.values],
                "description": f"{desc.full_name}; the number is accepted on input too.",
            }
        return {"$ref": _REF + name}

    def message_schema(
        self, desc: descriptor.Descriptor, only: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        if desc.file.package.startswith("google.protobuf"):
            # Well-known types have special JSON forms (Timestamp as RFC 3339...);
            # fail loudly rather than document them wrong when one is added.
            raise NotImplementedError(f"no JSON schema for well-known type {desc.full_name}")
        fields = [f for f in desc.fields if only is None or f.name in only]
        if only is not None and len(fields) != len(only):
            missing = set(only) - {f.name for f in fields}
            raise ValueError(f"{desc.full_name} has no field(s) {sorted(missing)}")
        return {
            "type": "object",
            "description": f"{desc.full_name} (proto3 JSON mapping)",
            "properties": {f.name: self.field_schema(f) for f in fields},
            "additionalProperties": False,
        }

    def field_schema(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self._single(value)}
        single = self._single(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def _single(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return self.enum_ref(field.enum_type)
        if field.type == FD.TYPE_STRING:
            return {
                "type": "string",
                "maxLength": limits.FIELD_LENGTH_MAX.get(field.full_name, limits.STRING_LENGTH_MAX),
            }
        return dict(_SCALARS[field.type])

    def body_ref(self, body: Body) -> dict[str, Any]:
        if body.allowed is None:
            return self.ref(body.message)
        if body.schema_name not in self.schemas:
            schema = self.message_schema(body.message, body.allowed)
            schema["description"] = f"the settable fields of {body.message.full_name}"
            self.schemas[body.schema_name] = schema
        return {"$ref": _REF + body.schema_name}


def error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Every error: `code` is the google.rpc.Code name, `reason` the word to branch on.",
        "required": ["code", "reason", "message", "details"],
        "properties": {
            "code": {"type": "string", "enum": [code.name for code in grpc.StatusCode if code.name != "OK"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "details": {
                "type": "object",
                "description": "string values: always request_id; transfer_id/transfer_status for a refused "
                "transfer; ErrorInfo metadata of the gRPC status",
                "additionalProperties": {"type": "string"},
            },
        },
        "additionalProperties": False,
    }


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "description": param.description,
        "schema": dict(param.schema),
    }


def operation(route: Route, builder: SchemaBuilder) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for reply in route.replies:
        schema = builder.ref(reply.message) if reply.message is not None else {"type": "object"}
        if reply.content_type != "application/json":
            schema = {"type": "string"}
        responses[str(reply.status)] = {
            "description": reply.description,
            "content": {reply.content_type: {"schema": schema}},
        }
    for status in sorted(set(COMMON_ERROR_STATUSES) | set(route.errors)):
        responses[str(status)] = {"$ref": "#/components/responses/Error"}
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "description": route.description,
        "tags": [route.tag],
        "parameters": [_parameter(p) for p in route.params] + [{"$ref": "#/components/parameters/RequestId"}],
        "responses": responses,
    }
    if route.body is not None:
        op["requestBody"] = {
            "required": False,
            "content": {
                "application/json": {
                    "schema": builder.body_ref(route.body),
                    "example": dict(route.body.example),
                }
            },
        }
    return op


def status_table() -> list[dict[str, Any]]:
    return [
        {"code": code.name, "http_status": status}
        for code, status in sorted(http_errors.HTTP_STATUS.items(), key=lambda item: item[0].value[0])
        if code != grpc.StatusCode.OK
    ]


def document(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    builder = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route, builder)
    builder.schemas["Error"] = error_schema()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "shardbank HTTP/JSON API",
            "version": "v1",
            "description": "HTTP/JSON over the gRPC shardbank.v1.Bank service, by the proto3 JSON mapping. "
            "Unknown fields are refused. FAILED_PRECONDITION is 422 (understood, but the account's "
            "state forbids it); 409 is for conflicts (ALREADY_EXISTS, ABORTED). Credentials in "
            "Authorization are passed to the gRPC gateway unchanged.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "responses": {
                "Error": {
                    "description": "an error (see code and reason)",
                    "content": {"application/json": {"schema": {"$ref": _REF + "Error"}}},
                }
            },
            "parameters": {
                "RequestId": {
                    "name": "X-Request-Id",
                    "in": "header",
                    "required": False,
                    "description": "echoed back and passed to the gRPC gateway; one is made up when absent",
                    "schema": {
                        "type": "string",
                        "pattern": f"^[A-Za-z0-9._:-]{{1,{limits.REQUEST_ID_LENGTH_MAX}}}$",
                    },
                }
            },
            "securitySchemes": {
                "authorization": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "forwarded to the gRPC gateway as `authorization` metadata",
                }
            },
        },
        "x-shardbank-limits": [
            {"name": limit.name, "value": limit.value, "unit": limit.unit, "reason": limit.reason}
            for limit in limits.LIMITS
        ],
        "x-shardbank-status-codes": status_table(),
    }
