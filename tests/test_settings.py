"""Settings precedence (file < env < flags), validation, and that secrets never show."""

from __future__ import annotations

import pytest

from finsent.core.settings import load_settings


def test_precedence_file_env_flags(tmp_path, monkeypatch) -> None:
    cfg = tmp_path / "finsent.toml"
    cfg.write_text('brokers = "file:1"\nbatch_max = 7\npartitions = 3\n')
    monkeypatch.setenv("FINSENT_BATCH_MAX", "9")
    s = load_settings(cfg)
    assert (s.brokers, s.batch_max, s.partitions) == ("file:1", 9, 3)
    s = load_settings(cfg, brokers="flag:2", batch_max=None)
    assert (s.brokers, s.batch_max) == ("flag:2", 9)


def test_yaml_file_and_unknown_keys(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("finsent:\n  topic_raw: my.raw\n")
    assert load_settings(cfg).topic_raw == "my.raw"
    bad = tmp_path / "bad.toml"
    bad.write_text('brokerz = "x:1"\n')
    with pytest.raises(ValueError, match="brokerz"):
        load_settings(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


@pytest.mark.parametrize("value", ["", "nohost", "a:1,b", "a:99999999"])
def test_bad_brokers_rejected(value: str) -> None:
    with pytest.raises(ValueError):
        load_settings(None, brokers=value)


def test_store_url_scheme_checked() -> None:
    with pytest.raises(ValueError, match="clickhouse://"):
        load_settings(None, store="postgres://x")


def test_secrets_redacted(monkeypatch) -> None:
    monkeypatch.setenv("FINSENT_SASL_PASSWORD", "hunter2")
    s = load_settings(None, store="clickhouse://u:topsecret@h:9000/db", sasl_mechanism="PLAIN", sasl_username="u")
    red = s.redacted()
    assert "hunter2" not in repr(s) and "hunter2" not in str(red)
    assert "topsecret" not in str(red) and red["store"] == "clickhouse://u:***@h:9000/db"
    assert s.kafka_security()["sasl_plain_password"] == "hunter2"


def test_cli_config_command_and_errors(capsys, monkeypatch) -> None:
    import json

    from finsent.cli import main

    monkeypatch.setenv("FINSENT_SASL_PASSWORD", "hunter2")
    assert main(["--brokers", "bad", "config"]) == 2
    assert "configuration error" in capsys.readouterr().err
    assert main(["--brokers", "k1:9092,k2:9092", "config"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["brokers"] == "k1:9092,k2:9092" and "hunter2" not in out
