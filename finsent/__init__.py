"""finsent: a streaming financial sentiment monitor.

The public API is small and stable; everything else is reachable by its module path but may
change. The stages are subpackages, each importing only the layers below it (the contract is
in ``pyproject.toml``, checked by ``lint-imports``)::

    finsent.cli, finsent.commands, finsent.demo, finsent.bench   composition root
    finsent.alerts | finsent.ingest                              stages
    finsent.stream                                               Kafka, the worker, the store
    finsent.models                                               the classifier
    finsent.core                                                 events, settings, errors, interfaces

Example::

    from finsent import RawItem, load_settings
    settings = load_settings()          # FINSENT_* environment, optional file
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
from finsent.core.events import Alert, InvalidEvent, RawItem, ScoredItem, decode_raw, decode_scored
from finsent.core.settings import Settings, load_settings
from finsent.core.store import Store, TopicCounts

__version__ = "0.2.0"

__all__ = [
    "Alert",
    "BrokerError",
    "ConfigError",
    "FinsentError",
    "InputError",
    "InvalidEvent",
    "KafkaError",
    "KafkaUnavailable",
    "ModelError",
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
