"""``finsent query entity|items|top --by entity|alerts`` and the worker's /v1 entity API, on both engines.

Parameter validation is checked where a user meets it: argparse (exit 2 with a usage line) for the CLI, 400 with
the route's parameters for the API (through the real HTTP server the worker runs).
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from finsent.cli import main
from finsent.core.events import Alert, EntityMention, RawItem, ScoredItem, utcnow
from finsent.stream.metrics import serve_metrics
from finsent.stream.store import open_store
from finsent.stream.store.reports import api_handlers
from tests.fixtures.clickhouse import free_port

pytestmark = pytest.mark.integration

PROBS = {
    "negative": {"negative": 0.9, "neutral": 0.05, "positive": 0.05},
    "neutral": {"negative": 0.1, "neutral": 0.8, "positive": 0.1},
    "positive": {"negative": 0.05, "neutral": 0.05, "positive": 0.9},
}
T0 = datetime(2022, 11, 9, 12, tzinfo=UTC)


def _ent(name: str, entity_id: str | None, sentiment: str, relevance: int = 90) -> EntityMention:
    return EntityMention(
        name, 0, len(name), sentiment, PROBS[sentiment], entity_id, name if entity_id else name.casefold(), relevance
    )


def _item(
    i: int,
    title: str,
    ents: tuple[EntityMention, ...],
    sentiment: str,
    topic: str,
    at: datetime,
    source: str = "CoinDesk",
) -> ScoredItem:
    raw = RawItem(
        id=f"q-{i}",
        source=source,
        source_type="news",
        text=f"body {i}",
        title=title,
        url=f"https://news.example/{i}",
        ingested_at=utcnow(),
        published_at=at,
    )
    return ScoredItem(raw, sentiment, PROBS[sentiment], topic, 0.9, "m1", utcnow(), ents)


SEED = [
    _item(1, "FTX halts withdrawals", (_ent("FTX", None, "negative"),), "negative", "crypto", T0, "CoinDesk"),
    _item(
        2,
        "=FTX collapse deepens",
        (_ent("FTX", None, "negative"),),
        "negative",
        "crypto",
        T0 + timedelta(hours=2),
        "Decrypt",
    ),
    _item(
        3,
        "Apple beats estimates",
        (_ent("Apple", "AAPL", "positive"),),
        "positive",
        "earnings",
        T0 + timedelta(hours=1),
    ),
    _item(
        4,
        "Apple and FTX in one story",
        (_ent("Apple", "AAPL", "neutral", 40), _ent("FTX", None, "negative")),
        "neutral",
        "markets",
        T0 + timedelta(hours=3),
    ),
]


@pytest.fixture(params=["clickhouse", "chdb"])
def seeded(request: pytest.FixtureRequest) -> Iterator[tuple[str, Any]]:
    url = request.getfixturevalue(f"{request.param}_db_url")
    store = open_store(url)
    store.ensure_schema()
    store.insert_scored(SEED)
    store.insert_alerts(
        [
            Alert(
                topic="",
                fired_at=T0 + timedelta(hours=6),
                window_start=T0,
                window_end=T0 + timedelta(hours=6),
                negative=9,
                total=11,
                negative_share=0.8,
                baseline_share=0.05,
                score=6.1,
                detector="entity_surge",
                kind="entity",
                entity_name="ftx",
                evidence={"headlines": [{"title": "FTX halts withdrawals", "url": "https://news.example/1"}]},
            ),
            Alert(
                topic="crypto",
                fired_at=utcnow(),
                window_start=utcnow() - timedelta(minutes=5),
                window_end=utcnow(),
                negative=5,
                total=6,
                negative_share=0.8,
                baseline_share=0.2,
                score=3.0,
                detector="ewma_z",
            ),
        ]
    )
    yield url, store
    store.close()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


WINDOW = ("--since", "2022-11-08", "--until", "2022-11-11")


def test_query_entity_resolves_names_tickers_and_ids(seeded, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = seeded
    for query in ("AAPL", "Apple", "$AAPL", "NASDAQ:AAPL"):
        rc, out, _ = _cli(capsys, "--store", url, "query", "entity", query, *WINDOW, "--json")
        doc = json.loads(out)
        assert (rc, doc["entity_key"], doc["totals"]["buzz"]) == (0, "AAPL", 2), query
    rc, out, _ = _cli(capsys, "--store", url, "query", "entity", "FTX", *WINDOW, "--bucket", "1h", "--json")
    doc = json.loads(out)
    assert doc["entity_key"] == "name:ftx" and doc["entity_id"] is None
    assert [(b["bucket"], b["buzz"], b["negative"]) for b in doc["series"]] == [
        ("2022-11-09T12:00:00.000Z", 1, 1),
        ("2022-11-09T14:00:00.000Z", 1, 1),
        ("2022-11-09T15:00:00.000Z", 1, 1),
    ]
    assert doc["stories"][0]["url"].startswith("https://news.example/")
    # the same entity by its stored key; a table for people names it
    rc, out, _ = _cli(capsys, "--store", url, "query", "entity", "name:ftx", *WINDOW)
    assert rc == 0 and "name:ftx" in out and "3 mentions" in out
    # a replay of history is in history: nothing in the last 7 days
    rc, out, _ = _cli(capsys, "--store", url, "query", "entity", "FTX", "--json")
    assert json.loads(out)["series"] == []


def test_query_top_by_entity_and_items(seeded, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = seeded
    rc, out, _ = _cli(capsys, "--store", url, "query", "top", "--by", "entity", "--since", "3000d", "--json")
    doc = json.loads(out)
    assert [(e["entity_key"], e["buzz"]) for e in doc["entities"]] == [("name:ftx", 3), ("AAPL", 2)]
    rc, out, _ = _cli(
        capsys, "--store", url, "query", "items", "--entity", "FTX", "--sentiment", "negative", *WINDOW, "--json"
    )
    assert [i["id"] for i in json.loads(out)["items"]] == ["q-2", "q-1"]
    rc, out, _ = _cli(
        capsys, "--store", url, "query", "items", "--topic", "earnings", *WINDOW, "--limit", "1", "--json"
    )
    assert [i["id"] for i in json.loads(out)["items"]] == ["q-3"]
    rc, out, _ = _cli(capsys, "--store", url, "query", "items", *WINDOW, "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rc == 0 and [r["id"] for r in rows] == ["q-4", "q-2", "q-3", "q-1"]
    assert rows[1]["title"] == "'=FTX collapse deepens"  # no formula in a spreadsheet
    assert rows[0]["event_time"].startswith("2022-11-09 15:00:00") or rows[0]["event_time"].startswith(
        "2022-11-09T15:00:00"
    )


def test_query_alerts_json_has_kind_and_entity(seeded, capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = seeded
    rc, out, _ = _cli(capsys, "--store", url, "query", "alerts", "--json")
    alerts = {a["kind"]: a for a in json.loads(out)}
    e, t = alerts["entity"], alerts["topic"]
    assert (e["entity_name"], e["entity_id"], e["topic"], e["at"], e["sentiment"]) == (
        "ftx",
        None,
        None,
        "2022-11-09T18:00:00.000Z",
        "negative",
    )
    assert e["evidence"]["headlines"][0]["url"] == "https://news.example/1"
    assert t["topic"] == "crypto" and t["entity_name"] is None and t["at"].endswith("Z")
    rc, out, _ = _cli(capsys, "--store", url, "query", "alerts", "--kind", "entity", "--json")
    assert [a["kind"] for a in json.loads(out)] == ["entity"]


@pytest.mark.parametrize(
    "argv",
    [
        ("query", "items", "--limit", "0"),
        ("query", "items", "--limit", "-3"),
        ("query", "items", "--since", "-1h"),
        ("query", "items", "--since", "2022-13-45"),
        ("query", "items", "--sentiment", "angry"),
        ("query", "items", "--json", "--csv"),
        ("query", "entity", "AAPL", "--bucket", "0s"),
        ("query", "entity", "AAPL", "--limit", "0"),
        ("query", "top", "--by", "ticker"),
        ("query", "alerts", "--kind", "both"),
    ],
)
def test_cli_parameters_are_validated(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--store", "chdb:///nonexistent-never-opened", *argv])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.fixture
def api(seeded) -> Iterator[str]:
    _, store = seeded
    server = serve_metrics("127.0.0.1", free_port(), registry=CollectorRegistry(), routes=api_handlers(lambda: store))
    assert server is not None
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_entity_routes(api: str) -> None:
    status, doc = _get(f"{api}/v1/entities?since=2022-11-01&until=2022-11-30&limit=1")
    assert status == 200 and [e["entity_key"] for e in doc["entities"]] == ["name:ftx"]
    status, doc = _get(f"{api}/v1/entity/AAPL?since=2022-11-01&until=2022-11-30")
    assert status == 200 and doc["totals"]["buzz"] == 2
    status, doc = _get(f"{api}/v1/entity/name%3Aftx?since=2022-11-01&until=2022-11-30&bucket_s=86400")
    assert status == 200 and [b["buzz"] for b in doc["series"]] == [3]
    status, doc = _get(f"{api}/v1/items?entity=Apple&since=2022-11-01&until=2022-11-30")
    assert status == 200 and [i["id"] for i in doc["items"]] == ["q-4", "q-3"]
    status, doc = _get(f"{api}/v1/alerts?kind=entity")
    assert status == 200 and [a["entity_name"] for a in doc] == ["ftx"]
    status, doc = _get(f"{api}/v1/items?since=30d")  # durations the CLI's way; history is not in the last 30 days
    assert status == 200 and doc["items"] == []
    status, doc = _get(f"{api}/v1")
    assert status == 200 and set(doc["routes"]["/v1/items"]) == {
        "since",
        "until",
        "entity",
        "topic",
        "sentiment",
        "limit",
    }


@pytest.mark.parametrize(
    "query",
    [
        "/v1/items?limt=5",  # a typo is refused, not silently the default
        "/v1/items?limit=0",
        "/v1/items?limit=-1",
        "/v1/items?since=-1h",
        "/v1/items?since=yesterday",
        "/v1/items?sentiment=angry",
        "/v1/entities?since=2022-02-30",
        "/v1/entity/AAPL?bucket_s=0",
        "/v1/entity/",
        "/v1/alerts?kind=both",
        "/v1/alerts?since=inf",
        "/v1/count?foo=1",
    ],
)
def test_api_parameters_are_validated(api: str, query: str) -> None:
    status, doc = _get(api + query)
    assert status == 400, doc
    assert "error" in doc and "parameters" in doc
