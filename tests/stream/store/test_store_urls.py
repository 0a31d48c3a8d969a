"""Store URL parsing, redaction and parameter encoding (pure logic, no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from finsent.stream.store import parse_chdb_url, parse_clickhouse_url, redact_url
from finsent.stream.store.clickhouse import to_driver_placeholders
from finsent.stream.store.embedded import encode_param
from finsent.stream.store.schema import Capabilities, check_database_name, create_statements


def test_clickhouse_url_full() -> None:
    kw = parse_clickhouse_url(
        "clickhouse://alice:p%40ss%3Aw@ch.example:9440/market?secure=1&verify=0&connect_timeout=2"
    )
    assert kw["host"] == "ch.example" and kw["port"] == 9440 and kw["database"] == "market"
    assert kw["user"] == "alice" and kw["password"] == "p@ss:w"
    assert kw["secure"] is True and kw["verify"] is False and kw["connect_timeout"] == 2.0
    assert "p%40ss" not in kw["url_redacted"] and "p@ss" not in kw["url_redacted"]


def test_clickhouse_url_defaults() -> None:
    kw = parse_clickhouse_url("clickhouse://localhost")
    assert (kw["host"], kw["port"], kw["user"], kw["password"], kw["database"], kw["secure"]) == (
        "localhost",
        9000,
        "default",
        "",
        "finsent",
        False,
    )
    assert parse_clickhouse_url("clickhouse://h?secure=1")["port"] == 9440


@pytest.mark.parametrize(
    "url",
    ["clickhouse://h/db?bogus=1", "clickhouse://h?secure=maybe", "clickhouse:///db", "clickhouse://h/bad-name;drop"],
)
def test_clickhouse_url_errors(url: str) -> None:
    with pytest.raises(ValueError):
        kw = parse_clickhouse_url(url)
        check_database_name(kw["database"])


def test_chdb_urls(tmp_path: Path) -> None:
    assert parse_chdb_url("chdb:///var/lib/finsent") == {"path": "/var/lib/finsent", "database": "finsent"}
    assert parse_chdb_url("chdb://data/x?database=d1") == {"path": "data/x", "database": "d1"}
    with pytest.raises(ValueError):
        parse_chdb_url("chdb://")


def test_redact_url() -> None:
    assert redact_url("clickhouse://u:secret@h:9000/db") == "clickhouse://u:***@h:9000/db"
    assert redact_url("clickhouse://h:9000/db") == "clickhouse://h:9000/db"


def test_driver_placeholders() -> None:
    sql = "SELECT {a:String}, {b:Array(String)} WHERE x LIKE '%z' AND y = {c:DateTime('UTC')}"
    assert to_driver_placeholders(sql) == "SELECT %(a)s, %(b)s WHERE x LIKE '%%z' AND y = %(c)s"


def test_encode_param_escapes() -> None:
    assert encode_param("a\\b\tc\nd'e") == "a\\\\b\\tc\\nd'e"
    assert encode_param(None) == "\\N"
    assert encode_param(["it's", "x\\"]) == "['it\\'s','x\\\\']"
    assert encode_param(True) == "1" and encode_param(7) == "7"


def test_capabilities() -> None:
    old, new = Capabilities.parse("18.16.1"), Capabilities.parse("26.9.2.1")
    assert not old.ttl and old.low_cardinality_is_experimental
    assert new.ttl and not new.low_cardinality_is_experimental
    assert not any("TTL" in s for s in create_statements("db", old, retention_days=5))
    from finsent.stream.store.schema import TABLE_SPECS

    with_ttl = sum(spec.ttl_column is not None for spec in TABLE_SPECS.values())  # items, topic_minute, alerts, scores
    assert with_ttl >= 3
    assert sum("TTL" in s for s in create_statements("db", new, retention_days=5)) == with_ttl
    assert not any("TTL" in s for s in create_statements("db", new, retention_days=0))
