"""Rate-limit headers of social APIs turned into "do not call again before" delays."""

from __future__ import annotations

import time

from finsent.ingest.normalize import to_utc


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def mastodon_wait(headers: dict[str, str], now: float | None = None, reserve: float = 1) -> float | None:
    """Mastodon: ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (an ISO 8601 time)."""
    remaining = _float(headers.get("x-ratelimit-remaining"))
    if remaining is None or remaining > reserve:
        return None
    reset = to_utc(headers.get("x-ratelimit-reset"))
    if reset is None:
        return 300.0  # the default Mastodon window
    now = time.time() if now is None else now
    return max(0.0, reset.timestamp() - now)


def reddit_wait(headers: dict[str, str], reserve: float = 1) -> float | None:
    """Reddit: ``X-Ratelimit-Remaining`` (float) and ``X-Ratelimit-Reset`` (seconds until reset)."""
    remaining = _float(headers.get("x-ratelimit-remaining"))
    if remaining is None or remaining > reserve:
        return None
    return _float(headers.get("x-ratelimit-reset")) or 600.0
