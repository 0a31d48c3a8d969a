"""Entity answers over a store that holds items but no mentions say so (issue 26).

Items stored before the entity layer, or by a worker that wrote no mentions, made ``finsent query entity`` and
``finsent query top --by entity`` answer with nothing, which reads as quiet news. They now warn on stderr (their
``--json`` stays the report alone) with the ``finsent rescore`` command that writes the mentions, and the worker's
``/v1/entity/{id}`` and ``/v1/entities`` carry the same line in ``warnings``. A store with mentions warns about
nothing, even when the answer is empty for another reason (an entity nobody mentioned, a sentiment filter).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from finsent.cli import main
from finsent.core.events import EntityMention, RawItem, ScoredItem, utcnow
from finsent.stream.metrics import serve_metrics
from finsent.stream.store import open_store
from finsent.stream.store.reports import api_handlers
from tests.alerts.alert_fixtures import store_scored
from tests.fixtures.clickhouse import free_port

pytestmark = pytest.mark.integration

PROBS = {"negative": 0.8, "neutral": 0.1, "positive": 0.1}
GAP = "this window has stored items but no entity mentions"


def _items(n: int = 6) -> list[ScoredItem]:
    """Negative news about Apple from the last hours, ingested three days ago (a back-fill)."""
    now = utcnow()
    out = []
    for i in range(n):
        raw = RawItem(
            id=f"nm-{i}",
            source="CoinDesk",
            source_type="news",
            text=f"Apple recalls devices, report {i}",
            title=f"Apple recall {i}",
            url=f"https://news.example/{i}",
            ingested_at=now - timedelta(days=3),
            published_at=now - timedelta(hours=i + 1),
        )
        ent = EntityMention("Apple", 0, 5, "negative", PROBS, "AAPL", "Apple", 90)
        out.append(ScoredItem(raw, "negative", PROBS, "tech", 0.9, "m1", now, (ent,)))
    return out


@pytest.fixture
def bare(chdb_db_url: str) -> str:
    """A store whose items were written without their mentions."""
    store_scored(chdb_db_url, [dataclasses.replace(s, entities=()) for s in _items()])
    return chdb_db_url


@pytest.fixture
def full(chdb_db_url: str) -> str:
    """The same items with their mentions."""
    store_scored(chdb_db_url, _items())
    return chdb_db_url


def _run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[str, str]:
    assert main(["--store", url, "query", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ("entity", "AAPL", "--since", "1d"),
        ("entity", "Apple", "--since", "1d"),
        ("top", "--by", "entity", "--since", "1d"),
        ("top", "--by", "entity", "--since", "1d", "--sentiment", "negative"),
    ],
)
def test_entity_queries_over_items_without_mentions_warn_on_stderr(
    bare: str, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = _run(capsys, bare, *argv, "--json")
    doc = json.loads(out)  # stdout is the report alone
    assert "warnings" not in doc and not doc.get("series") and not doc.get("entities")
    assert err.startswith(f"warning: {GAP}") and err.count("warning:") == 1
    # rescore's window is ingestion time: three days ago, so 4d (3 days and the seconds since) reaches them
    assert "`finsent rescore --since 4d`" in err
    out, err = _run(capsys, bare, *argv)  # the tables for people warn the same way
    assert GAP in err and GAP not in out


@pytest.mark.parametrize(
    "argv",
    [
        ("entity", "AAPL", "--since", "1d"),
        ("entity", "Zorblax Capital", "--since", "1d"),  # nobody mentions it: an empty answer, but the store is fine
        ("top", "--by", "entity", "--since", "1d"),
        ("top", "--by", "entity", "--since", "1d", "--sentiment", "positive"),  # empty: filtered, not missing
    ],
)
def test_entity_queries_over_a_store_with_mentions_do_not_warn(
    full: str, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = _run(capsys, full, *argv, "--json")
    assert "warnings" not in json.loads(out) and err == ""


def test_an_empty_window_does_not_warn(chdb_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store_scored(chdb_db_url, [dataclasses.replace(s, entities=()) for s in _items()])
    out, err = _run(capsys, chdb_db_url, "entity", "AAPL", "--since", "30d", "--until", "2d", "--json")
    assert json.loads(out)["series"] == [] and err == ""


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[Any]:
    servers = []

    def serve(url: str) -> str:
        store = open_store(url)
        server = serve_metrics(
            "127.0.0.1", free_port(), registry=CollectorRegistry(), routes=api_handlers(lambda: store)
        )
        assert server is not None
        servers.append((server, store))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server, store in servers:
        server.shutdown()
        store.close()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_api_entity_routes_carry_the_warning(bare: str, api: Any) -> None:
    base = api(bare)
    for path in ("/v1/entities?since=1d", "/v1/entity/AAPL?since=1d"):
        doc = _get(base + path)
        assert [w[: len(GAP)] for w in doc["warnings"]] == [GAP], doc


def test_api_entity_routes_without_a_gap_have_no_warnings(full: str, api: Any) -> None:
    base = api(full)
    assert "warnings" not in _get(base + "/v1/entities?since=1d")
    assert "warnings" not in _get(base + "/v1/entity/AAPL?since=1d")
