"""Publish RawItems to ``settings.kafka.topic_raw``, keyed by id, and know exactly which were acked.

Durability contract (what the ingesters and the HTTP endpoint promise on top of it):

* every record is sent with acks=all and the producer's own retries; ``publish`` then WAITS for
  each record's acknowledgement (its future) -- an item counts as published only when acked;
* records that fail (broker down, leader moving, timeouts) are re-sent with exponential backoff
  until they are acked or the wait runs out: the call's ``give_up_after_s``, else the publisher's
  ``publish_timeout_s`` (default ``settings.ingest.publish_timeout_s``, ``FINSENT_PUBLISH_TIMEOUT_S``;
  ``None`` waits forever). Every wait inside a round (bootstrap, topic check, flush, acks) is cut
  to what is left, so the bound holds. Then :class:`PublishError` says which items were acked
  and which were not; the CLI turns it into one line and exit status 6, the HTTP endpoint into
  a 503, a poller into a failed poll that is retried later;
* the record key is the item id, so a re-send after an ambiguous failure lands on the same
  partition with the same id and the store's idempotent insert absorbs it; dedup state is
  marked by the caller only for acked items, so nothing is lost and nothing is marked twice.

The kafka-python producer is created lazily and re-created after a failed bootstrap, so an
ingester can start before the broker and survive a broker restart.

Stopping (SIGTERM) is :meth:`Publisher.drain`: the publish in flight gets a short grace to collect
its acks, then hands back what is still unacked (in the :class:`PublishError`, not counted, not
marked as seen) instead of waiting out the publish timeout. Every wait inside a round is sliced
(at most :data:`WAIT_SLICE_S`) and each bootstrap attempt capped (:data:`BOOTSTRAP_CAP_S`), so a
drain is obeyed within about a second even against a broker that is gone. Readiness
(``/readyz``) is :meth:`Publisher.ready`: the last contact with the broker (a connect, or a
round of acks) succeeded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from finsent.core.errors import ConfigError, KafkaError
from finsent.core.events import RawItem
from finsent.core.settings import Settings

log = logging.getLogger(__name__)


class PublishError(KafkaError):
    """Some items could not be acked in time; ``acked`` were, ``pending`` were not."""

    hint = (
        "start a broker with `finsent broker` or point --brokers / FINSENT_BROKERS at yours; "
        "--publish-timeout / FINSENT_PUBLISH_TIMEOUT_S waits longer for a slow one"
    )

    def __init__(self, message: str, acked: list[RawItem], pending: list[RawItem], *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.acked = acked
        self.pending = pending


class PublishConfigError(ConfigError):
    """The producer cannot be built from the settings (retrying would not help)."""


@dataclass
class PublishResult:
    acked: list[RawItem] = field(default_factory=list)
    oversize: list[RawItem] = field(default_factory=list)


_FROM_SETTINGS: Any = object()

#: longest single blocking wait inside a publish round: a drain or abort is noticed this quickly
WAIT_SLICE_S = 0.2
#: longest bootstrap attempt (connect + first metadata); failed attempts are retried with back-off
BOOTSTRAP_CAP_S = 3.0


class Publisher:
    """Thread-safe wrapper over one KafkaProducer. Use as a context manager or call :meth:`close`.

    ``publish_timeout_s`` bounds every publish that does not pass its own ``give_up_after_s``
    (default: ``settings.ingest.publish_timeout_s``; ``None``: wait for the broker forever).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str = "finsent-ingest",
        delivery_timeout_s: float = 30.0,
        ensure_topic: bool = True,
        backoff_s: tuple[float, float] = (0.5, 15.0),
        publish_timeout_s: float | None = _FROM_SETTINGS,
    ) -> None:
        self.settings = settings
        self.topic = settings.kafka.topic_raw
        self.client_id = client_id
        self.delivery_timeout_s = delivery_timeout_s
        self.publish_timeout_s: float | None = (
            settings.ingest.publish_timeout_s if publish_timeout_s is _FROM_SETTINGS else publish_timeout_s
        )
        self.ensure_topic = ensure_topic
        self.backoff_s = backoff_s
        self._producer: Any = None
        self._topic_ready = False
        self._lock = threading.Lock()
        self._closed = False
        self._abort = threading.Event()
        self._stop_at = math.inf  # monotonic time after which no wait goes on (drain/abort)
        self._wake = threading.Event()  # cuts a back-off sleep short (drain/abort)
        self._contact: tuple[bool, str] = (False, "not connected to Kafka yet")

    # -- producer lifecycle --------------------------------------------------------------------

    def _config(self, budget_s: float | None = None) -> dict[str, Any]:
        """Producer options; ``budget_s`` (what is left of a bounded publish) caps the bootstrap wait."""
        from finsent.stream.kafka import producer_config

        linger_ms = 20
        request_ms = max(1000, min(30_000, int(self.delivery_timeout_s * 1000 / 2)))
        bootstrap_ms = min(request_ms, int(BOOTSTRAP_CAP_S * 1000))
        if budget_s is not None:
            bootstrap_ms = max(200, min(bootstrap_ms, int(budget_s * 1000)))
        cfg = producer_config(self.settings.kafka, self.client_id)
        cfg.update(
            linger_ms=linger_ms,
            request_timeout_ms=request_ms,
            # kafka-python wants delivery >= request + linger
            delivery_timeout_ms=max(int(self.delivery_timeout_s * 1000), request_ms + linger_ms),
            max_block_ms=request_ms,
            # bootstrap probing must not hang for the default 30 s when the broker is down
            bootstrap_timeout_ms=bootstrap_ms,
            reconnect_backoff_max_ms=2000,
        )
        return cfg

    def _get_producer(self, budget_s: float | None = None) -> Any:
        """The producer, created on first use; raises on an unreachable broker (caller retries)."""
        if self.draining:  # a stop is under way: no connect may outlast its grace
            budget_s = max(0.0, min(math.inf if budget_s is None else budget_s, self._stop_at - time.monotonic()))
        if self._producer is None:
            from kafka import KafkaProducer
            from kafka.errors import KafkaConfigurationError

            try:
                producer = KafkaProducer(**self._config(budget_s))
            except (KafkaConfigurationError, TypeError, AssertionError) as exc:  # a bug, not an outage
                raise PublishConfigError(f"bad Kafka producer configuration: {exc}") from exc
            if self.ensure_topic and not self._topic_ready:  # broker reachable now, so this is quick
                from kafka.errors import AuthorizationError

                from finsent.stream.kafka import ensure_topics

                topic_s = min(5.0, self.delivery_timeout_s)
                if budget_s is not None:
                    topic_s = max(0.5, min(topic_s, budget_s))
                try:
                    ensure_topics(self.settings.kafka, [self.topic], timeout_s=topic_s)
                except AuthorizationError as exc:
                    # a locked-down cluster: ingesters may produce but not administer; the topic is
                    # the operator's job there, so publish anyway (a missing topic fails loudly on send)
                    log.warning("cannot check/create topic %s (%s); publishing anyway", self.topic, exc)
                except BaseException:
                    producer.close(timeout=1)
                    raise
                self._topic_ready = True
            self._producer = producer
            self._contact = (True, f"connected to Kafka at {self.settings.kafka.brokers}")
            log.info("connected to Kafka %s, publishing to %s", self.settings.kafka.brokers, self.topic)
        return self._producer

    def _drop_producer(self, timeout_s: float = 1.0) -> None:
        """Close the producer; what it could not deliver in ``timeout_s`` is failed, not sent later."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=max(0.0, timeout_s))
        except Exception:  # closing a broken producer must not mask the original error
            log.debug("error closing producer", exc_info=True)
            sender = getattr(producer, "_sender", None)  # kafka-python: close() gave up in its flush
            if sender is not None:
                try:
                    sender.force_close()  # the buffered records fail; nothing goes out after we said "unacked"
                except Exception:  # noqa: BLE001
                    log.debug("error force-closing the producer", exc_info=True)

    @property
    def connected(self) -> bool:
        """Whether a producer is up (it was, at least, at the last publish)."""
        return self._producer is not None

    def ready(self) -> tuple[bool, str]:
        """``/readyz`` of an ingester: the last contact with Kafka (connect or acked round) succeeded.

        False before the first connect, after a round that got no acks, and once draining.
        """
        if self._closed or self._abort.is_set() or self.draining:
            return False, "stopping"
        return self._contact

    def connect(self, *, quiet: bool = False) -> bool:
        """Try to connect now (e.g. at service start) instead of on the first publish.

        Never while stopping. ``quiet``: a failure is logged at DEBUG (a periodic retry), not WARNING.
        """
        if self._closed or self.draining:
            return False
        with self._lock:
            if self._closed or self.draining:
                return False
            try:
                self._get_producer()
                return True
            except PublishConfigError:
                raise
            except Exception as exc:
                self._contact = (False, f"Kafka at {self.settings.kafka.brokers} not reachable: {exc}")
                (log.debug if quiet else log.warning)(
                    "Kafka at %s not reachable yet (%s); will retry on publish", self.settings.kafka.brokers, exc
                )
                self._drop_producer()
                return False

    def drain(self, grace_s: float) -> None:
        """Shutdown: the publish in flight may wait ``grace_s`` more for its acks, then gives up.

        No new round starts. What is unacked then is handed back in the :class:`PublishError`
        (never counted as produced, never marked as seen), so the next run publishes it again.
        """
        self._stop_at = min(self._stop_at, time.monotonic() + max(0.0, grace_s))
        self._wake.set()

    @property
    def draining(self) -> bool:
        return self._stop_at != math.inf

    def _stopping(self, pending: Sequence[RawItem], error: str) -> str:
        return f"stopping: {len(pending)} item(s) not acknowledged by Kafka ({error or 'no time left'}); handed back"

    def abort(self) -> None:
        """Make a publish give up now, in flight or waiting for an unreachable broker.

        Its unacked items are reported in the :class:`PublishError` and were never marked as
        seen, so the next run publishes them again.
        """
        self._abort.set()
        self.drain(0.0)

    def close(self) -> None:
        """Flush and close: within the drain grace when draining, else within the delivery timeout."""
        self._abort.set()
        self._wake.set()
        self._closed = True
        draining = self.draining
        # a connect attempt in another thread holds the lock for at most one bootstrap (BOOTSTRAP_CAP_S)
        wait_s = (
            max(self.delivery_timeout_s, BOOTSTRAP_CAP_S)
            if not draining
            else max(0.0, self._stop_at - time.monotonic()) + BOOTSTRAP_CAP_S
        )
        if not self._lock.acquire(timeout=wait_s):
            log.warning("closing the Kafka producer: still busy after %.0f s; left to the exit", wait_s)
            return
        try:
            if self._producer is not None:
                flush_s = (
                    self.delivery_timeout_s
                    if not draining
                    else min(self.delivery_timeout_s, max(0.0, self._stop_at - time.monotonic()))
                )
                self._drop_producer(timeout_s=flush_s)
        finally:
            self._lock.release()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing ----------------------------------------------------------------------------

    def _send_round(
        self, items: Sequence[RawItem], payloads: dict[str, bytes], deadline: float = math.inf
    ) -> tuple[list[RawItem], list[RawItem], str]:
        """Send once and wait for every future, never past ``deadline`` (monotonic) or a drain.

        Returns (acked, failed, last error text). A record whose ack did not come in time is
        "failed" even if the broker acks it later: it is re-sent (same key and id) or reported.
        Waits are sliced (:data:`WAIT_SLICE_S`) so a drain that starts mid-round is obeyed at once.
        """
        from kafka.errors import KafkaTimeoutError

        def end() -> float:
            return min(deadline, self._stop_at)

        budget = None if end() == math.inf else max(0.0, end() - time.monotonic())
        if budget is not None and budget <= 0:
            return [], list(items), "gave up before connecting"
        try:
            producer = self._get_producer(budget)
        except PublishConfigError:
            raise
        except Exception as exc:  # NoBrokersAvailable, KafkaTimeoutError, KafkaUnavailable...
            self._drop_producer()
            self._contact = (False, f"Kafka at {self.settings.kafka.brokers} not reachable: {exc}")
            return [], list(items), f"cannot connect: {exc}"
        futures: list[tuple[RawItem, Any]] = []
        failed: list[RawItem] = []
        error = ""
        for i, item in enumerate(items):
            try:
                fut = producer.send(self.topic, key=item.id.encode("utf-8"), value=payloads[item.id])
            except Exception as exc:  # metadata timeout (max_block_ms) and buffer-full errors
                failed.extend(items[i:])  # the rest would block max_block_ms each: retry them later
                error = f"send: {exc}"
                break
            futures.append((item, fut))
        round_end = time.monotonic() + self.delivery_timeout_s + 5
        while any(not fut.is_done for _, fut in futures):
            left = min(round_end, end()) - time.monotonic()
            if left <= 0:
                error = error or "no acknowledgement in time"
                break
            try:
                producer.flush(timeout=min(WAIT_SLICE_S, left))
            except KafkaTimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001 - whatever flush raises, the futures say what was acked
                error = error or f"flush: {exc}"
                break
        acked: list[RawItem] = []
        for item, fut in futures:
            if fut.succeeded():
                acked.append(item)
            else:
                failed.append(item)
                if fut.is_done:
                    error = f"ack: {fut.exception}"
        if acked and not failed:
            self._contact = (True, f"connected to Kafka at {self.settings.kafka.brokers}; last publish acknowledged")
        elif failed:
            self._contact = (False, f"Kafka at {self.settings.kafka.brokers} did not acknowledge: {error}")
        return acked, failed, error

    def publish(self, items: Sequence[RawItem], *, give_up_after_s: float | None = None) -> int:
        """Publish ``items``; returns how many were acked once all are (or raises :class:`PublishError`).

        Items over ``max_message_bytes`` are not sent (logged; see :meth:`publish_detailed`).
        """
        return len(self.publish_detailed(items, give_up_after_s=give_up_after_s).acked)

    def publish_detailed(
        self,
        items: Sequence[RawItem],
        *,
        give_up_after_s: float | None = None,
        on_acked: Callable[[list[RawItem]], None] | None = None,
    ) -> PublishResult:
        """Publish ``items`` and return once all are acked (or raise :class:`PublishError`).

        ``give_up_after_s``: how long to keep trying (default: :attr:`publish_timeout_s`).
        ``on_acked`` is called with each group of newly acked items as soon as they are acked
        (the caller marks dedup state there, so a later failure of other items never un-marks
        or re-publishes them).
        """
        result = PublishResult()
        limit = self.settings.kafka.max_message_bytes
        payloads: dict[str, bytes] = {}
        pending: list[RawItem] = []
        for item in dict((it.id, it) for it in items).values():  # one record per id per call
            data = item.to_json()
            if len(data) > limit:
                result.oversize.append(item)
                log.warning("item %s is %d bytes > max_message_bytes=%d; not published", item.id, len(data), limit)
                continue
            payloads[item.id] = data
            pending.append(item)
        bound = self.publish_timeout_s if give_up_after_s is None else give_up_after_s
        deadline = math.inf if bound is None else time.monotonic() + bound
        delay = self.backoff_s[0]
        with self._lock:
            while pending:
                if self._closed or self._abort.is_set():
                    raise PublishError("publisher closed or aborted", result.acked, pending)
                if time.monotonic() >= self._stop_at:
                    raise PublishError(self._stopping(pending, "not sent"), result.acked, pending)
                acked, pending, error = self._send_round(pending, payloads, deadline)
                if acked:
                    result.acked.extend(acked)
                    if on_acked is not None:
                        on_acked(acked)
                if not pending:
                    break
                # start the next round from a fresh producer: after expired batches an idempotent
                # producer can be left in a state it never recovers from, and a restarted broker may
                # have lost the topic (re-checked on connect). Its unacked records are failed, not sent
                # later behind our back.
                self._drop_producer(timeout_s=0.0)
                self._topic_ready = False
                if self._closed or self._abort.is_set():
                    raise PublishError(self._stopping(pending, error), result.acked, pending)
                now = time.monotonic()
                if now + delay > self._stop_at:
                    raise PublishError(self._stopping(pending, error), result.acked, pending)
                if now + delay > deadline:
                    raise PublishError(
                        f"Kafka at {self.settings.kafka.brokers} did not acknowledge {len(pending)} item(s) within "
                        f"{bound:g} s ({error})",
                        result.acked,
                        pending,
                    )
                log.warning(
                    "Kafka at %s did not ack %d item(s) (%s); retrying in %.1fs",
                    self.settings.kafka.brokers,
                    len(pending),
                    error,
                    delay,
                )
                if self._wake.wait(delay) and self._abort.is_set():
                    raise PublishError("publisher aborted while waiting for Kafka", result.acked, pending)
                delay = min(delay * 2, self.backoff_s[1])
        return result
