"""One name for the same weights everywhere (issue 25): the store's rows, /metrics, the /v1 API, the registry.

A real ``finsent worker`` process (real Tansu broker, chdb store, items flowing) serves the tiny model from
FINSENT_MODEL_DIR while its registry is still empty. The model is then registered with ``finsent models
register`` (the first version, production) while the worker runs and follows the registry. Before issue 25 the
registry renamed it (``v0001-<digest>`` against the worker's ``tiny-random-<digest>``): the worker hot-reloaded
the same weights under the new name, rows, metrics and ``compare`` then showed two models. Now the worker
has nothing to swap, and every place names the model the same.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from finsent.models.modeldir import LABELS_FILE
from finsent.stream.store import open_store
from tests.stream.worker_process import start_worker
from tests.stream_helpers import Feeder, wait_for

pytestmark = [pytest.mark.integration]


def _model_info(metrics: str) -> set[str]:
    return set(re.findall(r'^finsent_model_info\{[^}]*version="([^"]+)"[^}]*\} 1\.0$', metrics, re.M))


def _reloads(metrics: str) -> float:
    m = re.search(r"^finsent_model_reloads_total ([0-9.e+]+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0


def test_registered_model_keeps_the_name_the_worker_already_stored(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    w = start_worker(
        kafka_bootstrap, tmp_path, unique_name, FINSENT_REGISTRY=str(registry), FINSENT_RELOAD_INTERVAL_S="0.3"
    )
    name = json.loads((w.model_dir / LABELS_FILE).read_text())["model_version"]
    feeder = Feeder(w.settings, prefix="one")
    try:
        feeder.start()

        def stored() -> list:
            return w.get("/v1/items?since=1h&limit=100000")["items"]

        wait_for(lambda: len(stored()) >= 30, 120, "30 items stored by the unregistered model")
        assert {it["model_version"] for it in stored()} == {name}
        assert _model_info(w.get("/metrics")) == {name}

        reg = w.finsent("models", "register", str(w.model_dir), FINSENT_REGISTRY=str(registry))
        assert reg.returncode == 0, reg.stderr[-3000:]
        listed = w.finsent("models", "list", "--json", "-", FINSENT_REGISTRY=str(registry))
        assert listed.returncode == 0, listed.stderr[-3000:]
        doc = json.loads(listed.stdout)
        assert [v["version"] for v in doc["versions"]] == [name] and doc["production"] == name
        table = w.finsent("models", "list", FINSENT_REGISTRY=str(registry)).stdout.splitlines()
        row = next(line for line in table if line.startswith(name + " "))  # the whole name, its columns aligned
        assert row.index("production") == table[0].index("aliases"), table

        # the worker follows production (polls every 0.3 s): the same weights, the same name, nothing to swap
        before = len(stored())
        time.sleep(2.0)
        wait_for(lambda: len(stored()) >= before + 30, 120, "30 more items stored after the registration")
        metrics = w.get("/metrics")
        assert _model_info(metrics) == {name} and _reloads(metrics) == 0
        assert {it["model_version"] for it in stored()} == {name}
        store = open_store(w.url)  # this process is no worker: a RemoteStore through the worker's owner file
        try:  # the store's mirror of the registry names it the same
            assert [v["version"] for v in store.model_versions()] == [name]
        finally:
            store.close()
        # a numbered handle finds it, for rescore and promote alike
        shown = w.finsent("models", "show", "v0001", "--json", "-", FINSENT_REGISTRY=str(registry))
        assert shown.returncode == 0 and json.loads(shown.stdout)["version"] == name, shown.stderr[-2000:]
    finally:
        feeder.stopping.set()
        rc = w.stop()
    assert rc == 0, w.log.read_text()[-3000:]
