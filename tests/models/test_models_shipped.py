"""The model committed in the repository loads on a fresh checkout and gets obvious sentences right."""

from __future__ import annotations

import pytest

from finsent.models import shipped_model_dir
from finsent.models.runtime import Classifier

OBVIOUS = [
    # (text, sentiment, topic or None)
    ("Shares of Acme surge 20% after record quarterly profit beats estimates", "positive", None),
    ("Acme stock plunges 30% after the company slashes its outlook and warns of losses", "negative", None),
    ("The Federal Reserve raised interest rates by 75 basis points on Wednesday", None, "Fed | Central Banks"),
    ("Oil prices jump as OPEC+ agrees to cut crude output", None, "Energy | Oil"),
    ("Acme declares quarterly dividend of $0.25 per share", None, "Dividend"),
    ("Acme to acquire Widget Corp in a $5 billion all-cash deal", None, "M&A | Investments"),
]


@pytest.fixture(scope="module")
def shipped() -> Classifier:
    return Classifier.load()  # None = the shipped model; CPU here, so the int8 variant


def test_shipped_model_directory_is_complete() -> None:
    d = shipped_model_dir()
    for name in ("model.onnx", "tokenizer.json", "labels.json", "README.md"):
        assert (d / name).is_file(), f"{name} missing from {d}"


def test_shipped_model_gets_obvious_sentences_right(shipped: Classifier) -> None:
    preds = shipped.predict([t for t, _, _ in OBVIOUS])
    wrong = []
    for (text, sentiment, topic), p in zip(OBVIOUS, preds, strict=True):
        if sentiment and p.sentiment != sentiment:
            wrong.append((text, "sentiment", p.sentiment))
        if topic and p.topic != topic:
            wrong.append((text, "topic", p.topic))
    assert not wrong


def test_shipped_model_identifies_itself(shipped: Classifier) -> None:
    assert shipped.version.startswith("finsent-minilm-")
    assert shipped.variant == ("fp16" if shipped.provider == "CUDAExecutionProvider" else "int8")


def test_the_shipped_card_names_as_many_heads_as_its_graph_has() -> None:
    """The card's first line comes from the model's own ``labels.json``: a token head makes it three heads."""
    import json

    from finsent.models.report import _HEADS_LINE

    d = shipped_model_dir()
    has_token_head = bool(json.loads((d / "labels.json").read_text())["token_tags"])
    card = (d / "README.md").read_text(encoding="utf-8")
    assert _HEADS_LINE[has_token_head] in card
    assert _HEADS_LINE[not has_token_head] not in card
