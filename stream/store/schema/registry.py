"""Queries of the model registry's mirror, ``model_versions`` (``finsent models ...``, ``finsent retrain``)."""

from __future__ import annotations

from finsent.stream.store.schema.rows import MODEL_VERSION_COLUMNS

MODEL_VERSIONS_SELECT = f"""
SELECT {", ".join(name for name, _ in MODEL_VERSION_COLUMNS)} FROM {{db}}.model_versions FINAL
ORDER BY version"""
