"""``finsent rescore``: score stored items again with another model version, in batches, resumably.

What it does: walks the items ingested in the window (newest score per id, ``items FINAL``), in
(ingested_at, id) order, one page of ``--batch-size`` at a time; scores the page with the target
model (:func:`finsent.stream.worker.score_items`, as the worker does), inserts the new rows into
``items`` (with the items' mentions, one row per (item, entity): entities the new score no longer finds
get a tombstone, ``mentions`` in :mod:`finsent.stream.store.schema.ddl`) and both the old and the new score into the
``scores`` history. A new row has a later
``scored_at`` and so replaces the old one in every default query (``items`` is a ReplacingMergeTree
on that version); ``finsent query compare`` finds both versions in ``scores`` (why the history is
written here and not by the worker: ``scores`` in :mod:`finsent.stream.store.schema.ddl`).

Target model: ``--version V`` from the registry, else the registry's production version, else
``FINSENT_MODEL_DIR`` (the shipped model when unset); without a registry ``--version`` must name the
version FINSENT_MODEL_DIR holds.

Resuming is automatic. After every page the cursor -- the (ingested_at, id) of its last item, the
window it was started with, counts -- is written atomically to a checkpoint file under
``FINSENT_CACHE_DIR/rescore/``, named by what identifies the job (store, database, ``--since``,
``--topic``, target version). The same command run again after an interruption (Ctrl-C, a kill, a
crash, ``--max-batches``) continues after the last finished page with the same window, and says so;
``--restart`` starts over. A finished job's checkpoint is kept (``done``) and the next run starts a
new job with a fresh window. A page stored but not yet checkpointed when the process died is scored
again on resume: harmless, the newer row replaces the older one.

Why it does not get in the worker's way: on a ``clickhouse://`` server it is one more client, inserting
rows for items the worker no longer touches (items ingested after the job started are outside its
window). The embedded engine (chdb) allows one process per data directory, so while a worker holds it
``rescore`` stops at once with one line (exit 8) saying to stop the worker or use a server.

Where it lives: in ``stream``, beside the worker whose scoring it repeats and the store it rewrites. The rest of a
model's lifecycle is below it in ``models`` (the registry, retraining, the gate), its command is
:mod:`finsent.cli.rescore`, and the drift report that tells when to retrain is :mod:`finsent.stream.drift`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from finsent.core.errors import ConfigError, StoreInUse
from finsent.core.events import RawItem, utcnow
from finsent.core.settings import Settings

log = logging.getLogger(__name__)

#: How much ingestion time one page query may scan (the sorting key's day prefix prunes the rest).
SLICE_S = 3600
DEFAULT_BATCH = 256


@dataclass
class Checkpoint:
    """A re-score job's progress, as written to its checkpoint file."""

    key: str
    store: str
    since: str
    topic: str | None
    version: str
    lo: int  # window [lo, hi) of ingested_at, epoch seconds, fixed when the job started
    hi: int
    after_at: int = 0  # cursor: the last finished item (ingested_at seconds, id)
    after_id: str = ""
    total: int = 0
    done: int = 0
    failed: int = 0
    batches: int = 0
    started_at: str = ""
    finished: bool = False

    def save(self, path: Path) -> None:
        from finsent.models.registry import atomic_write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def job_key(store_url: str, database: str, since: timedelta, topic: str | None, version: str) -> str:
    text = json.dumps([store_url, database, int(since.total_seconds()), topic, version])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_path(settings: Settings, key: str) -> Path:
    return Path(settings.model.cache_dir).expanduser() / "rescore" / f"{key}.json"


def target_model(settings: Settings, version: str | None) -> Any:
    """The classifier to re-score with (see the module docstring for the order)."""
    from finsent.stream.reload import load_model, registry_of

    registry = registry_of(settings.model_registry)
    if version is not None and registry is not None and registry.exists():
        mv = registry.get(version)  # InputError naming the registry when there is no such version
        return load_model(mv.path, settings.model, expect_version=mv.version)
    if version is None and registry is not None:
        mv = registry.resolve("production")
        if mv is not None:
            return load_model(mv.path, settings.model, expect_version=mv.version)
    clf = load_model(settings.model.model_dir, settings.model)
    if version is not None and clf.version != version:
        raise ConfigError(
            f"--version {version}: there is no registry at {settings.model_registry.registry or '(none)'} "
            f"and the model in FINSENT_MODEL_DIR is {clf.version}",
            hint="set FINSENT_REGISTRY to the registry that holds the version, or FINSENT_MODEL_DIR to its directory",
        )
    return clf


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _raw_item(d: dict[str, Any]) -> RawItem:
    """The stored item behind an ``items`` row (ingested_at to the millisecond, so the row replaces its own)."""
    return RawItem(
        id=d["id"],
        source=d["source"],
        source_type=d["source_type"],
        text=d["text"],
        ingested_at=_utc(d["ingested_at"]) + timedelta(milliseconds=int(d["ingested_ms"])),
        title=d["title"],
        url=d["url"],
        author=d["author"],
        published_at=_utc(d["published_at"]) if d["published_at"] is not None else None,
        tickers=tuple(d["tickers"]),
        truncated=bool(d["truncated"]),
    )


class Progress:
    """One line on stderr per ``every_s`` (and a last one): done/total, rate, target version."""

    def __init__(self, out: TextIO | None, every_s: float = 2.0) -> None:
        self.out, self.every_s = out, every_s
        self.t0 = self.last = time.monotonic()
        self.start_done = 0

    def show(self, ck: Checkpoint, final: bool = False) -> None:
        now = time.monotonic()
        if self.out is None or (not final and now - self.last < self.every_s):
            return
        self.last = now
        rate = (ck.done - self.start_done) / max(now - self.t0, 1e-9)
        pct = f" ({100 * ck.done / ck.total:.1f}%)" if ck.total else ""
        print(
            f"rescore: {ck.done}/{ck.total} items{pct} with {ck.version}, {rate:.0f} items/s, "
            f"{ck.batches} batches, {ck.failed} failed",
            file=self.out,
            flush=True,
        )


def rescore(
    settings: Settings,
    since: timedelta,
    *,
    topic: str | None = None,
    version: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    restart: bool = False,
    max_batches: int | None = None,
    progress: TextIO | None = sys.stderr,
    classifier: Any = None,
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Run (or resume) one re-score job; returns its summary. ``classifier`` overrides the target model.

    The steps: open the store, start or resume the job's checkpoint, then page through the window in
    (ingested_at, id) order, scoring and writing one page at a time and saving the checkpoint after each.
    """
    store = _open_store(settings)
    try:
        store.ensure_schema()
        clf = classifier if classifier is not None else target_model(settings, version)
        ck, path, resumed = _start_or_resume(settings, store, since, topic, str(clf.version), restart, progress)
        bar = Progress(progress)
        bar.start_done = ck.done
        t0 = time.monotonic()
        run_batches = 0
        slice_lo = max(ck.lo, ck.after_at)
        while slice_lo < ck.hi and not stop():
            if max_batches is not None and run_batches >= max_batches:
                break
            rows, slice_lo = _next_page(store, ck, slice_lo, topic, batch_size)
            if not rows:
                break
            _rescore_page(store, clf, rows, ck)
            run_batches += 1
            ck.save(path)
            bar.show(ck)
        ck.finished = slice_lo >= ck.hi
        ck.save(path)
        bar.show(ck, final=True)
        return {
            **asdict(ck),
            "resumed": resumed,
            "batches_this_run": run_batches,
            "checkpoint": str(path),
            "seconds": round(time.monotonic() - t0, 3),
        }
    finally:
        store.close()


def _open_store(settings: Settings) -> Any:
    """The store, or :class:`StoreInUse` with what to do when another process holds an embedded one."""
    from finsent.stream.store import store_from_settings

    try:
        return store_from_settings(settings)
    except StoreInUse as exc:
        raise StoreInUse(
            f"rescore cannot open the store: {exc}",
            hint="the embedded store (chdb) allows one process per data path: stop the worker while re-scoring, "
            "or run the store as a clickhouse:// server, which both can use at once",
        ) from None


def _start_or_resume(
    settings: Settings,
    store: Any,
    since: timedelta,
    topic: str | None,
    target: str,
    restart: bool,
    progress: TextIO | None,
) -> tuple[Checkpoint, Path, bool]:
    """The job's checkpoint: the unfinished one of the same job (store, window, topic, target), or a new one.

    A new job fixes its window ``[now - since, now]`` once, so a resumed job never widens to items stored since.
    """
    key = job_key(store.url_redacted, store.database, since, topic, target)
    path = checkpoint_path(settings, key)
    ck = None if restart else Checkpoint.load(path)
    resumed = ck is not None and not ck.finished
    if ck is None or not resumed:
        hi = int(utcnow().timestamp()) + 1
        lo = max(0, hi - 1 - int(since.total_seconds()))
        ck = Checkpoint(
            key,
            store.url_redacted,
            f"{int(since.total_seconds())}s",
            topic,
            target,
            lo,
            hi,
            total=store.rescore_total(lo, hi, topic),
            started_at=utcnow().isoformat(),
        )
        ck.save(path)
    elif progress is not None:
        print(
            f"rescore: resuming the job started {ck.started_at} ({ck.done}/{ck.total} done, after "
            f"{datetime.fromtimestamp(ck.after_at, UTC):%Y-%m-%d %H:%M:%S} {ck.after_id}); --restart starts over",
            file=progress,
            flush=True,
        )
    return ck, path, resumed


def _next_page(
    store: Any, ck: Checkpoint, slice_lo: int, topic: str | None, batch_size: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Up to ``batch_size`` stored rows after the checkpoint's cursor, and the slice to read from next.

    The window is read in :data:`SLICE_S` slices, filling one page slice by slice: only the window's last page is
    short.
    """
    from finsent.stream.store.schema import rows as encoding

    rows: list[tuple[Any, ...]] = []
    after = (ck.after_at, ck.after_id)
    while len(rows) < batch_size and slice_lo < ck.hi:
        slice_hi = min(slice_lo + SLICE_S, ck.hi)
        got = store.rescore_page(slice_lo, slice_hi, after, topic, batch_size - len(rows))
        rows += got
        if got:
            last = dict(zip(encoding.ITEM_NAMES, got[-1], strict=True))
            after = (int(_utc(last["ingested_at"]).timestamp()), str(last["id"]))
        if len(rows) < batch_size:
            slice_lo = slice_hi  # this slice has nothing after the cursor
    return rows, slice_lo


def _rescore_page(store: Any, clf: Any, rows: list[tuple[Any, ...]], ck: Checkpoint) -> None:
    """Score one page with the worker's own scoring code and write it; the checkpoint's cursor moves past it."""
    from finsent.stream.store.schema import rows as encoding
    from finsent.stream.worker import score_items

    dicts = [dict(zip(encoding.ITEM_NAMES, r, strict=True)) for r in rows]
    scored, dead = score_items(clf, [_raw_item(d) for d in dicts])
    # the history first: if the process dies between the two inserts, the page is done again on
    # resume and its old scores are still the ones in items (written after, they would be the new)
    store.insert_score_history([encoding.score_history_row(r) for r in rows] + [encoding.score_row(x) for x in scored])
    # the items and their mentions: an entity the new score no longer finds gets a tombstone (#26)
    store.insert_scored(scored, replace_mentions=True)
    ck.after_at, ck.after_id = int(_utc(dicts[-1]["ingested_at"]).timestamp()), str(dicts[-1]["id"])
    ck.done += len(scored)
    ck.failed += len(dead)
    ck.batches += 1


__all__ = ["Checkpoint", "job_key", "rescore", "target_model"]
