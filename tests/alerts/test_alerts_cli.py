"""The alerts CLI (rules, dashboards, bench) and the sinks' pure behaviour."""

from __future__ import annotations

import json
import logging

import pytest

from finsent.alerts.base import TopicState
from finsent.alerts.sinks import AlertmanagerSink, GaugeSink
from finsent.cli import main
from tests.fixtures.prom import free_port


def test_rules_and_dashboards_check_pass_on_the_shipped_files(capsys):
    assert main(["alerts", "rules", "--check"]) == 0
    assert main(["alerts", "dashboards", "--check"]) == 0


def test_default_outputs_are_the_checkouts_deploy_dir_else_the_current_directory(tmp_path):
    from pathlib import Path

    from finsent.alerts.deploy_files import RULES_PATH, deploy_dir

    assert deploy_dir() == RULES_PATH.parent.parent  # this source checkout
    assert deploy_dir(tmp_path) == Path("deploy")  # an installed wheel: site-packages has no pyproject/deploy
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "deploy").mkdir()
    assert deploy_dir(tmp_path) == tmp_path / "deploy"


def test_rules_check_fails_on_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "rules.yml"
    stale.write_text("groups: []\n")
    assert main(["alerts", "rules", "--check", "--out", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["alerts", "rules", "--out", str(stale)]) == 0
    assert "FinsentNegativeSentimentSpike" in stale.read_text()


def test_bench_alerts_writes_json_and_png(tmp_path, capsys):
    out, png = tmp_path / "alerts.json", tmp_path / "alerts.png"
    rc = main(
        [
            "bench",
            "alerts",
            "--topics",
            "10",
            "--days",
            "2",
            "--clean-days",
            "1",
            "--reps",
            "1",
            "--json",
            str(out),
            "--png",
            str(png),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["detectors"]) == {"ewma_z", "cusum", "prometheus_rule"}
    for d in report["detectors"].values():
        assert d["topic_days"] > 0 and {r["size"] for r in d["by_size"]} == {1.5, 2.0, 3.0, 5.0}
    assert report["setup"]["spikes_injected"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "false alarms" in capsys.readouterr().out


def test_gauge_sink_mirrors_states_and_forgets_topics():
    sink = GaugeSink()
    sink([], {"t-gauge": TopicState("t-gauge", score=7.5, active=True, severity="critical")})
    assert sink.score.labels(topic="t-gauge")._value.get() == 7.5
    assert sink.active.labels(topic="t-gauge")._value.get() == 2
    sink([], {})
    assert ("t-gauge",) not in sink.score._metrics


def test_alertmanager_sink_survives_an_unreachable_alertmanager(caplog):
    sink = AlertmanagerSink(f"http://127.0.0.1:{free_port()}", 60, "http://grafana/d/x/y", timeout_s=1)
    with caplog.at_level(logging.WARNING):
        sink(
            [],
            {
                "t": TopicState(
                    "t", score=9, active=True, severity="warning", negative_share=0.5, baseline_share=0.1, volume=80
                )
            },
        )
    assert "refused 1 alert" in caplog.text
    assert "t" in sink._active  # re-posted next window


def test_alertmanager_payload_links_to_the_topic_url_encoded():
    sink = AlertmanagerSink("http://am", 60, "http://grafana/d/finsent-alerts/finsent-alerts")
    p = sink.payload(
        TopicState(
            "Stock Movement & Co",
            score=9,
            active=True,
            severity="warning",
            negative_share=0.5,
            baseline_share=0.1,
            volume=80,
        )
    )
    assert p["annotations"]["dashboard"] == (
        "http://grafana/d/finsent-alerts/finsent-alerts?var-topic=Stock%20Movement%20%26%20Co&from=now-1h&to=now"
    )
    assert p["labels"]["topic"] == "Stock Movement & Co" and p["labels"]["source"] == "stream"


def test_alerts_actions_describe_themselves_with_examples(capsys):
    for action, example in (
        ("rules", "finsent alerts rules --check"),
        ("dashboards", "finsent alerts dashboards --check"),
        ("watch", "finsent alerts watch --once"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["alerts", action, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "\nexamples:\n" in out, out
        # RawDescriptionHelpFormatter: every example stays on its own line
        assert any(line.strip().startswith(example) for line in out.splitlines()), out
        for markup in ("``", ":mod:", ":func:", ":class:"):
            assert markup not in out, f"alerts {action} --help shows reST markup {markup!r}"
