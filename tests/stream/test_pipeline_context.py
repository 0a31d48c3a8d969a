"""The worker context handed to extensions (``finsent.stream.context``): typed, shared, closed in order."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

from finsent.core.errors import StoreDiskFull
from finsent.core.settings import Settings
from finsent.stream.context import Extensions, SharedStore, WorkerContext
from finsent.stream.metrics import worker_metrics
from finsent.stream.pipeline.health import Health
from finsent.stream.pipeline.scoring import ClassifierHolder


class _Store:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_store_is_opened_once_whichever_threads_ask_and_closed_only_when_owned() -> None:
    opened: list[_Store] = []
    gate = threading.Event()

    def factory() -> _Store:
        gate.wait(1)  # slow to open: every thread asks meanwhile
        opened.append(_Store())
        return opened[-1]

    shared = SharedStore(factory, owned=True)
    assert shared.current is None  # looking never opens it
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(shared.get())) for _ in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(opened) == 1 and all(g is opened[0] for g in got)
    shared.close()
    assert opened[0].closed and shared.current is None

    lent = _Store()
    borrowed = SharedStore(lambda: lent, owned=False)  # the demo's or a test's store: its caller closes it
    borrowed.get()
    borrowed.close()
    assert not lent.closed


def test_extensions_register_once_by_name_and_close_last_first_even_when_one_fails() -> None:
    ext = Extensions()
    order: list[str] = []

    def boom() -> None:
        order.append("b")
        raise RuntimeError("closing b failed")

    state = object()
    assert ext.register("a", state, close=lambda: order.append("a")) is state
    ext.register("b", 2, close=boom)
    ext.register("c", 3)  # no hook: nothing to close
    assert ext.get("a") is state and "b" in ext and "z" not in ext
    with pytest.raises(ValueError, match="registered twice"):
        ext.register("a", 4)
    with pytest.raises(KeyError, match="registered: \\['a', 'b', 'c'\\]"):
        ext.get("z")
    ext.close()
    assert order == ["b", "a"]


def test_readiness_orders_model_group_store_then_the_extensions() -> None:
    ext = Extensions()
    holder = ClassifierHolder(None)
    health = Health(holder, ext.ready_checks)
    assert health.readiness() == (False, "no model loaded")
    holder.swap(object())
    assert health.readiness() == (False, "not yet joined the consumer group")
    health.joined = True
    health.store_failed(StoreDiskFull("no space left on device\n(errno 28)"))
    assert health.readiness() == (False, "store disk full: no space left on device (errno 28)")
    health.store_ok()
    alerting = [False]
    ext.register("alerts", object(), ready=lambda: (alerting[0], "alerts: priming"))
    assert health.readiness() == (False, "alerts: priming")
    alerting[0] = True
    assert health.readiness() == (True, "ready")


def test_the_context_is_frozen() -> None:
    holder = ClassifierHolder(object())
    ext = Extensions()
    ctx = WorkerContext(
        Settings(),
        SharedStore(_Store),
        worker_metrics(CollectorRegistry()),
        Health(holder, ext.ready_checks),
        holder,
        ext,
    )
    with pytest.raises(AttributeError):
        ctx.store = SharedStore(_Store)  # type: ignore[misc]
