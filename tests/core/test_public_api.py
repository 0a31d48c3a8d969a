"""The public API is what ``finsent.__all__`` says, and it does not change by accident (httpx pins its own).

Changing the list is allowed; doing it without editing this test is not.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import finsent

PUBLIC = [
    "Alert",
    "BinomialCusum",
    "BrokerError",
    "Classifier",
    "ConfigError",
    "Detector",
    "EntityMention",
    "EwmaZ",
    "FinsentError",
    "InputError",
    "InvalidEvent",
    "KafkaError",
    "KafkaUnavailable",
    "ModelError",
    "Prediction",
    "RawItem",
    "ScoredItem",
    "Settings",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TopicCounts",
    "__version__",
    "decode_raw",
    "decode_scored",
    "load_settings",
]


def test_all_is_pinned_and_sorted() -> None:
    assert finsent.__all__ == PUBLIC
    assert sorted(finsent.__all__, key=str.lower) == sorted(PUBLIC, key=str.lower)


def test_every_public_name_resolves_to_what_it_says() -> None:
    from finsent.alerts.cusum import BinomialCusum
    from finsent.alerts.ewma_z import EwmaZ
    from finsent.models.runtime import Classifier, Prediction

    for name in PUBLIC:
        assert getattr(finsent, name) is not None, name
    assert finsent.Classifier is Classifier and finsent.Prediction is Prediction
    assert finsent.EwmaZ is EwmaZ and finsent.BinomialCusum is BinomialCusum
    assert set(dir(finsent)) == set(PUBLIC)


def test_unknown_names_raise_attribute_error() -> None:
    try:
        finsent.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:  # pragma: no cover - the assertion is the point
        raise AssertionError("finsent.NoSuchThing resolved")


def test_import_finsent_stays_light() -> None:
    """``import finsent`` loads neither onnxruntime nor numpy: the heavy exports are loaded on first use."""
    code = "import sys, finsent; print(sorted(m for m in ('onnxruntime', 'numpy', 'faust') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_package_is_typed() -> None:
    assert (Path(finsent.__file__).parent / "py.typed").is_file()
