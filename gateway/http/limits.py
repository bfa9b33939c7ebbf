"""Limits of the HTTP/JSON edge, each with its unit and reason.

They sit in front of the gRPC gateway's own checks (`shardbank.limits`,
`gateway.validation`), which still run: these exist so that one HTTP request
cannot make the process buffer, parse or forward more than a bounded amount of
work. `/docs` lists them (from `LIMITS`), so the table below is the one place
they are written down.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardbank import limits

# Bytes of one request body. A full HTTP batch of transfers (below) is about
# 300 KiB of JSON; 1 MiB leaves room and keeps a slow client from making us
# buffer megabytes. Larger -> 413 BODY_TOO_LARGE.
BODY_BYTES_MAX = 1024 * 1024
# Transfers in one POST /v1/transfers:batch. Smaller than the gRPC limit
# (shardbank.limits.BATCH_ITEMS_MAX) because a JSON reply of 8192 transfers is
# several MiB and one HTTP request should stay well under the call deadline.
# Larger -> 429 RESOURCE_EXHAUSTED BATCH_TOO_LARGE, the same code and reason
# the gRPC API gives for its own limit (split the batch; waiting won't help,
# so no Retry-After).
BATCH_ITEMS_MAX = 1000
# ListHistory page size accepted in ?page_size=; absent means the server's
# default (shardbank.limits.HISTORY_PAGE_SIZE_DEFAULT).
PAGE_SIZE_MIN = 1
PAGE_SIZE_MAX = limits.HISTORY_PAGE_SIZE_MAX
# ?page_token= is opaque; bounded like gateway.validation.PAGE_TOKEN_LENGTH_MAX.
PAGE_TOKEN_LENGTH_MAX = 512
# Characters of any string field of a body. The gateway applies the narrower
# per-field limits (memo, reference, reason...); this one only keeps a body
# from carrying one huge string through parsing and onto the gRPC channel.
STRING_LENGTH_MAX = 1024
# Characters of the Authorization header forwarded as gRPC metadata.
AUTHORIZATION_LENGTH_MAX = 4096
# Characters of an Idempotency-Key header (a transfer id: a UUID is 36).
IDEMPOTENCY_KEY_LENGTH_MAX = 64
# Characters of a client-sent X-Request-Id kept; a longer or odd one is
# replaced by a fresh id rather than refused.
REQUEST_ID_LENGTH_MAX = 64
# Deadline of every gRPC call the edge makes (seconds), the client default.
CALL_DEADLINE_S = limits.CALL_DEADLINE_S
# Deadline of the /healthz probe (seconds): a health check must answer fast.
HEALTH_DEADLINE_S = 2.0
# Seconds in Retry-After on 429/503 when the upstream status carries no
# google.rpc.RetryInfo.
RETRY_AFTER_S_DEFAULT = 1

if not BATCH_ITEMS_MAX <= limits.BATCH_ITEMS_MAX:
    raise RuntimeError("the HTTP batch limit must not exceed the gRPC one")


@dataclass(frozen=True)
class Limit:
    name: str
    value: int | float
    unit: str
    reason: str


LIMITS: tuple[Limit, ...] = (
    Limit("BODY_BYTES_MAX", BODY_BYTES_MAX, "bytes", "request body; larger -> 413 BODY_TOO_LARGE"),
    Limit(
        "BATCH_ITEMS_MAX",
        BATCH_ITEMS_MAX,
        "transfers",
        "per POST /v1/transfers:batch; larger -> 429 BATCH_TOO_LARGE (split the batch)",
    ),
    Limit("PAGE_SIZE_MIN", PAGE_SIZE_MIN, "entries", "?page_size= of history; absent -> server default"),
    Limit("PAGE_SIZE_MAX", PAGE_SIZE_MAX, "entries", "?page_size= of history; outside -> 400"),
    Limit("PAGE_TOKEN_LENGTH_MAX", PAGE_TOKEN_LENGTH_MAX, "characters", "?page_token=; longer -> 400"),
    Limit(
        "STRING_LENGTH_MAX",
        STRING_LENGTH_MAX,
        "characters",
        "any string in a body (narrower per-field limits apply in the gateway)",
    ),
    Limit("AUTHORIZATION_LENGTH_MAX", AUTHORIZATION_LENGTH_MAX, "characters", "Authorization header"),
    Limit("IDEMPOTENCY_KEY_LENGTH_MAX", IDEMPOTENCY_KEY_LENGTH_MAX, "characters", "Idempotency-Key header"),
    Limit("CALL_DEADLINE_S", CALL_DEADLINE_S, "seconds", "deadline of each gRPC call; over -> 504"),
    Limit("HEALTH_DEADLINE_S", HEALTH_DEADLINE_S, "seconds", "deadline of the /healthz probe"),
    Limit("MEMO_LENGTH_MAX", limits.MEMO_LENGTH_MAX, "characters", "Transfer.memo (checked by the gateway)"),
    Limit(
        "REFERENCE_LENGTH_MAX",
        limits.REFERENCE_LENGTH_MAX,
        "characters",
        "Transfer.reference (checked by the gateway)",
    ),
    Limit(
        "STATUS_REASON_LENGTH_MAX",
        limits.STATUS_REASON_LENGTH_MAX,
        "characters",
        "reason of freeze/unfreeze/close (checked by the gateway)",
    ),
)

# Narrower string limits shown in the OpenAPI schemas (maxLength), by proto
# field full name; every other string gets STRING_LENGTH_MAX.
FIELD_LENGTH_MAX: dict[str, int] = {
    "shardbank.v1.Transfer.memo": limits.MEMO_LENGTH_MAX,
    "shardbank.v1.Transfer.reference": limits.REFERENCE_LENGTH_MAX,
    "shardbank.v1.StatusRequestItem.reason": limits.STATUS_REASON_LENGTH_MAX,
    "shardbank.v1.Holder.country": 2,
}
