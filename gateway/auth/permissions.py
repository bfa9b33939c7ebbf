"""Who may do what: the one permission table of the public API.

`RPC_ROLES` says which roles may call each `Bank` RPC at all (checked by the
interceptor before any handler runs). Two RPCs carry several kinds of action
in one message, so they have a second, finer table checked per request by
the handlers (`gateway.auth.guard`): `TRANSFER_KIND_ROLES` (deposits and
withdrawals are teller work, transfers and payments a customer's) and
`STATUS_ACTION_ROLES` (freezing is the risk officer's). Ownership (a
customer sees and moves only its own accounts) needs the account, so the
handlers check it too.

Roles:
  customer      its own accounts: open (holder.customer_id forced to its own),
                show, history, transfer/payment out of them
  teller        open accounts, contact updates, deposit/withdraw, show, history, transfers' status
  risk_officer  freeze/unfreeze, show; alerts (list, acknowledge, resolve) and
                the review of held transfers (approve/reject) — never moves
                money of its own accord
  auditor       read everything (accounts, history, transfers, cluster, keys, audit), change nothing
  operator      cluster information, show
  admin         everything, and API keys
  service       internal services: every account and money operation
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shardbank.v1 import ledger_pb2, types_pb2

CUSTOMER = "customer"
TELLER = "teller"
RISK_OFFICER = "risk_officer"
AUDITOR = "auditor"
OPERATOR = "operator"
ADMIN = "admin"
SERVICE = "service"
ROLES: tuple[str, ...] = (CUSTOMER, TELLER, RISK_OFFICER, AUDITOR, OPERATOR, ADMIN, SERVICE)

BANK_SERVICE_PREFIX = "/shardbank.v1.Bank/"
RISK_SERVICE_PREFIX = "/shardbank.v1.Risk/"

_ALL = frozenset(ROLES)
_STAFF_WRITE = frozenset({ADMIN, SERVICE})

RPC_ROLES: Mapping[str, frozenset[str]] = {
    "OpenAccounts": frozenset({CUSTOMER, TELLER}) | _STAFF_WRITE,
    "GetAccount": _ALL,
    "UpdateContacts": frozenset({TELLER}) | _STAFF_WRITE,
    "ChangeAccountStatus": frozenset({RISK_OFFICER}) | _STAFF_WRITE,
    "SubmitTransfers": frozenset({CUSTOMER, TELLER}) | _STAFF_WRITE,
    "GetTransfer": frozenset({CUSTOMER, TELLER, AUDITOR}) | _STAFF_WRITE,
    "ListHistory": frozenset({CUSTOMER, TELLER, AUDITOR}) | _STAFF_WRITE,
    "GetClusterInfo": frozenset({OPERATOR, AUDITOR}) | _STAFF_WRITE,
    "CreateApiKey": frozenset({ADMIN}),
    "RevokeApiKey": frozenset({ADMIN}),
    "ListApiKeys": frozenset({ADMIN, AUDITOR}),
    "ListAudit": frozenset({ADMIN, AUDITOR}),
    # The Risk service (proto/shardbank/v1/risk.proto).
    "ListAlerts": frozenset({RISK_OFFICER, AUDITOR, ADMIN}),
    "GetAlert": frozenset({RISK_OFFICER, AUDITOR, ADMIN}),
    "AcknowledgeAlert": frozenset({RISK_OFFICER, ADMIN}),
    "ResolveAlert": frozenset({RISK_OFFICER, ADMIN}),
    "ReviewTransfer": frozenset({RISK_OFFICER, ADMIN}),
}

TRANSFER_KIND_ROLES: Mapping[int, frozenset[str]] = {
    types_pb2.TRANSFER_KIND_DEPOSIT: frozenset({TELLER}) | _STAFF_WRITE,
    types_pb2.TRANSFER_KIND_WITHDRAWAL: frozenset({TELLER}) | _STAFF_WRITE,
    types_pb2.TRANSFER_KIND_TRANSFER: frozenset({CUSTOMER}) | _STAFF_WRITE,
    types_pb2.TRANSFER_KIND_PAYMENT: frozenset({CUSTOMER}) | _STAFF_WRITE,
}

STATUS_ACTION_ROLES: Mapping[int, frozenset[str]] = {
    ledger_pb2.STATUS_ACTION_FREEZE: frozenset({RISK_OFFICER}) | _STAFF_WRITE,
    ledger_pb2.STATUS_ACTION_UNFREEZE: frozenset({RISK_OFFICER}) | _STAFF_WRITE,
    ledger_pb2.STATUS_ACTION_CLOSE: _STAFF_WRITE,
}

# Roles that see holders' ID numbers and phones in full. Everyone else gets
# them masked (shardbank.identity), a customer its own too: replies end up in
# app logs, crash reports and support screenshots, and a customer's app has
# no need for the full number it already knows.
UNMASKED_ROLES = frozenset({TELLER, AUDITOR, ADMIN, SERVICE})
# Roles that see a transfer's risk assessment (score, rules, alert id).
RISK_VISIBLE_ROLES = frozenset({RISK_OFFICER, AUDITOR, ADMIN, SERVICE})


@dataclass(frozen=True)
class RateLimit:
    # Sustained requests per second per API key, and the burst above it.
    requests_per_second: float
    burst: int


# Per API key, in the gateway (each gateway counts its own calls; N gateways
# let a key make up to N times this). People and their apps get a limit a
# human never reaches; service and admin keys get one high enough that
# benchmarks and batch jobs are never throttled by it (the limits that
# protect the cluster are the gateway's concurrency and batch limits).
REQUESTS_PER_SECOND_PER_KEY = 50.0
REQUESTS_BURST_PER_KEY = 100
REQUESTS_PER_SECOND_PER_SERVICE_KEY = 100_000.0
REQUESTS_BURST_PER_SERVICE_KEY = 200_000
RATE_LIMITS: Mapping[str, RateLimit] = {
    role: (
        RateLimit(REQUESTS_PER_SECOND_PER_SERVICE_KEY, REQUESTS_BURST_PER_SERVICE_KEY)
        if role in (SERVICE, ADMIN)
        else RateLimit(REQUESTS_PER_SECOND_PER_KEY, REQUESTS_BURST_PER_KEY)
    )
    for role in ROLES
}


def rpc_name(method: str) -> str | None:
    """'/shardbank.v1.Bank/GetAccount' -> 'GetAccount' (Bank and Risk); None
    for other services (health, reflection)."""
    for prefix in (BANK_SERVICE_PREFIX, RISK_SERVICE_PREFIX):
        if method.startswith(prefix):
            return method[len(prefix) :]
    return None


def may_call(role: str, rpc: str) -> bool:
    """Unknown RPCs are denied: a new RPC must be added to the table to be callable."""
    return role in RPC_ROLES.get(rpc, frozenset())


def may_submit(role: str, kind: int) -> bool:
    return role in TRANSFER_KIND_ROLES.get(kind, frozenset())


def may_change_status(role: str, action: int) -> bool:
    return role in STATUS_ACTION_ROLES.get(action, frozenset())


def reveals_identity(role: str) -> bool:
    return role in UNMASKED_ROLES


def sees_risk(role: str) -> bool:
    return role in RISK_VISIBLE_ROLES


def _check_table() -> None:
    from shardbank.v1 import bank_pb2, risk_pb2

    bank = {m.name for m in bank_pb2.DESCRIPTOR.services_by_name["Bank"].methods}
    risk = {m.name for m in risk_pb2.DESCRIPTOR.services_by_name["Risk"].methods}
    if bank & risk:
        raise RuntimeError(f"Bank and Risk share RPC names: {sorted(bank & risk)}")
    rpcs = bank | risk
    if rpcs != set(RPC_ROLES):
        raise RuntimeError(f"permission table and Bank RPCs differ: {sorted(rpcs ^ set(RPC_ROLES))}")


_check_table()
