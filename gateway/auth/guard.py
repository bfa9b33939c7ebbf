"""The per-request half of authorization, called by the handlers: what the
interceptor cannot decide from the RPC name alone (the kind of each
transfer, the action of each status change, whose account it is), and the
audit records of privileged actions.

A customer asking about an account that is not its own gets NOT_FOUND
`ACCOUNT_NOT_FOUND`, the answer for an account that does not exist, so
account ids cannot be probed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.auth import audit, permissions
from gateway.auth import principal as principals
from gateway.auth.interceptor import permission_denied, unauthenticated
from gateway.auth.keys import KeyCache
from gateway.auth.principal import Principal
from shardbank import errors
from shardbank.v1 import ledger_pb2, types_pb2

# Audit actions.
ACCOUNT_OPEN = "account.open"
ACCOUNT_UPDATE_CONTACTS = "account.update_contacts"
STATUS_ACTIONS = {
    ledger_pb2.STATUS_ACTION_FREEZE: "account.freeze",
    ledger_pb2.STATUS_ACTION_UNFREEZE: "account.unfreeze",
    ledger_pb2.STATUS_ACTION_CLOSE: "account.close",
}
MONEY_ACTIONS = {
    types_pb2.TRANSFER_KIND_DEPOSIT: "money.deposit",
    types_pb2.TRANSFER_KIND_WITHDRAWAL: "money.withdrawal",
}
# Cash movements are privileged actions when a person makes them. An internal
# `service` key moves money in bulk; its record is the ledger's own
# hash-chained journal, and an etcd audit write per call would put a consensus
# round trip on every deposit.
MONEY_AUDITED_ROLES = frozenset({permissions.TELLER, permissions.ADMIN})
KEY_CREATE = "key.create"
KEY_REVOKE = "key.revoke"


@dataclass(frozen=True)
class Auth:
    """What the handlers need for authorization: the keys and the audit log."""

    keys: KeyCache
    audit: audit.AuditLog

    def caller(self) -> Principal:
        found = principals.current()
        if found is None:  # the interceptor is not installed: deny, never allow
            raise unauthenticated("no authenticated caller")
        return found

    async def record(self, caller: Principal, action: str, outcomes: Iterable[tuple[str, int, str]]) -> None:
        """Audit one record per (target, code, reason)."""
        await self.audit.append(
            [
                audit.Entry(caller.key_id, caller.role, action, target, code, reason, caller.peer,
                            caller.request_id)
                for target, code, reason in outcomes
            ]
        )  # fmt: skip


def is_customer(caller: Principal | None) -> bool:
    return caller is not None and caller.role == permissions.CUSTOMER


def owns(caller: Principal | None, account: types_pb2.Account) -> bool:
    """Anyone but a customer sees every account; a customer its own only."""
    if caller is None or caller.role != permissions.CUSTOMER:
        return True
    return bool(caller.customer_id) and account.holder.customer_id == caller.customer_id


# Roles that see why risk control decided (rules, score, alert id) on a
# transfer; a customer sees the decision alone (an alert-only AML rule must
# not tip the customer off).
RISK_DETAIL_ROLES = frozenset(
    {
        permissions.TELLER,
        permissions.ADMIN,
        permissions.SERVICE,
        permissions.RISK_OFFICER,
        permissions.AUDITOR,
    }
)


def sees_risk_details(caller: Principal | None) -> bool:
    return caller is None or caller.role in RISK_DETAIL_ROLES


def redact_risk(caller: Principal | None, transfer: types_pb2.Transfer) -> types_pb2.Transfer:
    """The transfer as this caller may see it (changed in place, returned)."""
    if transfer.HasField("risk") and not sees_risk_details(caller):
        transfer.risk.CopyFrom(types_pb2.RiskAssessment(decision=transfer.risk.decision))
    return transfer


def not_found() -> errors.BankError:
    return errors.not_found(errors.ACCOUNT_NOT_FOUND, "no such account")


def check_transfer_kinds(caller: Principal | None, transfers: Sequence[types_pb2.Transfer]) -> None:
    """Every known kind in the batch must be the caller's to submit; unknown
    kinds are left to validation (refused per item as INVALID_TRANSFER_KIND)."""
    if caller is None:
        return
    for transfer in transfers:
        known = transfer.kind in permissions.TRANSFER_KIND_ROLES
        if known and not permissions.may_submit(caller.role, transfer.kind):
            name = types_pb2.TransferKind.Name(transfer.kind)
            raise permission_denied(f"role {caller.role} may not submit {name}")


def check_status_actions(caller: Principal | None, items: Sequence[ledger_pb2.StatusRequestItem]) -> None:
    if caller is None:
        return
    for item in items:
        known = item.action in permissions.STATUS_ACTION_ROLES
        if known and not permissions.may_change_status(caller.role, item.action):
            raise permission_denied(f"role {caller.role} may not {STATUS_ACTIONS[item.action]}")


def check_open(caller: Principal | None, accounts: Sequence[types_pb2.Account]) -> None:
    """A customer opens accounts for itself only (holder.customer_id is its
    own, whatever the request says) and cannot grant itself an overdraft."""
    if caller is None or caller.role != permissions.CUSTOMER:
        return
    for account in accounts:
        if account.overdraft_limit != 0:
            raise permission_denied("a customer cannot set an overdraft limit")
        account.holder.customer_id = caller.customer_id
