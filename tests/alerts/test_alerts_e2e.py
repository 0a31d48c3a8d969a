"""End to end with the real servers: worker metrics -> Prometheus rule -> Alertmanager -> webhook.

The worker's counter is served from this process the way the worker does it
(``finsent_items_scored_total{topic,sentiment}`` from prometheus-client); Prometheus scrapes and
evaluates every second with the rules rendered by the same generator as the shipped file, only
with second-scale windows; Alertmanager runs the shipped config with the webhook pointed here and
``group_wait: 0s``. A second test posts the in-stream detector's alert straight to Alertmanager.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, start_http_server

from finsent.alerts.base import TopicState
from finsent.alerts.prom_rule import PromRuleParams, render_rules
from finsent.alerts.sinks import AlertmanagerSink
from finsent.core.events import utcnow
from tests.fixtures.prom import free_port

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def alertmanager_config(webhook_url: str) -> str:
    """The shipped config, with the webhook pointed at the test receiver and no waiting."""
    cfg = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    cfg["receivers"][0]["webhook_configs"][0]["url"] = webhook_url
    cfg["route"]["group_wait"] = "0s"
    cfg["route"]["group_interval"] = "1s"
    cfg["templates"] = [str(DEPLOY / "alertmanager" / t) for t in cfg.get("templates", [])]
    return yaml.safe_dump(cfg)


class Traffic(threading.Thread):
    """Increments the counter like the worker: per topic, ``per_s`` items a second at a negative share."""

    def __init__(self, counter: Counter, shares: dict[str, float], per_s: int = 40) -> None:
        super().__init__(daemon=True)
        self.counter, self.shares, self.per_s = counter, dict(shares), per_s
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def set_share(self, topic: str, share: float) -> None:
        with self.lock:
            self.shares[topic] = share

    def run(self) -> None:
        tick, acc = 0.1, {}
        while not self.stop.wait(tick):
            with self.lock:
                shares = dict(self.shares)
            for topic, share in shares.items():
                n = self.per_s * tick
                a = acc.get(topic, 0.0) + n * share
                neg = int(a)
                acc[topic] = a - neg
                self.counter.labels(topic=topic, sentiment="negative").inc(neg)
                self.counter.labels(topic=topic, sentiment="neutral").inc(n - neg)


def test_spike_reaches_the_webhook_through_prometheus_and_alertmanager(
    prometheus_factory, alertmanager_factory, webhook_receiver
):
    registry = CollectorRegistry()
    scored = Counter("finsent_items_scored", "Items scored", ["topic", "sentiment"], registry=registry)
    metrics_port = free_port()
    start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    traffic = Traffic(scored, {"banking": 0.10, "crypto": 0.5})
    traffic.start()
    am = alertmanager_factory(alertmanager_config(webhook_receiver.url))
    # the shipped rules with second-scale windows: 5 s tested against the 15 s before it (rho=0: the
    # per-minute clustering correction means nothing at 2,400 items a minute of synthetic counts)
    params = replace(PromRuleParams(), short="5s", long="15s", for_="1s", min_baseline=200, rho=0.0)
    prom = prometheus_factory(
        f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [finsent-rules.yml]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["{am.url.removeprefix("http://")}"]}}]}}]
scrape_configs:
  - job_name: finsent-worker
    static_configs: [{{targets: ["127.0.0.1:{metrics_port}"]}}]
""",
        files={"finsent-rules.yml": render_rules(params)},
    )
    try:
        # warm up: the baseline window fills; a steady 10 % topic and a chronic 50 % topic stay quiet
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if prom.query('topic:finsent_items_scored:rate15s{topic="banking"} * 15 >= 400'):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus never filled its baseline window: {prom.log.read_text()[-2000:]}")
        time.sleep(2)
        assert webhook_receiver.received == [], "no alert may fire on steady traffic"
        assert prom.query("ALERTS") == []
        spike_at = time.monotonic()
        traffic.set_share("banking", 0.6)

        def firing_banking(body):
            return body["status"] == "firing" and any(a["labels"].get("topic") == "banking" for a in body["alerts"])

        arrived, body = webhook_receiver.wait_for(firing_banking, timeout_s=30)
        latency = arrived - spike_at
        print(f"\nspike -> webhook: {latency:.2f} s (1 s scrape/evaluation, for: 1s, group_wait: 0s)")
        alert = next(a for a in body["alerts"] if a["labels"]["topic"] == "banking")
        assert alert["labels"]["alertname"] == "FinsentNegativeSentimentSpike"
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["dashboard"].endswith("var-topic=banking&from=now-1h&to=now")
        m = re.search(r"against a ([\d.]+)% baseline", alert["annotations"]["description"])
        assert m and 8 < float(m.group(1)) < 12, alert["annotations"]["description"]
        assert body["groupLabels"] == {"alertname": "FinsentNegativeSentimentSpike", "topic": "banking"}
        assert latency < 15
        # the chronic topic never fired
        assert not any(a["labels"].get("topic") == "crypto" for _, b in webhook_receiver.received for a in b["alerts"])
        # 60 % against 10 % is critical too: Alertmanager inhibits the warning for the same topic
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            alerts = am.alerts()
            warn = [a for a in alerts if a["labels"].get("severity") == "warning"]
            crit = [a for a in alerts if a["labels"].get("severity") == "critical"]
            if crit and warn and warn[0]["status"]["inhibitedBy"]:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"warning not inhibited by critical: {alerts}")
        assert warn[0]["status"]["state"] == "suppressed"
    finally:
        traffic.stop.set()


def test_in_stream_detector_posts_to_alertmanager_with_headlines(alertmanager_factory, webhook_receiver):
    am = alertmanager_factory(alertmanager_config(webhook_receiver.url))

    def headlines(topic, since):
        assert topic == "banking"
        return [
            {"title": "Bank X misses estimates, shares plunge", "url": "https://news.example/x"},
            {"title": None, "text": "Regulator opens probe into Bank Y lending"},
        ]

    sink = AlertmanagerSink(am.url, 60, "http://grafana.example/d/finsent-alerts/finsent-alerts", headlines)
    st = TopicState(
        "banking",
        score=9.5,
        active=True,
        severity="warning",
        negative_share=0.6,
        baseline_share=0.1,
        volume=100,
        since=utcnow(),
    )
    t0 = time.monotonic()
    sink([], {"banking": st, "crypto": TopicState("crypto", score=0.3)})
    arrived, body = webhook_receiver.wait_for(lambda b: b["status"] == "firing", timeout_s=10)
    print(f"\nin-stream post -> webhook: {arrived - t0:.2f} s")
    (alert,) = body["alerts"]
    assert alert["labels"] == {
        "alertname": "FinsentNegativeSentimentSpike",
        "topic": "banking",
        "severity": "warning",
        "source": "stream",
    }
    desc = alert["annotations"]["description"]
    assert "60% negative on 100 items against a 10% baseline" in desc
    assert "- Bank X misses estimates, shares plunge (https://news.example/x)" in desc
    assert "- Regulator opens probe into Bank Y lending" in desc
    assert alert["annotations"]["dashboard"].startswith(
        "http://grafana.example/d/finsent-alerts/finsent-alerts?var-topic=banking"
    )
    # the topic clears: the sink resolves it at once
    st.active = False
    sink([], {"banking": st})
    webhook_receiver.wait_for(lambda b: b["status"] == "resolved", timeout_s=10)
    assert all(a["status"]["state"] != "active" for a in am.alerts() if a["labels"]["topic"] == "banking")
