"""SASL/TLS settings reach every Kafka client finsent makes (issue 14), read back from the real client objects.

The clients: the ingest producer (kafka-python, :class:`finsent.ingest.publisher.Publisher`), the admin
client (``stream.kafka.admin_client``: topic creation), the helper producer/consumer (``make_producer``,
``make_consumer``: demo, bench, tools), and the Faust worker's aiokafka producer and consumer. The alert
sinks hold no Kafka client of their own: GaugeSink is Prometheus and AlertmanagerSink is HTTP, and the
in-stream alerts reach the alerts topic through the worker app's producer (``alerts.agent.attach``),
which is checked here. Each client is built the way finsent builds it, without a broker: kafka-python's
producer with a preset ``api_version`` (so it does not bootstrap), the admin client against a closed port
(its constructor fails at the bootstrap, after storing its configuration), aiokafka's objects unstarted.
The CA is a real one made with openssl, and the TLS contexts must hold exactly it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from finsent.core.settings import Settings
from finsent.stream.broker import free_port
from finsent.stream.kafka import admin_config, faust_credentials, make_consumer, make_producer

CA_CN = "finsent-test-ca"

CASES = {
    "sasl_ssl_plain": {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
    "sasl_ssl_scram": {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512"},
    "ssl_only": {"security_protocol": "SSL", "sasl_mechanism": None},
    "sasl_plaintext": {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256"},
}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test CA")
    d = tmp_path_factory.mktemp("ca")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / "ca.key"),
            "-out",
            str(d / "ca.pem"),
            "-days",
            "2",
            "-subj",
            f"/CN={CA_CN}",
        ],
        check=True,
        capture_output=True,
    )
    return d / "ca.pem"


def _settings(case: str, ca_file: Path, tmp_path: Path) -> Settings:
    c = CASES[case]
    sasl = c["sasl_mechanism"] is not None
    return Settings(
        brokers=f"127.0.0.1:{free_port()}",  # nothing listens: no client may need a broker to be built
        security_protocol=c["security_protocol"],
        sasl_mechanism=c["sasl_mechanism"],
        sasl_username="finsent-user" if sasl else None,
        sasl_password="s3cret-pw" if sasl else None,
        ssl_cafile=str(ca_file) if c["security_protocol"].endswith("SSL") else None,
        store=f"chdb://{tmp_path / 'store'}",
        metrics_port=0,
    )


def _expect_kafka_python(s: Settings) -> dict[str, Any]:
    want: dict[str, Any] = {"security_protocol": s.kafka.security_protocol}
    if s.kafka.sasl_mechanism:
        want.update(
            sasl_mechanism=s.kafka.sasl_mechanism, sasl_plain_username="finsent-user", sasl_plain_password="s3cret-pw"
        )
    if s.kafka.ssl_cafile:
        want["ssl_cafile"] = s.kafka.ssl_cafile
    return want


def _assert_config(config: dict[str, Any], want: dict[str, Any], who: str) -> None:
    got = {k: config.get(k) for k in want}
    assert got == want, f"{who} did not receive the security settings: {got} != {want}"


def _assert_aiokafka(client: Any, s: Settings, who: str) -> None:
    """aiokafka's AIOKafkaClient: protocol, SASL mechanism and credentials, and a TLS context with our CA."""
    assert client._security_protocol == s.kafka.security_protocol, who
    if s.kafka.sasl_mechanism:
        assert (client._sasl_mechanism, client._sasl_plain_username, client._sasl_plain_password) == (
            s.kafka.sasl_mechanism,
            "finsent-user",
            "s3cret-pw",
        ), who
    if s.kafka.security_protocol.endswith("SSL"):
        ctx = client._ssl_context
        assert ctx is not None, f"{who}: no TLS context"
        subjects = [dict(x[0] for x in c["subject"]).get("commonName") for c in ctx.get_ca_certs()]
        assert subjects == [CA_CN], f"{who}: the TLS context trusts {subjects}, not exactly our CA"
    else:
        assert client._ssl_context is None, who


@pytest.mark.parametrize("case", sorted(CASES))
def test_kafka_python_clients_receive_the_security_settings(case: str, ca_file: Path, tmp_path: Path) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    from finsent.ingest.publisher import Publisher

    s = _settings(case, ca_file, tmp_path)
    want = _expect_kafka_python(s)

    publisher = Publisher(s)  # the ingest producer: the options its KafkaProducer is built from
    producer = KafkaProducer(**{**publisher._config(), "api_version": (2, 8)})
    try:
        _assert_config(producer.config, want, "the ingest producer")
    finally:
        producer.close(timeout=0)

    helper = make_producer(s.kafka, api_version=(2, 8))  # demo, bench, the malformed-message injector
    try:
        _assert_config(helper.config, want, "make_producer")
    finally:
        helper.close(timeout=0)

    consumer = make_consumer(s.kafka, api_version=(2, 8))
    try:
        _assert_config(consumer.config, want, "make_consumer")
    finally:
        consumer.close()

    admin = KafkaAdminClient.__new__(KafkaAdminClient)  # built for real; only its bootstrap fails (closed port)
    with pytest.raises(KafkaError):
        admin.__init__(**admin_config(s.kafka, timeout_ms=300))
    _assert_config(admin.config, want, "the admin client")


@pytest.mark.parametrize("case", sorted(CASES))
def test_faust_worker_and_alert_output_receive_the_security_settings(case: str, ca_file: Path, tmp_path: Path) -> None:
    from finsent.stream.worker import create_app

    s = _settings(case, ca_file, tmp_path)
    app = create_app(s, classifier=object(), store=object())
    creds = app.conf.broker_credentials
    assert creds is not None and type(creds) is type(faust_credentials(s.kafka))

    async def build() -> None:
        # the producer the worker sends scored items, dead letters and the in-stream alerts with
        producer = app.producer._new_producer()
        try:
            _assert_aiokafka(producer.client, s, "the Faust producer (scored, dlq, alerts)")
        finally:
            await producer.stop()
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            _assert_aiokafka(consumer._client, s, "the Faust consumer")
        finally:
            await consumer.stop()

    asyncio.run(build())


def test_plaintext_gives_no_credentials(tmp_path: Path) -> None:
    s = Settings(brokers="127.0.0.1:9092", store=f"chdb://{tmp_path / 'store'}")
    assert faust_credentials(s.kafka) is None
    assert admin_config(s.kafka)["security_protocol"] == "PLAINTEXT" and "sasl_mechanism" not in admin_config(s.kafka)
