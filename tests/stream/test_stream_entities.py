"""The worker's scoring carries the title and the entities onto the scored item and the scored topic.

``score_items`` is the worker's own scoring step (the model thread); no Kafka needed to check what it
builds. The tiny test model gives arbitrary labels, so the assertions are about the wiring: the title
is scored with the text (offsets index ``title + "\\n\\n" + text``), the linker's entities land on
``ScoredItem.entities``, and they survive the scored topic's JSON round trip.
"""

from __future__ import annotations

import pytest

from finsent.core.events import RawItem, decode_scored, utcnow
from finsent.models.runtime import Classifier
from finsent.stream.worker import score_items


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    from finsent.models.testing import make_tiny_model

    return Classifier.load(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_title_and_entities_reach_the_scored_item_and_the_topic(classifier: Classifier) -> None:
    now = utcnow()
    items = [
        RawItem(
            id="t1",
            source="wire",
            source_type="news",
            title="Tesla shares crash 15% after Q3 deliveries miss",
            text="The company published its quarterly figures on Monday.",
            ingested_at=now,
        ),
        RawItem(
            id="t2",
            source="wire",
            source_type="news",
            text="Microsoft shares plunge 28% after profit warning",
            ingested_at=now,
        ),
        RawItem(id="t3", source="wire", source_type="news", text="Nothing named here at all.", ingested_at=now),
    ]
    scored, dead = score_items(classifier, items)
    assert dead == []
    by_id = {s.id: s for s in scored}
    tesla = by_id["t1"]
    scored_text = f"{items[0].title}\n\n{items[0].text}"
    names = {e.name for e in tesla.entities}
    assert any("Tesla" in n for n in names), names
    for e in tesla.entities:
        assert scored_text[e.start : e.end] == e.text  # offsets index the title + text
        assert e.relevance == 100  # in the headline
    assert {e.entity_id for e in by_id["t2"].entities} == {"MSFT"}
    assert by_id["t3"].entities == ()
    back = decode_scored(tesla.to_json())
    assert back.entities == tesla.entities


def test_a_scored_message_from_before_entities_still_decodes(classifier: Classifier) -> None:
    (s,), _ = score_items(
        classifier, [RawItem(id="old", source="x", source_type="news", text="Apple rises", ingested_at=utcnow())]
    )
    import json

    d = json.loads(s.to_json())
    del d["entities"]
    assert decode_scored(json.dumps(d)).entities == ()


def test_a_bad_entities_field_is_a_clear_rejection() -> None:
    import json

    from finsent.core.events import InvalidEvent

    base = {
        "id": "x",
        "source": "s",
        "source_type": "news",
        "text": "t",
        "ingested_at": "2026-01-01T00:00:00Z",
        "sentiment": "neutral",
        "sentiment_probs": {"neutral": 1.0},
        "topic": "Markets",
        "topic_prob": 1.0,
        "model_version": "m",
        "scored_at": "2026-01-01T00:00:00Z",
        "v": 1,
    }
    for bad in ("nope", [1], [{"text": "a"}]):
        with pytest.raises(InvalidEvent):
            decode_scored(json.dumps({**base, "entities": bad}))
