"""``finsent alerts backtest``: stored history through the entity detector equals the detector run directly.

Ten days of news about a few names (with near-duplicate retellings, items without a published time, a
redelivered batch and a rescore-free history) go through the store on both engines; the backtest over the stored
mentions must raise exactly the alerts that the same composition (novelty + detector) raises on the scored items
in memory, and the surge must be caught on its day.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from finsent.alerts.backtest import GAP_DAY_ITEMS, alert_json, mention_gaps, run, scored_mentions
from finsent.alerts.entity_detector import EntityDetector
from finsent.cli import main
from finsent.core.events import EntityMention, RawItem, ScoredItem, utcnow
from finsent.stream.store import open_store
from tests.alerts.alert_fixtures import store_scored

pytestmark = pytest.mark.integration

PROBS = {
    "negative": {"negative": 0.9, "neutral": 0.05, "positive": 0.05},
    "neutral": {"negative": 0.1, "neutral": 0.8, "positive": 0.1},
    "positive": {"negative": 0.05, "neutral": 0.05, "positive": 0.9},
}
T0 = datetime(2023, 1, 10, tzinfo=UTC)
SOURCES = ("CoinDesk", "Decrypt", "Cointelegraph", "The Block")
SURGE_DAY = T0 + timedelta(days=9, hours=18)


def _ent(name: str, eid: str | None, sentiment: str, rel: int = 90) -> EntityMention:
    return EntityMention(name, 0, len(name), sentiment, PROBS[sentiment], eid, name if eid else name.casefold(), rel)


def history() -> list[ScoredItem]:
    rnd = random.Random(7)
    out: list[ScoredItem] = []
    n = 0

    def add(at: datetime, title: str, ents: tuple[EntityMention, ...], source: str, published: bool = True) -> None:
        nonlocal n
        n += 1
        sentiment = ents[0].sentiment
        raw = RawItem(
            id=f"h-{n:04d}",
            source=source,
            source_type="news",
            text=f"{title}. More on this story {n}.",
            title=title,
            url=f"https://news.example/{n}",
            ingested_at=at + timedelta(seconds=rnd.randint(5, 600), milliseconds=rnd.randint(0, 999)),
            published_at=at if published else None,
        )
        out.append(
            ScoredItem(raw, sentiment, PROBS[sentiment], "crypto", 0.9, "m1", datetime(2023, 2, 1, tzinfo=UTC), ents)
        )

    words = ["rally", "earnings", "guidance", "product", "hearing", "merger", "outlook", "probe", "upgrade", "launch"]
    for day in range(10):
        for k in range(6):
            at = T0 + timedelta(days=day, hours=rnd.randint(0, 23), minutes=rnd.randint(0, 59))
            who = rnd.choice([("Apple", "AAPL"), ("Bitcoin", "X:BTC"), ("Coinbase", "COIN")])
            sentiment = rnd.choice(["positive", "positive", "neutral", "negative"])
            add(
                at,
                f"{who[0]} {rnd.choice(words)} {rnd.choice(words)} day {day} no {k}",
                (_ent(who[0], who[1], sentiment),),
                rnd.choice(SOURCES),
                published=rnd.random() > 0.2,
            )
        if day < 9 and rnd.random() < 0.5:
            add(
                T0 + timedelta(days=day, hours=10),
                f"Genesis lending desk update {day}",
                (_ent("Genesis", None, "neutral"),),
                "CoinDesk",
            )
    # the surge: distinct negative stories about Genesis from several outlets, plus retellings of the first
    stories = [
        "Genesis halts withdrawals citing market turmoil",
        "Genesis owes creditors more than 3 billion",
        "Genesis parent DCG faces lawsuit from Gemini",
        "Genesis lays off 30 percent of staff",
        "Genesis weighs bankruptcy filing as talks stall",
        "Genesis misses payment deadline to Gemini Earn",
        "SEC charges Genesis over unregistered offering",
        "Genesis creditors form committee",
    ]
    for i, title in enumerate(stories):
        at = SURGE_DAY + timedelta(minutes=17 * i)
        add(at, title, (_ent("Genesis", None, "negative"), _ent("Bitcoin", "X:BTC", "neutral", 30)), SOURCES[i % 4])
        if i == 0:  # two retellings of the first story: one cluster, novelty 75 then 56
            add(at + timedelta(minutes=3), f"{title} - Decrypt", (_ent("Genesis", None, "negative"),), "Decrypt")
            add(at + timedelta(minutes=4), f"{title}, reports say", (_ent("Genesis", None, "negative"),), "The Block")
    return out


def _detector() -> EntityDetector:
    return EntityDetector()


def test_the_direct_run_catches_the_surge_on_its_day() -> None:
    alerts = run(scored_mentions(history()), _detector())
    assert [(a.entity_name, a.window_end.date()) for a in alerts] == [("genesis", SURGE_DAY.date())]
    # the first hour of the surge: 4 stories and 2 retellings of the first; the retellings are buzz, not evidence
    assert (alerts[0].evidence["negative"], alerts[0].evidence["novel_negative"]) == (6, 4)


@pytest.mark.parametrize("engine", ["clickhouse", "chdb"])
def test_backtest_of_the_stored_history_equals_the_direct_run(
    engine: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = request.getfixturevalue(f"{engine}_db_url")
    items = history()
    store = open_store(url)
    try:
        store.ensure_schema()
        rnd = random.Random(3)
        shuffled = items[:]
        rnd.shuffle(shuffled)  # arrival order is not event order: the store and the backtest put it right
        for i in range(0, len(shuffled), 25):
            store.insert_scored(shuffled[i : i + 25])
        store.insert_scored(shuffled[:40])  # a redelivered batch
    finally:
        store.close()
    direct = [alert_json(a) for a in run(scored_mentions(items), _detector())]
    assert direct, "the fixture must raise an alert, or equality proves nothing"
    rc = main(
        [
            "--store",
            url,
            "alerts",
            "backtest",
            "--since",
            "2023-01-01",
            "--until",
            "2023-02-01",
            "--json",
            "--plot",
            str(tmp_path / "plots"),
        ]
    )
    out = capsys.readouterr().out
    report = json.loads(out)
    assert rc == 0
    assert report["alerts"] == json.loads(json.dumps(direct))
    assert {a["model_version"] for a in report["alerts"]} == {"m1"}  # the version the stored mentions carry
    assert report["mentions"] == len(scored_mentions(items))
    assert [Path(p).name for p in report["plots"]] == ["genesis.png"] and Path(report["plots"][0]).stat().st_size
    # a watchlist without Genesis: no alert; the people's output names the entity and its first headline
    wl = tmp_path / "watch.csv"
    wl.write_text("entity\nAAPL\n")
    rc = main(
        [
            "--store",
            url,
            "alerts",
            "backtest",
            "--since",
            "2023-01-01",
            "--until",
            "2023-02-01",
            "--watchlist",
            str(wl),
            "--json",
        ]
    )
    assert json.loads(capsys.readouterr().out)["alerts"] == []
    rc = main(["--store", url, "alerts", "backtest", "--since", "2023-01-01", "--until", "2023-02-01"])
    captured = capsys.readouterr()
    assert rc == 0 and "genesis" in captured.out and "https://news.example/" in captured.out
    assert "warning" not in captured.err  # every item's mentions are stored: nothing to warn about


@pytest.mark.parametrize("argv", [("--since", "-3d"), ("--since", "2023-02-30"), ("--watch-mode", "all")])
def test_backtest_arguments_are_validated(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["alerts", "backtest", *argv])
    assert exc.value.code == 2 and "usage:" in capsys.readouterr().err


def test_backtest_window_must_end_after_it_starts(chdb_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--store", chdb_db_url, "alerts", "backtest", "--since", "2023-02-01", "--until", "2023-01-01"])
    assert rc != 0 and "is not after --since" in capsys.readouterr().err


@pytest.mark.parametrize("engine", ["chdb"])
def test_live_entity_stage_and_backtest_raise_the_same_alerts(
    engine: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worker's entity stage (finsent.alerts.entity_agent: records keyed by entity, reorder buffer, novelty,
    detector) fed the scored messages, and the backtest over the same items stored: the same alerts."""
    from finsent.alerts.entity_agent import EntityAlerts, decode_record, entity_records
    from finsent.core.settings import load_settings

    items = sorted(history(), key=lambda s: s.item.published_at or s.item.ingested_at)
    clock = [0.0]
    live = EntityAlerts(load_settings(), sinks=[], clock=lambda: clock[0])
    got = []
    for i in range(0, len(items), 25):
        records, _, _, _ = entity_records([s.to_json() for s in items[i : i + 25]])
        got += live.offer([p for _, v in records for p in decode_record(v)])
        clock[0] += 1.0
    clock[0] += 30 * 86400.0  # a quiet month: the watermark moves on with the clock and closes every bucket
    got += live.tick()
    live.close()
    assert got and live.late == 0
    url = request.getfixturevalue(f"{engine}_db_url")
    store_scored(url, items)
    assert main(["--store", url, "alerts", "backtest", "--since", "2023-01-01", "--until", "2023-02-01", "--json"]) == 0
    backtested = json.loads(capsys.readouterr().out)["alerts"]
    assert backtested == json.loads(json.dumps([alert_json(a) for a in got]))


# -- a store with items but no (or not all) mentions (issue 26): the backtest says so on stderr ----------------------


def _rescore_days(err: str, items: list[ScoredItem]) -> int:
    """The N of the ``finsent rescore --since Nd`` the warning gives; it must reach back to the oldest item's
    ingestion (rescore's window is ingestion time), by at most a day more."""
    found = re.search(r"`finsent rescore --since (\d+)d`", err)
    assert found, err
    days = int(found.group(1))
    oldest = min(s.item.ingested_at for s in items)
    assert days - 1 <= math.ceil((utcnow() - oldest).total_seconds() / 86400) <= days
    return days


def test_backtest_over_items_without_mentions_warns_on_stderr(
    chdb_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Items stored before the entity layer (no mentions): the backtest's JSON stays the report and says 0
    mentions, and stderr says why and which rescore writes them, in both output modes."""
    items = [dataclasses.replace(s, entities=()) for s in history()]
    store_scored(chdb_db_url, items)
    argv = ["--store", chdb_db_url, "alerts", "backtest", "--since", "2023-01-01", "--until", "2023-02-01"]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout is the JSON alone
    assert (report["mentions"], report["alerts"]) == (0, []) and "warnings" not in report
    assert captured.err.startswith("warning: ") and f"{len(items)} stored item(s)" in captured.err
    assert "no entity mentions" in captured.err
    _rescore_days(captured.err, items)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "0 mentions" in captured.out and "no entity mentions" in captured.err


def test_backtest_names_the_days_whose_mentions_are_missing(
    chdb_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first five days were stored without mentions (a worker with entities off), the rest with: the warning
    names those days and their items, and the rescore it proposes reaches back to them."""
    cut = T0 + timedelta(days=5)
    items = history()
    stripped = [s for s in items if (s.item.published_at or s.item.ingested_at) < cut]
    gap = {s.id for s in stripped}
    store_scored(chdb_db_url, [dataclasses.replace(s, entities=()) if s.id in gap else s for s in items])
    argv = ["--store", chdb_db_url, "alerts", "backtest", "--since", "2023-01-01", "--until", "2023-02-01", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["alerts"] and report["mentions"] == len(scored_mentions([s for s in items if s.id not in gap]))
    # event time is stored in whole seconds, ingestion time may be a later day: count items by their event day
    assert f"{len(gap)} stored item(s) on days without a single entity mention (2023-01-10..2023-01-14;" in (
        captured.err
    )
    _rescore_days(captured.err, stripped)


def test_mention_gaps_are_busy_days_without_a_mention() -> None:
    """A day needs GAP_DAY_ITEMS items and no mention to be a gap; days without items do not split a run, a day
    with a mention does."""
    day = [datetime(2023, 1, d, 12, tzinfo=UTC) for d in range(1, 9)]
    items = [
        {"event_time": day[d]}
        for d, n in ((0, 9), (1, 9), (3, 9), (4, 9), (5, GAP_DAY_ITEMS - 1), (7, 9))
        for _ in range(n)
    ]
    ments = [{"event_time": day[4]}]
    assert mention_gaps(items, ments) == [
        (day[0].date(), day[3].date(), 27),  # day 2 has no items: the run goes on
        # day 4 has a mention, day 5 too few items to say
        (day[7].date(), day[7].date(), 9),
    ]
    assert mention_gaps(items, [{"event_time": d} for d in day]) == []


def test_backtest_alerts_carry_the_model_version_of_their_mentions(
    chdb_db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The surge was scored by a newer version than the rest (a hot reload): the backtest's alert carries the
    version that scored the stories it quotes, read from the stored mentions, as a live alert does."""
    items = [
        dataclasses.replace(s, model_version="v0002-surge") if s.item.title.startswith(("Genesis", "SEC")) else s
        for s in history()
    ]
    items = [  # the quiet "Genesis lending desk update" items before the surge stay on m1
        dataclasses.replace(s, model_version="m1") if "lending desk update" in (s.item.title or "") else s
        for s in items
    ]
    store_scored(chdb_db_url, items)
    argv = ["--store", chdb_db_url, "alerts", "backtest", "--since", "2023-01-01", "--until", "2023-02-01", "--json"]
    assert main(argv) == 0
    alerts = json.loads(capsys.readouterr().out)["alerts"]
    assert [(a["entity_name"], a["model_version"]) for a in alerts] == [("genesis", "v0002-surge")]
    assert alerts == json.loads(json.dumps([alert_json(a) for a in run(scored_mentions(items), _detector())]))
