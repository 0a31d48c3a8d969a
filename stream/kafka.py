"""Kafka plumbing shared by every finsent component: topic creation and client factories.

Why one module: every client must get the same SASL/TLS options (:func:`kafka_security`)
and the same durability choices (acks=all, retries, idempotent ordering), and topic creation
must be idempotent so that the worker, the ingesters, the demo and the tests can all call
``ensure_topics`` at start-up without racing each other.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from finsent.core.errors import KafkaUnavailable
from finsent.core.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)


def finsent_topics(kafka: KafkaSettings) -> list[str]:
    """The topics finsent owns, in pipeline order: every one is (re)declared at start (a memory-only broker that
    restarted has none of them, and a consumer committing to a missing topic floods its log)."""
    return [
        kafka.topic_raw,
        kafka.topic_scored,
        kafka.topic_dlq,
        kafka.topic_alerts,
        kafka.topic_alert_counts,
        kafka.topic_entity_counts,
    ]


def admin_config(kafka: KafkaSettings, timeout_ms: int = 15_000) -> dict[str, Any]:
    """kafka-python admin client options (SASL/TLS included) for one attempt of at most ``timeout_ms``."""
    return {
        "bootstrap_servers": kafka.broker_list,
        "client_id": "finsent-admin",
        "request_timeout_ms": min(10_000, timeout_ms),
        "bootstrap_timeout_ms": timeout_ms,  # the whole wait is timeout_s, not 30 s per attempt
        **kafka_security(kafka),
    }


def admin_client(kafka: KafkaSettings, timeout_s: float = 15.0) -> Any:
    """A kafka-python admin client, retried until ``timeout_s`` (brokers may still be starting)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            left_ms = max(1000, int((deadline - time.monotonic()) * 1000))
            return KafkaAdminClient(**admin_config(kafka, left_ms))
        except KafkaError as exc:
            last = exc
            time.sleep(0.5)
    raise KafkaUnavailable(
        f"cannot reach Kafka at {kafka.brokers} ({last}); start one with `finsent broker` or set --brokers"
    )


def ensure_topics(kafka: KafkaSettings, topics: Iterable[str] | None = None, timeout_s: float = 15.0) -> list[str]:
    """Create the finsent topics that do not exist yet (``kafka.partitions`` each); returns those created.

    Existing topics are left as they are (a different partition count is logged, not changed:
    repartitioning a live topic reorders keys and is an operator decision).
    """
    from kafka.errors import TopicAlreadyExistsError

    wanted = list(topics) if topics is not None else finsent_topics(kafka)
    admin = admin_client(kafka, timeout_s)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            spec = {
                t: {
                    "num_partitions": kafka.partitions,
                    "replication_factor": kafka.replication_factor,
                }
                for t in missing
            }
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race: fine
                admin.create_topics(spec, timeout_ms=int(timeout_s * 1000))
            admin.wait_for_topics(missing, timeout_ms=int(timeout_s * 1000))
            log.info("created topics %s with %d partitions", ", ".join(missing), kafka.partitions)
        present = [t for t in wanted if t in existing]
        for desc in admin.describe_topics(present) if present else []:
            n = len(desc.get("partitions") or [])
            if n and n != kafka.partitions:
                log.warning(
                    "topic %s has %d partitions, settings say %d (left unchanged)",
                    desc.get("name"),
                    n,
                    kafka.partitions,
                )
        return missing
    finally:
        admin.close()


def producer_config(kafka: KafkaSettings, client_id: str = "finsent-producer") -> dict[str, Any]:
    """kafka-python producer options: durable (acks=all, retries) yet batched (linger, compression)."""
    return {
        "bootstrap_servers": kafka.broker_list,
        "client_id": client_id,
        "acks": "all",
        "retries": 10,
        "retry_backoff_ms": 200,
        "max_in_flight_requests_per_connection": 1,  # retries must not reorder a partition
        "linger_ms": 5,
        "batch_size": 64 * 1024,
        "compression_type": "gzip",
        "max_request_size": max(kafka.max_message_bytes + 64 * 1024, 1_048_576),
        "request_timeout_ms": 30_000,
        **kafka_security(kafka),
    }


def make_producer(kafka: KafkaSettings, client_id: str = "finsent-producer", **overrides: Any) -> Any:
    """A kafka-python ``KafkaProducer`` (values and keys are bytes; callers encode)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(**{**producer_config(kafka, client_id), **overrides})
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"cannot reach Kafka at {kafka.brokers}; start one with `finsent broker` or set --brokers"
        ) from exc


def make_consumer(kafka: KafkaSettings, *topics: str, group_id: str | None = None, **overrides: Any) -> Any:
    """A kafka-python ``KafkaConsumer`` reading from the start (Tansu end offsets are unreliable)."""
    from kafka import KafkaConsumer

    cfg: dict[str, Any] = {
        "bootstrap_servers": kafka.broker_list,
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(kafka.session_timeout_ms // 4, 500),
        **kafka_security(kafka),
    }
    cfg.update(overrides)
    return KafkaConsumer(*topics, **cfg)


def kafka_security(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for SASL/TLS: the one translation of the security settings.

    Every client finsent makes gets them: the ingest producer and the admin client (kafka-python,
    directly), the alert sinks (through :func:`make_producer`) and the Faust worker (through
    :func:`faust_credentials`, which is built from this dict, so the two cannot disagree).
    """
    kw: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.sasl_mechanism:
        kw["sasl_mechanism"] = kafka.sasl_mechanism
        kw["sasl_plain_username"] = kafka.sasl_username
        kw["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    if kafka.ssl_cafile:
        kw["ssl_cafile"] = kafka.ssl_cafile
    return kw


def faust_credentials(kafka: KafkaSettings) -> Any:
    """:func:`kafka_security` as Faust credentials (None for PLAINTEXT): an SSL context instead of a CA path."""
    import faust

    sec = kafka_security(kafka)
    ssl_context = None
    if sec["security_protocol"].endswith("SSL"):
        import ssl

        ssl_context = ssl.create_default_context(cafile=sec.get("ssl_cafile"))
    if "sasl_mechanism" in sec:
        return faust.SASLCredentials(
            username=sec["sasl_plain_username"],
            password=sec["sasl_plain_password"],
            mechanism=sec["sasl_mechanism"],
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


class KafkaHealth:
    """Whether Kafka answers, as the client libraries' own complaints tell it: one finsent line per change.

    aiokafka logs an ERROR for every failed connection attempt (about 55 a second once a broker
    is gone). :class:`ClientLogLimiter` lets one of each kind through per ``every_s`` and tells
    this object; finsent then says once that Kafka is lost, and once that it is back when the
    complaints have stopped for ``quiet_s`` (checked by :meth:`tick`, which the worker runs on a timer).
    """

    def __init__(self, brokers: str, quiet_s: float = 10.0) -> None:
        self.brokers = brokers
        self.quiet_s = quiet_s
        self.lost_since: float | None = None
        self.last_error = 0.0

    def error(self) -> None:
        now = time.monotonic()
        self.last_error = now
        if self.lost_since is None:
            self.lost_since = now
            log.warning("lost contact with Kafka at %s; retrying (client errors are rate-limited)", self.brokers)

    def tick(self) -> None:
        if self.lost_since is not None and time.monotonic() - self.last_error >= self.quiet_s:
            log.warning("Kafka at %s answers again after %.0f s", self.brokers, time.monotonic() - self.lost_since)
            self.lost_since = None


class ClientLogLimiter(logging.Filter):
    """Let one record per (logger, message template) through every ``every_s``; count the rest.

    Installed on the root logger's handlers for the kafka-python, aiokafka, faust and mode loggers
    (and their children), so a dead broker costs a line every few seconds, not dozens a second.
    Records of ERROR and above feed :class:`KafkaHealth`.
    """

    def __init__(self, health: KafkaHealth | None = None, every_s: float = 30.0) -> None:
        super().__init__()
        self.health = health
        self.every_s = every_s
        self._last: dict[tuple[str, str], float] = {}
        self.suppressed = 0
        #: set by a stop that Kafka cut off: the client libraries' records say nothing new then
        self.stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_CLIENT_LOGGERS):
            return True
        if self.stopping:
            self.suppressed += 1
            return False
        if record.levelno >= logging.ERROR and self.health is not None:
            self.health.error()
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every_s:
            self.suppressed += 1
            return False
        self._last[key] = now
        if record.exc_info and record.exc_info[1] is not None:  # a client's own stack trace is no news to a user
            exc = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(exc).__name__}: {exc})", ()
            record.exc_info, record.exc_text = None, None
        return True


_CLIENT_LOGGERS = ("kafka", "aiokafka", "faust", "mode")


def quiet_client_logs(settings: Settings, health: KafkaHealth | None = None) -> ClientLogLimiter | None:
    """Client libraries at WARNING and above, each kind of complaint once per 30 s (all of it with DEBUG).

    Returns the limiter installed (None with DEBUG), whose ``health`` learns of Kafka errors.
    """
    if settings.log_level.upper() == "DEBUG":
        return None
    limiter = ClientLogLimiter(health)
    for name in _CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # on the handlers: a logger's own filters do not see its children's records (aiokafka.conn, ...)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, ClientLogLimiter)]:
            handler.removeFilter(old)
        handler.addFilter(limiter)
    return limiter
