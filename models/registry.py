"""The model registry: immutable model versions in a directory, and two aliases that point at them.

Why a plain directory: it works on a laptop, on a mounted volume shared by a Kubernetes CronJob and
the workers, and needs no server. Everything a reader needs is a rename away from consistent:

    ROOT/versions/<version>/   one immutable model directory per version: the files
                               ``Classifier.load`` reads, ``README.md`` (card), ``metrics.json`` and
                               ``registry.json`` {version, parent, created_at, data_fingerprint, gate, source}
    ROOT/aliases.json          {"production": v|null, "candidate": v|null, "history": [{alias, version, at, by}]},
                               replaced atomically (temp file in ROOT, fsync, os.replace)
    ROOT/aliases.json.last-good  the last aliases.json known good (written with it, refreshed by good reads):
                               what readers use when aliases.json is corrupt (:meth:`Registry.aliases`)
    ROOT/.lock                 fcntl.flock'ed by every writer (register, alias moves)
    ROOT/.staging/             half-written versions; a version appears under versions/ only by one
                               os.rename of a complete, fsync'ed directory
    ROOT/frozen/               the frozen evaluation set (:mod:`finsent.models.frozen`)

Readers (the worker's hot reload, ``finsent models list``) take no lock: they read aliases.json (always
a complete file) and version directories (always complete). A writer killed at any point leaves at
most a directory in ``.staging/`` (named pid-host-random), which the next writer removes: at once when
the pid is dead on the same host, after 6 hours when it came from another host sharing the volume.

Version names: one name for the same weights everywhere (issue 25). A version is named by the model's own
name, ``labels.json``'s ``model_version``, when that name ends with the 8 hex of its graph's digest (every
exported model's does: ``finsent-minilm-20261123-ent-9c905ac3``, ``finsent-retrain-20261207-1a2b3c4d``). That is
the name a worker reports when it runs the directory before it is registered, so the rows, metrics and API
answers from before and after registration agree, and ``compare``/``rescore`` see one model. A second
registration of the same weights, or a model whose name does not end with its digest, is named
``v0003-<digest>`` as before. Every version is numbered under the lock (``registry.json``'s ``number``: the
order, and a handle: ``get("v0003")`` finds the third version whatever its name). The version name is
written into the copy's ``labels.json`` (``model_version``), so ``Classifier.load(mv.path).version ==
mv.version``; the model's own export name is kept there as ``export_version``.

This module is below the store in the layers: it never writes the ``model_versions`` table. The
command layer mirrors the registry into the store after each change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finsent.core.errors import InputError, ModelError
from finsent.models.modeldir import LABELS_FILE, MODEL_FILE, check_model_dir

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
ALIASES_FILE = "aliases.json"
LAST_GOOD_FILE = "aliases.json.last-good"
LOCK_FILE = ".lock"
STAGING_DIR = ".staging"
FROZEN_DIR = "frozen"
META_FILE = "registry.json"
METRICS_FILE = "metrics.json"
ALIASES: tuple[str, ...] = ("production", "candidate")
STALE_STAGING_S = 6 * 3600
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_VERSION_RE = re.compile(r"^v(\d{4,})-([0-9a-f]{8})$")
#: a numbered handle: ``v3``, ``v0003`` or ``v0003-1a2b3c4d`` (the number decides; a digest must match too)
_HANDLE_RE = re.compile(r"^v(\d{1,9})(?:-([0-9a-f]{8}))?$")
#: what a version directory may be called: a model's own name (no path separators, no leading dot)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version: its name, its (immutable) model directory and its ``registry.json``."""

    version: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """The registration order (``registry.json``'s ``number``; older versions: from their ``v0003-`` name)."""
        number = self.meta.get("number")
        if isinstance(number, int) and not isinstance(number, bool):
            return number
        m = _VERSION_RE.match(self.version)
        return int(m.group(1)) if m else 0

    @property
    def digest(self) -> str:
        """The weights' digest (16 hex of model.onnx's sha256, as registered)."""
        return str(self.meta.get("model_digest") or "")

    @property
    def parent(self) -> str | None:
        return self.meta.get("parent")

    @property
    def gate(self) -> dict[str, Any] | None:
        return self.meta.get("gate")

    def metrics(self) -> dict[str, Any]:
        """The version's ``metrics.json`` ({} when it has none)."""
        path = self.path / METRICS_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part
    (temp file in the same directory, fsync, os.replace, fsync of the directory)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so readers see the old file or the new one, never a part."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parse_aliases(raw: bytes) -> dict[str, Any]:
    """aliases.json's object; ValueError naming what is wrong with it."""
    try:
        loaded = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"is not valid JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"holds a JSON {type(loaded).__name__}, not an object")
    for alias in ALIASES:
        if loaded.get(alias) is not None and not isinstance(loaded.get(alias), str):
            raise ValueError(f"has a {alias} alias that is not a version name: {loaded.get(alias)!r}")
    if not isinstance(loaded.get("history") or [], list):
        raise ValueError("has a history that is not a list")
    return loaded


def _shape(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {a: data.get(a) for a in ALIASES}
    out["history"] = list(data.get("history") or [])
    return out


#: corrupt-aliases problems already logged by this process (one ERROR line each, not one per poll)
_reported: set[str] = set()


class Registry:
    """A registry rooted at ``root`` (need not exist for reading: an absent registry has no versions)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        #: why the last read of aliases.json had to use the last good copy (None: it read fine)
        self.corrupt: str | None = None

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # --- paths ---------------------------------------------------------------------------------
    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    @property
    def aliases_path(self) -> Path:
        return self.root / ALIASES_FILE

    @property
    def frozen_dir(self) -> Path:
        return self.root / FROZEN_DIR

    # --- read side (no lock) -------------------------------------------------------------------
    def exists(self) -> bool:
        return self.versions_dir.is_dir()

    def _load(self, path: Path) -> ModelVersion | None:
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return ModelVersion(path.name, path, meta if isinstance(meta, dict) else {})

    def versions(self) -> list[ModelVersion]:
        """Every complete version, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        out = []
        for child in self.versions_dir.iterdir():
            if child.is_dir() and _NAME_RE.match(child.name):
                mv = self._load(child)
                if mv is not None:
                    out.append(mv)
        return sorted(out, key=lambda mv: (mv.number, mv.version))

    def get(self, version: str) -> ModelVersion:
        """The version named ``version``, or numbered so (``v3``, ``v0003``, ``v0003-1a2b3c4d``); :class:`InputError`
        when there is none."""
        if not _NAME_RE.match(version or ""):
            raise InputError(
                f"{version!r} is not a registry version name (a model's name such as "
                "finsent-retrain-20261207-1a2b3c4d, or its number such as v0003)",
                hint=f"`finsent models list` shows the versions in {self.root}",
            )
        mv = self._load(self.versions_dir / version)
        handle = _HANDLE_RE.match(version)
        if mv is None and handle:
            number, digest = int(handle.group(1)), handle.group(2)
            mv = next(
                (v for v in self.versions() if v.number == number and (digest is None or v.digest.startswith(digest))),
                None,
            )
        if mv is None:
            raise InputError(
                f"no version {version} in the registry {self.root}",
                hint="`finsent models list` shows the registered versions",
            )
        return mv

    @property
    def last_good_path(self) -> Path:
        return self.root / LAST_GOOD_FILE

    def aliases(self) -> dict[str, Any]:
        """The parsed aliases.json: {"production", "candidate", "history"} (empty aliases when absent).

        A corrupt aliases.json (not JSON, not an object, unreadable) is read from ``aliases.json.last-good``
        instead, with one ERROR line, and :attr:`corrupt` says why; only when that copy is unusable too is
        it a :class:`ModelError`. Why: a starting worker that cannot read the aliases used to exit 5, which
        systemd does not restart, so one bad file became a fleet outage at the next reboot. Each good read
        refreshes the copy (best effort: workers may mount the registry read-only); every write writes both.
        """
        try:
            raw = self.aliases_path.read_bytes()
        except FileNotFoundError:
            self.corrupt = None
            return _shape({})
        except OSError as exc:
            return self._last_good(f"cannot be read ({exc.strerror or exc})")
        try:
            data = _parse_aliases(raw)
        except ValueError as exc:
            return self._last_good(str(exc))
        self.corrupt = None
        _reported.discard(str(self.aliases_path))
        with contextlib.suppress(OSError):  # a read-only mount, a full disk: the copy is a convenience
            if not self.last_good_path.is_file() or self.last_good_path.read_bytes() != raw:
                atomic_write_bytes(self.last_good_path, raw)
        return _shape(data)

    def _last_good(self, why: str) -> dict[str, Any]:
        self.corrupt = f"{self.aliases_path} {why}"
        try:
            data = _parse_aliases(self.last_good_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"{self.corrupt}, and its last good copy {self.last_good_path.name} cannot be used either "
                f"({getattr(exc, 'strerror', None) or exc})",
                hint="it is only ever replaced whole; restore it from a backup or another copy, or re-promote "
                "with `finsent models promote VERSION` (workers start on FINSENT_MODEL_DIR meanwhile)",
            ) from None
        if self.corrupt not in _reported:  # once per distinct problem per process, not once per poll
            _reported.add(self.corrupt)
            log.error(
                "model registry: %s; using its last good copy %s (production %s). Restore aliases.json or "
                "re-promote to repair it",
                self.corrupt,
                self.last_good_path.name,
                data.get("production"),
            )
        return _shape(data)

    def resolve(self, alias: str) -> ModelVersion | None:
        """The version ``alias`` points at, or None (no registry, alias unset, or version missing)."""
        if alias not in ALIASES:
            raise ValueError(f"unknown alias {alias!r}: one of {', '.join(ALIASES)}")
        version = self.aliases().get(alias)
        if not version:
            return None
        return self._load(self.versions_dir / version)

    # --- write side (under the lock) -----------------------------------------------------------
    def _ensure(self) -> None:
        for d in (self.root, self.versions_dir, self.root / STAGING_DIR):
            d.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The writers' lock (fcntl.flock on ROOT/.lock, released by the kernel if the holder dies)."""
        self._ensure()
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _next_number(self) -> int:
        numbers = [0]
        if self.versions_dir.is_dir():
            for child in self.versions_dir.iterdir():
                m = _VERSION_RE.match(child.name)
                if m:
                    numbers.append(int(m.group(1)))
                elif child.is_dir() and (mv := self._load(child)) is not None:
                    numbers.append(mv.number)
        return max(numbers) + 1

    def _name_for(self, own_name: object, digest: str, number: int) -> str:
        """The model's own name when it names these weights (ends with their digest) and is free, else
        ``v0003-<digest>``: the name a worker already reports for an unregistered directory stays its name."""
        if (
            isinstance(own_name, str)
            and _NAME_RE.match(own_name)
            and not _HANDLE_RE.match(own_name)  # a name like v0003 would shadow the number handle
            and own_name.endswith(f"-{digest}")
            and not (self.versions_dir / own_name).exists()
        ):
            return own_name
        return f"v{number:04d}-{digest}"

    def register(
        self,
        model_dir: str | os.PathLike[str],
        *,
        parent: str | None = None,
        source: str = "register",
        data_fingerprint: str | None = None,
        gate: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        card: str | None = None,
        extra: dict[str, Any] | None = None,
        aliases: tuple[str, ...] = (),
        by: str = "finsent",
        only_if_empty: bool = False,
    ) -> ModelVersion | None:
        """Copy ``model_dir`` in as a new immutable version and point ``aliases`` at it; returns it.

        The copy is made in ``.staging/`` (outside the lock, it is the slow part), then under the lock
        the version is numbered, its name written into ``labels.json`` and ``registry.json``, the tree
        fsync'ed and renamed into ``versions/`` in one step, and the aliases moved. With
        ``only_if_empty`` nothing is registered (None is returned) when the registry already has a
        version: how the first version is created exactly once by concurrent retrains.
        """
        from finsent.models.runtime import check_serving_contract, warm_up_max_length
        from finsent.models.variants import file_digest

        src = Path(model_dir)
        check_model_dir(src)
        # a version that would blind the alerts is refused here, not found in production
        if check_serving_contract(src) is None:
            warm_up_max_length(src)  # positions not readable from the graph: try its longest input
        self._ensure()
        stage = self.root / STAGING_DIR / f"{os.getpid()}-{_HOST}-{uuid.uuid4().hex[:12]}"
        try:
            shutil.copytree(src, stage, ignore=shutil.ignore_patterns("cache", ".*"))
            labels_path = stage / LABELS_FILE
            labels = json.loads(labels_path.read_text(encoding="utf-8"))
            digest = file_digest(stage / MODEL_FILE, 8)
            if card is not None:
                (stage / "README.md").write_text(card, encoding="utf-8")
            if metrics is not None:
                (stage / METRICS_FILE).write_text(
                    json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
                )
            with self.lock():
                self._clean_staging_others(stage)
                if only_if_empty and self.versions():
                    shutil.rmtree(stage, ignore_errors=True)
                    return None
                if parent is not None:
                    self.get(parent)
                number = self._next_number()
                version = self._name_for(labels.get("export_version") or labels.get("model_version"), digest, number)
                labels.setdefault("export_version", labels.get("model_version"))
                labels["model_version"] = version
                labels_path.write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                meta = {
                    "version": version,
                    "number": number,
                    "parent": parent,
                    "created_at": now_iso(),
                    "data_fingerprint": data_fingerprint,
                    "gate": gate,
                    "source": source,
                    "export_version": labels["export_version"],
                    "model_digest": file_digest(stage / MODEL_FILE, 16),
                    **(extra or {}),
                }
                (stage / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                _fsync_tree(stage)
                final = self.versions_dir / version
                os.rename(stage, final)
                fsync_dir(self.versions_dir)
                for alias in aliases:
                    self._set_alias_locked(alias, version, by, "register")
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return ModelVersion(version, final, meta)

    def _clean_staging_others(self, mine: Path) -> None:
        """Remove what dead writers left in ``.staging/``: on this host by pid, from other hosts (a shared
        volume, where a pid says nothing) once it is older than any registration takes."""
        staging = self.root / STAGING_DIR
        for child in staging.iterdir():
            if child == mine:
                continue
            pid, _, rest = child.name.partition("-")
            host = rest.rpartition("-")[0]
            if host == _HOST and pid.isdigit():
                dead = not _pid_alive(int(pid))
            else:
                try:
                    dead = time.time() - child.stat().st_mtime > STALE_STAGING_S
                except FileNotFoundError:
                    continue
            if dead:
                shutil.rmtree(child, ignore_errors=True)

    def set_alias(self, alias: str, version: str | None, by: str = "finsent", action: str = "set") -> dict[str, Any]:
        """Point ``alias`` at ``version`` (None clears it), recorded in the history; returns the new aliases."""
        with self.lock():
            return self._set_alias_locked(alias, version, by, action)

    def _set_alias_locked(self, alias: str, version: str | None, by: str, action: str) -> dict[str, Any]:
        if alias not in ALIASES:
            raise InputError(f"unknown alias {alias!r}", hint=f"aliases are {', '.join(ALIASES)}")
        if version is not None:
            self.get(version)
        data = self.aliases()
        data[alias] = version
        data["history"].append({"alias": alias, "version": version, "at": now_iso(), "by": by, "action": action})
        atomic_write_json(self.aliases_path, data)
        atomic_write_json(self.last_good_path, data)
        self.corrupt = None
        return data

    @staticmethod
    def production_stack(history: list[dict[str, Any]]) -> list[str]:
        """Replay the history: a production move pushes its version, a rollback pops one."""
        stack: list[str] = []
        for h in history:
            if h.get("alias") != "production":
                continue
            if h.get("action") == "rollback":
                if stack:
                    stack.pop()
            elif h.get("version") and (not stack or stack[-1] != h["version"]):
                stack.append(h["version"])
        return stack

    def rollback(self, by: str = "finsent") -> tuple[str | None, str]:
        """Move production back to the production before the current one; returns (from, to).

        Rollbacks undo promotions like a stack: promote A, promote B, promote C, rollback (-> B),
        rollback (-> A); a second rollback does not flip back to C.
        """
        with self.lock():
            data = self.aliases()
            current = data.get("production")
            stack = self.production_stack(data["history"])
            if len(stack) < 2:
                raise InputError(
                    f"production ({current or 'unset'}) has no earlier production version to roll back to",
                    hint="`finsent models promote VERSION` sets production to any registered version",
                )
            target = stack[-2]
            self._set_alias_locked("production", target, by, "rollback")
            return current, target


__all__ = ["ALIASES", "ModelVersion", "Registry", "atomic_write_bytes", "atomic_write_json"]
