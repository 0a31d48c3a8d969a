"""``finsent demo``: the whole pipeline on one machine with nothing installed, ending on its own.

What runs (all real parts, in this process unless noted):

* a Tansu broker (child process, in-memory, 127.0.0.1, free port);
* the scoring worker (the same Faust app as ``finsent worker``, on a background event loop) with
  the shipped model, storing into a fresh embedded ClickHouse (chdb) directory;
* a replay of the seed tweets in ``finsent/demo_data/tweets.jsonl`` at ``--rate`` items/s, preceded
  by a short back-filled history (items with past ``ingested_at``) so the detector has a baseline;
* part-way through, a NEGATIVE SPIKE on one topic: extra tweets labelled negative in the dataset
  that the model also scores negative and puts in that topic (chosen at start by scoring the pool);
  plus a few malformed messages that must end on the dead-letter topic;
* the alert detector (``finsent.alerts.runner.AlertRunner``) polling counts FROM THE STORE -- the alert is
  real detection on stored data, not a scripted message.

A live rich display shows rates, stored rows, per-topic negative shares and alerts; a summary
JSON (``--summary-json``) records what happened for CI.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from finsent.bench.common import percentile
from finsent.core.errors import FinsentError, InputError, Interrupted, KafkaError
from finsent.core.events import RawItem, format_time, stable_id, utcnow
from finsent.core.settings import Settings
from finsent.core.wait import WaitTimeout, wait_until

log = logging.getLogger(__name__)

DEMO_DATA = Path(__file__).parent / "demo_data" / "tweets.jsonl"
WINDOW_S = 5  # detector window: short, so a demo of a minute or two sees a dozen windows
#: the spike lasts 30% of the live replay: below this it spans too few closed windows to be confirmed
MIN_DEMO_SECONDS = 40.0
HISTORY_S = 240  # back-filled history before "now"
HISTORY_RATE = 1.5  # items/s of back-filled history
#: the live rate is capped at this share of the model's measured speed, so the spike (+50%) still fits
MAX_LOAD = 0.3
#: the spike is negative news about one named company, from several outlets (the entity detector wants
#: corroboration), mixed into the normal news about others; the linker maps the name to this id
SPIKE_ENTITY = "JPMorgan"
SPIKE_ENTITY_ID = "JPM"
SPIKE_SOURCES = ("demo-wire", "demo-news", "demo-social")
#: how the spike's stories are told about the company (a tweet merely prefixed with the name is neutral toward it)
SPIKE_HEADLINES = (f"{SPIKE_ENTITY} shares tumble: ", f"{SPIKE_ENTITY} slumps as ")
#: distinct negative stories in the spike (repeats of one story count once: novelty)
SPIKE_STORIES = 30


def load_tweets(path: Path = DEMO_DATA) -> list[dict[str, Any]]:
    """The seed tweets (text + dataset label where known)."""
    if not path.is_file():
        raise InputError(f"demo data {path} is missing", hint="reinstall finsent: it ships with the package")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


#: a spike topic needs this many distinct negative tweets and this share of the background traffic
MIN_SPIKE_TEXTS = 5
MIN_TOPIC_SHARE = 0.05


def choose_spike(
    classifier: Any, tweets: list[dict[str, Any]], sample: int = 800, calls: int = 1
) -> tuple[str, list[str], float]:
    """The spike topic and its texts, chosen so that the spike stands out on any machine.

    Candidates are the topics the model gives to negative-labelled tweets it also scores negative
    (so the spike is one the model can see). Among those with enough such texts and enough
    background traffic, the one whose background is LEAST negative wins: a spike on a topic that is
    already 40 % negative can at most double it, one on a 7 % topic rises tenfold, which the detector
    confirms within a couple of windows even when a busy machine caps the demo's rate. Also returns
    the model's speed (items/s), which caps the demo's rate: measured with ``calls`` model calls at
    once, as the worker runs them (``Settings.model_calls``).
    """
    pool = [t["text"] for t in tweets if t.get("sentiment") == "negative"]
    rest = [t["text"] for t in tweets if t.get("sentiment") != "negative"]
    background = random.Random(7).sample(rest, min(sample, len(rest))) + pool
    classifier.predict(pool[:8])  # warm-up
    t0 = time.perf_counter()
    from finsent.models.runtime import predict_at_once

    size = -(-len(background) // calls)
    preds = predict_at_once(classifier, [background[i : i + size] for i in range(0, len(background), size)], calls)
    speed = len(background) / max(time.perf_counter() - t0, 1e-6)
    volume: collections.Counter[str] = collections.Counter()
    negative: collections.Counter[str] = collections.Counter()
    groups: dict[str, list[str]] = collections.defaultdict(list)
    n_rest = len(background) - len(pool)
    for i, (text, p) in enumerate(zip(background, preds, strict=True)):
        is_pool = i >= n_rest
        # the background share of a topic: the sample of non-negative tweets plus the labelled pool, as replayed
        volume[p.topic] += 1
        negative[p.topic] += p.sentiment == "negative"
        if is_pool and p.sentiment == "negative":
            groups[p.topic].append(text)
    if not groups:  # a model that never says negative: spike with the labelled pool, grouped by topic anyway
        for text, p in zip(pool, preds[n_rest:], strict=True):
            groups[p.topic].append(text)
    total = sum(volume.values()) or 1
    fit = [t for t in groups if len(groups[t]) >= MIN_SPIKE_TEXTS and volume[t] / total >= MIN_TOPIC_SHARE]
    if fit:
        topic = min(fit, key=lambda t: (negative[t] / max(volume[t], 1), -volume[t]))
    else:
        topic = max(groups, key=lambda k: len(groups[k]))
    return topic, groups[topic], speed


MALFORMED: tuple[bytes, ...] = (
    b"definitely not json",
    b'{"id": "demo-bad-1", "source": "demo", "source_type": "news"}',
    b'{"id": "demo-bad-2", "source": "demo", "source_type": "news", "text": "   "}',
    b'{"id": "demo-bad-3", "source": "demo", "source_type": "tv", "text": "stocks"}',
)


@dataclass
class DemoState:
    """Shared between the producer thread and the display loop."""

    produced: int = 0
    produced_spike: int = 0
    produced_history: int = 0
    #: the newest back-filled history timestamp: live items are the ones ingested after it
    history_last: datetime | None = None
    malformed_sent: int = 0
    #: when the live replay began (the spike window counts from here)
    live_started: datetime | None = None
    producer_error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class DemoProducer(threading.Thread):
    """Publishes history, then live background traffic at ``rate``/s, the spike, and a few malformed messages."""

    def __init__(
        self,
        settings: Settings,
        tweets: list[dict[str, Any]],
        spike_texts: list[str],
        seconds: float,
        rate: float,
        spike_window: tuple[float, float],
        spike_rate: float,
        state: DemoState,
        run_id: str,
        history: bool = True,
    ) -> None:
        super().__init__(name="finsent-demo-producer", daemon=True)
        self.settings = settings
        self.tweets = tweets
        self.spike_texts = spike_texts
        self.seconds = seconds
        self.rate = rate
        self.spike_window = spike_window
        self.spike_rate = spike_rate
        self.state = state
        self.run_id = run_id
        self.history = history
        self.stop_flag = threading.Event()
        #: set by the display loop once the history is stored: the live replay starts then
        self.live_go = threading.Event()
        self._seq = 0
        self._rng = random.Random(11)

    def _item(self, text: str, ingested_at: datetime, source: str) -> RawItem:
        self._seq += 1
        return RawItem(
            id=stable_id("demo", self.run_id, str(self._seq)),
            source=source,
            source_type="social",
            text=text,
            ingested_at=ingested_at,
            author="demo",
        )

    def _publish(self, publisher: Any, items: list[RawItem]) -> None:
        if items:
            publisher.publish(items)

    def run(self) -> None:
        from finsent.stream.kafka import make_producer

        try:
            publisher = _publisher(self.settings)
            raw = make_producer(self.settings.kafka, client_id="finsent-demo-malformed")
        except Exception as exc:  # reported by the display loop
            self.state.producer_error = str(exc)
            self.state.done.set()
            return
        try:
            bg = list(self.tweets)
            self._rng.shuffle(bg)
            bg_i = 0
            if self.history:
                now = utcnow()
                n = int(HISTORY_S * HISTORY_RATE)
                hist = []
                for k in range(n):
                    ts = now - timedelta(seconds=HISTORY_S) + timedelta(seconds=k / HISTORY_RATE)
                    hist.append(self._item(bg[bg_i % len(bg)]["text"], ts, "demo-history"))
                    bg_i += 1
                for j in range(0, len(hist), 200):
                    self._publish(publisher, hist[j : j + 200])
                with self.state.lock:
                    self.state.produced += len(hist)
                    self.state.produced_history += len(hist)
                    self.state.history_last = hist[-1].ingested_at if hist else None
            while not self.live_go.wait(0.2):
                if self.stop_flag.is_set():
                    return
            t0 = time.monotonic()
            tick = 0.1
            owed_bg = owed_spike = 0.0
            malformed_at = self.seconds * 0.3
            while not self.stop_flag.is_set():
                el = time.monotonic() - t0
                if el >= self.seconds:
                    break
                owed_bg += self.rate * tick
                if self.spike_window[0] <= el < self.spike_window[1]:
                    owed_spike += self.spike_rate * tick
                now = utcnow()
                batch = []
                while owed_bg >= 1:
                    batch.append(self._item(bg[bg_i % len(bg)]["text"], now, "demo"))
                    bg_i += 1
                    owed_bg -= 1
                n_spike = 0
                while owed_spike >= 1:
                    text = SPIKE_HEADLINES[n_spike % 2] + self._rng.choice(self.spike_texts)
                    batch.append(self._item(text, now, SPIKE_SOURCES[n_spike % len(SPIKE_SOURCES)]))
                    owed_spike -= 1
                    n_spike += 1
                self._publish(publisher, batch)
                with self.state.lock:
                    self.state.produced += len(batch)
                    self.state.produced_spike += n_spike
                if el >= malformed_at and not self.state.malformed_sent:
                    for value in MALFORMED:
                        raw.send(self.settings.kafka.topic_raw, key=b"demo-bad", value=value)
                    raw.flush(timeout=30)
                    with self.state.lock:
                        self.state.malformed_sent = len(MALFORMED)
                time.sleep(max(0.0, tick - (time.monotonic() - t0 - el)))
        except Exception as exc:
            log.exception("demo producer failed")
            self.state.producer_error = str(exc)
        finally:
            publisher.close()
            raw.close()
            self.state.done.set()


def _publisher(settings: Settings) -> Any:
    """The ingest package's acked publisher (waits for every record's ack)."""
    from finsent.ingest.publisher import Publisher

    return Publisher(settings, client_id="finsent-demo", ensure_topic=False)


def _percentile(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def _render(
    state: DemoState,
    scorer: Any,
    shares: list[tuple[str, int, float]],
    alerts: list[Any],
    elapsed: float,
    seconds: float,
    spike_topic: str,
    spike_window: tuple[float, float],
    rate_now: float,
    entity_alerts: list[Any] = (),  # type: ignore[assignment]
) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    st = scorer.stats.snapshot()
    phase = (
        f"negative news about {SPIKE_ENTITY}"
        if spike_window[0] <= elapsed < spike_window[1]
        else ("after the spike" if elapsed >= spike_window[1] else "calm")
    )
    head = Table.grid(padding=(0, 3))
    head.add_row(
        f"[b]t[/b] {min(elapsed, seconds):5.1f} / {seconds:.0f} s",
        f"[b]phase[/b] {phase}",
        f"[b]rate[/b] {rate_now:6.1f} stored/s",
    )
    head.add_row(
        f"[b]produced[/b] {state.produced}",
        f"[b]stored[/b] {st['stored']}",
        f"[b]dead-lettered[/b] {sum(st['dead_lettered'].values())}",
    )
    tbl = Table(title=f"negative share per topic, last {3 * WINDOW_S}s (stored counts)", expand=False)
    tbl.add_column("topic")
    tbl.add_column("items", justify="right")
    tbl.add_column("negative", justify="right")
    tbl.add_column("", justify="left")
    for topic, total, share in shares[:10]:
        bar = "█" * int(round(share * 20))
        style = "bold red" if topic == spike_topic and elapsed >= spike_window[0] else ""
        tbl.add_row(f"[{style}]{topic}[/]" if style else topic, str(total), f"{share:5.0%}", bar)
    lines = [
        f"[bold red]ALERT[/] {a.topic}: negative {a.negative_share:.0%} vs baseline {a.baseline_share:.0%} "
        f"({a.negative}/{a.total}, {a.detector} score {a.score:.1f}, {a.severity}) at {format_time(a.fired_at)}"
        for a in alerts
    ]
    lines = [
        f"[bold red]ALERT[/] entity [b]{a.entity_name}[/b] ({a.entity_id}): {a.negative} novel negative stories "
        f"from {len((a.evidence or {}).get('sources', []))} sources, index {a.score:.1f} ({a.severity}), window "
        f"{format_time(a.window_start)} - {format_time(a.window_end)}"
        for a in entity_alerts
    ] + lines
    return Panel(Group(head, tbl, *(lines or ["[dim]no alerts yet[/dim]"])), title="finsent demo")


def _topic_shares(store: Any, since_s: int) -> list[tuple[str, int, float]]:
    rows = store.topic_counts(since=timedelta(seconds=since_s), bucket_s=since_s)
    agg: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in rows:
        agg[r.topic][0] += r.negative
        agg[r.topic][1] += r.total
    out = [(t, tot, neg / tot if tot else 0.0) for t, (neg, tot) in agg.items()]
    return sorted(out, key=lambda x: -x[1])


@dataclass(frozen=True)
class DemoPlan:
    """What one demo run does, decided before anything starts: the rates, the spike and when it comes."""

    seconds: float
    rate: float
    speed: float
    spike_topic: str
    spike_texts: list[str]
    spike_window: tuple[float, float]
    spike_rate: float
    run_id: str
    history: bool


#: the demo's settings on top of the stack's: two partitions, and the entity detector on the demo's clock
#: (5 s buckets, 30 s windows, 5 s lateness, one alert per run)
DEMO_OVERRIDES: dict[str, Any] = {
    "partitions": 2,
    "entity_alerts": True,
    "entity_bucket_s": WINDOW_S,
    "entity_window_buckets": 6,
    "entity_lateness_s": WINDOW_S,
    "entity_cooldown_s": 3600,
    "entity_watchlist": None,
}


def _plan(
    console: Any,
    settings: Settings,
    tweets: list[dict[str, Any]],
    seconds: float,
    rate: float,
    model_dir: str | None,
    history: bool,
) -> tuple[Any, DemoPlan]:
    """Step 1: load the model, choose the spike by scoring the pool, cap the rate at what this machine scores."""
    with console.status("loading the model..."):
        from finsent.models.runtime import Classifier

        classifier = Classifier.load(
            model_dir or settings.model.model_dir,
            variant=settings.model.model_variant,
            threads=settings.model.call_threads,
            cache_dir=settings.model.cache_dir,
        )
        spike_topic, spike_texts, speed = choose_spike(classifier, tweets, calls=settings.model.model_calls)
    # the spike's stories: the topic's negative tweets first, then other negative ones, each told about the company
    more = [t["text"] for t in tweets if t.get("sentiment") == "negative" and t["text"] not in spike_texts]
    spike_texts = (spike_texts + random.Random(5).sample(more, min(len(more), SPIKE_STORIES)))[:SPIKE_STORIES]
    console.print(
        f"model {classifier.version} on {classifier.provider}, ~{speed:.0f} items/s here; "
        f"spike: negative news about [b]{SPIKE_ENTITY}[/b] ({len(spike_texts)} distinct stories, "
        f"mostly on topic {spike_topic})"
    )
    if rate > MAX_LOAD * speed:
        console.print(
            f"[yellow]--rate {rate:g} is more than this machine scores comfortably; "
            f"using {MAX_LOAD * speed:.1f} items/s[/yellow]"
        )
        rate = max(1.0, MAX_LOAD * speed)
    plan = DemoPlan(
        seconds=seconds,
        rate=rate,
        speed=speed,
        spike_topic=spike_topic,
        spike_texts=spike_texts,
        spike_window=(seconds * 0.45, seconds * 0.75),
        spike_rate=max(4.0, rate * 0.5),
        run_id=stable_id("run", format_time(utcnow()) or "")[:8],
        history=history,
    )
    return classifier, plan


def _detector_runner(store: Any) -> Any:
    """The topic detector polling the store's counts, tuned to the demo's short windows."""
    from finsent.alerts.ewma_z import EwmaZ
    from finsent.alerts.runner import AlertRunner

    # drift_var=0: the production default allows for a topic's level moving over the hour behind a
    # 1-hour baseline; the demo's baseline spans four minutes of replayed tweets, which do not drift
    detector = EwmaZ(
        window_s=WINDOW_S,
        short_windows=2,
        fast_windows=1,
        halflife_windows=48,
        min_volume=15,
        min_baseline=10,
        drift_var=0.0,
    )
    return AlertRunner(store, detector, WINDOW_S, lookback=timedelta(seconds=HISTORY_S + 30), grace_s=6.0)


def _score_history(console: Any, worker: Any, state: DemoState) -> None:
    """Step 3: wait until the back-filled history is stored (the detector's baseline), showing progress."""

    def stored_all() -> bool:
        done_hist = worker.scorer.stats.snapshot()["stored"]
        status.update(
            f"scoring {HISTORY_S // 60} minutes of back-filled history: "
            f"{done_hist}/{state.produced_history or '?'} stored"
        )
        return bool(state.produced_history) and done_hist >= state.produced_history

    def producer_ok() -> None:
        if state.producer_error:
            raise KafkaError(f"demo producer failed: {state.producer_error}")

    with console.status("") as status:
        try:
            wait_until(stored_all, 300, what="the history", check=producer_ok)
        except WaitTimeout:
            raise FinsentError(
                "the history was not scored in 5 minutes",
                hint="is the machine very busy? try again when it is quieter",
            ) from None


def _start_live(worker: Any, state: DemoState, producer: DemoProducer) -> None:
    """Latency is reported for live items only: reset it, then let the producer's live replay begin."""
    with worker.scorer.stats.lock:
        # The floor is just past the newest history item, not "now": the wall clock may step back a
        # little (NTP) between here and the producer thread, which once dropped a live item's sample.
        last = state.history_last
        worker.scorer.stats.latency_floor = last + timedelta(milliseconds=1) if last is not None else None
        worker.scorer.stats.latencies.clear()
    state.live_started = utcnow()
    producer.live_go.set()


def _poll_alerts(runner: Any, alerts: list[Any], alert_times: list[dict[str, Any]], t_s: float) -> None:
    for a in runner.poll():
        alerts.append(a)
        alert_times.append(
            {
                "topic": a.topic,
                "fired_at": format_time(a.fired_at),
                "t_s": round(t_s, 1),
                "severity": a.severity,
                "negative_share": a.negative_share,
                "baseline_share": a.baseline_share,
            }
        )


def _live(
    console: Any, plan: DemoPlan, state: DemoState, worker: Any, runner: Any, entities: Any, store: Any
) -> tuple[list[Any], list[dict[str, Any]], float]:
    """Step 4: the live display until the replay is produced and drained; the topic alerts fired (and their
    summary rows) and the seconds it took."""
    from rich.live import Live

    t0 = time.monotonic()
    alerts: list[Any] = []
    alert_times: list[dict[str, Any]] = []
    shares: list[tuple[str, int, float]] = []
    rate_hist: collections.deque[tuple[float, int]] = collections.deque(maxlen=50)
    last_poll = 0.0
    with Live(console=console, refresh_per_second=2, transient=False) as live:
        while True:
            el = time.monotonic() - t0
            stored = worker.scorer.stats.snapshot()["stored"]
            rate_hist.append((el, stored))
            rate_now = (
                (rate_hist[-1][1] - rate_hist[0][1]) / (rate_hist[-1][0] - rate_hist[0][0])
                if len(rate_hist) > 1 and rate_hist[-1][0] > rate_hist[0][0]
                else 0.0
            )
            if el - last_poll >= 2.0:
                last_poll = el
                _poll_alerts(runner, alerts, alert_times, el)
                shares = _topic_shares(store, 3 * WINDOW_S)
            live.update(
                _render(
                    state,
                    worker.scorer,
                    shares,
                    alerts,
                    el,
                    plan.seconds,
                    plan.spike_topic,
                    plan.spike_window,
                    rate_now,
                    list(entities.alerts),
                )
            )
            if state.producer_error:
                raise KafkaError(f"demo producer failed: {state.producer_error}")
            if not worker.alive():
                raise FinsentError(f"scoring worker died: {worker.error}", hint="run with --log-level DEBUG to see why")
            if state.done.is_set():
                st = worker.scorer.stats.snapshot()
                drained = st["stored"] >= state.produced and sum(st["dead_lettered"].values()) >= state.malformed_sent
                if drained or el > plan.seconds + 30:
                    break
            time.sleep(0.25)
        # a last detector pass over the final closed windows
        time.sleep(6.1)
        _poll_alerts(runner, alerts, alert_times, time.monotonic() - t0)
    return alerts, alert_times, time.monotonic() - t0


def _summarize(
    plan: DemoPlan,
    state: DemoState,
    worker: Any,
    store: Any,
    entities: Any,
    alert_times: list[dict[str, Any]],
    elapsed: float,
    classifier: Any,
) -> dict[str, Any]:
    """Step 5: what happened, from the worker's counters and the store (the summary JSON)."""
    entity_alerts = [
        {
            "entity_id": a.entity_id,
            "entity_name": a.entity_name,
            "at": format_time(a.fired_at),
            "t_s": round(elapsed - (utcnow() - a.fired_at).total_seconds(), 1),
            "severity": a.severity,
            "novel_negative": a.negative,
            "index": a.score,
            "sources": (a.evidence or {}).get("sources", []),
        }
        for a in entities.alerts
    ]
    st = worker.scorer.stats.snapshot()
    with worker.scorer.stats.lock:
        lat = list(worker.scorer.stats.latencies)
    counts = store.count()
    live_stored = st["stored"] - state.produced_history
    window = plan.spike_window
    return {
        "produced": state.produced,
        "produced_live": state.produced - state.produced_history,
        "produced_history": state.produced_history,
        "produced_spike": state.produced_spike,
        "malformed_sent": state.malformed_sent,
        "stored": counts["rows"],
        "stored_unique_ids": counts["unique_ids"],
        "duplicates_in_store": counts["rows"] - counts["unique_ids"],
        "lost": max(0, state.produced - counts["unique_ids"]),
        "dead_lettered": sum(st["dead_lettered"].values()),
        "dead_lettered_by_reason": st["dead_lettered"],
        "spike_topic": plan.spike_topic,
        "rate_msgs_per_s": round(plan.rate, 1),
        "model_items_per_s": round(plan.speed, 1),
        "spike_window_s": [round(window[0], 1), round(window[1], 1)],
        "alerts": alert_times,
        "spike_entity": SPIKE_ENTITY_ID,
        "entity_alerts": entity_alerts,
        "entity_mentions": entities.mentions,
        "entity_mentions_late": entities.late,
        # the demo's alert: negative news about the company, caught by the entity detector
        "spike_detected": any(a["entity_id"] == SPIKE_ENTITY_ID for a in entity_alerts),
        "topic_spike_detected": any(a["topic"] == plan.spike_topic for a in alert_times),
        "throughput_msgs_per_s": round(live_stored / elapsed, 1) if elapsed > 0 else 0.0,
        "offered_rate_msgs_per_s": plan.rate + plan.spike_rate * (window[1] - window[0]) / plan.seconds,
        "latency_ms": {
            "p50": round((_percentile(lat, 0.50) or 0) * 1000, 1),
            "p99": round((_percentile(lat, 0.99) or 0) * 1000, 1),
            "samples": len(lat),
        },
        "seconds": round(elapsed, 1),
        "worker": {
            "batches": st["batches"],
            "inference_s": round(st["inference_s"], 2),
            "store_s": round(st["store_s"], 2),
        },
        "model_version": classifier.version,
        "model_provider": classifier.provider,
    }


def _plot(
    summary: dict[str, Any], store: Any, out: str, alerts: list[Any], entity_alerts: list[Any], live: datetime
) -> None:
    """Step 6 (``--plot``): the timeline PNG from the stored counts, zoomed on the live replay (``live``: when it
    began) with a minute of history before it, the injected window shaded and the alerts marked."""
    w0, w1 = summary["spike_window_s"]
    try:
        from finsent.plots import plot_demo_timeline

        summary["plot"] = str(
            plot_demo_timeline(
                store,
                out,
                since=timedelta(seconds=summary["seconds"] + HISTORY_S + 120),
                bucket_s=WINDOW_S,
                alerts=alerts,
                entity_alerts=entity_alerts,
                spike=(live + timedelta(seconds=w0), live + timedelta(seconds=w1)),
                entity=(SPIKE_ENTITY_ID, SPIKE_ENTITY),
                start=live - timedelta(seconds=60),
            )
        )
    except (ImportError, ValueError) as exc:
        summary["plot_error"] = str(exc)


def run_demo(
    settings: Settings,
    seconds: float = 75.0,
    rate: float = 40.0,
    summary_json: str | None = None,
    model_dir: str | None = None,
    store_url: str | None = None,
    history: bool = True,
    plot: str | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """The demo (see the module docstring); returns the summary. ``keep``: leave the stack running after the
    summary, its store queryable from other terminals, until Ctrl-C; the store then stays on disk."""
    from rich.console import Console

    from finsent.stack import LocalStack
    from finsent.stream.kafka import quiet_client_logs

    console = Console(stderr=False)
    quiet_client_logs(settings)
    if settings.log_level.upper() != "DEBUG":  # log lines would tear the live display
        logging.getLogger().setLevel(logging.WARNING)
    tweets = load_tweets()
    classifier, plan = _plan(console, settings, tweets, seconds, rate, model_dir, history)
    state = DemoState()
    stack = LocalStack(
        settings, name="finsent-demo", store=store_url, run_id=plan.run_id, keep_workdir=keep, **DEMO_OVERRIDES
    )
    summary: dict[str, Any] = {}
    worker = None
    started = time.monotonic()
    try:
        with console.status("starting the broker..."):
            stack.start()
        with stack:
            from finsent.alerts.entity_agent import attach as attach_entities

            worker = stack.start_worker(classifier=classifier, extensions=[attach_entities])
            entities = worker.context.extensions.get("entity_alerts")
            runner = _detector_runner(stack.store)
            producer = DemoProducer(
                stack.settings,
                tweets,
                plan.spike_texts,
                plan.seconds,
                plan.rate,
                plan.spike_window,
                plan.spike_rate,
                state,
                plan.run_id,
                history=plan.history,
            )
            stack.callback(lambda: (producer.stop_flag.set(), producer.join(15)))  # stopped first
            producer.start()
            if plan.history:
                _score_history(console, worker, state)
            _start_live(worker, state, producer)
            alerts, alert_times, elapsed = _live(console, plan, state, worker, runner, entities, stack.store)
            summary = _summarize(plan, state, worker, stack.store, entities, alert_times, elapsed, classifier)
            if plot and state.live_started is not None:
                _plot(summary, stack.store, plot, alerts, list(entities.alerts), state.live_started)
            _print_summary(console, summary)
            if summary_json:
                Path(summary_json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            if keep:
                _keep_running(console, stack)
    except KeyboardInterrupt:
        if summary and keep:  # Ctrl-C ends a kept stack: the run itself was complete
            console.print(
                f"stopped the demo's broker and worker; its store stays: "
                f"finsent query entity {SPIKE_ENTITY} --since 1h --store {stack.store_url}",
                soft_wrap=True,
                highlight=False,
            )
            return summary
        stored = worker.scorer.stats.snapshot()["stored"] if worker is not None else 0
        kept_url = store_url or (f"chdb://{stack.workdir / 'chdb'}" if keep and stack.workdir is not None else None)
        kept = f"the scored items are kept in {kept_url}" if kept_url else "its broker and temporary store were removed"
        raise Interrupted(
            f"demo stopped by Ctrl-C after {time.monotonic() - started:.0f} s, before its summary: "
            f"{state.produced:,} item(s) produced, {stored:,} stored; {kept}",
            hint="run `finsent demo` again: it starts from scratch (--seconds 40 is the shortest run)",
        ) from None
    _print_what_next(console, store_url, None)
    return summary


def _keep_running(console: Any, stack: Any) -> None:
    """``--keep``: serve the stack's store to other commands and wait for Ctrl-C (the caller stops the stack)."""
    api = stack.serve_api()
    console.print(
        f"\n[b]the demo's stack is still running[/b] (--keep): broker [b]{stack.bootstrap}[/b], "
        f"worker API [b]{api}[/b], store [b]{stack.store_url}[/b]"
    )
    _print_what_next(console, stack.store_url, stack.bootstrap)
    console.print("press [b]Ctrl-C[/b] to stop the broker and the worker (the store stays on disk)")
    while True:
        time.sleep(3600)


def _print_what_next(console: Any, store: str | None, brokers: str | None) -> None:
    """Four commands a newcomer runs next: the demo's own data when its store outlives the run (``--keep``,
    ``--store``), then their own data, on the demo's broker while it runs (``brokers``) or on their own."""
    lines: list[tuple[str, str]] = []
    if store:
        lines += [
            (
                f"finsent query entity {SPIKE_ENTITY} --since 1h --store {store}",
                "the spike: counts per bucket, stories",
            ),
            (f"finsent query alerts --store {store}", "the alerts the demo stored"),
        ]
    else:
        lines.append(("finsent demo --keep", "keep this run's broker, worker and store up, to query them"))
    if brokers:
        lines.append(
            (f"finsent ingest replay YOUR.jsonl --brokers {brokers}", "your items, scored by the demo's worker")
        )
    else:
        lines.append(("finsent broker & finsent worker", "your own broker and scoring worker (or two terminals)"))
        lines.append(("finsent ingest replay YOUR.jsonl", "publish your items (JSONL, or CSV with a 'text' column)"))
    if len(lines) < 4:
        lines.append(
            (f"finsent query top --since 1h{f' --store {store}' if store else ''}", "most negative stories stored")
        )
    width = max(len(cmd) for cmd, _ in lines)
    console.print("\n[b]what next[/b]" + (" (in another terminal)" if brokers else ""))
    for cmd, why in lines[:4]:
        console.print(f"  {cmd:<{width}}  [dim]{why}[/dim]", soft_wrap=True, highlight=False)


def _print_summary(console: Any, summary: dict[str, Any]) -> None:
    if not summary:
        return
    alerts = summary["alerts"]
    console.print(
        f"\n[b]done[/b] in {summary['seconds']}s: produced {summary['produced']} "
        f"({summary['produced_history']} history + {summary['produced_live']} live, "
        f"{summary['produced_spike']} spike), "
        f"stored {summary['stored']} (duplicates {summary['duplicates_in_store']}, lost {summary['lost']}), "
        f"dead-lettered {summary['dead_lettered']} {summary['dead_lettered_by_reason']}"
    )
    console.print(
        f"throughput {summary['throughput_msgs_per_s']} items/s (offered {summary['offered_rate_msgs_per_s']:.1f}); "
        f"ingest->stored latency p50 {summary['latency_ms']['p50']} ms, p99 {summary['latency_ms']['p99']} ms"
    )
    if summary["spike_detected"]:
        first = next(a for a in summary["entity_alerts"] if a["entity_id"] == summary["spike_entity"])
        console.print(
            f"[bold green]negative news about {first['entity_name']} detected[/] at t={first['t_s']}s: "
            f"{first['novel_negative']} novel negative stories from {len(first['sources'])} sources "
            f"(spike began at t={summary['spike_window_s'][0]}s)"
        )
    else:
        console.print(f"[bold red]the negative news about {SPIKE_ENTITY} was NOT detected[/]")
    if summary["topic_spike_detected"]:
        console.print(f"topic alert on {summary['spike_topic']} too")
    others = [a for a in alerts if a["topic"] != summary["spike_topic"]]
    others += [a for a in summary["entity_alerts"] if a["entity_id"] != summary["spike_entity"]]
    if others:
        console.print(f"other alerts: {', '.join(a.get('topic') or a.get('entity_name') or '' for a in others)}")
    if summary.get("plot"):
        console.print(f"timeline written to {summary['plot']}")
    elif summary.get("plot_error"):
        console.print(f"[yellow]no timeline: {summary['plot_error']}[/]")
