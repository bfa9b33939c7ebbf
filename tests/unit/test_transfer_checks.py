"""Text checks on transfer input: the printable fast path refuses exactly
what the per-character category check refuses."""

from __future__ import annotations

import sys
import unicodedata

from shardbank import transfer_checks

FORBIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def test_every_code_point_is_judged_by_its_category() -> None:
    for code_point in range(sys.maxunicode + 1):
        char = chr(code_point)
        expected = unicodedata.category(char) in FORBIDDEN
        assert transfer_checks.has_forbidden_characters(char) is expected, hex(code_point)
        assert transfer_checks.has_forbidden_characters(f"rent {char} May") is expected, hex(code_point)


def test_ordinary_memos_pass() -> None:
    for text in ("", "rent", "房租 五月", "café — 12 €", "a\u00a0b", "tab-free"):
        assert not transfer_checks.has_forbidden_characters(text)
    for text in ("line\nbreak", "nul\x00", "bidi\u202e", "sep\u2028"):
        assert transfer_checks.has_forbidden_characters(text)
