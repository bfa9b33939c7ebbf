"""Who is calling: set by the interceptor for the handler's task, read by the
handlers (authorization, audit) and by `gateway.convert` (masking)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: str
    customer_id: str = ""
    peer: str = ""
    request_id: str = ""


_CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current() -> Principal | None:
    """The caller of the RPC being served; None where no interceptor ran
    (in-process tests that build handlers without authentication)."""
    return _CURRENT.get()


def bind(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _CURRENT.set(principal)


def unbind(token: contextvars.Token[Principal | None]) -> None:
    _CURRENT.reset(token)
