"""Text preparation (models/textprep.py) and how the runtime applies what a model directory asks for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from finsent.models.runtime import Classifier
from finsent.models.testing import make_tiny_model
from finsent.models.textprep import STRIP_URLS, check_steps, prepare, strip_urls


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("$AAPL up 3% after earnings https://t.co/AbC123xyz", "$AAPL up 3% after earnings"),
        ("Fed hikes http://bit.ly/x1 by 25bp https://t.co/q", "Fed hikes by 25bp"),
        ("see www.example.com/markets for more", "see for more"),
        ("HTTPS://T.CO/UPPER oil falls", "oil falls"),
        ("no links here", "no links here"),
    ],
)
def test_strip_urls_removes_links_and_squeezes_spaces(raw: str, clean: str) -> None:
    assert strip_urls(raw) == clean


def test_a_text_that_is_only_links_is_kept_rather_than_emptied() -> None:
    # emptying it would turn a scoreable item into an error deep inside the worker
    assert strip_urls("https://t.co/abc https://t.co/def") == "https://t.co/abc https://t.co/def"


def test_prepare_applies_only_the_listed_steps() -> None:
    text = "oil falls https://t.co/abc"
    assert prepare(text, ()) == text
    assert prepare(text, (STRIP_URLS,)) == "oil falls"


def test_unknown_step_is_a_clear_error() -> None:
    assert check_steps(["strip_urls"]) == ("strip_urls",)
    with pytest.raises(ValueError, match="unknown text preparation step 'lowercase'.*upgrade finsent"):
        check_steps(["strip_urls", "lowercase"])


def _with_steps(src: Path, dst: Path, steps: list[str] | None) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
    info = json.loads((dst / "labels.json").read_text())
    info.pop("preprocess", None)
    if steps is not None:
        info["preprocess"] = steps
    (dst / "labels.json").write_text(json.dumps(info))
    return dst


def test_runtime_follows_the_model_directorys_preprocess_list(tmp_path: Path) -> None:
    tiny = make_tiny_model(tmp_path / "tiny")
    with_links, without = "Acme shares jump after earnings https://t.co/Zx9QwErTy", "Acme shares jump after earnings"

    stripping = Classifier.load(_with_steps(tiny, tmp_path / "strip", ["strip_urls"]), variant="fp32", threads=1)
    assert stripping.preprocess == ("strip_urls",)
    a, b = stripping.predict([with_links, without])
    assert a.sentiment_probs == b.sentiment_probs and a.topic_prob == b.topic_prob

    raw = Classifier.load(_with_steps(tiny, tmp_path / "raw", None), variant="fp32", threads=1)
    assert raw.preprocess == ()
    a, b = raw.predict([with_links, without])
    assert a.sentiment_probs != b.sentiment_probs  # the link's tokens reach the model


def test_runtime_rejects_a_model_asking_for_an_unknown_step(tmp_path: Path) -> None:
    d = _with_steps(make_tiny_model(tmp_path / "tiny"), tmp_path / "m", ["stem_words"])
    with pytest.raises(ValueError, match="unknown text preparation step 'stem_words'"):
        Classifier.load(d, variant="fp32")
