"""Text preparation applied identically in training, evaluation, export checks, benchmarks and the runtime.

Why: the Twitter sets end most posts with one or more ``https://t.co/<hash>`` links. A link
carries no sentiment or topic (the hash is random) but costs ~12 WordPiece tokens, so it
doubles the tokens of a typical topic tweet (44.6 -> 22.4 tokens measured on the topic set)
and with them the encoder's compute. Links are removed before tokenising.

A model directory records the steps it was trained with in ``labels.json`` under
``"preprocess"`` (a list of step names); a model without that key gets the raw text, so
models exported before this module existed keep their behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

STRIP_URLS = "strip_urls"
KNOWN_STEPS: tuple[str, ...] = (STRIP_URLS,)
DEFAULT_STEPS: tuple[str, ...] = (STRIP_URLS,)

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SPACES = re.compile(r"\s{2,}")


def check_steps(steps: Iterable[object]) -> tuple[str, ...]:
    """Validate step names from a model directory; unknown steps are an error (a newer finsent wrote it)."""
    out = []
    for step in steps:
        if step not in KNOWN_STEPS:
            raise ValueError(
                f"unknown text preparation step {step!r} (this finsent knows {', '.join(KNOWN_STEPS)}); "
                "upgrade finsent or re-export the model"
            )
        out.append(str(step))
    return tuple(out)


def strip_urls(text: str) -> str:
    """Drop links and squeeze the spaces they leave; a text that is nothing but links is kept as is."""
    stripped = _SPACES.sub(" ", _URL.sub(" ", text)).strip()
    return stripped or text


def prepare(text: str, steps: Sequence[str]) -> str:
    """Apply ``steps`` (validated names) to one text."""
    if STRIP_URLS in steps:
        text = strip_urls(text)
    return text


def prepare_all(texts: Iterable[str], steps: Sequence[str]) -> list[str]:
    return [prepare(t, steps) for t in texts]
