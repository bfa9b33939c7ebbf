"""Service tokens: signing and checking (pure), the secret file, and both
interceptors on a real grpc.aio server on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from shardbank import errors, service_auth
from shardbank.errors import BankError
from shardbank.service_auth import CLOCK_SKEW_MS_MAX, sign, verify
from shardbank.v1 import ledger_pb2

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
METHOD = "/shardbank.v1.LedgerNode/Prepare"
NOW_MS = 1_700_000_000_000


def test_a_signed_token_verifies_and_names_the_caller() -> None:
    token = sign(SECRET, "coord-1", METHOD, NOW_MS)
    assert token.startswith(f"coord-1.{NOW_MS}.")
    assert verify(SECRET, token, METHOD, NOW_MS) == service_auth.Verdict(caller="coord-1")


@pytest.mark.parametrize("offset_ms", [-CLOCK_SKEW_MS_MAX, CLOCK_SKEW_MS_MAX, 0, 1234])
def test_clock_skew_within_the_bound_is_accepted(offset_ms: int) -> None:
    token = sign(SECRET, "gw-1", METHOD, NOW_MS + offset_ms)
    assert verify(SECRET, token, METHOD, NOW_MS).caller == "gw-1"


@pytest.mark.parametrize("offset_ms", [-CLOCK_SKEW_MS_MAX - 1, CLOCK_SKEW_MS_MAX + 1, 10 * CLOCK_SKEW_MS_MAX])
def test_clock_skew_beyond_the_bound_is_refused(offset_ms: int) -> None:
    token = sign(SECRET, "gw-1", METHOD, NOW_MS + offset_ms)
    verdict = verify(SECRET, token, METHOD, NOW_MS)
    assert verdict.caller == ""
    assert "skew" in verdict.why


def test_wrong_secret_is_refused() -> None:
    token = sign(OTHER_SECRET, "gw-1", METHOD, NOW_MS)
    assert verify(SECRET, token, METHOD, NOW_MS) == service_auth.Verdict(why="bad signature")


def test_a_token_is_bound_to_its_method() -> None:
    token = sign(SECRET, "gw-1", METHOD, NOW_MS)
    assert verify(SECRET, token, "/shardbank.v1.LedgerNode/Decide", NOW_MS).why == "bad signature"


def _tampered() -> list[str]:
    component_id, unix_ms, mac = sign(SECRET, "gw-1", METHOD, NOW_MS).split(".")
    flipped = ("0" if mac[0] != "0" else "1") + mac[1:]
    return [
        f"coord-1.{unix_ms}.{mac}",  # another caller
        f"{component_id}.{int(unix_ms) + 1}.{mac}",  # another time
        f"{component_id}.{unix_ms}.{flipped}",  # another signature
        f"{component_id}.{unix_ms}.{mac[:-1]}",  # truncated
        f"{component_id}.{unix_ms}.{mac.upper()}",  # not the canonical hex
    ]


@pytest.mark.parametrize("token", _tampered())
def test_a_tampered_token_is_refused(token: str) -> None:
    assert verify(SECRET, token, METHOD, NOW_MS).why == "bad signature"


@pytest.mark.parametrize(
    "token",
    [None, "", "gw-1", "gw-1.123", "a.b.c.d", "gw 1.1.ab", "gw-1.-5.ab", "gw-1.x.ab", "g" * 300],
)
def test_a_malformed_token_is_refused(token: str | None) -> None:
    verdict = verify(SECRET, token, METHOD, NOW_MS)
    assert verdict.caller == ""
    assert verdict.why


def test_signing_refuses_bad_ids_and_no_secret() -> None:
    with pytest.raises(ValueError):
        sign(SECRET, "gw.1", METHOD, NOW_MS)
    with pytest.raises(ValueError):
        sign(SECRET, "gw|1", METHOD, NOW_MS)
    with pytest.raises(ValueError):
        sign(b"", "gw-1", METHOD, NOW_MS)


def test_secret_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "cluster.secret"
    first = service_auth.ensure_secret_file(path)
    assert len(first) == service_auth.SECRET_BYTES
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().strip() == first.hex()
    assert service_auth.ensure_secret_file(path) == first
    assert service_auth.read_secret(path) == first


@pytest.mark.parametrize("content", ["", "not hex\n", "abcd\n"])
def test_a_bad_secret_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cluster.secret"
    path.write_text(content)
    with pytest.raises(service_auth.SecretError):
        service_auth.read_secret(path)
    with pytest.raises(service_auth.SecretError):
        service_auth.read_secret(tmp_path / "missing")


def test_load_cluster_secret_flag_env_and_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cluster.secret"
    secret = service_auth.ensure_secret_file(path)
    monkeypatch.delenv(service_auth.SECRET_FILE_ENV, raising=False)
    assert service_auth.load_cluster_secret(None, "shard-1") == b""
    assert service_auth.load_cluster_secret(str(path), "shard-1") == secret
    monkeypatch.setenv(service_auth.SECRET_FILE_ENV, str(path))
    assert service_auth.load_cluster_secret(None, "shard-1") == secret
    # An explicit empty flag turns it off even with the variable set.
    assert service_auth.load_cluster_secret("", "shard-1") == b""


def test_no_secret_means_no_interceptors() -> None:
    assert service_auth.channel_interceptors(b"", "gw-1") == []
    assert service_auth.server_interceptors(b"") == []


# ---- both interceptors on a real server (127.0.0.1:0) -------------------------

ECHO = "/test.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def with_server(scenario: Callable[[str], Awaitable[None]]) -> None:
    """Run `scenario(address)` against an echo + health server that requires tokens."""

    async def run() -> None:
        server = grpc.aio.server(interceptors=service_auth.server_interceptors(SECRET))
        echo = grpc.method_handlers_generic_handler(
            "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
        )
        # A read of the ledger's, for the reader key (same echo behind it).
        ledger_read = grpc.method_handlers_generic_handler(
            "shardbank.v1.LedgerNode", {"ReadJournal": grpc.unary_unary_rpc_method_handler(_echo)}
        )
        server.add_generic_rpc_handlers((echo, ledger_read))
        health = health_aio.HealthServicer()
        await health.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await scenario(f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    asyncio.run(run())


async def _call(address: str, interceptors: list[grpc.aio.ClientInterceptor], method: str = ECHO) -> bytes:
    async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
        answer: bytes = await channel.unary_unary(method)(b"ping", timeout=5)
        return answer


async def _refusal(
    address: str, interceptors: list[grpc.aio.ClientInterceptor], method: str = ECHO
) -> BankError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(address, interceptors, method)
    return errors.from_rpc_error(refused.value)


READ_JOURNAL = "/shardbank.v1.LedgerNode/ReadJournal"


def test_the_reader_key_opens_the_ledger_reads_only() -> None:
    reader = service_auth.reader_secret(SECRET)
    assert reader != SECRET and len(reader) == service_auth.SECRET_BYTES

    async def scenario(address: str) -> None:
        signed = service_auth.channel_interceptors(reader, "report")
        assert await _call(address, signed, READ_JOURNAL) == b"ping"
        error = await _refusal(address, signed, ECHO)  # any method not on the read list
        assert (error.code, error.reason) == (grpc.StatusCode.PERMISSION_DENIED, errors.SERVICE_READ_ONLY)
        # Another cluster's reader key is no key at all here.
        foreign = service_auth.channel_interceptors(service_auth.reader_secret(OTHER_SECRET), "report")
        error = await _refusal(address, foreign, READ_JOURNAL)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, errors.SERVICE_UNAUTHENTICATED)
        # The cluster secret still opens everything.
        assert (
            await _call(address, service_auth.channel_interceptors(SECRET, "gw-1"), READ_JOURNAL) == b"ping"
        )

    with_server(scenario)


def test_the_read_list_names_ledger_reads_and_no_write() -> None:
    methods = {m.name for m in ledger_pb2.DESCRIPTOR.services_by_name["LedgerNode"].methods}
    listed = {name.rsplit("/", 1)[1] for name in service_auth.READ_ONLY_METHODS}
    assert all(name.startswith("/shardbank.v1.LedgerNode/") for name in service_auth.READ_ONLY_METHODS)
    assert listed <= methods
    writes = {"CreateAccounts", "UpdateContacts", "ChangeStatus", "ApplyTransfers", "Prepare", "Decide",
              "Finish", "WriteStream", "ImportSlots", "MarkSlots", "ReleaseSlots", "ExportSlots"}  # fmt: skip
    assert listed.isdisjoint(writes) and listed | writes == methods


def test_the_reader_file_is_written_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / service_auth.READER_SECRET_FILE_NAME
    service_auth.ensure_reader_file(path, SECRET)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert service_auth.read_secret(path) == service_auth.reader_secret(SECRET)
    service_auth.ensure_reader_file(path, OTHER_SECRET)  # there already: left alone
    assert service_auth.read_secret(path) == service_auth.reader_secret(SECRET)


def test_a_signed_call_passes() -> None:
    async def scenario(address: str) -> None:
        assert await _call(address, service_auth.channel_interceptors(SECRET, "gw-1")) == b"ping"

    with_server(scenario)


@pytest.mark.parametrize("secret", [b"", OTHER_SECRET])
def test_unsigned_or_wrongly_signed_calls_are_unauthenticated(secret: bytes) -> None:
    async def scenario(address: str) -> None:
        error = await _refusal(address, service_auth.channel_interceptors(secret, "gw-1"))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, errors.SERVICE_UNAUTHENTICATED)

    with_server(scenario)


def test_a_stale_token_is_unauthenticated() -> None:
    def stale_ms() -> int:
        return service_auth.wall_clock_ms() - 2 * CLOCK_SKEW_MS_MAX

    async def scenario(address: str) -> None:
        error = await _refusal(address, service_auth.channel_interceptors(SECRET, "gw-1", stale_ms))
        assert (error.code, error.reason) == (grpc.StatusCode.UNAUTHENTICATED, errors.SERVICE_UNAUTHENTICATED)
        assert "skew" in error.message

    with_server(scenario)


def test_health_needs_no_token() -> None:
    async def scenario(address: str) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

    with_server(scenario)


def test_the_sync_signer_passes_and_a_plain_sync_call_does_not() -> None:
    async def scenario(address: str) -> None:
        await asyncio.to_thread(_sync_calls, address)

    with_server(scenario)


def _sync_calls(address: str) -> None:
    with service_auth.signed_channel(address, SECRET, "test") as channel:
        assert channel.unary_unary(ECHO)(b"sync", timeout=5) == b"sync"
    with grpc.insecure_channel(address) as plain, pytest.raises(grpc.RpcError) as refused:
        plain.unary_unary(ECHO)(b"sync", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
