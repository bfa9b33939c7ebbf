"""Builders for tests of the ledger (and of its callers): valid holders,
accounts, transfers, and a Ledger over a dict that applies its own writes the
way the store would. No sockets, no RocksDB.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

from ledger_node.state import Ledger, Response
from shardbank import ids
from shardbank.identity import cn_check_digit
from shardbank.v1 import ledger_pb2, types_pb2

NOW_MS = 1_760_000_000_000
_serial = itertools.count(1)


def resident_id() -> str:
    first17 = f"11010519900101{next(_serial) % 1000:03d}"
    return first17 + cn_check_digit(first17)


def holder(name: str = "Li Lei") -> types_pb2.Holder:
    return types_pb2.Holder(
        name=name,
        id_type=types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID,
        id_number=resident_id(),
        phone="+8613812345678",
    )


def account(
    account_type: types_pb2.AccountType.ValueType = types_pb2.ACCOUNT_TYPE_PERSONAL,
    currency: str = "CNY",
    overdraft_limit: int = 0,
    account_id: int | None = None,
) -> types_pb2.Account:
    return types_pb2.Account(
        id=account_id if account_id is not None else ids.new_account_id(),
        currency=currency,
        type=account_type,
        holder=holder(),
        overdraft_limit=overdraft_limit,
    )


def transfer(
    kind: types_pb2.TransferKind.ValueType,
    debit: int,
    credit: int,
    amount: int,
    currency: str = "CNY",
    transfer_id: str | None = None,
    memo: str = "",
) -> types_pb2.Transfer:
    return types_pb2.Transfer(
        id=transfer_id or str(uuid.uuid4()),
        kind=kind,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        currency=currency,
        memo=memo,
    )


def deposit(
    credit: int, amount: int, transfer_id: str | None = None, currency: str = "CNY"
) -> types_pb2.Transfer:
    return transfer(types_pb2.TRANSFER_KIND_DEPOSIT, 0, credit, amount, currency, transfer_id)


def withdrawal(debit: int, amount: int, transfer_id: str | None = None) -> types_pb2.Transfer:
    return transfer(types_pb2.TRANSFER_KIND_WITHDRAWAL, debit, 0, amount, "CNY", transfer_id)


def move(debit: int, credit: int, amount: int, transfer_id: str | None = None) -> types_pb2.Transfer:
    return transfer(types_pb2.TRANSFER_KIND_TRANSFER, debit, credit, amount, "CNY", transfer_id)


class MemoryLedger:
    """A Ledger whose disk is a dict; `owned` decides slot ownership."""

    def __init__(self, shard_id: str = "shard-1", owned: Callable[[int], bool] | None = None) -> None:
        self.kv: dict[bytes, bytes] = {}
        self.owned = owned or (lambda _account_id: True)
        self.now_ms = NOW_MS
        self.ledger = Ledger(shard_id, self.kv.get, lambda account_id: self.owned(account_id))

    def apply(self, *requests: object) -> list[Response]:
        self.now_ms += 1
        responses, writes = self.ledger.apply(list(requests), self.now_ms)  # type: ignore[arg-type]
        for key, value in writes:
            if value is None:
                self.kv.pop(key, None)
            else:
                self.kv[key] = value
        return responses

    def open(self, *accounts: types_pb2.Account) -> list[ledger_pb2.AccountResult]:
        (response,) = self.apply(ledger_pb2.CreateAccountsRequest(accounts=accounts, actor="test"))
        if not isinstance(response, ledger_pb2.AccountsResponse):
            raise TypeError(f"whole request refused: {response}")
        return list(response.results)

    def transfers(self, *items: types_pb2.Transfer) -> list[types_pb2.Transfer]:
        (response,) = self.apply(ledger_pb2.ApplyTransfersRequest(transfers=items))
        if not isinstance(response, ledger_pb2.TransfersResponse):
            raise TypeError(f"whole request refused: {response}")
        return list(response.transfers)

    def legs(
        self, request: ledger_pb2.PrepareRequest | ledger_pb2.DecideRequest | ledger_pb2.FinishRequest
    ) -> Response:
        (response,) = self.apply(request)
        return response

    def balance(self, account_id: int) -> int:
        return self.ledger.accounts[account_id].balance
