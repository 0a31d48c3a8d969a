"""Entity linking (finsent.models.linking) and its wiring into the runtime Classifier.

Table-driven against the shipped entity table: the cases are the issue's own examples (symbols in every spelling,
legal suffixes, aliases, the common-word tickers, user entities), plus offsets that must slice back exactly,
whatever the text holds (non-ASCII, emoji), checked by hypothesis.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finsent.core.errors import ConfigError
from finsent.models.linking import (
    LEAD_MAX_CHARS,
    NEUTRAL_PROBS,
    Linker,
    default_linker,
    lead_length,
    normalise_name,
    relevance,
)
from finsent.models.runtime import Classifier, scored_text
from finsent.models.testing import make_tiny_model


@pytest.fixture(scope="module")
def linker() -> Linker:
    return default_linker(entities_file="")  # the shipped table alone, whatever the environment says


def _links(linker: Linker, text: str) -> list[tuple[str, str]]:
    return [(text[m.start : m.end], m.entity_id) for m in linker.find(text)]


# --- symbols, suffixes, aliases: one entity whatever the spelling ---------------------------------


@pytest.mark.parametrize(
    ("text", "surface", "entity"),
    [
        ("Apple shares rise", "Apple", "AAPL"),
        ("Apple Inc. shares rise", "Apple Inc.", "AAPL"),
        ("buying $AAPL today", "$AAPL", "AAPL"),
        ("buying $aapl today", "$aapl", "AAPL"),
        ("NASDAQ:AAPL closes higher", "NASDAQ:AAPL", "AAPL"),
        ("Nasdaq: AAPL closes higher", "Nasdaq: AAPL", "AAPL"),
        ("AAPL.O closes higher", "AAPL.O", "AAPL"),
        ("FRA:APC closes higher", "FRA:APC", "AAPL"),
        ("BRK.B hits a record", "BRK.B", "BRK.B"),
        ("BRK-B hits a record", "BRK-B", "BRK.B"),
        ("BRK/B hits a record", "BRK/B", "BRK.B"),
        ("$BRK.B hits a record", "$BRK.B", "BRK.B"),
        ("Berkshire Hathaway buys more", "Berkshire Hathaway", "BRK.B"),
        ("Coinbase, Inc. lays off staff", "Coinbase, Inc.", "COIN"),
        ("JPMorgan Chase & Co. beats", "JPMorgan Chase & Co.", "JPM"),
        ("J.P. Morgan cuts its target", "J.P. Morgan", "JPM"),
        ("AT&T raises its dividend", "AT&T", "T"),
        ("Procter & Gamble misses", "Procter & Gamble", "PG"),
        ("Google faces a fine", "Google", "GOOGL"),
        ("Microsoft shares plunge 28% after profit warning", "Microsoft", "MSFT"),
        ("Toyota 7203.T slips", "7203.T", "7203.T"),
        ("LON:NXT jumps", "LON:NXT", "NXT.L"),
        ("Nestlé cuts prices", "Nestlé", "NESN.SW"),
        ("Société Générale falls", "Société Générale", "GLE.PA"),
        ("Bitcoin falls below $17k", "Bitcoin", "X:BTC"),
        ("BTC slides", "BTC", "X:BTC"),
        ("ETH and XRP rally", "ETH", "X:ETH"),
        ("The Fed raises rates", "Fed", "CB:FED"),
        ("Federal Reserve holds", "Federal Reserve", "CB:FED"),
        ("ECB signals a pause", "ECB", "CB:ECB"),
        ("BoE and BoJ diverge", "BoE", "CB:BOE"),
        ("People's Bank of China cuts", "People's Bank of China", "CB:PBOC"),
        ("FTX collapses", "FTX", "PRIV:FTX"),
        ("Genesis files for bankruptcy", "Genesis", "PRIV:GENESIS"),
        ("S&P 500 futures slip", "S&P 500", "IDX:SPX"),
        ("the Nasdaq fell 2%", "Nasdaq", "IDX:IXIC"),  # the index, in market news; Nasdaq Inc is $NDAQ
        ("$NDAQ rises", "$NDAQ", "NDAQ"),
        ("Nestle cuts prices", "Nestle", "NESN.SW"),  # accents folded
    ],
)
def test_surface_links_to_entity(linker: Linker, text: str, surface: str, entity: str) -> None:
    assert (surface, entity) in _links(linker, text)


@pytest.mark.parametrize(
    "text",
    [
        # 43 of 59 common English words are US tickers: unbacked, they link nothing
        "IT is NOW time to GO ALL in",
        "CAN we ARE ON it",
        "A KEY CASH call",
        "KEY takeaways from the meeting",
        "I think SO",
        "ARE you IN",
        "BE there",
        # lower-case names are words, not companies; acronyms only as written
        "apple pie and a target audience",
        "the fed up investor",
        "ecb",
        # weak aliases (common words) need backing
        "Next week markets open",
        "Match day for the league",
        "Crypto winter deepens",
        "Bullish sentiment returns",
        # a local non-US ticker needs its exchange
        "APC rises",
        "a loss of $1.1 billion",  # a number, not the alias "1&1"
    ],
)
def test_unbacked_words_link_nothing(linker: Linker, text: str) -> None:
    assert _links(linker, text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("KeyCorp (KEY) cuts its outlook", [("KeyCorp", "KEY"), ("KEY", "KEY")]),
        ("ON Semiconductor (ON) beats", [("ON Semiconductor", "ON"), ("ON", "ON")]),
        ("$KEY: KEY falls", [("$KEY", "KEY")]),  # KEY is a word: bare, only in brackets
        ("A shares and ALL of it; Allstate (ALL) rises", [("Allstate", "ALL"), ("ALL", "ALL")]),
        ("Agilent Technologies (A) up", [("Agilent Technologies", "A"), ("A", "A")]),
        ("Apple (AAPL) and AAPL again", [("Apple", "AAPL"), ("AAPL", "AAPL"), ("AAPL", "AAPL")]),
        ("Tim Cook says AAPL will grow", [("AAPL", "AAPL")]),  # a key person backs the ticker, is no mention itself
        ("Next plc: Next lifts guidance", [("Next plc", "NXT.L"), ("Next", "NXT.L")]),
        ("Microsoft (MSFT) and IT spending", [("Microsoft", "MSFT"), ("MSFT", "MSFT")]),
    ],
)
def test_backed_tickers_and_weak_aliases(linker: Linker, text: str, expected: list[tuple[str, str]]) -> None:
    assert _links(linker, text) == expected


# --- unlinked entities, names and relevance --------------------------------------------------------


@pytest.mark.parametrize(
    ("surface", "key"),
    [
        ("FTX Trading Ltd.", "ftx trading"),
        ("Celsius Network LLC", "celsius network"),
        ("  Genesis   Global,  Inc ", "genesis global"),
        ("The Crypto Lender", "crypto lender"),
        ("Inc.", "inc"),
    ],
)
def test_normalise_name(surface: str, key: str) -> None:
    assert normalise_name(surface) == key


def test_link_span_linked_and_unlinked(linker: Linker) -> None:
    text = "Zyxo Trading Ltd. owes Apple Inc. and $TSLA money"
    assert linker.link_span(text, 0, 17) == (None, "zyxo trading")
    assert linker.link_span(text, 23, 33) == ("AAPL", "Apple")
    assert linker.link_span(text, 38, 43) == ("TSLA", "Tesla")
    assert linker.link_span("FTX Trading Ltd.", 0, 16) == ("PRIV:FTX", "FTX")


def test_relevance_formula() -> None:
    assert relevance(0, 1, 10, 100) == 100  # in the lead
    assert relevance(10, 1, 10, 100) == 80  # first thing after the lead
    assert relevance(100, 1, 10, 100) == 20  # at the very end
    assert relevance(100, 3, 10, 100) == 40  # repeats add up to 20
    assert relevance(10, 5, 10, 100) == 90  # a body mention never reaches a headline's 100
    assert lead_length("Apple beats. Then more text") == len("Apple beats.")
    assert lead_length("x" * 1000) == LEAD_MAX_CHARS


def test_extract_entities_merges_model_spans_and_gazetteer(linker: Linker) -> None:
    title = "Apple beats, Zyx collapses"
    text, tlen = scored_text("Later on, Microsoft said little. Apple again. Apple.", title)
    probs_neg = {"negative": 0.9, "neutral": 0.05, "positive": 0.05}
    probs_pos = {"negative": 0.1, "neutral": 0.1, "positive": 0.8}
    spans = [(13, 16, "negative", probs_neg), (0, 5, "positive", probs_pos)]
    out = linker.extract_entities(text, tlen, spans)
    by = {m.name: m for m in out}
    assert set(by) == {"Apple", "zyx", "Microsoft"}
    apple, zyx, msft = by["Apple"], by["zyx"], by["Microsoft"]
    assert (apple.entity_id, apple.sentiment, apple.sentiment_probs, apple.relevance) == (
        "AAPL",
        "positive",
        probs_pos,
        100,
    )
    assert (zyx.entity_id, zyx.text, zyx.sentiment, zyx.relevance) == (None, "Zyx", "negative", 100)
    assert msft.entity_id == "MSFT" and msft.sentiment == "neutral" and msft.sentiment_probs == NEUTRAL_PROBS
    assert msft.relevance < 100
    assert [m.relevance for m in out] == sorted((m.relevance for m in out), reverse=True)
    for m in out:
        assert text[m.start : m.end] == m.text


def test_extract_entities_ignores_bad_model_spans(linker: Linker) -> None:
    text = "Apple rises"
    out = linker.extract_entities(text, 0, [(5, 3, "negative", {}), (0, 99, "negative", {}), (5, 6, "positive", {})])
    assert [(m.text, m.entity_id, m.sentiment) for m in out] == [("Apple", "AAPL", "neutral")]


def test_untitled_relevance_uses_first_sentence(linker: Linker) -> None:
    text = "Tesla recalls cars. " + "Filler words here. " * 10 + "Microsoft comments. Microsoft again."
    out = {m.entity_id: m for m in linker.extract_entities(text, 0)}
    assert out["TSLA"].relevance == 100
    assert 20 <= out["MSFT"].relevance < 100


# --- user entities -------------------------------------------------------------------------------


def test_user_entities_csv_and_jsonl(tmp_path: Path) -> None:
    csv_file = tmp_path / "ents.csv"
    csv_file.write_text(
        "id,name,aliases,tickers\nX:FTX,FTX,FTX|FTX.com|FTX Trading,FTT\n"
        "PRIV:ACME,Acme Robotics,Acme|Acme Robotics GmbH,OTC:ACMR\n",
        encoding="utf-8",
    )
    jsonl = tmp_path / "ents.jsonl"
    jsonl.write_text(
        json.dumps({"id": "PRIV:CEL", "name": "Celsius Network", "aliases": ["Celsius"]}) + "\n", encoding="utf-8"
    )
    lk = default_linker(entities_file=str(csv_file))
    assert _links(lk, "FTX collapses as $FTT dumps; Acme Robotics GmbH and OTC:ACMR too") == [
        ("FTX", "X:FTX"),
        ("$FTT", "X:FTX"),
        ("Acme Robotics GmbH", "PRIV:ACME"),
        ("OTC:ACMR", "PRIV:ACME"),
    ]
    lk2 = Linker.from_table()
    assert lk2.add_user_file(jsonl) == 1
    assert _links(lk2, "Celsius freezes withdrawals") == [("Celsius", "PRIV:CEL")]  # the user's row wins
    assert _links(default_linker(entities_file=""), "Celsius freezes withdrawals") != [("Celsius", "PRIV:CEL")]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("name,aliases\nFoo,Foo\n", "header with an 'id'"),
        ('{"id": "A"}\nnot json\n', ":2:"),
        ('{"name": "no id"}\n', ":1:"),
    ],
)
def test_bad_user_file_names_the_problem(tmp_path: Path, content: str, where: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        Linker([]).add_user_file(p)
    assert where in str(err.value)
    with pytest.raises(ConfigError):
        Linker([]).add_user_file(tmp_path / "missing.csv")


# --- offsets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "🚀🚀 $TSLA to the moon 🌕 with Tesla",
        "Ünïcödé: Nestlé und Société Générale fallen, Apple 📉",
        "中文 Apple 日本語 BTC",
        "e\u0301 combining accents before Apple",
    ],
)
def test_offsets_slice_back_non_ascii(linker: Linker, text: str) -> None:
    out = linker.extract_entities(text, 0)
    assert out
    for m in out:
        assert text[m.start : m.end] == m.text


_names = st.sampled_from(
    [
        "Apple",
        "$AAPL",
        "NASDAQ:AAPL",
        "BRK.B",
        "BRK-B",
        "Bitcoin",
        "BTC",
        "Fed",
        "IT",
        "Next",
        "Tesla",
        "Apple Inc.",
        "J.P. Morgan",
        "🚀",
        "é",
        " ",
        "\n",
        ", ",
        "Inc.",
        "FTX",
    ]
)
_noise = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.one_of(_names, _noise), max_size=12),
    title=st.one_of(st.none(), _noise, _names),
    spans=st.lists(st.tuples(st.integers(-3, 60), st.integers(-3, 60)), max_size=4),
)
def test_offsets_always_slice_back(parts: list[str], title: str | None, spans: list[tuple[int, int]]) -> None:
    lk = default_linker(entities_file="")
    text, tlen = scored_text("".join(parts) or "x", title)
    model_spans = [(s, e, "negative", {"negative": 1.0, "neutral": 0.0, "positive": 0.0}) for s, e in spans]
    out = lk.extract_entities(text, tlen, model_spans)
    keys = [m.entity_id or "~" + m.name for m in out]
    assert len(keys) == len(set(keys))  # one mention per entity
    for m in out:
        assert 0 <= m.start < m.end <= len(text)
        assert text[m.start : m.end] == m.text
        assert 0 <= m.relevance <= 100


# --- runtime: title rule and Prediction.entities -------------------------------------------------


@pytest.fixture(scope="module")
def clf(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    return Classifier.load(make_tiny_model(tmp_path_factory.mktemp("tiny")), variant="fp32", threads=1)


def test_scored_text_rule() -> None:
    assert scored_text("body") == ("body", 0)
    assert scored_text("body", "  ") == ("body", 0)
    assert scored_text("body", "Tesla crashes") == ("Tesla crashes\n\nbody", len("Tesla crashes"))


def test_classifier_scores_title_and_text_together(clf: Classifier) -> None:
    title, body = "Tesla shares crash 15% after deliveries miss", "The company said little in a statement."
    (with_title,) = clf.predict([body], titles=[title])
    (composed,) = clf.predict([f"{title}\n\n{body}"])
    (alone,) = clf.predict([body])
    assert with_title.sentiment_probs == pytest.approx(composed.sentiment_probs, abs=1e-6)
    assert with_title.sentiment_probs != pytest.approx(alone.sentiment_probs, abs=1e-6)
    (tesla,) = with_title.entities
    assert (tesla.entity_id, tesla.start, tesla.relevance) == ("TSLA", 0, 100)
    no_title = clf.predict([body, body], titles=[None, ""])
    for p in no_title:
        assert p.sentiment_probs == pytest.approx(alone.sentiment_probs, abs=1e-5)
    with pytest.raises(ValueError, match="one title"):
        clf.predict([body], titles=[])


def test_prediction_entities_offsets_and_cache(tmp_path: Path, clf: Classifier) -> None:
    cached = Classifier.load(clf.model_dir, variant="fp32", threads=1, text_cache_size=16)
    texts = ["Apple rises https://x.co/a", "https://x.co/bbbbbbb Apple rises"]  # one cache key, other offsets
    for c in (clf, cached):
        preds = c.predict(texts)
        for t, p in zip(texts, preds, strict=True):
            (m,) = p.entities
            assert t[m.start : m.end] == "Apple" and m.entity_id == "AAPL"
    off = Classifier.load(clf.model_dir, variant="fp32", threads=1, entities=False)
    assert off.predict(texts)[0].entities == ()


def test_entity_after_the_token_window_is_still_found(clf: Classifier) -> None:
    text = "profit " * 300 + "then Tesla recalls cars"  # far past the tiny model's 64 tokens
    (p,) = clf.predict([text])
    assert p.truncated
    (m,) = p.entities
    assert (m.entity_id, text[m.start : m.end], m.sentiment) == ("TSLA", "Tesla", "neutral")
    assert m.relevance < 100


_prep_parts = st.sampled_from(["https://t.co/abc", "www.x.com/y", " ", "  ", "\n", "\t \n", "Apple", "é🚀", "x"])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.one_of(_prep_parts, _noise), max_size=10))
def test_prepare_with_map_matches_textprep(parts: list[str]) -> None:
    """The one preparation map (entity_head.prepare_with_map; linking's copy is gone) on random texts."""
    from finsent.models.entity_head import prepare_with_map
    from finsent.models.textprep import DEFAULT_STEPS, prepare

    text = "".join(parts)
    prepared, where = prepare_with_map(text, DEFAULT_STEPS)
    assert prepared == prepare(text, DEFAULT_STEPS)
    index = where[:-1]
    assert len(where) == len(prepared) + 1 and where[-1] == len(text) and index == sorted(set(index))
    for i, c in zip(index, prepared, strict=True):
        assert text[i] == c or (c == " " and (text[i].isspace() or text[i] in "hHwW"))
    assert prepare_with_map(text, ()) == (text, list(range(len(text) + 1)))


def test_prepare_with_map_maps_a_model_span_back() -> None:
    from finsent.models.entity_head import prepare_with_map

    text = "See https://t.co/x   Apple  rises"
    prepared, m = prepare_with_map(text, ("strip_urls",))
    assert prepared == "See Apple rises"
    s, e = prepared.index("Apple"), prepared.index("Apple") + 5
    assert text[m[s] : m[e - 1] + 1] == "Apple"
