"""argparse value types shared by every command, so a flag means the same and fails the same way everywhere."""

from __future__ import annotations

import argparse


def positive_float(value: str) -> float:
    """A number > 0 (budgets, seconds, rates); argparse turns the error into a usage line and exit 2."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not v > 0:  # also rejects nan
        raise argparse.ArgumentTypeError("must be > 0")
    return v


__all__ = ["positive_float"]
