"""Holder.country: an assigned ISO 3166-1 alpha-2 code or empty (CN)."""

from __future__ import annotations

import grpc
import pytest

from gateway import validation
from shardbank import errors, identity
from shardbank.v1 import types_pb2


@pytest.mark.parametrize("country", ["", "CN", "US", "HK", "MO", "TW", "DE"])
def test_assigned_codes_and_empty_are_accepted(country: str) -> None:
    identity.check_country(country)


@pytest.mark.parametrize("country", ["XX", "ZZ", "cn", "CHN", "C", "C N", "CN\n", "156", "中国"])
def test_anything_else_is_invalid_country(country: str) -> None:
    with pytest.raises(errors.BankError) as refused:
        identity.check_country(country)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        errors.INVALID_COUNTRY,
    )


def test_empty_means_cn() -> None:
    assert identity.country_of("") == "CN"
    assert identity.country_of("US") == "US"


def _holder(country: str) -> types_pb2.Holder:
    return types_pb2.Holder(
        name="Tom",
        id_type=types_pb2.ID_DOCUMENT_TYPE_PASSPORT,
        id_number="e12345678",
        phone="+14155550100",
        country=country,
    )


def test_the_edge_uppercases_and_keeps_the_country() -> None:
    assert validation.check_holder(_holder("us")).country == "US"
    assert validation.check_holder(_holder("")).country == ""


def test_the_edge_refuses_an_unassigned_code_precisely() -> None:
    with pytest.raises(errors.BankError) as refused:
        validation.check_holder(_holder("XX"))
    assert refused.value.reason == errors.INVALID_COUNTRY
    assert "ISO 3166-1 alpha-2" in refused.value.message
