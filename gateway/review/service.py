"""The `Risk` gRPC service (proto/shardbank/v1/risk.proto): thin servicer,
handlers that validate at the edge, call the desk or the alert store, and
audit every officer's action with the actor.

Who may call what is `gateway.auth.permissions.RPC_ROLES` (the same
interceptor as `Bank`): risk_officer and admin act; auditor reads alerts.
"""

from __future__ import annotations

from typing import Any

from gateway.auth import guard
from gateway.auth.principal import Principal
from gateway.dispatch import Budget
from gateway.review.desk import ReviewDesk
from gateway.service import Context, run
from shardbank import alerts, errors, ids
from shardbank.v1 import risk_pb2, risk_pb2_grpc

ALERT_ACKNOWLEDGE = "risk.alert.acknowledge"
ALERT_RESOLVE = "risk.alert.resolve"
REVIEW_APPROVE = "risk.review.approve"
REVIEW_REJECT = "risk.review.reject"


def public_alert(alert: dict[str, Any], at_unix_ms: int) -> risk_pb2.Alert:
    shown = risk_pb2.Alert(**{name: alert[name] for name in alerts.FIELDS if name in alert})
    shown.review_state = alerts.shown_review_state(alert, at_unix_ms)
    return shown


def _check_filter_text(name: str, text: str) -> None:
    if len(text) > alerts.FILTER_LENGTH_MAX or not (text.isascii() and text.isprintable()):
        raise errors.invalid(
            alerts.INVALID_FILTER, f"{name} is at most {alerts.FILTER_LENGTH_MAX} characters"
        )


class RiskHandlers:
    """`auth=None`: no authorization (in-process tests only)."""

    def __init__(self, desk: ReviewDesk, auth: guard.Auth | None = None) -> None:
        self._desk = desk
        self._auth = auth

    def _caller(self) -> Principal | None:
        return None if self._auth is None else self._auth.caller()

    @staticmethod
    def _actor(caller: Principal | None) -> str:
        return f"{caller.role}:{caller.key_id}" if caller is not None else "gateway"

    async def _audit(
        self, caller: Principal | None, action: str, target: str, error: errors.BankError | None
    ) -> None:
        if self._auth is None or caller is None:
            return
        code, reason = (error.code_value, error.reason) if error is not None else (0, "")
        await self._auth.record(caller, action, [(target, code, reason)])

    async def list_alerts(
        self, request: risk_pb2.ListAlertsRequest, _budget: Budget
    ) -> risk_pb2.ListAlertsResponse:
        self._caller()
        for name in ("status", "rule", "decision"):
            _check_filter_text(name, getattr(request, name))
        if len(request.page_token) > alerts.FILTER_LENGTH_MAX:
            raise errors.invalid(errors.INVALID_PAGE_TOKEN, "page_token is not one this service issued")
        where = alerts.Filter(
            status=request.status,
            rule=request.rule,
            account_id=request.account_id,
            decision=request.decision,
            created_since_unix_ms=request.created_since_unix_ms,
            created_until_unix_ms=request.created_until_unix_ms,
        ).check()
        alerts.check_page_size(request.page_size)
        if request.page_token:
            alerts.decode_page_token(request.page_token)
        found, token = await self._desk.store.call(alerts.page, where, request.page_size, request.page_token)
        at = alerts.now_ms()
        return risk_pb2.ListAlertsResponse(alerts=[public_alert(a, at) for a in found], next_page_token=token)

    async def get_alert(self, request: risk_pb2.GetAlertRequest, _budget: Budget) -> risk_pb2.Alert:
        self._caller()
        alert_id = alerts.check_alert_id(request.alert_id)
        alert, _ = await self._desk.store.call(alerts.get, alert_id)
        return public_alert(alert, alerts.now_ms())

    async def acknowledge_alert(
        self, request: risk_pb2.AlertActionRequest, _budget: Budget
    ) -> risk_pb2.Alert:
        return await self._change_alert(request, ALERT_ACKNOWLEDGE)

    async def resolve_alert(self, request: risk_pb2.AlertActionRequest, _budget: Budget) -> risk_pb2.Alert:
        return await self._change_alert(request, ALERT_RESOLVE)

    async def _change_alert(self, request: risk_pb2.AlertActionRequest, action: str) -> risk_pb2.Alert:
        caller = self._caller()
        alert_id = alerts.check_alert_id(request.alert_id)
        try:
            note = alerts.check_note(request.note, required=action == ALERT_RESOLVE)
            work = alerts.resolve if action == ALERT_RESOLVE else alerts.acknowledge
            alert = await self._desk.store.call(work, alert_id, self._actor(caller), note)
        except errors.BankError as error:
            await self._audit(caller, action, alert_id, error)
            raise
        await self._audit(caller, action, alert_id, None)
        return public_alert(alert, alerts.now_ms())

    async def review_transfer(
        self, request: risk_pb2.ReviewTransferRequest, budget: Budget
    ) -> risk_pb2.ReviewTransferResponse:
        caller = self._caller()
        transfer_id = ids.normalize_transfer_id(request.transfer_id)
        if request.action not in (risk_pb2.REVIEW_ACTION_APPROVE, risk_pb2.REVIEW_ACTION_REJECT):
            raise errors.invalid(
                errors.INVALID_ACTION, "action must be REVIEW_ACTION_APPROVE or REVIEW_ACTION_REJECT"
            )
        note = alerts.check_note(request.note)
        approve = request.action == risk_pb2.REVIEW_ACTION_APPROVE
        action = REVIEW_APPROVE if approve else REVIEW_REJECT
        try:
            transfer, alert_id = await self._desk.review(
                transfer_id, approve, note, self._actor(caller), budget
            )
        except errors.BankError as error:
            await self._audit(caller, action, transfer_id, error)
            raise
        await self._audit(caller, action, transfer_id, None)
        return risk_pb2.ReviewTransferResponse(transfer=transfer, alert_id=alert_id)


class RiskServicer(risk_pb2_grpc.RiskServicer):
    def __init__(self, handlers: RiskHandlers) -> None:
        self._handlers = handlers

    async def ListAlerts(
        self, request: risk_pb2.ListAlertsRequest, context: Context
    ) -> risk_pb2.ListAlertsResponse:
        return await run("ListAlerts", self._handlers.list_alerts, request, context)

    async def GetAlert(self, request: risk_pb2.GetAlertRequest, context: Context) -> risk_pb2.Alert:
        return await run("GetAlert", self._handlers.get_alert, request, context)

    async def AcknowledgeAlert(
        self, request: risk_pb2.AlertActionRequest, context: Context
    ) -> risk_pb2.Alert:
        return await run("AcknowledgeAlert", self._handlers.acknowledge_alert, request, context)

    async def ResolveAlert(self, request: risk_pb2.AlertActionRequest, context: Context) -> risk_pb2.Alert:
        return await run("ResolveAlert", self._handlers.resolve_alert, request, context)

    async def ReviewTransfer(
        self, request: risk_pb2.ReviewTransferRequest, context: Context
    ) -> risk_pb2.ReviewTransferResponse:
        return await run("ReviewTransfer", self._handlers.review_transfer, request, context)
