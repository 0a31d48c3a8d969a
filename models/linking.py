"""Entity linking: who an item is about, mapped to one canonical entity, with a relevance score.

The :class:`Linker` is loaded from the shipped entity table (``models/entities/entities.jsonl.gz``, built by
:mod:`finsent.models.entity_table`) plus an optional user file (``FINSENT_ENTITIES_FILE``: JSON lines or CSV with
``id,name,aliases,tickers``; aliases and tickers ``|``- or ``;``-separated). It runs on the worker's hot path, so
matching is dictionary look-ups over the text's word tokens (longest alias first), not one regex per alias.

**What links** (each to one entity id):

* names and aliases, with legal suffixes stripped in the table: "Apple", "Apple Inc." -> ``AAPL``. A match must
  start with a capital letter or a digit ("apple pie" is not Apple); short all-caps aliases ("ECB", "BoE", "FOMC")
  match only as written. An alias that is a common English word ("Next", "Match", "Block") needs backing;
* cashtags: ``$AAPL``, ``$BRK.B``; exchange-qualified symbols: ``NASDAQ:AAPL``, ``LON:NXT``; Reuters/Yahoo
  symbols ``AAPL.O``, ``7203.T``, ``ABN.AS``; class shares in any spelling, ``BRK.B``, ``BRK-B``, ``BRK/B``;
* a **bare** upper-case ticker only when the item backs it: a cashtag or exchange-qualified symbol of the same
  entity, or one of its (non-weak) names or key people, anywhere in the item; a ticker that is itself an English
  word ("ALL", "KEY", "A") must in addition stand in brackets ("Allstate (ALL)"), since "ALL of it" in an item
  about Allstate is still the word. 43 of 59 common English words are
  live US tickers (A, ON, ARE, GO, CAN, ALL, NOW, IT, KEY, CASH...), so an unbacked "IT" or "NOW" links nothing.
  The few crypto symbols that are not words (BTC, ETH, XRP, USDT...) stand alone.

Key people ("Tim Cook") back a company's bare ticker and weak aliases but are not mentions of it on their own.

**Unlinked entities.** A span the model finds that matches nothing still becomes an entity with ``entity_id``
``None`` and ``name`` its normalised name (:func:`normalise_name`: legal suffixes stripped, casefolded,
whitespace and punctuation collapsed: "FTX Trading Ltd." -> ``"ftx trading"``), so it can be counted and alerted on.

**Relevance** (0-100) of an entity in an item, from where and how often it appears (in the spirit of RavenPack's
relevance score):

* the *lead* is the title (``[0, title_len)``) when the item has one, else the text's first sentence (up to the
  first ``.``/``!``/``?`` followed by a space, or a newline, at most :data:`LEAD_MAX_CHARS` characters);
* an entity whose first mention starts in the lead scores **100**;
* otherwise ``20 + 60 * (1 - p) + 10 * min(count - 1, 2)``, at most 90, where ``p`` in [0, 1] is the first
  mention's position in the rest of the text (0: right after the lead, 1: at its end) and ``count`` is the number
  of its mentions: an early body mention scores about 80, a late single one 20, repeats add up to 20.

**Sentiment.** A model span carries the model's sentiment for that entity. A gazetteer match that no model span
covers has no entity-level opinion yet: it gets ``neutral`` with probabilities (0, 1, 0) rather than the item's
sentiment (copying the item's label to every entity scored only 0.72 micro-F1 on FinEntity: issue 24). A model
span overlapping a gazetteer match takes the match's entity id.

**Offsets** are Python string indices (Unicode code points) into the scored text, ``end`` exclusive, so
``scored_text[start:end] == text`` always holds (an emoji is one code point; a JavaScript consumer counting
UTF-16 units must convert).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finsent.core.errors import ConfigError
from finsent.core.events import SENTIMENTS, EntityMention

log = logging.getLogger(__name__)

TABLE_FILE = Path(__file__).resolve().parent / "entities" / "entities.jsonl.gz"
TABLE_FORMAT = 1
ENTITIES_FILE_ENV = "FINSENT_ENTITIES_FILE"
LEAD_MAX_CHARS = 300
#: longest alias, in word tokens, the matcher tries
MAX_ALIAS_TOKENS = 8
NEUTRAL_PROBS: dict[str, float] = {"negative": 0.0, "neutral": 1.0, "positive": 0.0}

#: the legal forms a registered name ends with ("Apple Inc.", "Siemens AG"): one list for the linker and the
#: entity-table build (:data:`finsent.models.entity_table.LEGAL_ONLY` adds the forms only listing titles carry)
LEGAL_FORMS: frozenset[str] = frozenset(
    [
        "inc",
        "incorporated",
        "corp",
        "corporation",
        "co",
        "cos",
        "ltd",
        "limited",
        "plc",
        "llc",
        "lp",
        "llp",
        "ag",
        "se",
        "sa",
        "nv",
        "bv",
        "spa",
        "ab",
        "asa",
        "oyj",
        "kgaa",
        "gmbh",
    ]
)
#: what :func:`normalise_name` strips from the end of an unlinked name: the legal forms and filler words
LEGAL_SUFFIXES: frozenset[str] = LEGAL_FORMS | frozenset(["company", "holdings", "holding", "group", "com"])
#: suffix words a name match is extended over ("Apple" + " Inc." -> the surface "Apple Inc.")
_EXTEND_SUFFIXES = frozenset(["inc", "corp", "co", "ltd", "plc", "llc", "ag", "se", "sa", "nv", "lp"])

_TOKEN = re.compile(r"[^\W_]+")
#: what may stand between two tokens of one name: "J.P. Morgan", "AT&T", "Procter & Gamble", "Coca-Cola"
_GAP_OK = re.compile(r"[\s.&'’+-]{1,3}")
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z][A-Za-z0-9]{0,5}(?:[./-][A-Za-z0-9]{1,2})?)(?![\w])")
_EXCHANGES = {
    "NASDAQ": "NASDAQ",
    "NYSE": "NYSE",
    "NYSEARCA": "NYSEARCA",
    "NYSEAMERICAN": "NYSEAMERICAN",
    "AMEX": "NYSEAMERICAN",
    "CBOE": "CBOE",
    "BATS": "CBOE",
    "OTC": "OTC",
    "OTCMKTS": "OTCMKTS",
    "LON": "LON",
    "LSE": "LON",
    "FRA": "FRA",
    "ETR": "ETR",
    "XETRA": "ETR",
    "EPA": "EPA",
    "AMS": "AMS",
    "EBR": "EBR",
    "BIT": "BIT",
    "BME": "BME",
    "TYO": "TYO",
    "TSE": "TYO",
    "SWX": "SWX",
    "STO": "STO",
    "HEL": "HEL",
    "ELI": "ELI",
}
_US_EXCHANGES = frozenset({"NASDAQ", "NYSE", "NYSEARCA", "NYSEAMERICAN", "CBOE", "OTC", "OTCMKTS"})
_EXCHANGE_SYMBOL = re.compile(
    r"(?<![\w])(" + "|".join(sorted(_EXCHANGES, key=len, reverse=True)) + r")\s?:\s?"
    r"([A-Za-z0-9]{1,6}(?:[./-][A-Za-z0-9]{1,2})?)(?![\w])",
    re.IGNORECASE,
)
#: an upper-case symbol with a market or class suffix: AAPL.O, BRK.B, BRK-B, BRK/B, 7203.T, ABN.AS
_SUFFIXED = re.compile(r"(?<![\w$.:/-])([A-Z0-9]{1,6})([./-])([A-Z]{1,2})(?![\w]|[./-]\w)")
#: Reuters exchange suffixes of US listings ("AAPL.O" is Apple on Nasdaq)
_US_RIC = frozenset({"O", "OQ", "N", "K", "P", "A"})
_BARE = re.compile(r"(?<![\w$.:/-])([A-Z]{1,5})(?![\w]|[.:/-]\w)")
_BRACKETED = re.compile(r"[(\[<][A-Z]+[)\]>.]")
_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")
_COLLAPSE = re.compile(r"[\W_]+")


def norm_symbol(symbol: str) -> str:
    """One spelling per listed symbol: upper case, no ``$``, class shares with a dot (``BRK-B`` -> ``BRK.B``)."""
    s = symbol.strip().upper().lstrip("$")
    return re.sub(r"[-/ ](?=[A-Z0-9]{1,2}$)", ".", s)


def fold(token: str) -> str:
    """A token as the matcher compares it: casefolded, accents dropped ("Nestlé" and "Nestle" meet)."""
    t = token.casefold()
    if t.isascii():
        return t
    return "".join(c for c in unicodedata.normalize("NFKD", t) if not unicodedata.combining(c))


def alias_key(text: str) -> str:
    """The matcher's key for a name: folded word tokens joined by one space ("AT&T" -> "at t")."""
    return " ".join(fold(t) for t in _TOKEN.findall(text))


def normalise_name(surface: str) -> str:
    """The key of an unlinked entity: legal suffixes stripped, casefolded, whitespace/punctuation collapsed.

    "FTX Trading Ltd." -> "ftx trading"; "Celsius Network LLC" -> "celsius network"; "$FOO" -> "foo".
    """
    words = _COLLAPSE.sub(" ", surface.casefold()).split()
    while len(words) > 1 and words[-1] in LEGAL_SUFFIXES:
        words.pop()
    if len(words) > 1 and words[0] == "the":
        words = words[1:]
    return " ".join(words)


@dataclass(frozen=True, slots=True)
class Match:
    """One gazetteer hit: ``text[start:end]`` refers to entity ``entity_id`` (``how``: alias, symbol...)."""

    start: int
    end: int
    entity_id: str
    how: str


@dataclass(slots=True)
class _Phrase:
    entity_id: str
    #: "alias", "weak" (a common word: needs backing) or "person" (backing only)
    kind: str
    #: surfaces accepted as written (short acronyms); None: any capitalised spelling
    exact: frozenset[str] | None


def _is_acronym(alias: str) -> bool:
    letters = [c for c in alias if c.isalpha()]
    return 2 <= len(alias) <= 5 and sum(c.isupper() for c in letters) >= 2 and " " not in alias


class Linker:
    """Gazetteer matcher and span linker over an entity table. Thread-safe after construction (read-only)."""

    def __init__(self, entities: Iterable[dict[str, Any]]) -> None:
        self.names: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self._phrases: dict[str, list[_Phrase]] = {}
        self._first: dict[str, int] = {}  # first token -> most tokens of a phrase starting with it
        self._symbols: dict[str, str] = {}
        self._exchange: dict[tuple[str, str], str] = {}
        self._bare_ok: set[str] = set()
        self._word_symbols: set[str] = set()  # tickers that are English words: bare only in brackets
        for ent in entities:
            self.add(ent)

    # -- building ----------------------------------------------------------------------------------
    def add(self, ent: dict[str, Any], *, override: bool = False) -> None:
        """Add one entity (table row or user row). ``override``: its aliases/symbols win over earlier ones."""
        eid = str(ent["id"]).strip()
        if not eid:
            raise ValueError("an entity needs a non-empty id")
        self.names[eid] = str(ent.get("name") or eid)
        self.kinds[eid] = str(ent.get("kind") or "company")
        weak = set(ent.get("weak") or ())
        for alias in (self.names[eid], *(ent.get("aliases") or ())):
            kind = "weak" if alias in weak else "alias"
            self._add_phrase(alias, eid, kind, override)
        for person in ent.get("people") or ():
            self._add_phrase(person, eid, "person", False)
        for sym in ent.get("symbols") or ():
            key = norm_symbol(str(sym))
            if key and (override or key not in self._symbols):
                self._symbols[key] = eid
        for exch, tick in (ent.get("tickers") or {}).items():
            ex = _EXCHANGES.get(str(exch).upper(), str(exch).upper())
            key = norm_symbol(str(tick))
            if override or (ex, key) not in self._exchange:
                self._exchange[(ex, key)] = eid
            if ex in _US_EXCHANGES and (override or key not in self._symbols):
                self._symbols[key] = eid  # a US listing's ticker stands for itself (a local one needs "FRA:")
        for sym in ent.get("bare") or ():
            self._bare_ok.add(norm_symbol(sym))
        for sym in ent.get("word_symbols") or ():
            self._word_symbols.add(norm_symbol(sym))

    def _add_phrase(self, alias: str, eid: str, kind: str, override: bool) -> None:
        key = alias_key(alias)
        if len(key) < 2:
            return
        entries = self._phrases.setdefault(key, [])
        exact = frozenset({alias}) if _is_acronym(alias) else None
        for e in entries:
            if e.entity_id == eid:
                if exact is None or e.exact is None:
                    e.exact = None
                else:
                    e.exact = e.exact | exact
                return
        if kind != "person" and any(e.kind != "person" for e in entries) and not override:
            return  # an earlier (higher-priority) entity owns this name
        phrase = _Phrase(eid, kind, exact)
        if override:
            entries.insert(0, phrase)
        else:
            entries.append(phrase)
        toks = key.split(" ")
        self._first[toks[0]] = max(self._first.get(toks[0], 0), min(len(toks), MAX_ALIAS_TOKENS))

    @classmethod
    def from_table(cls, path: str | os.PathLike[str] = TABLE_FILE) -> Linker:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            header = json.loads(fh.readline())
            if header.get("format") != TABLE_FORMAT:
                raise ConfigError(
                    f"{path}: entity table format {header.get('format')!r}, this finsent reads {TABLE_FORMAT}",
                    hint="rebuild it: python -m finsent.models.entity_table build",
                )
            return cls(json.loads(line) for line in fh if line.strip())

    def add_user_file(self, path: str | os.PathLike[str]) -> int:
        """Add a user's entities (JSON lines or CSV ``id,name,aliases,tickers``); they win over the table's.

        Returns how many were added. A bad file raises :class:`~finsent.core.errors.ConfigError` naming the line.
        """
        p = Path(path).expanduser()
        try:
            raw = p.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(
                f"{ENTITIES_FILE_ENV}={p}: cannot read it ({exc.strerror or exc})",
                hint="point it at a JSON lines or CSV file of id,name,aliases,tickers",
            ) from None
        rows = list(_user_rows(p, raw))
        for line, row in rows:
            try:
                self.add(row, override=True)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise ConfigError(
                    f"{p}:{line}: not an entity ({exc})",
                    hint="each row needs an id; aliases and tickers are lists or '|'-separated",
                ) from None
        return len(rows)

    # -- matching ----------------------------------------------------------------------------------
    def find(self, text: str) -> list[Match]:
        """Every gazetteer match in ``text``, in text order, without overlaps (earlier, then longer, wins)."""
        cands: list[Match] = []
        explicit: set[str] = set()  # entities named by an unambiguous symbol or a strong name
        for m in _CASHTAG.finditer(text):
            eid = self._symbols.get(norm_symbol(m.group(1)))
            if eid:
                cands.append(Match(m.start(), m.end(), eid, "cashtag"))
                explicit.add(eid)
        for m in _EXCHANGE_SYMBOL.finditer(text):
            ex = _EXCHANGES[m.group(1).upper()]
            sym = norm_symbol(m.group(2))
            eid = self._exchange.get((ex, sym)) or (self._symbols.get(sym) if ex in _US_EXCHANGES else None)
            if eid:
                cands.append(Match(m.start(), m.end(), eid, "exchange"))
                explicit.add(eid)
        for m in _SUFFIXED.finditer(text):
            full = norm_symbol(m.group(0))
            eid = self._symbols.get(full) if m.group(2) == "." or len(m.group(3)) == 1 else None
            if eid is None and m.group(2) == "." and m.group(3) in _US_RIC:
                eid = self._symbols.get(m.group(1))
            if eid and (not full.replace(".", "").isalpha() or len(m.group(1)) >= 2):
                cands.append(Match(m.start(), m.end(), eid, "symbol"))
                explicit.add(eid)
        weak: list[Match] = []
        backing: set[str] = set()
        for start, end, phrase in self._phrase_matches(text):
            if phrase.kind == "person":
                backing.add(phrase.entity_id)
            elif phrase.kind == "weak":
                weak.append(Match(start, end, phrase.entity_id, "alias"))
            else:
                cands.append(Match(start, end, phrase.entity_id, "alias"))
                explicit.add(phrase.entity_id)
        backing |= explicit
        cands.extend(m for m in weak if m.entity_id in backing)
        for m in _BARE.finditer(text):
            sym = m.group(1)
            eid = self._symbols.get(sym)
            if eid and (eid in backing or sym in self._bare_ok):
                if sym in self._word_symbols and not _BRACKETED.match(text[m.start() - 1 : m.end() + 1]):
                    continue  # "ALL of it" stays a word even in an item about Allstate; "(ALL)" is the ticker
                cands.append(Match(m.start(), m.end(), eid, "ticker"))
        cands.sort(key=lambda c: (c.start, -(c.end - c.start)))
        out: list[Match] = []
        last_end = -1
        for c in cands:
            if c.start >= last_end:
                out.append(c)
                last_end = c.end
        return out

    def _phrase_matches(self, text: str) -> list[tuple[int, int, _Phrase]]:
        toks = [(m.start(), m.end(), fold(m.group())) for m in _TOKEN.finditer(text)]
        out: list[tuple[int, int, _Phrase]] = []
        i, n = 0, len(toks)
        first = self._first
        phrases = self._phrases
        while i < n:
            longest = first.get(toks[i][2], 0)
            if not longest or not (text[toks[i][0]].isupper() or text[toks[i][0]].isdigit()):
                i += 1
                continue
            # the tokens of one name: consecutive, joined only by short name punctuation
            j = i + 1
            while j < n and j - i < longest and _GAP_OK.fullmatch(text, toks[j - 1][1], toks[j][0]):
                j += 1
            hit = None
            for k in range(j, i, -1):
                entries = phrases.get(" ".join(t[2] for t in toks[i:k]))
                if not entries:
                    continue
                surface = text[toks[i][0] : toks[k - 1][1]]
                for e in entries:
                    if e.exact is None or surface in e.exact:
                        hit = (k, e)
                        break
                if hit:
                    break
            if hit is None:
                i += 1
                continue
            k, phrase = hit
            if k - i > 1 and all(t[2].isdigit() for t in toks[i:k]):
                i += 1  # "1.1" in "$1.1 billion" is a number, not the alias "1&1"
                continue
            start, end = toks[i][0], toks[k - 1][1]
            # take a following legal suffix into the surface: "Apple Inc.", "Coinbase, Inc."
            if (
                k < n
                and toks[k][2] in _EXTEND_SUFFIXES
                and re.fullmatch(r",? ", text[end : toks[k][0]])
                and text[toks[k][0]].isupper()
                and not re.match(r"[\w-]", text[toks[k][1] : toks[k][1] + 1])
            ):
                end = toks[k][1]
                k += 1
            if end < len(text) and text[end] == "." and text[toks[k - 1][0] : end].casefold() in _EXTEND_SUFFIXES:
                end += 1
            out.append((start, end, phrase))
            i = k
        return out

    def link_span(self, text: str, start: int, end: int) -> tuple[str | None, str]:
        """The entity a span refers to: ``(entity_id, canonical name)``, or ``(None, normalised name)``."""
        surface = text[start:end]
        stripped = surface.strip()
        m = _EXCHANGE_SYMBOL.fullmatch(stripped)
        if m:
            ex = _EXCHANGES[m.group(1).upper()]
            eid = self._exchange.get((ex, norm_symbol(m.group(2)))) or self._symbols.get(norm_symbol(m.group(2)))
            if eid:
                return eid, self.names[eid]
        if stripped.startswith("$") or (stripped.isupper() and " " not in stripped and len(stripped) <= 8):
            eid = self._symbols.get(norm_symbol(stripped))
            if eid:
                return eid, self.names[eid]
        key = alias_key(surface)
        for candidate in (key, alias_key(normalise_name(surface))):
            for e in self._phrases.get(candidate, ()):
                if e.kind != "person":
                    return e.entity_id, self.names[e.entity_id]
        return None, normalise_name(surface) or surface.strip()

    # -- the per-item output -------------------------------------------------------------------------
    def extract_entities(
        self,
        scored_text: str,
        title_len: int = 0,
        model_spans: Sequence[tuple[int, int, str, dict[str, float]]] | None = None,
    ) -> list[EntityMention]:
        """One :class:`EntityMention` per distinct entity of an item, most relevant first.

        ``scored_text`` is what was scored (``title + "\\n\\n" + text`` with a title), ``title_len`` the title's
        length in it (0: no title), ``model_spans`` the model's ``(start, end, sentiment, probs)`` spans. The
        mention kept per entity is its first model span if any, else its first gazetteer match.
        """
        gaz = self.find(scored_text)
        occurrences: list[tuple[int, int, str, str | None, str, str | None, dict[str, float] | None]] = []
        covered: set[int] = set()
        for s, e, label, probs in model_spans or ():
            if not (0 <= s < e <= len(scored_text)) or not scored_text[s:e].strip():
                continue
            eid: str | None = None
            for gi, g in enumerate(gaz):
                if g.start < e and s < g.end:
                    covered.add(gi)
                    eid = eid or g.entity_id
            if eid is not None:
                name = self.names[eid]
            else:
                eid, name = self.link_span(scored_text, s, e)
            key = eid if eid is not None else "~" + name
            occurrences.append((s, e, key, eid, name, label, dict(probs)))
        for gi, g in enumerate(gaz):
            if gi not in covered:
                occurrences.append((g.start, g.end, g.entity_id, g.entity_id, self.names[g.entity_id], None, None))
        if not occurrences:
            return []
        occurrences.sort(key=lambda o: o[0])
        lead_end = title_len if title_len > 0 else lead_length(scored_text)
        groups: dict[str, list[Any]] = {}
        for o in occurrences:
            groups.setdefault(o[2], []).append(o)
        out: list[EntityMention] = []
        for occ in groups.values():
            rep = next((o for o in occ if o[5] is not None), occ[0])
            s, e, _, eid, name, label, probs = rep
            if label is None or probs is None:
                label, probs = "neutral", dict(NEUTRAL_PROBS)
            elif label not in SENTIMENTS:
                label = max(probs, key=probs.__getitem__) if probs else "neutral"
            out.append(
                EntityMention(
                    text=scored_text[s:e],
                    start=s,
                    end=e,
                    sentiment=label,
                    sentiment_probs=probs,
                    entity_id=eid,
                    name=name,
                    relevance=relevance(occ[0][0], len(occ), lead_end, len(scored_text)),
                )
            )
        out.sort(key=lambda m: (-m.relevance, m.start))
        return out


def lead_length(text: str) -> int:
    """Where an untitled item's lead (its first sentence, at most :data:`LEAD_MAX_CHARS`) ends."""
    m = _SENTENCE_END.search(text, 1, LEAD_MAX_CHARS)
    return m.end() if m else min(len(text), LEAD_MAX_CHARS)


def relevance(first_start: int, count: int, lead_end: int, text_len: int) -> int:
    """0-100 from the first mention's position and the mention count (formula: the module docstring)."""
    if first_start < lead_end:
        return 100
    body = max(1, text_len - lead_end)
    p = min(1.0, max(0.0, (first_start - lead_end) / body))
    return int(min(90, round(20 + 60 * (1 - p) + 10 * min(count - 1, 2))))


def _split_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in re.split(r"[|;]", str(value)) if v.strip()]


def _user_rows(path: Path, raw: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """Rows of a user entities file as table-like dicts: JSON lines, or CSV with a header."""
    first = raw.lstrip()[:1]
    if first in ("{", "["):
        for n, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{path}:{n}: not JSON ({exc.msg})",
                    hint='one JSON object per line: {"id", "name", "aliases", "tickers"}',
                ) from None
            if not isinstance(obj, dict):
                raise ConfigError(f"{path}:{n}: not a JSON object", hint="one object per line")
            yield n, _user_entity(path, n, obj)
        return
    reader = csv.DictReader(io.StringIO(raw))
    if not reader.fieldnames or "id" not in [f.strip().lower() for f in reader.fieldnames]:
        raise ConfigError(
            f"{path}: a CSV of entities needs a header with an 'id' column",
            hint="id,name,aliases,tickers (aliases and tickers '|'-separated)",
        )
    for row in reader:
        yield (
            reader.line_num,
            _user_entity(path, reader.line_num, {(k or "").strip().lower(): v for k, v in row.items()}),
        )


def _user_entity(path: Path, line: int, obj: dict[str, Any]) -> dict[str, Any]:
    eid = str(obj.get("id") or "").strip()
    if not eid:
        raise ConfigError(f"{path}:{line}: an entity without an id", hint="give every row an id, e.g. ACME or X:FOO")
    tickers = obj.get("tickers")
    symbols = _split_list(obj.get("symbols"))
    ticker_map: dict[str, str] = {}
    if isinstance(tickers, dict):
        ticker_map = {str(k): str(v) for k, v in tickers.items()}
    else:
        for t in _split_list(tickers):
            if ":" in t:
                ex, tick = t.split(":", 1)
                ticker_map[ex.strip().upper()] = tick.strip()
            else:
                symbols.append(t)
    return {
        "id": eid,
        "name": str(obj.get("name") or eid).strip(),
        "kind": obj.get("kind") or "user",
        "aliases": _split_list(obj.get("aliases")),
        "symbols": symbols,
        "tickers": ticker_map,
        "people": _split_list(obj.get("people")),
    }


_DEFAULT: dict[str | None, Linker] = {}
_DEFAULT_LOCK = threading.Lock()


def default_linker(entities_file: str | None = None) -> Linker:
    """The shipped table plus ``entities_file`` (default ``$FINSENT_ENTITIES_FILE``), loaded once per process."""
    path = entities_file if entities_file is not None else (os.environ.get(ENTITIES_FILE_ENV) or None)
    with _DEFAULT_LOCK:
        linker = _DEFAULT.get(path)
        if linker is None:
            linker = Linker.from_table(TABLE_FILE)
            if path:
                n = linker.add_user_file(path)
                log.info("entity linker: %d user entities from %s", n, path)
            _DEFAULT[path] = linker
        return linker


def extract_entities(
    scored_text: str,
    title_len: int,
    model_spans: Sequence[tuple[int, int, str, dict[str, float]]] | None = None,
) -> list[EntityMention]:
    """:meth:`Linker.extract_entities` with the default linker (shipped table + ``FINSENT_ENTITIES_FILE``)."""
    return default_linker().extract_entities(scored_text, title_len, model_spans)


__all__ = [
    "ENTITIES_FILE_ENV",
    "LEAD_MAX_CHARS",
    "Linker",
    "Match",
    "NEUTRAL_PROBS",
    "TABLE_FILE",
    "alias_key",
    "default_linker",
    "extract_entities",
    "lead_length",
    "norm_symbol",
    "normalise_name",
    "relevance",
]
