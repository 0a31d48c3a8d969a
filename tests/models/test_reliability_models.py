"""Issue 22, items 7 and 8: no model version may blind the alerts, and no corrupt aliases.json may stop a worker.

Item 7 -- a version is refused at ``register`` and not served by hot reload (old model kept, ERROR, the
reload-failed counter) when its sentiment labels are not {negative, neutral, positive}, when its
``max_length`` exceeds the graph's position embeddings, or when it fails a warm-up at its maximum length
(a graph whose position table the static check cannot see). All on the real tiny model, mutated.

Item 8 -- a corrupt ``aliases.json`` makes a starting worker use ``aliases.json.last-good`` (or the model
directory when that is unusable too), with an ERROR line and ``finsent_model_registry_corrupt`` 1, and never
exit: checked in-process and with a real ``finsent worker`` process against Tansu.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from finsent.core.errors import ModelError
from finsent.core.settings import load_settings
from finsent.models.registry import Registry
from finsent.stream.metrics import worker_metrics
from finsent.stream.reload import ModelFollower, load_model, startup_model_dir
from finsent.stream.worker import ClassifierHolder
from tests.stream_helpers import stream_settings, wait_for, worker_env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finsent.models.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _mutated(src: Path, dest: Path, **labels: Any) -> Path:
    """A copy of ``src`` whose labels.json has ``labels`` set."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cache"))
    path = dest / "labels.json"
    data = json.loads(path.read_text())
    data.update(labels)
    path.write_text(json.dumps(data))
    return dest


def _hidden_positions(src: Path, dest: Path, max_length: int) -> Path:
    """A copy whose position table is renamed (the static check cannot see it) and whose max_length is
    beyond it: only a warm-up at the maximum length finds out."""
    import onnx

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("cache"))
    model = onnx.load(str(dest / "model.onnx"))
    old = next(i.name for i in model.graph.initializer if "position_embeddings" in i.name)
    new = "pe_table_renamed"
    for init in model.graph.initializer:
        if init.name == old:
            init.name = new
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
    onnx.save(model, str(dest / "model.onnx"))
    data = json.loads((dest / "labels.json").read_text())
    data["max_length"] = max_length
    (dest / "labels.json").write_text(json.dumps(data))
    return dest


def _settings(tmp_path: Path, registry: Path | None, model_dir: Path) -> Any:
    return load_settings(
        store=f"chdb://{tmp_path / 'store'}",
        registry=str(registry or ""),
        model_dir=str(model_dir),
        cache_dir=str(tmp_path / "cache"),
        metrics_port=0,
    )


# --- item 7: register ------------------------------------------------------------------------------------


def test_register_refuses_labels_that_blind_the_alerts(tiny: Path, tmp_path: Path) -> None:
    reg = Registry(tmp_path / "registry")
    bad = _mutated(tiny, tmp_path / "bullish", sentiment=["bearish", "neutral", "bullish"])
    with pytest.raises(ModelError) as exc:
        reg.register(bad, aliases=("production",))
    assert "bearish" in str(exc.value) and "negative" in str(exc.value)
    assert reg.versions() == [] and reg.aliases()["production"] is None
    two = _mutated(tiny, tmp_path / "two", sentiment=["negative", "positive", "neutral", "mixed"])
    with pytest.raises(ModelError):
        reg.register(two)
    # the same three names in another order map by name: accepted
    reordered = _mutated(tiny, tmp_path / "reordered", sentiment=["positive", "negative", "neutral"])
    assert reg.register(reordered) is not None


def test_register_refuses_a_max_length_beyond_the_graph_positions(tiny: Path, tmp_path: Path) -> None:
    from finsent.models.runtime import position_limit

    assert position_limit(tiny / "model.onnx") == 66  # the tiny graph: 64 + 2 positions
    reg = Registry(tmp_path / "registry")
    long = _mutated(tiny, tmp_path / "long", max_length=4096)
    with pytest.raises(ModelError) as exc:
        reg.register(long)
    assert "max_length 4096" in str(exc.value) and "66 positions" in str(exc.value)
    assert reg.versions() == []
    assert reg.register(_mutated(tiny, tmp_path / "fits", max_length=66)) is not None
    # positions the static check cannot see: register runs the graph at its maximum length
    hidden = _hidden_positions(tiny, tmp_path / "hidden", 4096)
    assert position_limit(hidden / "model.onnx") is None
    with pytest.raises(ModelError, match="max_length"):
        reg.register(hidden)
    assert len(reg.versions()) == 1


# --- item 7: load and hot reload -------------------------------------------------------------------------


def _bad_version(reg: Registry, good: Path, tmp_path: Path, name: str, mutate: Any) -> str:
    """Register ``good`` (as an older finsent would have) and spoil the version in place: the registry
    holds a bad version that register would now refuse."""
    mv = reg.register(good)
    assert mv is not None
    keep = json.loads((mv.path / "labels.json").read_text())["model_version"]
    spoiled = mutate(good, tmp_path / name)
    for f in ("model.onnx", "labels.json"):
        shutil.copyfile(spoiled / f, mv.path / f)
    data = json.loads((mv.path / "labels.json").read_text())
    data["model_version"] = keep
    (mv.path / "labels.json").write_text(json.dumps(data))
    return mv.version


@pytest.mark.parametrize("case", ["labels", "max_length", "warm_up"])
def test_hot_reload_keeps_the_old_model_when_the_new_version_may_not_serve(
    case: str, tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry(tmp_path / "registry")
    good = reg.register(tiny, aliases=("production",))
    assert good is not None
    s = _settings(tmp_path, reg.root, tiny)
    serving = load_model(good.path, s.model, expect_version=good.version)
    mutate = {
        "labels": lambda src, dest: _mutated(src, dest, sentiment=["bearish", "neutral", "bullish"]),
        "max_length": lambda src, dest: _mutated(src, dest, max_length=4096),
        "warm_up": lambda src, dest: _hidden_positions(src, dest, 4096),
    }[case]
    bad = _bad_version(reg, tiny, tmp_path, case, mutate)
    with pytest.raises(ModelError):
        load_model(reg.get(bad).path, s.model, expect_version=bad)
    metrics = worker_metrics(CollectorRegistry())
    holder = ClassifierHolder(serving)
    follower = ModelFollower(s, holder, metrics, reg)
    try:
        reg.set_alias("production", bad)
        caplog.set_level(logging.ERROR, logger="finsent.stream.reload")
        assert follower.check() is None and follower.check() is None  # a second poll does not retry it
        assert holder.current is serving
        assert follower.events == [(bad, "failed")]
        assert metrics.reload_failures._value.get() == 1
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and bad in r.getMessage()]
        assert len(errors) == 1, [r.getMessage() for r in caplog.records]
        # the old model still scores a long text
        assert holder.current.predict(["shares " * 200])[0].truncated
        # startup on a bad production falls back to the model directory, with an ERROR line
        assert startup_model_dir(s, metrics) == str(tiny)
    finally:
        follower.close()


def test_a_model_dir_that_blinds_the_alerts_does_not_start(tiny: Path, tmp_path: Path) -> None:
    bad = _mutated(tiny, tmp_path / "bullish", sentiment=["bearish", "neutral", "bullish"])
    with pytest.raises(ModelError, match="bearish"):
        startup_model_dir(_settings(tmp_path, None, bad))


def test_warm_up_reaches_the_maximum_length(tiny: Path, tmp_path: Path) -> None:
    from finsent.models.runtime import max_length_text

    s = _settings(tmp_path, None, tiny)
    clf = load_model(tiny, s.model)
    pred = clf.predict([max_length_text(clf.info.max_length)])[0]
    assert pred.truncated  # the text reached the token limit, so the warm-up ran the graph at its longest input


# --- item 8: a corrupt aliases.json ---------------------------------------------------------------------


def _corrupt(reg: Registry, content: bytes = b'{"production": "v0001-') -> None:
    reg.aliases_path.write_bytes(content)


def test_aliases_writes_keep_a_last_good_copy_and_reads_fall_back_to_it(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reg = Registry(tmp_path / "registry")
    mv = reg.register(tiny, aliases=("production",))
    assert mv is not None
    assert json.loads(reg.last_good_path.read_text())["production"] == mv.version
    assert not [p for p in reg.root.iterdir() if p.name.endswith(".tmp")]  # temp files renamed into place
    caplog.set_level(logging.ERROR, logger="finsent.models.registry")
    for content in (b'{"production": "v0001-', b"", b"[1, 2]", b'{"production": 7}', b"\xff\xfe"):
        _corrupt(reg, content)
        assert reg.resolve("production").version == mv.version, content
        assert reg.corrupt is not None
    assert any("last good copy" in r.getMessage() for r in caplog.records)
    # a write repairs the file from the last good copy, keeping the history
    reg.set_alias("candidate", mv.version)
    assert json.loads(reg.aliases_path.read_text())["production"] == mv.version
    assert len(reg.aliases()["history"]) == 2 and reg.corrupt is None
    # a good read refreshes a missing copy
    reg.last_good_path.unlink()
    reg.aliases()
    assert json.loads(reg.last_good_path.read_text())["candidate"] == mv.version


def test_startup_survives_a_corrupt_aliases_file(tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry(tmp_path / "registry")
    mv = reg.register(tiny, aliases=("production",))
    assert mv is not None
    s = _settings(tmp_path, reg.root, tiny)
    metrics = worker_metrics(CollectorRegistry())
    _corrupt(reg)
    caplog.set_level(logging.ERROR)
    assert startup_model_dir(s, metrics) == str(mv.path)  # the last good copy's production
    assert metrics.registry_corrupt._value.get() == 1
    reg.last_good_path.write_text("garbage")
    assert startup_model_dir(s, metrics) == str(tiny)  # no good copy: the model directory
    assert metrics.registry_corrupt._value.get() == 1
    assert any(r.levelno == logging.ERROR and "unreadable at start" in r.getMessage() for r in caplog.records)
    # the follower keeps polling: a repaired file clears the gauge
    follower = ModelFollower(s, ClassifierHolder(load_model(mv.path, s.model)), metrics, reg)
    try:
        assert follower.check() is None and follower.unreadable is not None
        reg.aliases_path.write_text(json.dumps({"production": mv.version}))
        assert follower.check() is None and follower.unreadable is None
        assert metrics.registry_corrupt._value.get() == 0
    finally:
        follower.close()


@pytest.mark.integration
@pytest.mark.faults
def test_worker_process_starts_on_a_corrupt_registry(
    tiny: Path, tmp_path: Path, kafka_bootstrap: str, unique_name: str
) -> None:
    """A real `finsent worker` whose registry's aliases.json and its copy are both corrupt: it starts on the
    model directory (no exit 5), says so in one ERROR line, and /metrics shows the registry as corrupt."""
    from finsent.stream.broker import free_port

    reg = Registry(tmp_path / "registry")
    assert reg.register(tiny, aliases=("production",)) is not None
    _corrupt(reg)
    reg.last_good_path.write_text("{")
    store_url = f"chdb://{tmp_path / 'store'}"
    s = stream_settings(kafka_bootstrap, store_url, unique_name)
    port = free_port()
    env = worker_env(
        s,
        tiny,
        FINSENT_PARTITIONS="1",
        FINSENT_METRICS_PORT=str(port),
        FINSENT_REGISTRY=str(reg.root),
        FINSENT_CACHE_DIR=str(tmp_path / "cache"),
    )
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent", "worker"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )

    def metrics() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return ""

    try:
        wait_for(lambda: "finsent_model_info{" in metrics() or proc.poll() is not None, 120, "the worker serving")
        assert proc.poll() is None, log.read_text()[-3000:]
        text = metrics()
        assert "finsent_model_registry_corrupt 1.0" in text
        assert 'version="tiny-random-' in text  # the model directory's model, not the registry's
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        took = time.monotonic() - t0
        assert took < 10, f"SIGTERM took {took:.1f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    errors = [ln for ln in out.splitlines() if "ERROR" in ln and "registry" in ln]
    assert len(errors) == 1, out[-3000:]
    assert "starting on the model directory" in errors[0]
