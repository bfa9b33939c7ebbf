"""API keys: the token format, how keys are stored, and the gateway's cache.

A token is `sbk_<key_id>_<secret>`: key_id is 12 hex characters (the public
name of the key, shown in listings and the audit log), secret is 32 random
bytes in URL-safe base64 without padding. API keys rather than JWTs: a key is
revoked at once (no token outlives its revocation), there is no clock skew to
get wrong, and the server keeps nothing worth stealing but a hash.

etcd holds `/shardbank/keys/<key_id>` = JSON {key_id, role, customer_id,
hash, created_at_unix_ms, revoked}; `hash` is the hex SHA-256 of the secret.
A fast hash is right here: the secret has 256 bits of entropy, so there is
nothing to brute-force (a slow hash protects low-entropy passwords). The
comparison is `hmac.compare_digest`. Every gateway reads the same keys, so a
key created or revoked through one gateway works or stops working at all of
them within `KeyCache.REFRESH_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import etcd3
import structlog

from gateway.auth import permissions
from shardbank import meta

log = structlog.get_logger("gateway.auth")

KEYS = f"{meta.PREFIX}/keys/"
TOKEN_PREFIX = "sbk_"
KEY_ID_BYTES = 6  # 12 hex characters
SECRET_BYTES = 32
KEY_ID_RE = re.compile(r"[0-9a-f]{12}")
# 32 bytes in unpadded URL-safe base64 are 43 characters.
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
TOKEN_LENGTH = len(TOKEN_PREFIX) + 12 + 1 + 43
BEARER = "bearer "
# customer_id: an opaque id of the bank's customer directory.
CUSTOMER_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    role: str
    customer_id: str
    hash: str
    created_at_unix_ms: int
    revoked: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> ApiKey:
        data: dict[str, Any] = json.loads(text)
        return cls(
            key_id=str(data["key_id"]),
            role=str(data["role"]),
            customer_id=str(data.get("customer_id", "")),
            hash=str(data["hash"]),
            created_at_unix_ms=int(data.get("created_at_unix_ms", 0)),
            revoked=bool(data.get("revoked", False)),
        )


@dataclass(frozen=True)
class Token:
    key_id: str
    secret: str

    @property
    def text(self) -> str:
        return f"{TOKEN_PREFIX}{self.key_id}_{self.secret}"


def new_token() -> Token:
    secret = base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).rstrip(b"=").decode()
    return Token(secrets.token_hex(KEY_ID_BYTES), secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(text: str) -> Token | None:
    """The token's parts, or None when it is not one of ours."""
    if len(text) != TOKEN_LENGTH or not text.startswith(TOKEN_PREFIX):
        return None
    key_id, sep, secret = text[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not KEY_ID_RE.fullmatch(key_id) or not _SECRET_RE.fullmatch(secret):
        return None
    return Token(key_id, secret)


def parse_authorization(value: str) -> Token | None:
    """`Bearer sbk_...` (scheme case-insensitive) -> the token; anything else None."""
    if value[: len(BEARER)].lower() != BEARER:
        return None
    return parse_token(value[len(BEARER) :].strip())


def matches(key: ApiKey, token: Token) -> bool:
    """The key is usable with this token: same id, same secret, not revoked."""
    same = hmac.compare_digest(key.hash.encode(), hash_secret(token.secret).encode())
    return same and key.key_id == token.key_id and not key.revoked


def check_role(role: str, customer_id: str) -> None:
    """Raises ValueError with a sentence when the pair cannot be a key."""
    if role not in permissions.ROLES:
        raise ValueError(f"role must be one of {', '.join(permissions.ROLES)}")
    if role == permissions.CUSTOMER and not CUSTOMER_ID_RE.fullmatch(customer_id):
        raise ValueError("a customer key needs a customer_id of 1-64 of A-Z a-z 0-9 . _ : -")
    if role != permissions.CUSTOMER and customer_id:
        raise ValueError("only customer keys have a customer_id")


# Storage (synchronous etcd client; the gateway calls these in a thread).


def create_key(client: etcd3.Etcd3Client, role: str, customer_id: str = "") -> tuple[ApiKey, str]:
    """Store a new key; returns it and its token text (the only copy of the secret)."""
    check_role(role, customer_id)
    token = new_token()
    key = ApiKey(token.key_id, role, customer_id, hash_secret(token.secret), int(time.time() * 1000))
    stored, _ = client.transaction(
        compare=[client.transactions.create(KEYS + key.key_id) == 0],
        success=[client.transactions.put(KEYS + key.key_id, key.to_json())],
        failure=[],
    )
    if not stored:  # 48 random bits collided: astronomically rare, never overwrite
        raise RuntimeError("key id collision; try again")
    return key, token.text


def read_key(client: etcd3.Etcd3Client, key_id: str) -> ApiKey | None:
    value, _ = client.get(KEYS + key_id)
    return None if value is None else ApiKey.from_json(value)


def list_keys(client: etcd3.Etcd3Client) -> list[ApiKey]:
    return sorted(
        (ApiKey.from_json(value) for value, _ in client.get_prefix(KEYS)),
        key=lambda k: (k.created_at_unix_ms, k.key_id),
    )


def revoke_key(client: etcd3.Etcd3Client, key_id: str) -> ApiKey | None:
    """Mark the key revoked (kept, so the audit log's key ids stay resolvable)."""
    for _ in range(REVOKE_ATTEMPTS_MAX):
        value, found = client.get(KEYS + key_id)
        if value is None:
            return None
        key = ApiKey.from_json(value)
        if key.revoked:
            return key
        revoked = ApiKey(**{**asdict(key), "revoked": True})
        done, _ = client.transaction(
            compare=[client.transactions.mod(KEYS + key_id) == found.mod_revision],
            success=[client.transactions.put(KEYS + key_id, revoked.to_json())],
            failure=[],
        )
        if done:
            return revoked
    raise RuntimeError("the key kept changing while being revoked")


REVOKE_ATTEMPTS_MAX = 5


def verify_token(client: etcd3.Etcd3Client, text: str) -> ApiKey | None:
    """The stored key this token is valid for, else None (bootstrap reuse)."""
    token = parse_token(text.strip())
    if token is None:
        return None
    key = read_key(client, token.key_id)
    return key if key is not None and matches(key, token) else None


class KeyCache:
    """Every key, refreshed from etcd every REFRESH_INTERVAL_S and on a miss.

    A miss on a well-formed key id reads that one key; ids that are not in
    etcd are remembered for MISS_TTL_S (at most MISSES_MAX of them) so random
    tokens cannot turn into one etcd read each.
    """

    REFRESH_INTERVAL_S = 1.0
    MISS_TTL_S = 1.0
    MISSES_MAX = 10_000

    def __init__(self, etcd_endpoint: str) -> None:
        self._endpoint = etcd_endpoint
        self._client: etcd3.Etcd3Client | None = None
        self._keys: dict[str, ApiKey] = {}
        self._misses: OrderedDict[str, float] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def _etcd(self) -> etcd3.Etcd3Client:
        if self._client is None:
            self._client = meta.connect(self._endpoint)
        return self._client

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()
        self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            self._client.close()

    async def refresh(self) -> None:
        keys = await asyncio.to_thread(lambda: list_keys(self._etcd()))
        self._keys = {key.key_id: key for key in keys}

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.REFRESH_INTERVAL_S)
            try:
                await self.refresh()
            except Exception as exc:  # etcd down: keep the last keys, try again
                self._client = None
                log.warning("keys_refresh_failed", error=type(exc).__name__)

    def put(self, key: ApiKey) -> None:
        """A change this gateway made: visible here at once."""
        self._keys[key.key_id] = key
        self._misses.pop(key.key_id, None)

    async def authenticate(self, token: Token) -> ApiKey | None:
        key = self._keys.get(token.key_id)
        if key is None:
            key = await self._read_missing(token.key_id)
        return key if key is not None and matches(key, token) else None

    async def _read_missing(self, key_id: str) -> ApiKey | None:
        now = time.monotonic()
        missed_at = self._misses.get(key_id)
        if missed_at is not None and now - missed_at < self.MISS_TTL_S:
            return None
        try:
            key = await asyncio.to_thread(lambda: read_key(self._etcd(), key_id))
        except Exception as exc:
            self._client = None
            log.warning("key_read_failed", error=type(exc).__name__)
            return None
        if key is None:
            self._misses[key_id] = now
            self._misses.move_to_end(key_id)
            while len(self._misses) > self.MISSES_MAX:
                self._misses.popitem(last=False)
            return None
        self._keys[key_id] = key
        return key
