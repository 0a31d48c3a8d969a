"""What every benchmark shares: the machine it ran on, its load, percentiles, RESULTS.md sections.

One place, so that every figure in bench/RESULTS.md is described the same way (CPU, cores,
Python, 1-minute load average) and every ``--write-results`` replaces its section the same way.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware() -> str:
    """``<cpu>, <n> cores, Python <version>``: the line each RESULTS.md section starts from."""
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load_average() -> tuple[float, float, float] | None:
    """The 1/5/15-minute load averages, rounded, or None where the OS has none."""
    if not hasattr(os, "getloadavg"):
        return None
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, inclusive method; NaN for none."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[max(0, min(998, int(q * 1000) - 1))]


def write_section(path: Path, section: str, name: str) -> None:
    """Replace (or append) the ``name`` (e.g. ``## Store``) section of a markdown file, leaving the others."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == name), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        new = "\n".join(lines[:start] + section.rstrip("\n").splitlines() + [""] + lines[end:])
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


def plain_help(doc: str | None) -> str | None:
    """A module docstring's body for ``--help``: without its first line and without reST markup."""
    if not doc:
        return None
    body = doc.split("\n\n", 1)[1] if "\n\n" in doc else doc
    body = re.sub(r":\w+:`~?([^`]+)`", r"\1", body)
    return body.replace("``", "").replace("**", "")
