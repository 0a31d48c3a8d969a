"""finsent: a streaming financial sentiment monitor.

The public API is small and stable; everything else is reachable by its module path but may
change. The stages are subpackages, each importing only the layers below it (the contract is
in ``pyproject.toml``, checked by ``lint-imports``)::

    finsent.cli, finsent.demo, finsent.bench                     composition root
    finsent.alerts | finsent.ingest                              stages
    finsent.stream                                               Kafka, the worker, the store
    finsent.models                                               the classifier
    finsent.core                                                 events, settings, errors, interfaces

The two parts worth embedding are exported too, loaded on first use so that ``import finsent``
stays light (no onnxruntime, no numpy until asked for)::

    from finsent import Classifier
    clf = Classifier.load()             # the shipped model (or FINSENT_MODEL_DIR)
    [p] = clf.predict(["Microsoft shares plunge 28% after profit warning"])
    p.sentiment, p.topic, p.entities    # Prediction

    from finsent import EwmaZ           # the default spike detector (BinomialCusum: the other)

Example::

    from finsent import RawItem, load_settings
    settings = load_settings()          # FINSENT_* environment, optional file

``__all__`` is the public API, pinned by ``tests/core/test_public_api.py``; the package ships
``py.typed`` (PEP 561), so type checkers read its hints.
"""

from __future__ import annotations

from finsent.core.errors import (
    BrokerError,
    ConfigError,
    FinsentError,
    InputError,
    KafkaError,
    KafkaUnavailable,
    ModelError,
    StoreError,
    StoreUnavailable,
)
from finsent.core.events import (
    Alert,
    EntityMention,
    InvalidEvent,
    RawItem,
    ScoredItem,
    decode_raw,
    decode_scored,
)
from finsent.core.settings import Settings, load_settings
from finsent.core.store import Store, TopicCounts

__version__ = "0.2.0"

#: name -> module of the exports loaded on first use (PEP 562): they pull in onnxruntime or numpy
_LAZY = {
    "Classifier": "finsent.models.runtime",
    "Prediction": "finsent.models.runtime",
    "Detector": "finsent.alerts.base",
    "EwmaZ": "finsent.alerts.ewma_z",
    "BinomialCusum": "finsent.alerts.cusum",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'finsent' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
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
