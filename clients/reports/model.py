"""What the reports are computed from, free of protobuf and I/O: accounts as
parties and the day's committed transfers."""

from __future__ import annotations

from dataclasses import dataclass

from shardbank import identity
from shardbank.v1 import types_pb2

PERSONAL = types_pb2.ACCOUNT_TYPE_PERSONAL
BUSINESS = types_pb2.ACCOUNT_TYPE_BUSINESS
SYSTEM = types_pb2.ACCOUNT_TYPE_SYSTEM

DEPOSIT = types_pb2.TRANSFER_KIND_DEPOSIT
WITHDRAWAL = types_pb2.TRANSFER_KIND_WITHDRAWAL
TRANSFER = types_pb2.TRANSFER_KIND_TRANSFER
PAYMENT = types_pb2.TRANSFER_KIND_PAYMENT
KIND_NAMES: dict[int, str] = {
    DEPOSIT: "DEPOSIT",
    WITHDRAWAL: "WITHDRAWAL",
    TRANSFER: "TRANSFER",
    PAYMENT: "PAYMENT",
}
ACCOUNT_TYPE_NAMES: dict[int, str] = {PERSONAL: "PERSONAL", BUSINESS: "BUSINESS", SYSTEM: "SYSTEM"}
ID_TYPE_NAMES: dict[int, str] = {
    types_pb2.ID_DOCUMENT_TYPE_CN_RESIDENT_ID: "CN_RESIDENT_ID",
    types_pb2.ID_DOCUMENT_TYPE_PASSPORT: "PASSPORT",
}


@dataclass(frozen=True)
class Party:
    """An account and its holder as the journal last described them."""

    account_id: int
    account_type: int
    currency: str
    customer_id: str = ""
    name: str = ""
    id_type: int = 0
    id_number: str = ""
    country: str = ""

    @property
    def is_cash(self) -> bool:
        return self.account_type == SYSTEM

    @property
    def home_country(self) -> str:
        return identity.country_of(self.country)

    @staticmethod
    def of(account: types_pb2.Account) -> Party:
        holder = account.holder
        return Party(
            account_id=account.id,
            account_type=account.type,
            currency=account.currency,
            customer_id=holder.customer_id,
            name=holder.name,
            id_type=holder.id_type,
            id_number=holder.id_number,
            country=holder.country,
        )


@dataclass(frozen=True)
class DayTransfer:
    """A transfer committed in the report window, counted once: at its
    record holder (the shard that posted it, or the debit shard of a
    cross-shard one, where the commit decision is recorded)."""

    transfer_id: str
    kind: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    currency: str
    at_unix_ms: int
    shard: str
    cross_shard: bool = False

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, str(self.kind))
