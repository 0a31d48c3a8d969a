"""Where detector output goes besides the store: Prometheus gauges, Alertmanager, Kafka.

Every sink is a callable ``sink(new_alerts, states)`` run after each batch of windows (see
``AlertRunner`` and ``finsent.alerts.agent``). They are independent and best-effort: the alert is
already in ClickHouse when they run, and a sink that fails is logged, not retried forever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from finsent.alerts.base import TopicState
from finsent.core.events import Alert, format_time, utcnow
from finsent.core.redact import redact_url
from finsent.core.settings import AlertSettings

log = logging.getLogger(__name__)
ALERTNAME = "FinsentNegativeSentimentSpike"

_gauges_lock = threading.Lock()
_gauges: tuple[Any, Any] | None = None


def spike_gauges() -> tuple[Any, Any]:
    """``finsent_negative_spike_score{topic}`` and ``finsent_negative_spike_active{topic}`` (default registry)."""
    global _gauges
    with _gauges_lock:
        if _gauges is None:
            from prometheus_client import Gauge

            _gauges = (
                Gauge(
                    "finsent_negative_spike_score", "In-stream spike detector score per topic (z or CUSUM)", ["topic"]
                ),
                Gauge(
                    "finsent_negative_spike_active",
                    "1 while the in-stream detector holds a spike alarm on the topic (2 when critical)",
                    ["topic"],
                ),
            )
        return _gauges


class GaugeSink:
    """Mirror every topic's detector state into the two gauges; drop topics the detector forgot."""

    def __init__(self) -> None:
        self.score, self.active = spike_gauges()
        self._seen: set[str] = set()

    def __call__(self, alerts: Sequence[Alert], states: dict[str, TopicState]) -> None:
        for topic, st in states.items():
            self.score.labels(topic=topic).set(round(st.score, 4))
            self.active.labels(topic=topic).set(0 if not st.active else 2 if st.severity == "critical" else 1)
        for gone in self._seen - set(states):
            for g in (self.score, self.active):
                with contextlib.suppress(KeyError):
                    g.remove(gone)
        self._seen = set(states)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")


def _headline(item: dict[str, Any]) -> str:
    """One line of untrusted headline text: control and bidi-override characters become spaces, capped.

    Markup is escaped where it is rendered (deploy/alertmanager/finsent.tmpl escapes ``& < >`` for chat
    receivers; HTML e-mail escapes by itself), so the annotation keeps the text as it was published.
    """
    text = " ".join(_CONTROL.sub(" ", item.get("title") or item.get("text") or "").split())
    return text[:140] + ("..." if len(text) > 140 else "")


def _link(item: dict[str, Any]) -> str:
    """`` (url)`` for an http(s) URL without spaces; nothing for any other scheme (``javascript:``...)."""
    url = str(item.get("url") or "")
    return f" ({url})" if re.fullmatch(r"(?i)https?://\S+", url) and len(url) <= 2000 else ""


class AlertmanagerSink:
    """Post active spikes to Alertmanager's v2 API (``POST /api/v2/alerts``), resolve cleared ones.

    Alertmanager expects firing alerts to be re-sent before their ``endsAt``; every call re-posts
    all active topics with ``endsAt = now + 3 windows``, and a topic that cleared is posted once
    with ``endsAt = now`` so it resolves at once. The description carries the top negative
    headlines of the window (from ``headlines(topic, since)``, e.g. ``store.top_negative``) and
    a link to the dashboard filtered on the topic.
    """

    def __init__(
        self,
        url: str,
        window_s: int,
        dashboard_url: str,
        headlines: Callable[[str, timedelta], list[dict[str, Any]]] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.window_s = window_s
        self.dashboard_url = dashboard_url
        self.headlines = headlines
        self.timeout_s = timeout_s
        self._active: dict[str, dict[str, Any]] = {}

    def payload(self, st: TopicState) -> dict[str, Any]:
        now = utcnow()
        lines: list[str] = []
        if self.headlines is not None:
            try:
                items = self.headlines(st.topic, timedelta(seconds=max(self.window_s * 5, 300)))
                lines = [f"- {_headline(i)}{_link(i)}" for i in items[:5]]
            except Exception:  # headlines are a courtesy; the alert must still go out
                log.exception("could not read top negative headlines for %s", st.topic)
        link = f"{self.dashboard_url}?var-topic={urllib.parse.quote(st.topic, safe='')}&from=now-1h&to=now"
        base = st.baseline_share or 0.0
        desc = (
            f"Topic {st.topic}: {st.negative_share:.0%} negative on {st.volume} items against a {base:.0%} "
            f"baseline (score {st.score:.1f})."
        )
        if lines:
            desc += "\nTop negative headlines:\n" + "\n".join(lines)
        return {
            "labels": {
                "alertname": ALERTNAME,
                "topic": st.topic,
                "severity": st.severity or "warning",
                "source": "stream",
            },
            "annotations": {
                "summary": f"Negative sentiment spike on topic {st.topic}",
                "description": desc,
                "negative_share": f"{st.negative_share:.1%}",
                "baseline_share": f"{base:.1%}",
                "volume": str(st.volume),
                "score": f"{st.score:.2f}",
                "dashboard": link,
            },
            "startsAt": format_time(st.since or now),
            "endsAt": format_time(now + timedelta(seconds=3 * self.window_s)),
            "generatorURL": link,
        }

    def __call__(self, alerts: Sequence[Alert], states: dict[str, TopicState]) -> None:
        body: list[dict[str, Any]] = []
        now = format_time(utcnow())
        active = {t: st for t, st in states.items() if st.active}
        for topic, old in list(self._active.items()):
            if topic not in active:
                body.append({**old, "endsAt": now})  # resolve now, same labels
                del self._active[topic]
        for topic, st in active.items():
            p = self.payload(st)
            self._active[topic] = p
            body.append(p)
        if body:
            self.post(body)

    def post(self, body: list[dict[str, Any]]) -> None:
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            log.warning(
                "Alertmanager at %s refused %d alert(s): %s (will re-post next window)",
                redact_url(self.url),
                len(body),
                exc,
            )


def build_sinks(
    alerts: AlertSettings, store: Any = None
) -> list[Callable[[Sequence[Alert], dict[str, TopicState]], None]]:
    """Gauges always; Alertmanager when ``alerts.alertmanager_url`` is set (headlines from ``store``)."""
    sinks: list[Callable[[Sequence[Alert], dict[str, TopicState]], None]] = [GaugeSink()]
    if alerts.alertmanager_url:
        headlines = None
        if store is not None:

            def headlines(topic: str, since: timedelta) -> list[dict[str, Any]]:
                return store.top_negative(since=since, topic=topic, limit=5)

        sinks.append(
            AlertmanagerSink(
                alerts.alertmanager_url,
                alerts.alert_window_s,
                alerts.alert_dashboard_url,
                headlines,
            )
        )
    return sinks
