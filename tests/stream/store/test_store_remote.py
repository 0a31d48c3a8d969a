"""The store through its owner, in one process: the tagged JSON codec, the whitelist, the owner file, and a
:class:`RemoteStore` over a real HTTP server (``serve_metrics``' POST route) on a real chdb store.

The end-to-end check (a real ``finsent worker`` process with items flowing, every command against it) is
tests/cli/test_commands_while_worker_runs.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from finsent.core.errors import StoreError, StoreInUse
from finsent.core.events import Alert, EntityMention, RawItem, ScoredItem, utcnow
from finsent.core.store import Label, TopicCounts
from finsent.stream.metrics import serve_metrics
from finsent.stream.store import open_store, owner, rpc_codec
from finsent.stream.store.remote import RemoteStore

pytestmark = pytest.mark.integration

TOKEN = "remote-store-test-token-0123456789"


def _scored(i: int, text: str = "acme shares fall") -> ScoredItem:
    now = utcnow()
    item = RawItem(
        id=f"r-{i}",
        source="test",
        source_type="news",
        text=f"{text} #{i}",
        ingested_at=now,
        title="Acme",
        published_at=now - timedelta(minutes=1),
        tickers=("ACME",),
    )
    mention = EntityMention(
        text="Acme",
        start=0,
        end=4,
        sentiment="negative",
        sentiment_probs={"negative": 0.8, "neutral": 0.1, "positive": 0.1},
        entity_id="ACME",
        name="Acme Corp",
        relevance=90,
    )
    return ScoredItem(
        item=item,
        sentiment="negative",
        sentiment_probs={"negative": 0.8, "neutral": 0.1, "positive": 0.1},
        topic="markets",
        topic_prob=0.9,
        model_version="v-test",
        entities=(mention,),
    )


# --- codec ----------------------------------------------------------------------------------------------


def test_codec_round_trips_every_type_a_store_call_carries() -> None:
    now = datetime(2026, 12, 7, 14, 3, 5, 123456, tzinfo=UTC)
    alert = Alert(
        topic="markets",
        fired_at=now,
        window_start=now - timedelta(minutes=5),
        window_end=now,
        negative=7,
        total=9,
        negative_share=0.7,
        baseline_share=0.2,
        score=3.5,
        detector="ewma",
        kind="entity",
        entity_id="ACME",
        entity_name="Acme",
        evidence={"items": ["a", "b"], "n": 2},
    )
    value = {
        "items": [_scored(1), _scored(2)],
        "labels": (Label(id="x", task="sentiment", label="negative", text="t", at=now),),
        "counts": [TopicCounts(bucket=now, topic="markets", total=3, negative=1, neutral=1, positive=1)],
        "alert": alert,
        "since": timedelta(days=30, seconds=5, microseconds=7),
        "day": date(2026, 12, 7),
        "naive": datetime(2026, 1, 1, 0, 0),
        "after": (1765100000, "id-1"),
        "by_int": {1: "a", 2: ("b", None)},
        "tagged_key": {"__t": "not a tag"},
        "raw": b"\x00\xff",
        "nums": [1, 2.5, True, None, float("inf")],
    }
    back = rpc_codec.loads(rpc_codec.dumps(value))
    assert back == value
    assert type(back["after"]) is tuple and type(back["items"][0]) is ScoredItem
    assert back["items"][0].entities[0] == value["items"][0].entities[0]
    assert back["since"] == timedelta(days=30, seconds=5, microseconds=7)
    assert back["naive"].tzinfo is None and back["alert"].fired_at.tzinfo is not None


@pytest.mark.parametrize(
    "doc, why",
    [
        ({"__t": "dc", "c": "Popen", "f": {"args": ["sh"]}}, "cannot build"),
        ({"__t": "dc", "c": "Settings", "f": {}}, "cannot build"),
        ({"__t": "pickle", "v": "gASVAA=="}, "unknown tag"),
        ({"__t": "dt", "v": "yesterday"}, "malformed"),
        ({"__t": "tuple", "v": "abc"}, "JSON array"),
        ({"__t": "dc", "c": "Label", "f": {"nope": 1}}, "malformed"),
    ],
)
def test_codec_builds_only_what_it_lists(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(rpc_codec.CodecError, match=why):
        rpc_codec.decode(doc)


def test_codec_refuses_to_carry_a_type_it_would_not_build() -> None:
    from dataclasses import dataclass

    @dataclass
    class Label:  # same name as the core one, another class
        id: str

    with pytest.raises(rpc_codec.CodecError):
        rpc_codec.encode(Label("x"))
    with pytest.raises(rpc_codec.CodecError):
        rpc_codec.encode(object())


# --- the owner file -------------------------------------------------------------------------------------


class _Server:
    server_address = ("127.0.0.1", 9999)


def test_owner_file_is_written_read_and_removed_and_a_dead_pid_is_ignored(tmp_path: Path) -> None:
    store = type("ChdbStore", (), {"path": str(tmp_path), "database": "db1"})()
    rec = owner.record(store, _Server(), token="x" * 20)
    assert rec is not None
    got = owner.read_owner(tmp_path)
    assert got is not None and got["pid"] == os.getpid() and got["port"] == 9999 and got["token"] is True
    rec.remove()
    assert not (tmp_path / owner.OWNER_FILE).exists()
    # a worker killed with SIGKILL leaves its file behind: its pid is dead, the file is ignored
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / owner.OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "host": "127.0.0.1", "port": 1}))
    assert owner.read_owner(tmp_path) is None
    (tmp_path / owner.OWNER_FILE).write_text("{not json")
    assert owner.read_owner(tmp_path) is None
    # a server store (or any other) records nothing
    assert owner.record(type("ClickHouseStore", (), {"path": str(tmp_path)})(), _Server(), None) is None


def test_a_second_worker_on_a_recorded_path_gets_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / owner.OWNER_FILE).write_text(json.dumps({"pid": other.pid, "host": "127.0.0.1", "port": 1}))
        monkeypatch.setattr(owner, "_is_worker", False)
        with pytest.raises(StoreInUse) as err:
            owner.mark_worker(f"chdb://{tmp_path}")
        line = err.value.one_line()
        assert line == (
            f"the embedded store at {tmp_path.resolve()} is held by worker pid {other.pid}; a second "
            "worker needs a clickhouse:// store -- see `finsent worker --help`"
        ), line
        owner.mark_worker("clickhouse://default@127.0.0.1:9000/x")  # a server store: nothing to check
    finally:
        other.kill()
        other.wait()


# --- RemoteStore over a real server on a real chdb store ------------------------------------------------


@pytest.fixture
def served(chdb_db_url: str) -> Iterator[tuple[Any, Any]]:
    """(the owner's store, the API server) with the store call route, token required."""
    store = open_store(chdb_db_url)
    store.ensure_schema()
    server = serve_metrics(
        "127.0.0.1", _free_port(), routes={}, api_token=TOKEN, post_routes=owner.call_routes(lambda: store)
    )
    assert server is not None
    try:
        yield store, server
    finally:
        server.shutdown()
        store.close()


def _free_port() -> int:
    from finsent.stream.broker import free_port

    return free_port()


def _remote(store: Any, server: Any, token: str | None = TOKEN) -> RemoteStore:
    rec = {"pid": os.getpid(), "host": "127.0.0.1", "port": server.server_address[1], "token": True}
    return RemoteStore(store.path, store.database, rec, token=token)


def test_remote_store_reads_and_writes_like_the_owner(served: tuple[Any, Any]) -> None:
    store, server = served
    remote = _remote(store, server)
    assert remote.database == store.database and "through worker pid" in remote.url_redacted
    assert remote.capabilities.version_text == store.capabilities.version_text
    items = [_scored(i) for i in range(5)]
    assert remote.insert_scored(items) == 5
    assert remote.insert_scored(items[:2]) in (0, 2)  # a redelivery: stored once all the same
    assert store.count()["rows"] == 5 and remote.count() == store.count()
    labels = [Label(id="r-1", task="sentiment", label="positive", text="t", by="me")]
    remote.insert_labels(labels)
    assert [(lb.id, lb.label) for lb in store.labels("sentiment")] == [("r-1", "positive")]
    assert remote.labels("sentiment") == store.labels("sentiment")
    assert remote.items_by_id(["r-1", "r-2"]) == store.items_by_id(["r-1", "r-2"])
    assert remote.top_negative(timedelta(hours=1), limit=3) == store.top_negative(timedelta(hours=1), limit=3)
    assert remote.topic_counts(timedelta(hours=1)) == store.topic_counts(timedelta(hours=1))
    assert remote.query("SELECT count() FROM {db:Identifier}.items FINAL", {"db": store.database}) == [(5,)]
    for sql in (
        f"DROP DATABASE {store.database}",
        f"SELECT 1; DROP DATABASE {store.database}",
        f"/* x */ INSERT INTO {store.database}.labels SELECT * FROM {store.database}.labels",
    ):
        with pytest.raises(StoreError, match="read statement"):
            remote.query(sql)
    assert remote.query("-- a comment\nSELECT 1;") == [(1,)]
    with pytest.raises(StoreError, match="refused the query"):  # the owner's own error, its class kept
        remote.query("SELECT no_such_column FROM system.one")
    with pytest.raises(AttributeError):
        remote._command  # noqa: B018 - not served
    assert store.count()["rows"] == 5


@pytest.mark.parametrize("method", ["close", "_command", "_insert", "__init__", "__class__", "drop"])
def test_the_endpoint_runs_only_whitelisted_methods(served: tuple[Any, Any], method: str) -> None:
    store, server = served
    status, body = _post(server, {"method": method, "args": ["DROP DATABASE x"], "kwargs": {}}, TOKEN)
    assert status == 400 and "is not served" in body["error"], body
    assert store.count() is not None  # the store is still open


def test_the_endpoint_wants_the_token_like_the_data_api(served: tuple[Any, Any]) -> None:
    store, server = served
    assert _post(server, {"method": "count"}, None)[0] == 401
    assert _post(server, {"method": "count"}, "wrong-token-wrong-token")[0] == 401
    assert _post(server, {"method": "count"}, TOKEN)[0] == 200
    with pytest.raises(StoreInUse, match="FINSENT_API_TOKEN is not set"):
        _remote(store, server, token=None)
    with pytest.raises(StoreInUse, match="refused this command"):
        _remote(store, server, token="wrong-token-wrong-token")


def test_a_worker_that_does_not_answer_is_one_line_with_what_to_do(tmp_path: Path) -> None:
    rec = {"pid": os.getpid(), "host": "127.0.0.1", "port": _free_port(), "token": False}
    with pytest.raises(StoreInUse) as err:
        RemoteStore(str(tmp_path), "finsent", rec)
    assert f"held by worker pid {os.getpid()}" in str(err.value) and "did not answer" in str(err.value)
    assert "kill -TERM" in err.value.hint
    with pytest.raises(StoreInUse, match="serves no API"):
        RemoteStore(str(tmp_path), "finsent", {**rec, "port": None})


def _post(server: Any, doc: dict[str, Any], token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.server_address[1]}{owner.CALL_PATH}",
        data=json.dumps(doc).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
