"""argparse value types shared by every command, so a flag means the same and fails the same way everywhere.

A bad value becomes argparse's usage line and exit 2 (``argument --limit: must be >= 1, got -3``),
never a traceback or a silently odd result. Durations are positive amounts of time back from now
(``30s``, ``15m``, ``2h``, ``7d``, ``1w``): ``--since 1h`` is the last hour; ``-1h`` is refused with
that explanation (:func:`finsent.cli.build_parser` lets argparse hand ``-1h`` to the type instead of
reading it as an unknown flag).

:func:`token_problem` is the one check of a bearer token a server accepts (the push endpoint's
``FINSENT_HTTP_TOKEN``, the worker API's ``FINSENT_API_TOKEN``), made at start so that a
template's placeholder never becomes the real secret.
"""

from __future__ import annotations

import argparse
import math
import re
from datetime import timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: what a DURATION looks like, for help texts
DURATION_HELP = "a positive duration back from now: 30s, 15m, 2h, 7d or 1w"
#: the longest duration accepted (100 years): beyond it datetime arithmetic overflows
MAX_DURATION_S = 100 * 365 * 86400
#: ``-1h``, ``-30d``: argparse must pass these to :func:`parse_duration` (which explains) instead of
#: reading them as an unknown flag; also the plain negative numbers argparse already passes through
NEGATIVE_VALUE = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(?:\.\d+)?\s*[a-zA-Z]+$")


def positive_float(value: str) -> float:
    """A number > 0 (budgets, seconds, rates); argparse turns the error into a usage line and exit 2."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not v > 0 or math.isinf(v):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {value!r}")
    return v


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def positive_int(value: str) -> int:
    """A whole number >= 1 (limits, batch sizes, counts)."""
    v = _int(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return v


def non_negative_int(value: str) -> int:
    """A whole number >= 0 (where 0 means "off" or "none")."""
    v = _int(value)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return v


def port(value: str) -> int:
    """A TCP port, 0-65535 (0: the system picks a free one, or "off" where the help says so)."""
    v = _int(value)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return v


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``2h``, ``7d``, ``1w`` (argparse ``type=``): a positive amount of time back from now."""
    stripped = text.strip()
    if stripped.startswith("-") and _DURATION.match(stripped[1:]):
        raise argparse.ArgumentTypeError(
            f"{text!r}: durations are positive and count back from now: use {stripped[1:]}, not {stripped}"
        )
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 30s, 15m, 2h, 7d or 1w (positive, counted back from now)"
        )
    seconds = float(m.group(1)) * _UNIT_S[m.group(2).lower()]
    if seconds > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than 100 years")
    return timedelta(seconds=seconds)


#: values that templates and examples use in place of a secret; refused as tokens (compared lower-case,
#: with '-' and '_' removed, so CHANGE-ME, change_me and ChangeMe are all caught)
PLACEHOLDER_TOKENS = frozenset(
    {
        "changeme",
        "changemenow",
        "replaceme",
        "token",
        "secret",
        "password",
        "passwd",
        "xxx",
        "xxxx",
        "todo",
        "placeholder",
        "example",
        "default",
        "test",
        "admin",
        "none",
        "null",
        "yourtoken",
        "mytoken",
        "apitoken",
        "token123",
        "secret123",
        "password123",
        "123456",
        "12345678",
        "1234567890",
    }
)
#: the shortest token accepted: 16 characters (``openssl rand -hex 16`` gives 32)
MIN_TOKEN_CHARS = 16


def token_problem(token: str | None, variable: str) -> str | None:
    """Why ``token`` (the value of ``variable``) must not guard a server, or ``None`` when it may.

    Refuses the known placeholders (``CHANGE-ME``...), a value made of one repeated character
    (``xxxxxxxxxxxxxxxx``), and anything shorter than :data:`MIN_TOKEN_CHARS`; an unset token is
    not this check's business (each server decides whether it may run without one).
    """
    if token is None:
        return None
    folded = re.sub(r"[-_\s.]", "", token.strip().lower())
    how = f"set {variable} to a random secret, e.g. $(openssl rand -hex 24)"
    if folded in PLACEHOLDER_TOKENS or any(
        folded.startswith(p) and len(folded) <= len(p) + 4 for p in ("changeme", "replaceme", "yourtoken")
    ):
        return f"{variable} is the placeholder {token.strip()!r}, not a secret: {how}"
    if len(set(folded)) <= 1 and token.strip():
        return f"{variable} is one character repeated, not a secret: {how}"
    if len(token.strip()) < MIN_TOKEN_CHARS:
        return f"{variable} is {len(token.strip())} characters; at least {MIN_TOKEN_CHARS} are needed: {how}"
    return None


__all__ = [
    "DURATION_HELP",
    "MIN_TOKEN_CHARS",
    "NEGATIVE_VALUE",
    "PLACEHOLDER_TOKENS",
    "non_negative_int",
    "parse_duration",
    "port",
    "positive_float",
    "positive_int",
    "token_problem",
]
