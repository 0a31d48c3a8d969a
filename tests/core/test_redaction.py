"""Secrets in URL-valued settings never printed (issue 22, item 5): ``finsent config``, the worker's start line.

The probe found ``FINSENT_ALERTMANAGER_URL`` and ``FINSENT_MLFLOW_TRACKING_URI`` printed verbatim and a store
password containing ``@`` half printed (``probe:***@Sekr1t@...``). Asserted here, with passwords generated
by hypothesis from an alphabet rich in ``@ : / %`` (and ``? #``): the password never appears in the output,
and the redacted URL is exactly the URL with ``***`` for the password (user, host, port, path kept).
"""

from __future__ import annotations

import json
import string
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finsent.core.redact import redact_url
from finsent.core.settings import load_settings

#: password characters: the URL delimiters that broke the old regex, percent signs, and ordinary ones
PASSWORD_CHARS = "@:/%?#" + string.ascii_letters + string.digits + "!$&'()*+,;=._~-"
passwords = st.text(alphabet=PASSWORD_CHARS, min_size=1, max_size=24)
users = st.text(alphabet=string.ascii_lowercase + string.digits + "_.-", min_size=1, max_size=10)
TOKEN_CHARS = string.ascii_letters + string.digits + "-_.~%"
MARK = "Zq9Xw"  # makes a generated secret long and distinctive, so "not in the output" means something

TEMPLATES = (
    "clickhouse://{user}:{pw}@db.example.com:9000/finsent",  # FINSENT_STORE
    "clickhouse://{user}:{pw}@[2001:db8::5]:9440/finsent?secure=1",
    "https://{user}:{pw}@alertmanager.example.com:9093",  # FINSENT_ALERTMANAGER_URL
    "https://{user}:{pw}@mlflow.example.com/api#runs",  # FINSENT_MLFLOW_TRACKING_URI
)


@settings(max_examples=400, deadline=None)
@given(user=users, pw=passwords, template=st.sampled_from(TEMPLATES))
def test_a_password_with_url_delimiters_is_hidden_whole(user: str, pw: str, template: str) -> None:
    secret = MARK + pw
    url = template.format(user=user, pw=secret)
    red = redact_url(url)
    assert red == template.format(user=user, pw="***"), (url, red)
    assert MARK not in red and secret not in red


@settings(max_examples=200, deadline=None)
@given(
    token=st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=30),
    name=st.sampled_from(
        [
            "token",
            "access_token",
            "password",
            "client_secret",
            "api_key",
            "apikey",
            "sig",
            "X-Amz-Signature",
            "auth",
            "sessionid",
        ]
    ),
)
def test_secret_query_values_are_masked_and_the_rest_kept(token: str, name: str) -> None:
    secret = MARK + token
    url = f"https://am.example.com:9093/api/v2?team=ops&{name}={secret}&page=2"
    red = redact_url(url)
    assert red == f"https://am.example.com:9093/api/v2?team=ops&{name}=***&page=2"
    assert MARK not in red


def test_examples_from_the_probe() -> None:
    assert redact_url("clickhouse://probe:Sekr1t@x@db:9000/finsent") == "clickhouse://probe:***@db:9000/finsent"
    assert redact_url("clickhouse://u:p%40ss%2F@h:9000/db") == "clickhouse://u:***@h:9000/db"
    assert redact_url("clickhouse://u:pa/ss@h:9000/db") == "clickhouse://u:***@h:9000/db"
    assert redact_url("http://admin:hunter2@am:9093") == "http://admin:***@am:9093"
    # nothing secret: unchanged, byte for byte
    for url in (
        "clickhouse://h:9000/db",
        "chdb:///var/lib/finsent?database=x",
        "sqlite:///mlflow.db",
        "http://localhost:3000/d/finsent-alerts/finsent-alerts",
        "https://ci-bot@git.example.com/x",
        "http://host/x?team=a%20b&page=2",
        "not a url",
    ):
        assert redact_url(url) == url


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pw=passwords)
def test_settings_redacted_hides_every_url_setting(pw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Settings.redacted()`` is what ``finsent config`` prints and what the worker's start line logs."""
    secret = MARK + pw
    monkeypatch.setenv("FINSENT_ALERTMANAGER_URL", f"https://am:{secret}@alertmanager:9093")
    monkeypatch.setenv("FINSENT_MLFLOW_TRACKING_URI", f"https://ml:{secret}@mlflow:5000/?token={MARK}tok")
    monkeypatch.setenv("FINSENT_ALERT_DASHBOARD_URL", f"https://grafana:{secret}@grafana:3000/d/x")
    s = load_settings(None, store=f"clickhouse://probe:{secret}@db:9000/finsent")
    red = s.redacted()
    assert MARK not in json.dumps(red, default=str)
    # the worker's start line prints this value
    assert red["storage"]["store"] == "clickhouse://probe:***@db:9000/finsent"
    assert red["alerts"]["alertmanager_url"] == "https://am:***@alertmanager:9093"
    assert red["model_registry"]["mlflow_tracking_uri"] == "https://ml:***@mlflow:5000/?token=***"
    assert s.storage.store.endswith("@db:9000/finsent") and MARK in s.storage.store  # the setting itself is untouched


@pytest.mark.parametrize("pw", ["Sekr1t@x", "a:b/c%40d", "p/w?x#y@z", "%%%", "@@@:::///"])
def test_finsent_config_prints_no_password(pw: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from finsent.cli import main

    secret = MARK + pw
    monkeypatch.setenv("FINSENT_STORE", f"clickhouse://probe:{secret}@db:9000/finsent")
    monkeypatch.setenv("FINSENT_ALERTMANAGER_URL", f"http://am:{secret}@127.0.0.1:9093")
    monkeypatch.setenv("FINSENT_MLFLOW_TRACKING_URI", f"http://ml:{secret}@127.0.0.1:5000?password={quote(secret)}")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert MARK not in out and pw not in out.replace("***", "")
    shown = json.loads(out)
    assert shown["storage"]["store"] == "clickhouse://probe:***@db:9000/finsent"
    assert shown["alerts"]["alertmanager_url"] == "http://am:***@127.0.0.1:9093"
    assert shown["model_registry"]["mlflow_tracking_uri"] == "http://ml:***@127.0.0.1:5000?password=***"
