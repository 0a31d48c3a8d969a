"""Which model a worker (or ``finsent rescore``) uses, and hot reload: following the registry's production alias.

Why poll: the registry is a directory (:mod:`finsent.models.registry`), possibly on a mounted volume, and
its aliases move by one atomic rename of ``aliases.json``. Reading that small file every
``FINSENT_RELOAD_INTERVAL_S`` (like Triton's ``--model-control-mode=poll``) needs no notification
channel, works the same on every filesystem, and costs nothing measurable.

Which model a worker starts with (:func:`startup_model_dir`): the registry's production version when
``FINSENT_REGISTRY`` is set and its production alias is set; otherwise ``FINSENT_MODEL_DIR`` (or the
shipped model). So the registry wins; an empty ``FINSENT_REGISTRY`` pins ``FINSENT_MODEL_DIR``.

How a swap happens (:class:`ModelFollower`): on a poll that finds production at another version than the
one serving, the new version is loaded and warmed (one inference, so the first real batch does not pay
for session start-up) in the follower's own thread -- never on the event loop, never in the model
thread that scores batches -- and then installed with :meth:`ClassifierHolder.swap`. The scorer reads
``holder.current`` once per batch and scores the whole batch with that object, which also stamps its
``model_version`` on every row, so a batch never mixes versions: batches taken before the swap finish
with the old model, the next one uses the new. ``/readyz`` only asks whether *a* model is loaded, so it
stays ready throughout. ``finsent models rollback`` moves the alias back, and the follower swaps back
the same way.

A version that fails to load (missing files, a corrupt graph, a ``model_version`` that does not match
the registry's name) or may not serve (sentiment labels other than negative/neutral/positive, a
``max_length`` beyond the graph's positions, a warm-up at the maximum length that fails:
:func:`~finsent.models.runtime.check_serving_contract`) leaves the old model serving: one ERROR line
per bad version (not one per poll), ``finsent_model_reload_failures_total`` counts it, and the follower
does not retry that version until the alias points elsewhere and comes back. ``finsent_model_info``
always shows the version in use. A corrupt ``aliases.json`` is read from its last good copy; when
neither can be read, the worker keeps its model, logs one ERROR and sets ``finsent_model_registry_corrupt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finsent.core.errors import ModelError
from finsent.core.settings import ModelSettings, RegistrySettings, Settings

if TYPE_CHECKING:
    from finsent.stream.context import WorkerContext

log = logging.getLogger(__name__)

#: The text a freshly loaded model scores once before it serves (any text works; this one tokenises).
WARM_UP_TEXT = "shares rise after record quarterly earnings"


def registry_of(registry: RegistrySettings) -> Any:
    """The settings' :class:`~finsent.models.registry.Registry`, or None when ``FINSENT_REGISTRY`` is empty."""
    if not registry.registry:
        return None
    from finsent.models.registry import Registry

    return Registry(Path(registry.registry))


def production_version(settings: Settings) -> Any:
    """The registry's production :class:`~finsent.models.registry.ModelVersion`, or None (no registry / unset)."""
    registry = registry_of(settings.model_registry)
    return registry.resolve("production") if registry is not None else None


def note_registry_state(registry: Any, metrics: Any = None) -> None:
    """``finsent_model_registry_corrupt``: 1 while the registry's aliases.json cannot be read, else 0."""
    if metrics is None:
        from finsent.stream.metrics import worker_metrics

        metrics = worker_metrics()
    metrics.registry_corrupt.set(1 if getattr(registry, "corrupt", None) else 0)


def startup_model_dir(settings: Settings, metrics: Any = None) -> str | None:
    """The model directory a worker loads at start: production from the registry, else FINSENT_MODEL_DIR.

    The registry is never a reason not to start: a corrupt aliases.json is read from its last good copy
    (the registry logs that), and when neither can be read, or production names a version that may not
    serve (:func:`~finsent.models.runtime.check_serving_contract`), the worker starts on FINSENT_MODEL_DIR
    with an ERROR line, ``finsent_model_registry_corrupt`` says so, and hot reload keeps polling. A
    FINSENT_MODEL_DIR that may not serve is a :class:`ModelError` (exit 5): there is nothing to fall back to.
    """
    from finsent.models.runtime import check_serving_contract, warm_up_max_length

    if (
        settings.model.model_dir
    ):  # the fallback must be servable too: a model that blinds the alerts is exit 5, not served
        from finsent.models import resolve_model_dir

        check_serving_contract(resolve_model_dir(settings.model.model_dir))
    registry = registry_of(settings.model_registry)
    if registry is None:
        return settings.model.model_dir
    try:
        mv = registry.resolve("production")
    except ModelError as exc:
        registry.corrupt = registry.corrupt or str(exc)
        log.error(
            "model registry %s unreadable at start (%s); starting on the model directory %s instead",
            registry.root,
            exc.one_line(),
            settings.model.model_dir or "(the shipped model)",
        )
        mv = None
    note_registry_state(registry, metrics)
    if mv is None:
        return settings.model.model_dir
    try:
        if check_serving_contract(mv.path) is None:
            warm_up_max_length(mv.path, settings.model.cache_dir)
    except ModelError as exc:
        log.error(
            "registry %s: production %s may not serve (%s); starting on the model directory %s instead",
            settings.model_registry.registry,
            mv.version,
            exc.one_line(),
            settings.model.model_dir or "(the shipped model)",
        )
        return settings.model.model_dir
    log.info("registry %s: production is %s", settings.model_registry.registry, mv.version)
    return str(mv.path)


def load_model(path: str | Path | None, model: ModelSettings, expect_version: str | None = None) -> Any:
    """Load and warm a classifier; :class:`ModelError` for anything that makes it unusable.

    ``expect_version``: the registry's name for it, which the loaded model must report (a directory
    whose labels.json says otherwise is not the version the alias names).
    """
    from finsent.models.runtime import Classifier, check_serving_contract, max_length_text

    try:
        if path is not None:
            check_serving_contract(path)
        clf = Classifier.load(
            path,
            variant=model.model_variant,
            threads=model.call_threads,
            cache_dir=model.cache_dir,
            text_cache_size=model.model_cache_size,
            spinning=model.model_spinning,
        )
        if expect_version is not None and clf.version != expect_version:
            raise ModelError(f"{path} reports model_version {clf.version!r}, not {expect_version!r}")
        # a short text and one at the model's maximum length: a graph with fewer positions than max_length
        # fails here, not on every long item after the swap
        clf.predict([WARM_UP_TEXT, max_length_text(clf.info.max_length)])
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime, tokenizers, OSError: all mean "this directory cannot serve"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path}: {type(exc).__name__}: {first[:300]}") from exc
    return clf


class ModelFollower:
    """Polls the production alias and swaps the holder's classifier when it moves (see the module docstring)."""

    def __init__(self, settings: Settings, holder: Any, metrics: Any, registry: Any) -> None:
        self.settings = settings
        self.holder = holder
        self.metrics = metrics
        self.registry = registry
        #: versions that failed to load, not retried while the alias stays on them
        self.failed: set[str] = set()
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finsent-reload")
        #: (version, "swapped" | "failed") per change seen, in order (tests, the log)
        self.events: list[tuple[str, str]] = []
        #: why the production alias could not be read at the last poll (None: it could)
        self.unreadable: str | None = None

    def check(self) -> str | None:
        """One poll (blocking: runs in the follower's thread). Returns the version swapped in, if any."""
        try:
            mv = self.registry.resolve("production")
        except Exception as exc:  # an unreadable aliases.json (and no good copy) must not stop the worker
            why = exc.one_line() if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
            self.registry.corrupt = self.registry.corrupt or why
            note_registry_state(self.registry, self.metrics)
            if why != self.unreadable:  # one line per problem, not one per poll
                log.error(
                    "model registry %s: cannot read the production alias (%s); still serving %s",
                    self.registry.root,
                    why,
                    getattr(self.holder.current, "version", "?"),
                )
            self.unreadable = why
            return None
        self.unreadable = None
        note_registry_state(self.registry, self.metrics)
        current = self.holder.current
        serving = str(getattr(current, "version", ""))
        if mv is None or mv.version == serving:
            if mv is not None:
                self.failed.discard(mv.version)  # back on a good version: a later retry of a bad one logs again
            return None
        if mv.version in self.failed:
            return None
        try:
            clf = load_model(mv.path, self.settings.model, expect_version=mv.version)
        except ModelError as exc:
            self.failed.add(mv.version)
            self.events.append((mv.version, "failed"))
            self.metrics.reload_failures.inc()
            log.error(
                "model reload: production moved to %s but it cannot be loaded, still serving %s: %s",
                mv.version,
                serving,
                exc.one_line(),
            )
            return None
        if self.stopping.is_set():
            return None
        self.holder.swap(clf)
        self.failed.clear()
        self.events.append((mv.version, "swapped"))
        self.metrics.reloads.inc()
        set_model_info(self.metrics, clf, previous=current)
        log.info("model reload: now serving %s (was %s)", mv.version, serving)
        return mv.version

    async def poll(self) -> None:
        """The timer body: run :meth:`check` in the follower's thread, off the event loop."""
        if self.stopping.is_set():
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self.pool, self.check)
        except RuntimeError:  # the pool is shut down: the worker is stopping
            return

    def close(self) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


def set_model_info(metrics: Any, clf: Any, previous: Any = None) -> None:
    """``finsent_model_info{version, provider} 1`` for the model in use; the previous one's series removed."""
    if previous is not None:
        with contextlib.suppress(KeyError):
            metrics.model_info.remove(str(getattr(previous, "version", "?")), str(getattr(previous, "provider", "?")))
    metrics.model_info.labels(str(getattr(clf, "version", "?")), str(getattr(clf, "provider", "?"))).set(1)


def attach(app: Any, ctx: WorkerContext) -> ModelFollower | None:
    """Follow the production alias in ``app`` (a Faust timer every ``reload_interval_s``); None without a registry.

    An extension like any other: registered as ``"reload"``, closed with the worker.
    """
    settings = ctx.settings
    registry = registry_of(settings.model_registry)
    if registry is None:
        return None
    follower = ModelFollower(settings, ctx.classifier, ctx.metrics, registry)
    ctx.extensions.register("reload", follower, close=follower.close)

    @app.timer(interval=settings.model_registry.reload_interval_s, name="finsent.reload")
    async def follow_production() -> None:
        await follower.poll()

    return follower
