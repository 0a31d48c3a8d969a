"""The entity detector's contract (issue 26), in the style of tests/alerts/test_alerts_contract.py.

Baseline-relative firing with a prior for unknown names, minimum evidence (novel stories, distinct sources,
negative share), one alert per episode with a cool-down, watchlists, allowed lateness on event time, and the
same alerts whatever the arrival order within the lateness. Plus the Alert fields entity alerts added to the
event schema, and that payloads from before them still decode.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from scipy.stats import nbinom

from finsent.alerts.entity_detector import EntityDetector, Mention, Thresholds, entity_key, nb_surprise
from finsent.alerts.watchlist import Watchlist
from finsent.core.events import Alert, EntityMention, InvalidEvent, decode_alert

T0 = datetime(2023, 1, 2, 0, 0, tzinfo=UTC)
SOURCES = ("CoinDesk", "Decrypt", "Cointelegraph", "U.Today")
_seq = iter(range(10**9))


def burst(
    key: str,
    start: datetime,
    n: int,
    minutes: float = 60.0,
    sentiment: str = "negative",
    sources: tuple[str, ...] = SOURCES,
    novelty: int = 100,
    relevance: int = 100,
    entity_id: str | None = None,
) -> list[Mention]:
    """``n`` mentions of ``key`` spread evenly over ``minutes`` from ``start``."""
    name = key.lstrip("~")
    out = []
    for i in range(n):
        j = next(_seq)
        out.append(
            Mention(
                f"it{j}",
                start + timedelta(minutes=minutes * i / max(n, 1)),
                key,
                entity_id,
                name,
                sentiment,
                relevance,
                novelty,
                sources[i % len(sources)],
                f"{name} story {j}",
                f"https://news.example/{j}",
            )
        )
    return out


def history(key: str, days: int, per_day: int, start: datetime = T0, sentiment: str = "negative") -> list[Mention]:
    """A steady level: ``per_day`` mentions a day, spread over every day."""
    return [m for d in range(days) for m in burst(key, start + timedelta(days=d), per_day, 24 * 60, sentiment)]


def run(det: EntityDetector, mentions: list[Mention]) -> list[Alert]:
    mentions = sorted(mentions, key=lambda m: m.at)
    return det.add_all(mentions) + det.flush()


def test_a_surge_on_a_quiet_name_fires_once_with_its_evidence() -> None:
    det = EntityDetector()
    start = T0 + timedelta(days=5, hours=10)
    alerts = run(det, history("~genesis", 5, 1, sentiment="neutral") + burst("~genesis", start, 12, 90))
    assert len(alerts) == 1
    a = alerts[0]
    assert (a.kind, a.entity_name, a.entity_id, a.topic, a.detector) == ("entity", "genesis", None, "", "entity_surge")
    assert a.window_end == a.fired_at == start + timedelta(hours=1)  # the event time of the detection
    assert a.window_end - a.window_start == timedelta(hours=6)
    assert a.negative == 8 and a.evidence is not None and a.evidence["novel_negative"] == 8
    assert a.evidence["sources"] == sorted(SOURCES) and a.score >= 4.0
    heads = a.evidence["headlines"]
    assert len(heads) == 5 and all(h["url"].startswith("https://news.example/") and h["title"] for h in heads)
    assert decode_alert(a.to_json()) == a  # travels on the alerts topic


def test_the_baseline_is_the_entitys_own_level() -> None:
    """A name always in negative news (3 an hour) does not fire at 3 an hour; a quiet name does, at the same count."""
    det = EntityDetector()
    steady = history("~ftx", 8, 72)
    alerts = run(
        det,
        steady
        + burst("~quiet", T0 + timedelta(days=7, hours=12), 18, 6 * 60)
        + history("~quiet", 7, 1, sentiment="neutral"),
    )
    late = [a for a in alerts if a.window_end > T0 + timedelta(days=3)]  # after FTX's own history has built up
    assert [a.entity_name for a in late] == ["quiet"]
    det2 = EntityDetector()
    surge = burst("~ftx", T0 + timedelta(days=8, hours=3), 90, 120)  # 15x its level: FTX fires too
    later = [a for a in run(det2, steady + surge) if a.window_end > T0 + timedelta(days=3)]
    assert [a.entity_name for a in later] == ["ftx"]


def test_the_prior_keeps_three_stories_about_an_unknown_name_quiet() -> None:
    lenient = Thresholds(min_novel_negative=1, min_sources=1, min_ratio=1.0, min_negative_share=0.0)
    det = EntityDetector(thresholds=lenient)
    assert run(det, burst("~nobody", T0, 3, 30)) == []  # the prior alone: surprise ~1.3 < 4
    det = EntityDetector(thresholds=lenient)
    assert len(run(det, burst("~nobody", T0, 12, 30))) == 1


def test_minimum_evidence_two_sources_novel_stories_and_a_negative_share() -> None:
    start = T0 + timedelta(hours=5)
    one_source = burst("~x", start, 12, 60, sources=("OnlyOne",))
    assert run(EntityDetector(), one_source) == []
    assert len(run(EntityDetector(), burst("~x", start, 12, 60, sources=("OnlyOne", "Other")))) == 1
    # twelve retellings of one story (novelty 75, 56, ...) are one piece of evidence, not twelve
    assert run(EntityDetector(), burst("~x", start, 12, 60, novelty=75)) == []
    # names mentioned in passing count as buzz only
    assert run(EntityDetector(), burst("~x", start, 12, 60, relevance=20)) == []
    # big positive news: a flood of buzz with a few misread negatives does not fire
    flood = burst("~x", start, 80, 60, sentiment="positive") + burst("~x", start, 8, 60)
    assert run(EntityDetector(), flood) == []
    # a configured minimum
    assert run(EntityDetector(thresholds=Thresholds(min_novel_negative=20)), burst("~x", start, 12, 60)) == []


def test_one_alert_per_episode_and_re_arm_after_the_cool_down() -> None:
    start = T0 + timedelta(hours=5)
    ms = burst("~x", start, 12, 60) + burst("~x", start + timedelta(hours=8), 30, 60)  # same episode: hot again
    assert len(run(EntityDetector(cooldown_s=24 * 3600), ms)) == 1
    again = ms + burst("~x", start + timedelta(days=4), 60, 60)  # a new collapse days after the first calmed down
    alerts = run(EntityDetector(cooldown_s=24 * 3600), again)
    assert len(alerts) == 2 and alerts[1].window_end > start + timedelta(days=4)
    assert alerts[0].id != alerts[1].id


def test_only_entities_in_an_episode_are_in_the_states() -> None:
    det = EntityDetector(cooldown_s=6 * 3600)
    run(det, burst("~x", T0, 12, 60) + burst("~calm", T0, 3, 60, sentiment="neutral"))
    assert set(det.states()) == {"~x"} and det.states()["~x"].active
    det.advance(T0 + timedelta(hours=20))
    assert det.states() == {}


def _watch(tmp_path: Path, text: str, name: str = "watch.csv") -> Watchlist:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return Watchlist(p, check_interval_s=0.0)


def test_watchlist_only_mode_alerts_on_listed_names_only(tmp_path: Path) -> None:
    wl = _watch(tmp_path, "entity\nGenesis Global Ltd.\nX:BTC\n")
    ms = (
        burst("~genesis global", T0, 12, 60)
        + burst("~celsius", T0, 12, 60)
        + burst("X:BTC", T0, 12, 60, entity_id="X:BTC")
    )
    alerts = run(EntityDetector(watchlist=wl, watch_mode="only"), ms)
    assert sorted(a.evidence["entity_key"] for a in alerts if a.evidence) == ["X:BTC", "~genesis global"]


def test_watchlist_wider_mode_holds_unlisted_names_to_stricter_bars(tmp_path: Path) -> None:
    wl = _watch(tmp_path, "entity\ngenesis\n")
    ms = burst("~genesis", T0, 8, 60) + burst("~celsius", T0, 8, 60)
    alerts = run(EntityDetector(watchlist=wl, watch_mode="wider"), ms)
    assert [a.entity_name for a in alerts] == ["genesis"]
    strong = burst("~celsius", T0, 40, 60)
    assert [a.entity_name for a in run(EntityDetector(watchlist=wl, watch_mode="wider"), strong)] == ["celsius"]


def test_watchlist_per_entity_thresholds(tmp_path: Path) -> None:
    wl = _watch(tmp_path, "entity,min_novel_negative,min_sources\ngenesis,2,1\n")
    ms = burst("~genesis", T0, 3, 30, sources=("Solo",))
    assert run(EntityDetector(), ms) == []
    lower_score = _watch(
        tmp_path, '{"name": "genesis", "min_novel_negative": 2, "min_sources": 1, "score": 1}\n', "w.jsonl"
    )
    assert len(run(EntityDetector(watchlist=lower_score, watch_mode="wider"), ms)) == 1
    assert run(EntityDetector(watchlist=wl, watch_mode="wider"), ms) == []  # the prior's score still holds


def test_a_late_mention_within_the_lateness_updates_its_bucket() -> None:
    eleven = Thresholds(min_novel_negative=11)
    ms = burst("~x", T0, 10, 50)
    moves_watermark = burst("~y", T0 + timedelta(hours=1, minutes=50), 1, sentiment="neutral")
    late = burst("~x", T0 + timedelta(minutes=55), 1)  # arrives after 01:50: 55 min late, within the hour
    det = EntityDetector(lateness_s=3600, thresholds=eleven)
    det.add_all(ms + moves_watermark + late)
    alerts = det.flush()
    assert det.late == 0 and [a.negative for a in alerts] == [11]
    det = EntityDetector(lateness_s=600, thresholds=eleven)  # with 10 min of lateness it comes too late
    det.add_all(ms + moves_watermark + late)
    assert det.flush() == [] and det.late == 1


def test_a_mention_later_than_the_lateness_is_counted_and_ignored() -> None:
    det = EntityDetector(lateness_s=3600)
    det.add_all(burst("~y", T0 + timedelta(hours=3), 1, sentiment="neutral"))  # closes 00:00-02:00
    assert det.add_all(burst("~x", T0, 12, 50)) == [] and det.late == 12
    assert det.flush() == []


def test_same_alerts_whatever_the_arrival_order_within_the_lateness() -> None:
    ms = (
        history("~a", 3, 5, sentiment="neutral")
        + burst("~a", T0 + timedelta(days=3, hours=2), 14, 120)
        + burst("~b", T0 + timedelta(days=2, hours=7), 10, 45)
        + history("~c", 3, 40, sentiment="positive")
        + burst("~c", T0 + timedelta(days=2, hours=1), 9, 30)
        + burst("~a", T0 + timedelta(days=3), 3, 30)
        # two names surging in the same hour: their alerts come out in one order whatever arrived first
        + burst("~d", T0 + timedelta(days=1, hours=4), 10, 50)
        + burst("~e", T0 + timedelta(days=1, hours=4), 10, 50)
    )
    ms.sort(key=lambda m: m.at)
    reference = [a.to_dict() for a in run(EntityDetector(lateness_s=1800), ms)]
    assert reference
    rng = random.Random(7)
    for _ in range(5):
        # each mention delayed by up to 30 min of event time: arrival order shuffled within the lateness
        delayed = sorted(ms, key=lambda m: m.at + timedelta(seconds=rng.uniform(0, 1799)))
        det = EntityDetector(lateness_s=1800)
        got = [a.to_dict() for a in det.add_all(delayed) + det.flush()]
        assert got == reference and det.late == 0


def test_a_redelivered_mention_counts_once() -> None:
    ms = burst("~x", T0, 12, 60)
    a = run(EntityDetector(), ms)
    b = run(EntityDetector(), ms + ms[:6])
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]


def test_idle_entities_are_forgotten() -> None:
    det = EntityDetector(forget_after_s=2 * 24 * 3600)
    run(det, burst("~one-off", T0, 2, 10, sentiment="neutral"))
    det.advance(T0 + timedelta(days=5))
    assert len(det) == 0


def test_bad_mentions_and_settings_are_refused_with_a_reason() -> None:
    det = EntityDetector()
    with pytest.raises(ValueError, match="timezone-aware"):
        det.add(Mention("i", datetime(2023, 1, 1), "~x", None, "x", "negative"))
    with pytest.raises(ValueError, match="sentiment"):
        det.add(Mention("i", T0, "~x", None, "x", "bearish"))
    with pytest.raises(ValueError, match="watchlist"):
        EntityDetector(watch_mode="only")
    with pytest.raises(ValueError):
        EntityDetector(bucket_s=0)


def test_a_mention_is_built_from_the_entity_layers_shape() -> None:
    em = EntityMention(
        text="Genesis",
        start=0,
        end=7,
        sentiment="negative",
        sentiment_probs={"negative": 0.9, "neutral": 0.05, "positive": 0.05},
        entity_id=None,
        name="genesis",
        relevance=100,
    )
    m = Mention.of(em, "i1", T0, "CoinDesk", "Genesis halts withdrawals", "https://x", 75)
    assert (m.key, m.sentiment, m.relevance, m.novelty) == ("~genesis", "negative", 100, 75)
    assert entity_key("AAPL", "Apple") == "AAPL"


@pytest.mark.parametrize(("k", "mean", "r"), [(3, 0.6, 2.4), (12, 0.6, 2.4), (20, 18.0, 50.0), (5, 4.0, 0.5)])
def test_the_index_is_the_negative_binomial_tail(k: int, mean: float, r: float) -> None:
    expected = -__import__("math").log10(nbinom.sf(k - 1, r, r / (r + mean)))
    assert nb_surprise(k, mean, r) == pytest.approx(expected, rel=1e-6)


# -- the Alert event: entity fields, old payloads ---------------------------------------------------------------
OLD_ALERT = {  # an alert as finsent wrote it before entity alerts (no kind, entity_id, entity_name, evidence)
    "topic": "Energy | Oil",
    "fired_at": "2026-01-05T09:00:00.000Z",
    "window_start": "2026-01-05T08:55:00.000Z",
    "window_end": "2026-01-05T09:00:00.000Z",
    "negative": 30,
    "total": 40,
    "negative_share": 0.75,
    "baseline_share": 0.1,
    "score": 9.5,
    "detector": "ewma_z",
    "severity": "warning",
    "id": "abc",
    "v": 1,
}


def test_alerts_from_before_entity_alerts_still_decode_as_topic_alerts() -> None:
    a = decode_alert(json.dumps(OLD_ALERT))
    assert (a.kind, a.entity_id, a.entity_name, a.evidence, a.topic, a.id) == (
        "topic",
        None,
        None,
        None,
        "Energy | Oil",
        "abc",
    )
    assert {k: v for k, v in a.to_dict().items() if k in OLD_ALERT} == OLD_ALERT
    hash(a)  # still usable in sets


def test_entity_fields_round_trip_and_bad_ones_are_refused() -> None:
    a = run(EntityDetector(), burst("~x", T0, 12, 60))[0]
    hash(a)  # evidence (a dict) is left out of the hash
    assert decode_alert(a.to_json()) == a
    for bad in ({"evidence": [1]}, {"entity_id": 5}):
        with pytest.raises(InvalidEvent):
            decode_alert(json.dumps(OLD_ALERT | bad))


# -- the offline benchmark's input (finsent bench entities) ------------------------------------------------------
def test_the_bench_reads_news_in_published_order_and_skips_rows_it_cannot_time(tmp_path: Path) -> None:
    from finsent.bench.entities import fallback_entities, read_news

    p = tmp_path / "news.csv"
    p.write_text(
        "published_at,source,text,url\n2023-01-20T09:00:00Z,Decrypt,Genesis files,u2\n"
        "07/12/2026 09:30,X,unreadable time,u\n2023-01-20T08:00:00Z,CoinDesk,$COIN falls as Genesis Global "
        "Capital files,u1\n2023-01-20T10:00:00Z,X,,u\n",
        encoding="utf-8",
    )
    rows, skipped = read_news(p)
    assert [r.url for r in rows] == ["u1", "u2"] and skipped == 2
    ents = fallback_entities(rows[0].title)
    assert {(e.entity_id, e.name) for e in ents} == {("COIN", "COIN"), (None, "genesis global capital")}
    assert all(rows[0].title[e.start : e.end] == e.text for e in ents)


def test_make_mention_builds_the_same_mention_as_the_constructor_for_every_field() -> None:
    """The entity stage's fast constructor sets the slots itself: a field added to Mention must break this test,
    not be silently left unset."""
    import dataclasses

    from finsent.alerts.entity_detector import make_mention

    at = datetime(2026, 3, 2, 9, tzinfo=UTC)
    values = ("it1", at, "JPM", "JPM", "JPMorgan", "negative", 80, 75, "Reuters", "JPMorgan falls", None, "m-2")
    assert len(dataclasses.fields(Mention)) == len(values) == len(Mention.__slots__)
    fast = make_mention(*values)
    assert fast == Mention(*values) and type(fast) is Mention
    assert [getattr(fast, f.name) for f in dataclasses.fields(Mention)] == list(values)
    assert hash(fast) == hash(Mention(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.novelty = 1  # type: ignore[misc]
