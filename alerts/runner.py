"""``AlertRunner``: the detector over counts stored in ClickHouse (the demo, ``finsent alerts watch``).

Reads ``store.topic_counts`` (distinct items per topic per bucket of ``ingested_at``), feeds every
*closed* window -- empty ones too, so baselines decay with time -- to the detector in order, writes
the alerts it raises with ``store.insert_alerts`` and returns them. Counts come from the store,
so they are exact (deduplicated by item id) whatever the number of workers.

Example::

    from finsent.stream.store import open_store
    from finsent.alerts.detector import make_detector
    from finsent.alerts.runner import AlertRunner

    runner = AlertRunner(open_store(settings.storage.store), make_detector(settings), settings.alerts.alert_window_s)
    while True:
        for alert in runner.poll():
            print(alert.topic, alert.negative_share, alert.baseline_share)
        time.sleep(5)

A window is closed ``grace_s`` after its end: items ingested in it but stored later than that are
not seen by the detector (they are still stored and counted by the dashboards).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone

from finsent.alerts.base import Detector, TopicState, with_evidence
from finsent.core.errors import StoreError
from finsent.core.events import Alert, utcnow
from finsent.core.store import Store

log = logging.getLogger(__name__)
UTC = timezone.utc  # noqa: UP017 - the name the rest of this module uses
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Called after every poll with the new alerts and every topic's state (gauges, Kafka, Alertmanager).
Sink = Callable[[Sequence[Alert], dict[str, TopicState]], None]


def floor_time(ts: datetime, step_s: int) -> datetime:
    """``ts`` rounded down to a multiple of ``step_s`` seconds since the epoch (window boundaries)."""
    secs = int((ts - EPOCH).total_seconds() // step_s) * step_s
    return EPOCH + timedelta(seconds=secs)


class AlertRunner:
    """Feed closed windows of stored counts to a detector; persist and return new alerts."""

    def __init__(
        self,
        store: Store,
        detector: Detector,
        window_s: int | None = None,
        lookback: timedelta = timedelta(hours=6),
        grace_s: float = 5.0,
        sinks: Sequence[Sink] = (),
    ) -> None:
        self.store = store
        self.detector = detector
        self.window_s = int(window_s or detector.window_s)
        if self.window_s != detector.window_s:
            raise ValueError(f"window_s={self.window_s} differs from the detector's {detector.window_s}")
        self.lookback = lookback
        self.grace = timedelta(seconds=grace_s)
        self.sinks = list(sinks)
        self.last_end: datetime | None = None  # end of the last window fed to the detector
        self.unstored: list[Alert] = []  # raised but refused by the store: retried on the next poll

    def poll(self, now: datetime | None = None) -> list[Alert]:
        """Process every window closed by ``now``; return (and store) the alerts they raised."""
        now = now or utcnow()
        w = timedelta(seconds=self.window_s)
        closed_end = floor_time(now - self.grace, self.window_s)
        first_end = self.last_end + w if self.last_end is not None else floor_time(now - self.lookback, self.window_s)
        if first_end < closed_end - self.lookback:  # asleep longer than the lookback: skip, do not replay a day
            first_end = floor_time(closed_end - self.lookback, self.window_s)
        if first_end > closed_end:
            return []
        start = first_end - w
        since = now - start + w  # a little more than needed; rows outside [start, closed_end) are dropped
        rows = self.store.topic_counts(since=since, bucket_s=self.window_s, until=closed_end)
        by_window: dict[datetime, dict[str, tuple[int, int]]] = defaultdict(dict)
        for r in rows:
            bucket = r.bucket if r.bucket.tzinfo else r.bucket.replace(tzinfo=UTC)
            if start <= bucket < closed_end:
                by_window[bucket + w][r.topic] = (int(r.negative), int(r.total))
        alerts: list[Alert] = []
        end = first_end
        while end <= closed_end:
            alerts += self.detector.observe(end, by_window.get(end, {}))
            end += w
        self.last_end = closed_end
        if alerts:
            alerts = with_evidence(self.store, alerts)  # headlines and model version (issue 25)
            log.info("raised %d alert(s): %s", len(alerts), ", ".join(f"{a.topic}/{a.severity}" for a in alerts))
        if alerts or self.unstored:
            batch = self.unstored + alerts
            try:
                self.store.insert_alerts(batch)  # idempotent by id: a retry after a partial write is harmless
                self.unstored = []
            except StoreError as exc:
                self.unstored = batch[-10_000:]
                log.warning("store refused %d alert(s) (%s); retrying on the next poll", len(batch), exc)
        states = self.detector.states()
        for sink in self.sinks:
            try:
                sink(alerts, states)
            except Exception:  # a notifier down must not stop detection; the alert is already stored
                log.exception("alert sink %r failed", sink)
        return alerts
