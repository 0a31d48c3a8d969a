"""Queries of ``alerts`` (``{db}`` formatted in once; values are ``{name:Type}`` parameters)."""

from __future__ import annotations

from finsent.stream.store.schema.rows import ALERT_COLUMNS

ALERT_SELECT_COLUMNS = tuple(name for name, _ in ALERT_COLUMNS if name != "version")

#: one row per alert id (the newest), newest first
ALERTS_SINCE = f"""
SELECT {", ".join(ALERT_SELECT_COLUMNS)}
FROM {{db}}.alerts FINAL
WHERE fired_at >= toDateTime({{since:UInt32}}, 'UTC')
ORDER BY fired_at DESC, id"""
