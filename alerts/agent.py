"""The in-stream spike detector inside the Faust worker: ``attach(app, context)``.

Topology (two agents and a timer on every worker)::

    finsent.scored --(count agent: per batch, per topic per window)--> finsent.alerts.counts (key = topic)
    finsent.alerts.counts --(detect agent: sum partial counts)--> open windows --(timer: close)--> detector
    detector --> finsent.alerts (key = topic), ClickHouse ``alerts`` table, gauges, Alertmanager (optional)

Why an intermediate topic keyed by topic (and not ``stream.group_by``): the scored topic is keyed
by item id, so one topic's items are spread over every partition and every worker. Each count
agent pre-aggregates its batch into one small record per (topic, window) -- a 100x smaller
stream than re-keying every item -- and sends it keyed by the topic name, so the default
partitioner (murmur2 of the key) sends all of one topic's counts to one partition, owned by one
worker of the group. That worker alone holds the topic's windows, baseline and alarm state:
several workers agree because only one of them decides. ``group_by`` would do the same
re-keying per item through an auto-named repartition topic.

Windows are tumbling, ``settings.alerts.alert_window_s`` long, on the items' ``ingested_at`` (the same
clock as ``store.topic_counts`` and the dashboards). A window is closed by the owner's wall clock
``grace_s`` after its end; counts arriving later are dropped and counted (``late``).

Delivery: at-least-once. A worker killed between sending partial counts and committing its
offsets re-sends them, so a window can be over-counted after a crash; the exact, deduplicated
counts are in ClickHouse (``alerts.runner.AlertRunner`` works from those). On start-up the
detector's baselines are warmed from the counts stored in the last hours (``prime``), so a
restarted worker is not blind while they re-fill.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from finsent.alerts.base import Detector, TopicState, with_evidence
from finsent.alerts.detector import make_detector
from finsent.alerts.runner import EPOCH, floor_time
from finsent.alerts.sinks import build_sinks
from finsent.core.events import Alert, InvalidEvent, decode_scored, utcnow
from finsent.core.settings import Settings
from finsent.stream.context import WorkerContext
from finsent.stream.worker import RETRY_FIRST_S, RETRY_MAX_S

log = logging.getLogger(__name__)


def window_counts(values: Iterable[bytes | None], window_s: int) -> tuple[dict[tuple[str, int], list[int]], int]:
    """Partial counts of a batch of ``finsent.scored`` values: {(topic, window start epoch s): [neg, tot]}.

    Undecodable values are skipped and counted (the scorer wrote them, so this means a bug or a
    foreign producer; the store has the truth).
    """
    out: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    bad = 0
    for v in values:
        try:
            item = decode_scored(v or b"")
        except InvalidEvent:
            bad += 1
            continue
        start = int((item.item.ingested_at - EPOCH).total_seconds() // window_s) * window_s
        c = out[(item.topic, start)]
        c[0] += item.sentiment == "negative"
        c[1] += 1
    return dict(out), bad


class WindowCloser:
    """Sums partial counts per (window, topic) and releases windows, in order, once closed.

    Every window from the first one opened to the last one closed is released, empty ones too
    (the detector's baselines decay with time, not with traffic).
    """

    def __init__(self, window_s: int, grace_s: float, now: datetime | None = None) -> None:
        self.window_s = window_s
        self.grace = timedelta(seconds=grace_s)
        self.open: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        # the window in progress at start-up is partial: begin with the next one
        self.next_start = int((floor_time(now or utcnow(), window_s) - EPOCH).total_seconds()) + window_s
        self.late = 0

    def add(self, topic: str, start: int, neg: int, tot: int) -> None:
        if start < self.next_start:
            self.late += tot
            return
        c = self.open[start][topic]
        c[0] += neg
        c[1] += tot

    def close(self, now: datetime) -> list[tuple[datetime, dict[str, tuple[int, int]]]]:
        out = []
        while EPOCH + timedelta(seconds=self.next_start + self.window_s) + self.grace <= now:
            counts = self.open.pop(self.next_start, {})
            end = EPOCH + timedelta(seconds=self.next_start + self.window_s)
            out.append((end, {t: (c[0], c[1]) for t, c in counts.items()}))
            self.next_start += self.window_s
        return out


class InStreamAlerts:
    """The detector state of one worker and the blocking outputs (store, sinks) run off the loop."""

    def __init__(
        self,
        settings: Settings,
        detector: Detector | None = None,
        store_getter: Callable[[], Any] | None = None,
        sinks: Sequence[Callable[[Sequence[Alert], dict[str, TopicState]], None]] | None = None,
        grace_s: float = 2.0,
    ) -> None:
        self.settings = settings
        self.detector = detector or make_detector(settings.alerts)
        self.closer = WindowCloser(self.detector.window_s, grace_s)
        self.store_getter = store_getter
        self.sinks = list(sinks) if sinks is not None else None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finsent-alerts")
        self.alerts: list[Alert] = []  # raised by this worker (bounded: the demo/tests read it)
        self.bad_values = 0
        self.unstored: list[Alert] = []

    def close(self) -> None:
        """The worker is closing: start no other delivery (one in progress ends in its thread)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _store(self) -> Any:
        return self.store_getter() if self.store_getter is not None else None

    def with_evidence(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Blocking: the alerts with their headlines and model version (:func:`finsent.alerts.base.with_evidence`);
        the kept list :attr:`alerts` gets them too."""
        try:
            store = self._store()
        except Exception:  # noqa: BLE001 -- not open yet / down: with_evidence's courtesy, skipped
            store = None
        out = with_evidence(store, alerts)
        by_id = {a.id: a for a in out}
        self.alerts = [by_id.get(a.id, a) for a in self.alerts]
        return out

    def deliver(self, alerts: Sequence[Alert], states: dict[str, TopicState]) -> None:
        """Blocking: write alerts to the store, then run the sinks (gauges, Alertmanager)."""
        store = self._store()
        batch = self.unstored + list(alerts)
        if batch and store is not None:
            try:
                store.insert_alerts(batch)  # idempotent by id
                self.unstored = []
            except Exception:
                self.unstored = batch[-10_000:]
                log.exception(
                    "could not store %d alert(s); retrying with the next window (they are on the alerts topic already)",
                    len(batch),
                )
        if self.sinks is None:
            self.sinks = build_sinks(self.settings.alerts, store)
        for sink in self.sinks:
            try:
                sink(alerts, states)
            except Exception:
                log.exception("alert sink %r failed", sink)

    def prime(self, lookback: timedelta = timedelta(hours=3)) -> int:
        """Blocking: warm the baselines from counts stored before the first live window.

        A restarted worker would otherwise stay blind until every baseline re-filled. Alerts raised
        on this history are dropped (they were raised, stored and sent before). Returns windows fed.
        """
        w = self.detector.window_s
        until = EPOCH + timedelta(seconds=self.closer.next_start)
        try:
            store = self._store()  # opening it may fail too (store down): start cold, never crash the app
            if store is None:
                return 0
            rows = store.topic_counts(since=utcnow() - until + lookback, bucket_s=w, until=until)
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "could not read stored counts to warm the spike detector (%s); starting cold",
                " ".join(str(exc).split())[:300],
            )
            return 0
        by_end: dict[datetime, dict[str, tuple[int, int]]] = defaultdict(dict)
        for r in rows:
            by_end[r.bucket + timedelta(seconds=w)][r.topic] = (int(r.negative), int(r.total))
        if not by_end:
            return 0
        end, fed = min(by_end), 0
        while end <= until:
            self.detector.observe(end, by_end.get(end, {}))
            end += timedelta(seconds=w)
            fed += 1
        log.info("spike detector warmed on %d stored windows (%d topics)", fed, len(self.detector.states()))
        return fed

    def tick(self, now: datetime) -> tuple[int, list[Alert]]:
        """Feed the windows closed by ``now`` to the detector: (windows closed, alerts raised)."""
        new: list[Alert] = []
        closed = self.closer.close(now)
        for end, counts in closed:
            new += self.detector.observe(end, counts)
        if new:
            self.alerts = (self.alerts + new)[-1000:]
        return len(closed), new


def _retrieve(future: Any) -> None:
    """Read a settled future's outcome, so that one a stop left unawaited is not logged as never retrieved."""
    if not future.cancelled():
        future.exception()


async def send_confirmed(
    topic: Any,
    records: Sequence[tuple[bytes, bytes]],
    what: str,
    first_delay_s: float = RETRY_FIRST_S,
    max_delay_s: float = RETRY_MAX_S,
) -> None:
    """Send ``records`` (key, value) and wait for the broker to confirm each; resend the failed ones until it does.

    Faust's ``send`` returns before the broker answers: a record lost in a broker restart would
    otherwise vanish (its batch of ``finsent.scored`` is acked by the next take), and its failed
    future would end as "exception was never retrieved" in the log. Resending keeps the counts
    at-least-once, as the module promises. The backoff is the worker's own for its store and publish.
    """
    delay = first_delay_s
    todo = list(records)
    while todo:
        failed: set[int] = set()
        error: BaseException | None = None
        futures: list[tuple[int, Any]] = []
        for i, (key, value) in enumerate(todo):
            try:
                # our own FutureMessage, awaited below: ``Topic.send`` returns the producer's future and leaves
                # Faust's FutureMessage unread, which a failed send logs as "exception was never retrieved"
                message = topic.as_future_message(key=key, value=value)
                await topic.publish_message(message)
                message.add_done_callback(_retrieve)  # read even when a stop leaves it unawaited
                futures.append((i, message))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the producer is down: resend below
                failed.add(i)
                error = exc
        # shielded: a stop that cancels this wait must not cancel Faust's FutureMessage, whose producer callback
        # settles it later (``set_result`` on a cancelled future raises InvalidStateError inside the event loop)
        results = await asyncio.gather(*(asyncio.shield(f) for _, f in futures), return_exceptions=True)
        for (i, _), res in zip(futures, results, strict=True):
            if isinstance(res, asyncio.CancelledError):
                raise res
            if isinstance(res, BaseException):
                failed.add(i)
                error = res
        if not failed:
            return
        log.warning(
            "%d of %d %s not confirmed by the broker (%s: %s); resending in %.2fs",
            len(failed),
            len(todo),
            what,
            type(error).__name__,
            " ".join(str(error).split())[:200],
            delay,
        )
        todo = [rec for i, rec in enumerate(todo) if i in failed]  # in their first order
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)


def attach(app: Any, ctx: WorkerContext, **kwargs: Any) -> InStreamAlerts:
    """Add the count and detect agents and the window timer to the Faust ``app`` (see module doc).

    The alerts share the worker's store (``ctx.store``: one connection; chdb allows one path per
    process). Registered as extension ``"alerts"`` (``ctx.extensions.get("alerts")``).
    """
    settings = ctx.settings
    window_s = settings.alerts.alert_window_s
    state = InStreamAlerts(settings, store_getter=kwargs.pop("store_getter", None) or ctx.store.get, **kwargs)
    scored = app.topic(settings.kafka.topic_scored, key_type=bytes, value_type=bytes)
    counts = app.topic(
        settings.kafka.topic_alert_counts,
        key_type=bytes,
        value_type=bytes,
        internal=True,
        partitions=settings.kafka.partitions,
    )
    alerts_topic = app.topic(settings.kafka.topic_alerts, key_type=bytes, value_type=bytes)
    ctx.extensions.register("alerts", state, close=state.close)

    @app.agent(scored, name="finsent.alerts.count")
    async def count(stream: Any) -> None:
        async for values in stream.take(max(settings.worker.batch_max * 4, 256), within=min(1.0, window_s / 4)):
            partial, bad = window_counts(values, window_s)
            state.bad_values += bad
            records = [
                (topic.encode("utf-8"), json.dumps({"topic": topic, "start": start, "neg": neg, "tot": tot}).encode())
                for (topic, start), (neg, tot) in partial.items()
            ]
            await send_confirmed(counts, records, "partial counts")  # before take acks this batch

    @app.agent(counts, name="finsent.alerts.detect")
    async def detect(stream: Any) -> None:
        async for value in stream:
            try:
                c = json.loads(value)
                state.closer.add(str(c["topic"]), int(c["start"]), int(c["neg"]), int(c["tot"]))
            except (ValueError, KeyError, TypeError):
                state.bad_values += 1

    primed: list[bool] = []

    @app.timer(interval=max(0.2, min(1.0, window_s / 4)))
    async def close_windows() -> None:
        loop = asyncio.get_running_loop()
        if not primed:
            primed.append(True)
            await loop.run_in_executor(state.pool, state.prime)
        closed, new = state.tick(utcnow())
        if not closed:
            return
        if new:  # headlines and model version from the store (its items are stored before they are counted)
            new = await loop.run_in_executor(state.pool, state.with_evidence, new)
        await send_confirmed(alerts_topic, [(a.topic.encode("utf-8"), a.to_json()) for a in new], "alerts")
        await loop.run_in_executor(state.pool, state.deliver, new, dict(state.detector.states()))

    return state
