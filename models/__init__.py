"""finsent models: training, evaluation, ONNX export, the runtime classifier and the shipped model.

Import cost matters here: ``models`` is imported by the stream worker, so this module pulls in
nothing heavy. ``models.runtime`` needs only onnxruntime + tokenizers + numpy; torch and
transformers are imported lazily by ``models.train``/``models.export``/``models.testing``.
"""

from __future__ import annotations

from pathlib import Path

#: Name of the model directory shipped inside the repository (and the wheel).
SHIPPED_MODEL_NAME = "finsent-minilm"


def shipped_model_dir() -> Path:
    """The model directory committed with finsent: the default of ``Classifier.load()``."""
    return Path(__file__).resolve().parent / "shipped" / SHIPPED_MODEL_NAME


__all__ = ["SHIPPED_MODEL_NAME", "shipped_model_dir"]
