"""Headline text is untrusted input: it must render as text wherever finsent puts it in front of people.

* Alertmanager: the notification template escapes ``& < >`` in summaries, descriptions and the
  topic, so a headline cannot ping ``<!channel>`` or disguise a link in Slack-like receivers
  (rendered by the real amtool);
* the alert payload itself: control and bidi-override characters removed, links only for http(s);
* Grafana: the top-negative table links a headline only to an http(s) URL (the real SQL on chdb).
"""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from finsent.alerts.sinks import AlertmanagerSink

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HOSTILE = "<!channel> Bank & Co <https://evil.example|click here> \u202edetrevni\u202c\x07 plunges"


def _render(amtool: str, tmp_path: Path, data: dict) -> str:
    (tmp_path / "data.json").write_text(json.dumps(data))
    out = subprocess.run(
        [
            amtool,
            "template",
            "render",
            f"--template.glob={DEPLOY / 'alertmanager' / 'finsent.tmpl'}",
            f"--template.data={tmp_path / 'data.json'}",
            '--template.text={{ template "finsent.title" . }}\n{{ template "finsent.text" . }}',
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_notification_template_escapes_markup_in_headlines(amtool: str, tmp_path: Path) -> None:
    labels = {
        "alertname": "FinsentNegativeSentimentSpike",
        "topic": "M&A <x>",
        "severity": "warning",
        "source": "stream",
    }
    annotations = {
        "summary": "Negative sentiment spike on topic M&A <x>",
        "description": f"Top negative headlines:\n- {HOSTILE}",
        "dashboard": "http://g/d",
    }
    data = {
        "receiver": "r",
        "status": "firing",
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations}],
        "groupLabels": {"alertname": labels["alertname"], "topic": labels["topic"]},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": "http://127.0.0.1:9093",
    }
    text = _render(amtool, tmp_path, data)
    assert "<" not in text and ">" not in text, text
    assert "&lt;!channel&gt;" in text and "Bank &amp; Co" in text
    assert "negative sentiment spike on M&amp;A &lt;x&gt;" in text.splitlines()[0]


class _Topic:
    topic = "banking"
    negative_share = 0.6
    baseline_share = 0.1
    volume = 100
    score = 7.0
    severity = "warning"
    since = None


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://news.example/a?b=1", True),
        ("HTTP://news.example/x", True),
        ("javascript:alert(1)", False),
        ("data:text/html,<script>", False),
        ("https://a b", False),
        ("", False),
    ],
)
def test_alert_payload_headlines_are_one_clean_line_and_links_only_http(url: str, shown: bool) -> None:
    sink = AlertmanagerSink(
        "http://127.0.0.1:1",
        60,
        "http://g/d",
        headlines=lambda topic, since: [{"title": HOSTILE + "\nsecond line", "url": url}],
    )
    desc = sink.payload(_Topic())["annotations"]["description"]  # type: ignore[arg-type]
    line = desc.splitlines()[-1]
    assert "\u202e" not in line and "\x07" not in line and "second line" in line
    assert (f"({url})" in line) is shown, line


@pytest.mark.integration
def test_dashboard_table_links_only_http_urls(chdb_db_url: str) -> None:
    from finsent.alerts import dashboards as d
    from finsent.core.events import RawItem, ScoredItem, utcnow
    from finsent.stream.store import open_store
    from tests.alerts.test_alerts_grafana import expand_sql

    now = utcnow()
    urls = {"ok": "https://news.example/ok", "js": "javascript:alert(document.cookie)", "data": "data:text/html,x"}
    items = [
        ScoredItem(
            item=RawItem(id=k, source="t", source_type="news", text=f"{HOSTILE} {k}", url=u, ingested_at=now),
            sentiment="negative",
            sentiment_probs={"negative": 0.95, "neutral": 0.03, "positive": 0.02},
            topic="banking",
            topic_prob=0.9,
            model_version="m1",
            scored_at=now,
        )
        for k, u in urls.items()
    ]
    store = open_store(chdb_db_url)
    try:
        store.ensure_schema()
        store.insert_scored(items)
        q = expand_sql(
            d.SQL_TOP_NEGATIVE,
            store.database,
            now - timedelta(hours=1),  # type: ignore[attr-defined]
            now + timedelta(minutes=1),
            300,
            ["banking"],
        )
        rows = store.query(q)
    finally:
        store.close()
    by_headline = {r[2].rsplit(" ", 1)[1]: r[5] for r in rows}
    assert by_headline == {"ok": urls["ok"], "js": "", "data": ""}
