"""The admin RPCs (API keys, audit log) and the servicer that serves them
beside the account and money RPCs of `gateway.service.BankServicer`."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.auth import audit, guard, keys
from gateway.dispatch import Budget
from gateway.handlers import BankHandlers
from gateway.service import BankServicer, Context
from shardbank import errors, meta
from shardbank.v1 import bank_pb2

INVALID_ROLE = "INVALID_ROLE"
INVALID_KEY_ID = "INVALID_KEY_ID"
KEY_NOT_FOUND = "KEY_NOT_FOUND"
# Characters of ListAudit's filters (key ids are 12, actions ~20, targets 20).
FILTER_LENGTH_MAX = 64
PAGE_TOKEN_DIGITS_MAX = 20


def public_key(key: keys.ApiKey) -> bank_pb2.ApiKey:
    """Never the hash."""
    return bank_pb2.ApiKey(
        key_id=key.key_id,
        role=key.role,
        customer_id=key.customer_id,
        created_at_unix_ms=key.created_at_unix_ms,
        revoked=key.revoked,
    )


def audit_record(record: dict[str, Any]) -> bank_pb2.AuditRecord:
    return bank_pb2.AuditRecord(**{name: record[name] for name in audit.FIELDS if name in record})


class AdminHandlers:
    def __init__(self, etcd_endpoint: str, auth: guard.Auth) -> None:
        self._endpoint = etcd_endpoint
        self._auth = auth

    async def _etcd_call(self, work: Any) -> Any:
        def run() -> Any:
            client = meta.connect(self._endpoint)
            try:
                return work(client)
            finally:
                client.close()

        return await asyncio.to_thread(run)

    async def create_api_key(
        self, request: bank_pb2.CreateApiKeyRequest, _budget: Budget
    ) -> bank_pb2.CreateApiKeyResponse:
        caller = self._auth.caller()
        try:
            keys.check_role(request.role, request.customer_id)
        except ValueError as exc:
            await self._auth.record(caller, guard.KEY_CREATE, [("", 3, INVALID_ROLE)])
            raise errors.invalid(INVALID_ROLE, str(exc)) from None
        key, token = await self._etcd_call(lambda c: keys.create_key(c, request.role, request.customer_id))
        self._auth.keys.put(key)
        await self._auth.record(caller, guard.KEY_CREATE, [(key.key_id, 0, "")])
        return bank_pb2.CreateApiKeyResponse(key=public_key(key), token=token)

    async def revoke_api_key(self, request: bank_pb2.RevokeApiKeyRequest, _budget: Budget) -> bank_pb2.ApiKey:
        caller = self._auth.caller()
        key_id = request.key_id
        if not keys.KEY_ID_RE.fullmatch(key_id):
            raise errors.invalid(INVALID_KEY_ID, "a key id is 12 hex characters")
        revoked: keys.ApiKey | None = await self._etcd_call(lambda c: keys.revoke_key(c, key_id))
        if revoked is None:
            await self._auth.record(caller, guard.KEY_REVOKE, [(key_id, 5, KEY_NOT_FOUND)])
            raise errors.not_found(KEY_NOT_FOUND, "no such key")
        self._auth.keys.put(revoked)
        await self._auth.record(caller, guard.KEY_REVOKE, [(key_id, 0, "")])
        return public_key(revoked)

    async def list_api_keys(
        self, _request: bank_pb2.ListApiKeysRequest, _budget: Budget
    ) -> bank_pb2.ListApiKeysResponse:
        self._auth.caller()
        found: list[keys.ApiKey] = await self._etcd_call(keys.list_keys)
        return bank_pb2.ListApiKeysResponse(keys=[public_key(k) for k in found])

    async def list_audit(
        self, request: bank_pb2.ListAuditRequest, _budget: Budget
    ) -> bank_pb2.ListAuditResponse:
        self._auth.caller()
        page_size = request.page_size or audit.PAGE_SIZE_DEFAULT
        if not 1 <= page_size <= audit.PAGE_SIZE_MAX:
            raise errors.invalid(errors.INVALID_PAGE_SIZE, f"page_size must be 1..{audit.PAGE_SIZE_MAX}")
        token = request.page_token
        if token and not (token.isascii() and token.isdigit() and len(token) <= PAGE_TOKEN_DIGITS_MAX):
            raise errors.invalid(errors.INVALID_PAGE_TOKEN, "page_token is not one this service issued")
        for text in (request.actor_key_id, request.action, request.target):
            if len(text) > FILTER_LENGTH_MAX or not (text.isascii() and text.isprintable()):
                raise errors.invalid(
                    errors.INVALID_ARGUMENT, f"filters are at most {FILTER_LENGTH_MAX} characters"
                )
        records, next_before = await self._auth.audit.page(
            page_size, int(token) if token else None, request.actor_key_id, request.action, request.target
        )
        return bank_pb2.ListAuditResponse(
            records=[audit_record(r) for r in records],
            next_page_token=str(next_before) if next_before is not None else "",
        )


class AuthBankServicer(BankServicer):
    """`BankServicer` plus the admin RPCs, all through the same `_run`."""

    def __init__(self, handlers: BankHandlers, admin: AdminHandlers) -> None:
        super().__init__(handlers)
        self._admin = admin

    async def CreateApiKey(
        self, request: bank_pb2.CreateApiKeyRequest, context: Context
    ) -> bank_pb2.CreateApiKeyResponse:
        return await self._run("CreateApiKey", self._admin.create_api_key, request, context)

    async def RevokeApiKey(self, request: bank_pb2.RevokeApiKeyRequest, context: Context) -> bank_pb2.ApiKey:
        return await self._run("RevokeApiKey", self._admin.revoke_api_key, request, context)

    async def ListApiKeys(
        self, request: bank_pb2.ListApiKeysRequest, context: Context
    ) -> bank_pb2.ListApiKeysResponse:
        return await self._run("ListApiKeys", self._admin.list_api_keys, request, context)

    async def ListAudit(
        self, request: bank_pb2.ListAuditRequest, context: Context
    ) -> bank_pb2.ListAuditResponse:
        return await self._run("ListAudit", self._admin.list_audit, request, context)
