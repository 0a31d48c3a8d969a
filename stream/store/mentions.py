"""Moved: ``mentions``' columns and encoding are in :mod:`finsent.stream.store.schema.rows`, its declaration in
:mod:`finsent.stream.store.schema.ddl` and its queries in :mod:`finsent.stream.store.schema.mentions`.

This module only re-exports those names for callers not yet updated; it goes once they are.
"""

from __future__ import annotations

from finsent.stream.store.schema.ddl import MENTIONS
from finsent.stream.store.schema.items import ITEM_HEADLINES, ITEM_HISTORY, ITEM_HISTORY_FIELDS, ITEMS_LIST, LIST_FIELDS
from finsent.stream.store.schema.mentions import (
    ENTITY_SERIES,
    ENTITY_STORIES,
    HISTORY_FIELDS,
    ITEMS_OF_ENTITY,
    KEY_EXISTS,
    KEYS_FOR_ITEMS,
    MENTION_HISTORY,
    SERIES_FIELDS,
    STORY_FIELDS,
    TOP_ENTITIES,
    TOP_FIELDS,
)
from finsent.stream.store.schema.rows import (
    DEFAULT_NOVELTY,
    MENTION_COLUMNS,
    MENTION_NAMES,
    NAME_PREFIX,
    detector_key,
    entity_key,
    event_time_of,
    mention_rows,
)

__all__ = [
    "DEFAULT_NOVELTY",
    "ENTITY_SERIES",
    "ENTITY_STORIES",
    "HISTORY_FIELDS",
    "ITEMS_LIST",
    "ITEMS_OF_ENTITY",
    "ITEM_HEADLINES",
    "ITEM_HISTORY",
    "ITEM_HISTORY_FIELDS",
    "KEYS_FOR_ITEMS",
    "KEY_EXISTS",
    "LIST_FIELDS",
    "MENTIONS",
    "MENTION_COLUMNS",
    "MENTION_HISTORY",
    "MENTION_NAMES",
    "NAME_PREFIX",
    "SERIES_FIELDS",
    "STORY_FIELDS",
    "TOP_ENTITIES",
    "TOP_FIELDS",
    "detector_key",
    "entity_key",
    "event_time_of",
    "mention_rows",
]
