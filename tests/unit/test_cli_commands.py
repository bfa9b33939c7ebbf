"""The `shardbank` CLI: argument parsing, exact amounts, exit codes and
error lines, JSON output. The gateway is replaced by a recording fake."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from clients import cli
from clients import errors as client_errors
from shardbank.identity import cn_check_digit
from shardbank.v1 import bank_pb2, ledger_pb2, types_pb2

OPEN = ["account", "open", "--name", "Li"]
ALICE = 6222020000000007
BOB = 4532015112830366
TRANSFER_ID = "6f9619ff-8b86-4011-b42d-00c04fc964ff"


def resident_id() -> str:
    """A valid resident ID (Beijing, born 1990-01-01); tests/unit is not a package."""
    return "11010519900101001" + cn_check_digit("11010519900101001")


class FakeBank:
    """Stands in for BankClient; records every call."""

    def __init__(self, gateway: str, fail: BaseException | None = None) -> None:
        self.gateway = gateway
        self.fail = fail
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __enter__(self) -> FakeBank:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if self.fail is not None:
            raise self.fail

    def _transfer(
        self,
        kind: types_pb2.TransferKind.ValueType,
        debit: int,
        credit: int,
        amount: int,
        currency: str,
        tid: str | None,
        memo: str,
    ) -> types_pb2.Transfer:
        return types_pb2.Transfer(
            id=tid or TRANSFER_ID,
            kind=kind,
            debit_account_id=debit,
            credit_account_id=credit,
            amount=amount,
            currency=currency,
            memo=memo,
            status=types_pb2.TRANSFER_STATUS_COMMITTED,
        )

    def deposit(
        self, account_id: int, amount: int, currency: str, tid: str | None, memo: str
    ) -> types_pb2.Transfer:
        self._record("deposit", account_id, amount, currency, tid, memo)
        return self._transfer(types_pb2.TRANSFER_KIND_DEPOSIT, 1156, account_id, amount, currency, tid, memo)

    def withdraw(
        self, account_id: int, amount: int, currency: str, tid: str | None, memo: str
    ) -> types_pb2.Transfer:
        self._record("withdraw", account_id, amount, currency, tid, memo)
        return self._transfer(
            types_pb2.TRANSFER_KIND_WITHDRAWAL, account_id, 1156, amount, currency, tid, memo
        )

    def transfer(
        self, a: int, b: int, amount: int, currency: str, tid: str | None, memo: str, kind: str
    ) -> types_pb2.Transfer:
        self._record("transfer", a, b, amount, currency, tid, memo, kind)
        return self._transfer(types_pb2.TRANSFER_KIND_TRANSFER, a, b, amount, currency, tid, memo)

    def _account(self, account_id: int = ALICE) -> types_pb2.Account:
        return types_pb2.Account(
            id=account_id,
            currency="CNY",
            balance=10050,
            available=10050,
            status=types_pb2.ACCOUNT_STATUS_ACTIVE,
        )

    def open_account(self, *args: Any, **kwargs: Any) -> types_pb2.Account:
        self._record("open_account", *args, kwargs)
        return self._account()

    def get_account(self, account_id: int) -> types_pb2.Account:
        self._record("get_account", account_id)
        return self._account(account_id)

    def freeze(self, account_id: int, reason: str) -> types_pb2.Account:
        self._record("freeze", account_id, reason)
        return self._account(account_id)

    def unfreeze(self, account_id: int, reason: str) -> types_pb2.Account:
        self._record("unfreeze", account_id, reason)
        return self._account(account_id)

    def close(self, account_id: int, reason: str) -> types_pb2.Account:
        self._record("close", account_id, reason)
        return self._account(account_id)

    def update_contact(self, account_id: int, phone: str | None, name: str | None) -> types_pb2.Account:
        self._record("update_contact", account_id, phone, name)
        return self._account(account_id)

    def get_transfer(self, transfer_id: str) -> types_pb2.Transfer:
        self._record("get_transfer", transfer_id)
        return self._transfer(types_pb2.TRANSFER_KIND_DEPOSIT, 1156, ALICE, 1, "CNY", transfer_id, "")

    def history(self, account_id: int, page_size: int, page_token: str) -> ledger_pb2.ListHistoryResponse:
        self._record("history", account_id, page_size, page_token)
        entry = ledger_pb2.HistoryEntry if hasattr(ledger_pb2, "HistoryEntry") else types_pb2.HistoryEntry
        item = entry(
            transfer=self._transfer(
                types_pb2.TRANSFER_KIND_DEPOSIT, 1156, account_id, 10050, "CNY", None, "cash"
            ),
            balance_delta=10050,
            balance_after=10050,
            journal_seq=3,
        )
        return ledger_pb2.ListHistoryResponse(entries=[item], next_page_token="next")

    def cluster_info(self) -> bank_pb2.ClusterInfo:
        return bank_pb2.ClusterInfo(slot_map_version=1)


@pytest.fixture
def bank(monkeypatch: pytest.MonkeyPatch) -> FakeBank:
    fake = FakeBank("unset")

    def make(args: Any) -> FakeBank:
        fake.gateway = args.gateway
        return fake

    monkeypatch.setattr(cli, "client", make)
    return fake


def last(bank: FakeBank) -> tuple[str, tuple[Any, ...]]:
    return bank.calls[-1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("text", "minor"), [("100.50", 10050), ("100.5", 10050), ("0.01", 1), ("7", 700)])
def test_deposit_amount_is_exact(
    bank: FakeBank, capsys: pytest.CaptureFixture[str], text: str, minor: int
) -> None:
    code, out, err = run(capsys, "deposit", str(ALICE), text, "--memo", "cash")
    assert (code, err) == (0, "")
    name, args = bank.calls[0]
    assert name == "deposit"
    assert args[:3] == (ALICE, minor, "CNY")
    assert args[4] == "cash"
    assert "COMMITTED" in out


def test_cli_chooses_one_transfer_id_or_uses_the_given_one(
    bank: FakeBank, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "withdraw", str(ALICE), "1", "--id", TRANSFER_ID.upper())
    run(capsys, "withdraw", str(ALICE), "1")
    assert bank.calls[0][1][3] == TRANSFER_ID
    assert bank.calls[1][1][3] and bank.calls[1][1][3] != TRANSFER_ID


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["deposit", str(ALICE), "1.001"], "INVALID_AMOUNT"),  # a third decimal place for CNY
        (["deposit", str(ALICE), "-1"], "INVALID_AMOUNT"),
        (["deposit", str(ALICE), "0"], "INVALID_AMOUNT"),
        (["deposit", str(ALICE), "1e3"], "INVALID_AMOUNT"),
        (["deposit", str(ALICE), "12abc"], "INVALID_AMOUNT"),
        (["deposit", str(ALICE), "99999999999999999"], "INVALID_AMOUNT"),
        (["deposit", str(ALICE), "1.5", "--currency", "JPY"], "INVALID_AMOUNT"),
        (["deposit", str(ALICE), "1", "--currency", "XYZ"], "INVALID_CURRENCY"),
        (["deposit", str(ALICE + 1), "1"], "INVALID_ACCOUNT_ID"),
        (["transfer", str(ALICE), "123", "1"], "INVALID_ACCOUNT_ID"),
        (["deposit", str(ALICE), "1", "--id", "nope"], "INVALID_TRANSFER_ID"),
        ([*OPEN, "--id-number", "110105199001010011", "--phone", "+8613812345678"], "INVALID_ID_NUMBER"),
        ([*OPEN, "--id-number", resident_id(), "--phone", "138"], "INVALID_PHONE"),
        (["account", "update", str(ALICE)], "INVALID_ARGUMENT"),
    ],
)
def test_bad_input_exits_2_with_one_error_line(
    bank: FakeBank, capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith(f"error: INVALID_ARGUMENT {reason}: ")
    assert err.count("\n") == 1
    assert bank.calls == []


def test_too_many_decimals_message(bank: FakeBank, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run(capsys, "deposit", str(ALICE), "100.505")
    assert err == "error: INVALID_ARGUMENT INVALID_AMOUNT: CNY has 2 decimal places, got 3\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nonsense"],
        ["deposit", str(ALICE)],
        ["account", "freeze", str(ALICE)],  # --reason is required
        ["account", "open", "--name", "Li"],
        ["account", "open", "--name", "Li", "--id-number", "x", "--phone", "y", "--type", "joint"],
        ["history", str(ALICE), "--limit", "0"],
        ["history", str(ALICE), "--limit", "1001"],
        ["deposit", str(ALICE), "1", "--deadline", "-1"],
    ],
)
def test_usage_errors_exit_2(bank: FakeBank, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert cli.main(argv) == 2
    assert bank.calls == []


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "transfer-status" in capsys.readouterr().out


def test_refusal_exits_1_with_code_reason_and_transfer_id(
    bank: FakeBank, capsys: pytest.CaptureFixture[str]
) -> None:
    bank.fail = client_errors.make_error(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", "short")
    code, out, err = run(capsys, "transfer", str(ALICE), str(BOB), "5", "--id", TRANSFER_ID)
    assert code == 1
    assert out == ""
    assert err == f"error: FAILED_PRECONDITION INSUFFICIENT_FUNDS: short (transfer id {TRANSFER_ID})\n"


def test_unexpected_exception_is_one_line_not_a_traceback(
    bank: FakeBank, capsys: pytest.CaptureFixture[str]
) -> None:
    bank.fail = RuntimeError("boom")
    code, _, err = run(capsys, "account", "show", str(ALICE))
    assert code == 1
    assert err == "error: INTERNAL RuntimeError: boom\n"


def test_json_output_keeps_proto_field_names(bank: FakeBank, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "transfer", str(ALICE), str(BOB), "20.00", "--json", "--payment")
    assert code == 0
    data = json.loads(out)
    assert data["debit_account_id"] == str(ALICE)
    assert data["credit_account_id"] == str(BOB)
    assert data["amount"] == "2000"
    assert data["status"] == "TRANSFER_STATUS_COMMITTED"
    assert bank.calls[0][1][-1] == "payment"


def test_human_output_formats_amounts(bank: FakeBank, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "account", "show", str(ALICE))
    assert "100.50" in out
    _, out, _ = run(capsys, "history", str(ALICE), "--limit", "10", "--page-token", "abc")
    assert bank.calls[-1] == ("history", (ALICE, 10, "abc"))
    assert "+100.50" in out
    assert "--page-token next" in out


def test_account_commands(bank: FakeBank, capsys: pytest.CaptureFixture[str]) -> None:
    number = "11010519491231002X"  # typed with a lowercase x, sent uppercase
    code, _, err = run(
        capsys,
        "account",
        "open",
        "--name",
        "Li Lei",
        "--id-number",
        number.lower(),
        "--phone",
        "+86 138-1234-5678",
        "--type",
        "business",
    )
    assert (code, err) == (0, "")
    assert bank.calls[-1][1][:5] == ("Li Lei", number, "+8613812345678", "CNY", "business")
    assert run(capsys, "account", "freeze", str(ALICE), "--reason", "fraud check")[0] == 0
    assert last(bank) == ("freeze", (ALICE, "fraud check"))
    assert run(capsys, "account", "close", str(ALICE))[0] == 0
    assert last(bank)[0] == "close"
    assert run(capsys, "account", "update", str(ALICE), "--phone", "+12025550123")[0] == 0
    assert last(bank) == ("update_contact", (ALICE, "+12025550123", None))
    assert run(capsys, "transfer-status", TRANSFER_ID)[0] == 0


def test_gateway_from_flag_env_or_default(
    bank: FakeBank, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHARDBANK_GATEWAY", raising=False)
    run(capsys, "account", "show", str(ALICE))
    assert bank.gateway == "127.0.0.1:50051"
    monkeypatch.setenv("SHARDBANK_GATEWAY", "127.0.0.1:6000")
    run(capsys, "account", "show", str(ALICE))
    assert bank.gateway == "127.0.0.1:6000"
    run(capsys, "account", "show", str(ALICE), "--gateway", "127.0.0.1:7000")
    assert bank.gateway == "127.0.0.1:7000"


def test_unreachable_gateway_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "transfer-status", TRANSFER_ID, "--gateway", "127.0.0.1:1", "--deadline", "0.5"
    )
    assert code == 1
    assert err.startswith("error: UNAVAILABLE ")
