"""finsent models: training, evaluation, ONNX export, the runtime classifier and the shipped model.

Import cost matters here: ``models`` is imported by the stream worker, so this module pulls in
nothing heavy. ``models.runtime`` needs only onnxruntime + tokenizers + numpy; torch and
transformers are imported lazily by ``models.train``/``models.export``/``models.testing``.
"""

from __future__ import annotations

from pathlib import Path

#: Name of the model directory shipped inside the repository (and the wheel).
SHIPPED_MODEL_NAME = "finsent-minilm"


#: Every model directory shipped, by name (FINSENT_MODEL_DIR accepts these names as well as paths). A
#: distilled student joins this list only when it is within 1.5 points of the default on every set and
#: at least 1.8x faster; the first one tried was not (bench/RESULTS.md, "Distillation").
SHIPPED_MODELS: tuple[str, ...] = (SHIPPED_MODEL_NAME,)


def shipped_model_dir(name: str = SHIPPED_MODEL_NAME) -> Path:
    """A model directory committed with finsent (by default the default of ``Classifier.load()``)."""
    return Path(__file__).resolve().parent / "shipped" / name


def resolve_model_dir(value: str | Path | None) -> Path:
    """What ``FINSENT_MODEL_DIR`` / ``--model-dir`` names: None -> the default shipped model; the name of a
    shipped model (``finsent-minilm``) that is not also a path here -> that shipped model; else the path."""
    if value is None or str(value) == "":
        return shipped_model_dir()
    if str(value) in SHIPPED_MODELS and not Path(value).exists():
        return shipped_model_dir(str(value))
    return Path(value)


__all__ = ["SHIPPED_MODELS", "SHIPPED_MODEL_NAME", "resolve_model_dir", "shipped_model_dir"]
