"""The risk rules' configuration: a TOML file (stdlib `tomllib`), validated
into frozen dataclasses once per load, with precise errors.

Layout (see config/risk.toml):

    currency = "CNY"              # amount thresholds are minor units of this currency
    timezone = "Asia/Shanghai"    # for the unusual-hours rule
    dormancy_ms = 15552000000     # 180 days without activity = dormant

    [bands]                        # weighted score -> decision
    review_score = 50
    block_score = 100

    [rules.large_amount]           # one table per rule; the name is what alerts show
    kind = "large_amount"          # which function (rules.KINDS); default: the name
    weight = 60
    severity = "MEDIUM"
    enabled = true
    alert_only = false             # true: raises an alert, adds nothing to the score
    aml_typology = ""              # e.g. "STRUCTURING": listed in the alert's aml_typologies
    threshold_minor = { personal = 5000000, business = 50000000 }

A parameter is an integer, or a table of integers per account type
(`personal`, `business`); the rule's kind says which parameters it needs.
"""

from __future__ import annotations

import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shardbank import money
from shardbank.v1 import types_pb2

SEVERITIES = ("LOW", "MEDIUM", "HIGH")
ACCOUNT_TYPES = {"personal": types_pb2.ACCOUNT_TYPE_PERSONAL, "business": types_pb2.ACCOUNT_TYPE_BUSINESS}
# Rules one file may define, and the longest name: names go into every alert.
RULES_MAX = 64
RULE_NAME_LENGTH_MAX = 48
WEIGHT_MAX = 1000
# Bytes of a config file read: a mistake (a log file passed by accident) is refused.
FILE_BYTES_MAX = 256 * 1024


# The repository's production-sensible rules.
DEFAULT_PATH = str(Path(__file__).resolve().parents[2] / "config" / "risk.toml")


class ConfigError(ValueError):
    """The file is not a valid risk configuration; the message names the key."""


@dataclass(frozen=True)
class Param:
    """An integer parameter, the same for every account type or one per type."""

    default: int
    per_type: Mapping[int, int] = field(default_factory=dict)

    def of(self, account_type: int) -> int:
        return self.per_type.get(account_type, self.default)


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    weight: int
    severity: str
    alert_only: bool
    aml_typology: str
    params: Mapping[str, Param]

    def param(self, name: str, account_type: int) -> int:
        return self.params[name].of(account_type)


@dataclass(frozen=True)
class RiskConfig:
    rules: tuple[Rule, ...]
    review_score: int
    block_score: int
    currency: str
    timezone: str
    dormancy_ms: int

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def near_band(self) -> tuple[int, int]:
        """The structuring band the nodes count outgoing amounts in (first enabled rule's)."""
        for rule in self.rules:
            if rule.kind == "structuring":
                threshold = rule.param("threshold_minor", types_pb2.ACCOUNT_TYPE_PERSONAL)
                return band_low(threshold, rule.param("band_pct", types_pb2.ACCOUNT_TYPE_PERSONAL)), threshold
        return 0, 0


def band_low(threshold: int, band_pct: int) -> int:
    """Lower end of 'just below threshold': threshold * (100 - band_pct) / 100."""
    return threshold * (100 - band_pct) // 100


def load(path: str) -> RiskConfig:
    try:
        with open(path, "rb") as file:
            data = file.read(FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > FILE_BYTES_MAX:
        raise ConfigError(f"{path}: larger than {FILE_BYTES_MAX} bytes")
    try:
        return parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse(text: str) -> RiskConfig:
    from gateway.risk.rules import KINDS  # the rule table names the parameters

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not TOML: {exc}") from None
    _only(data, {"currency", "timezone", "dormancy_ms", "bands", "rules"}, "")
    currency = _str(data, "currency", "", "CNY")
    try:
        money.currency(currency)
    except Exception:
        raise ConfigError(f"currency: {currency!r} is not a supported ISO-4217 code") from None
    timezone = _str(data, "timezone", "", "Asia/Shanghai")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"timezone: unknown zone {timezone!r}") from None
    dormancy_ms = _int(data, "dormancy_ms", "", 180 * 86_400_000, low=1)
    bands = _table(data, "bands", "")
    _only(bands, {"review_score", "block_score"}, "bands.")
    review = _int(bands, "review_score", "bands.", None, low=1)
    block = _int(bands, "block_score", "bands.", None, low=1)
    if block <= review:
        raise ConfigError(f"bands: block_score ({block}) must be above review_score ({review})")
    rules_table = _table(data, "rules", "")
    if not rules_table or len(rules_table) > RULES_MAX:
        raise ConfigError(f"rules: 1..{RULES_MAX} rules")
    rules = []
    for name, raw in rules_table.items():
        rule = _rule(name, raw, KINDS)
        if rule is not None:
            rules.append(rule)
    return RiskConfig(tuple(rules), review, block, currency, timezone, dormancy_ms)


# Parameters whose values are restricted beyond "an integer >= 0".
PARAM_VALUES: dict[str, range | tuple[int, ...]] = {
    "window_s": (60, 3600, 86400),  # the windows the shards keep (shardbank.activity)
    "start_hour": range(0, 24),
    "end_hour": range(0, 24),
    "band_pct": range(1, 100),
    "out_pct": range(1, 101),
    "min_count": range(1, 1001),
    "max_count": range(0, 1_000_001),
    "min_sources": range(1, 1001),
    "min_targets": range(1, 1001),
}


def _describe(allowed: range | tuple[int, ...]) -> str:
    if isinstance(allowed, range):
        return f"{allowed.start}..{allowed.stop - 1}"
    return ", ".join(str(v) for v in allowed)


_RULE_KEYS = {"kind", "weight", "severity", "enabled", "alert_only", "aml_typology"}


def _rule(name: str, raw: Any, kinds: Mapping[str, Any]) -> Rule | None:
    where = f"rules.{name}."
    if not isinstance(raw, dict):
        raise ConfigError(f"rules.{name}: must be a table")
    if not (0 < len(name) <= RULE_NAME_LENGTH_MAX and name.replace("_", "").isalnum() and name.isascii()):
        raise ConfigError(f"rules.{name}: a name is 1..{RULE_NAME_LENGTH_MAX} of [A-Za-z0-9_]")
    kind = _str(raw, "kind", where, name)
    if kind not in kinds:
        raise ConfigError(f"{where}kind: unknown rule kind {kind!r} (known: {', '.join(sorted(kinds))})")
    needed: tuple[str, ...] = kinds[kind].params
    _only(raw, _RULE_KEYS | set(needed), where)
    enabled = _bool(raw, "enabled", where, True)
    alert_only = _bool(raw, "alert_only", where, False)
    weight = _int(raw, "weight", where, 0 if alert_only else None, low=0, high=WEIGHT_MAX)
    severity = _str(raw, "severity", where, "MEDIUM")
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}severity: one of {', '.join(SEVERITIES)}, got {severity!r}")
    typology = _str(raw, "aml_typology", where, "")
    if len(typology) > RULE_NAME_LENGTH_MAX:
        raise ConfigError(f"{where}aml_typology: at most {RULE_NAME_LENGTH_MAX} characters")
    params = {key: _param(raw, key, where) for key in needed}
    for key, param in params.items():
        allowed = PARAM_VALUES.get(key)
        for value in (param.default, *param.per_type.values()):
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{where}{key}: {value} is not one of {_describe(allowed)}")
    if not enabled:
        return None
    return Rule(name, kind, weight, severity, alert_only, typology, params)


def _param(raw: Mapping[str, Any], key: str, where: str) -> Param:
    if key not in raw:
        raise ConfigError(f"{where}{key}: missing (an integer or {{personal = .., business = ..}})")
    value = raw[key]
    if isinstance(value, dict):
        unknown = set(value) - set(ACCOUNT_TYPES)
        if unknown or not value:
            raise ConfigError(f"{where}{key}: per account type, keys {', '.join(ACCOUNT_TYPES)}")
        per_type: dict[int, int] = {
            int(ACCOUNT_TYPES[t]): _int(value, t, f"{where}{key}.", None, low=0) for t in value
        }
        return Param(max(per_type.values()), per_type)
    return Param(_int(raw, key, where, None, low=0))


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _table(table: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = table.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: a table is required")
    return value


def _str(table: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}{key}: must be a string")
    return value


def _bool(table: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{key}: must be true or false")
    return value


def _int(
    table: Mapping[str, Any],
    key: str,
    where: str,
    default: int | None,
    *,
    low: int = 0,
    high: int = money.BALANCE_MAX_MINOR,
) -> int:
    if key not in table and default is None:
        raise ConfigError(f"{where}{key}: missing")
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}{key}: must be an integer (minor units / ms / count), got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where}{key}: must be {low}..{high}, got {value}")
    return value
