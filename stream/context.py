"""The typed context a scoring worker hands to its extensions (the alert agent, the drift timer, ...).

Why a context and not attributes on the Faust app: an extension needs the worker's store (chdb allows
one open path per process, so the alert agent must share the scorer's), its metrics, its readiness
and its settings. Set as ``app.finsent_*`` attributes and borrowed through ``getattr``, no type
checker could follow them and every extension knew the scorer's internals. Here they are the fields
of one frozen dataclass, built once by :func:`finsent.stream.worker.create_worker`.

An extension is a callable ``(app, context) -> object`` passed by the composition root
(``finsent.cli.worker``, the demo, the benchmarks)::

    def attach(app: faust.App, ctx: WorkerContext) -> MyState:
        state = MyState(ctx.settings, ctx.store.get)
        ...  # app.agent / app.timer, as any Faust agent
        return ctx.extensions.register("mine", state, ready=state.readiness, close=state.close)

and read back, e.g. by a test, with ``ctx.extensions.get("mine")``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from finsent.core.settings import Settings
from finsent.stream.metrics import WorkerMetrics
from finsent.stream.pipeline.health import Health, ReadyCheck
from finsent.stream.pipeline.scoring import ClassifierHolder

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)

T = TypeVar("T")


class SharedStore:
    """The worker's store, opened on first use by whichever thread asks first, then shared.

    One per process: chdb allows one open path per process, and a server store needs no second
    connection. ``owned`` says whether closing the worker closes it (a store passed in by the demo
    or a test belongs to its caller).
    """

    def __init__(self, factory: Callable[[], Any], owned: bool = True) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._store: Any = None
        self.owned = owned

    def get(self) -> Any:
        """The open store (opening it now if needed; raises what opening raises, e.g. StoreUnavailable)."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                self._store = self._factory()
            return self._store

    @property
    def current(self) -> Any:
        """The store if it is open, else None (never opens it)."""
        return self._store

    def close(self) -> None:
        """Close the store if this worker opened it (best effort: at exit, a failure is only logged)."""
        store, self._store = self._store, None
        if store is not None and self.owned:
            try:
                store.close()
            except Exception:  # pragma: no cover - best effort at exit
                log.exception("closing the store failed")


@dataclass(slots=True)
class _Registered:
    value: Any
    ready: ReadyCheck | None
    close: Callable[[], Any] | None


class Extensions:
    """What the extensions registered: their state (by name), their readiness checks and their close hooks."""

    def __init__(self) -> None:
        self._items: dict[str, _Registered] = {}

    def register(
        self, name: str, value: T, *, ready: ReadyCheck | None = None, close: Callable[[], Any] | None = None
    ) -> T:
        """Register extension ``name``'s state; ``ready`` joins ``/readyz``, ``close`` runs when the worker closes.

        Returns ``value``, so an ``attach`` can end with ``return ctx.extensions.register(...)``.
        """
        if name in self._items:
            raise ValueError(f"extension {name!r} is registered twice; give each extension its own name")
        self._items[name] = _Registered(value, ready, close)
        return value

    def get(self, name: str) -> Any:
        """The state extension ``name`` registered (KeyError, naming those there are, when it did not)."""
        try:
            return self._items[name].value
        except KeyError:
            raise KeyError(f"no extension {name!r} registered (registered: {sorted(self._items) or 'none'})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def ready_checks(self) -> list[ReadyCheck]:
        return [r.ready for r in self._items.values() if r.ready is not None]

    def close(self) -> None:
        """Run every close hook, last registered first; one failing does not stop the others."""
        for name, r in reversed(list(self._items.items())):
            if r.close is None:
                continue
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing must go on
                log.exception("closing extension %r failed", name)


@dataclass(frozen=True)
class WorkerContext:
    """What a worker shares with its extensions: typed, built once, never set on the Faust app."""

    settings: Settings
    #: the worker's store, shared (``ctx.store.get()`` opens it on first use)
    store: SharedStore
    metrics: WorkerMetrics
    #: readiness (``/readyz``); extensions add checks through :attr:`extensions`
    health: Health
    #: the classifier in use (hot reload swaps it)
    classifier: ClassifierHolder
    extensions: Extensions = field(default_factory=Extensions)


#: What the composition root passes to the worker: called once with the Faust app and the context.
Extension = Callable[["faust.App", WorkerContext], object]
