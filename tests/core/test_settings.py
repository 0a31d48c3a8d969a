"""Settings precedence (file < env < flags), validation, and that secrets never show."""

from __future__ import annotations

import pytest

from finsent.core.errors import ConfigError
from finsent.core.settings import load_settings
from finsent.stream.kafka import kafka_security


def test_precedence_file_env_flags(tmp_path, monkeypatch) -> None:
    cfg = tmp_path / "finsent.toml"
    cfg.write_text('brokers = "file:1"\nbatch_max = 7\npartitions = 3\n')
    monkeypatch.setenv("FINSENT_BATCH_MAX", "9")
    s = load_settings(cfg)
    assert (s.brokers, s.batch_max, s.partitions) == ("file:1", 9, 3)
    s = load_settings(cfg, brokers="flag:2", batch_max=None)
    assert (s.brokers, s.batch_max) == ("flag:2", 9)


def test_yaml_file_and_unknown_keys(tmp_path, caplog) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("finsent:\n  topic_raw: my.raw\n")
    assert load_settings(cfg).topic_raw == "my.raw"
    bad = tmp_path / "bad.toml"
    bad.write_text('brokerz = "x:1"\n')
    # one rule with unknown FINSENT_* variables: a warning naming the line and the closest name, value ignored
    with caplog.at_level("WARNING"):
        assert load_settings(bad).brokers == "127.0.0.1:9092"
    assert "bad.toml, line 1: unknown setting brokerz is ignored (did you mean brokers?)" in caplog.text
    with pytest.raises(ConfigError, match="does not exist"):
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
    assert kafka_security(s)["sasl_plain_password"] == "hunter2"


def test_cli_config_command_and_errors(capsys, monkeypatch) -> None:
    import json

    from finsent.cli import main

    monkeypatch.setenv("FINSENT_SASL_PASSWORD", "hunter2")
    assert main(["--brokers", "bad", "config"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("finsent: error: FINSENT_BROKERS='bad'") and err.count("\n") == 1
    assert main(["--brokers", "k1:9092,k2:9092", "config"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["brokers"] == "k1:9092,k2:9092" and "hunter2" not in out


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("FINSENT_LOG_LEVEL", "bogus", "FINSENT_LOG_LEVEL='BOGUS': must be one of 'DEBUG'"),
        ("FINSENT_SECURITY_PROTOCOL", "xyz", "FINSENT_SECURITY_PROTOCOL='XYZ': must be one of 'PLAINTEXT'"),
        ("FINSENT_ALERT_DETECTOR", "foo", "FINSENT_ALERT_DETECTOR='foo': must be one of 'ewma_z' or 'cusum'"),
        ("FINSENT_MODEL_VARIANT", "int4", "FINSENT_MODEL_VARIANT='int4': must be one of 'auto'"),
        ("FINSENT_BATCH_MAX", "0", "FINSENT_BATCH_MAX='0': Input should be greater than or equal to 1"),
    ],
)
def test_bad_choices_fail_at_load_naming_the_variable(monkeypatch, env: str, value: str, expected: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert expected in str(info.value) and "pydantic" not in str(info.value)


def test_choices_are_case_insensitive_where_kafka_is(monkeypatch) -> None:
    monkeypatch.setenv("FINSENT_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("FINSENT_LOG_LEVEL", "debug")
    s = load_settings(None)
    assert (s.security_protocol, s.log_level) == ("SASL_SSL", "DEBUG")


def test_unknown_finsent_variable_is_warned_with_a_suggestion(monkeypatch, caplog) -> None:
    monkeypatch.setenv("FINSENT_BATCHMAX", "5")
    with caplog.at_level("WARNING"):
        s = load_settings(None)
    assert s.batch_max == 128
    assert "FINSENT_BATCHMAX" in caplog.text and "FINSENT_BATCH_MAX" in caplog.text


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bad.yaml", "finsent:\n  batch_max: [1,\n", r"bad.yaml: invalid YAML at line \d+, column \d+"),
        ("bad.toml", "batch_max = \n", r"bad.toml: invalid TOML: .*line 1"),
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping"),
        ("val.toml", "batch_max = 0\n", r"val.toml, line 1: batch_max='?0'?: Input should be greater"),
    ],
)
def test_malformed_settings_files_are_one_line_with_the_place(tmp_path, capsys, name, text, expected) -> None:
    import re

    from finsent.cli import main

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_settings(path)
    assert main(["--config", str(path), "config"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and re.search(expected, err)
