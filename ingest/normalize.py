"""Normalisation: the ONE place where every source's raw fields become a :class:`RawItem`.

Feeds, social APIs, replay files and the HTTP push endpoint all call :func:`make_item`, so the
same story is cleaned, timed, identified and ticker-tagged identically whatever door it came
through. That is what makes cross-source dedup (same canonical URL -> same id) work, and what
keeps the classifier from seeing HTML tags or ``&amp;`` that it never saw in training.

Rules (each one is a decision the rest of finsent relies on):

* text and title are cleaned separately (tags stripped, entities decoded, whitespace collapsed)
  and never concatenated here; the worker decides what to score;
* times become aware UTC. **One rule for a publication time, in every ingester** (feeds, social,
  push, replay: all through :func:`make_item`): one that is missing is ``None``; one that is there but
  unreadable -- not a format finsent reads, an impossible date (2024-02-30, month 13, 25:00: never
  rolled over into a real one), a time the store cannot hold (before 1970, after 2106-02-07) -- is
  ``None`` as well, the item is **kept** (its event time is then when it was ingested) and the
  caller's ``on_unparsed_date`` hears why (the ingesters count it in
  ``finsent_ingest_unparsed_dates_total{source}`` and log a rate-limited WARNING:
  :func:`finsent.ingest.metrics.unparsed_date_hook`). Never a silent "now" nor a guess. A time more
  than :data:`~finsent.core.events.MAX_FUTURE_SKEW` ahead of this host's clock is refused,
  ``Skip("bad_time")`` with the reason: the worker would dead-letter it anyway (an event time in the
  future would hold the entity detector's watermark ahead and make every later item late). Why keep
  rather than refuse: the text is what finsent scores; an item lost for a date typo in one field is
  worse than one counted at its arrival time, and the counter says which source to fix;
* ids are stable: canonical URL when there is one (so two feeds carrying one story agree),
  else the source's own GUID, else a digest of source + title + text. An id the source gives
  (a push client's, replay's id column) is used exactly as given: one with leading or trailing
  whitespace is ``Skip("bad_id")``, because stripping it would make two producer ids one item;
* a time the store cannot hold (before 1970, after 2106-02-07) is not a time (the rule above): the
  store would clamp it silently;
* bytes are decoded by :func:`decode_bytes`, which never re-reads good UTF-8 in another charset;
* an item with no text after cleaning raises :class:`Skip` (the caller counts it);
* text longer than ``max_text_chars`` is cut at a word boundary and flagged ``truncated``.
"""

from __future__ import annotations

import calendar
import codecs
import email.utils
import html
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from finsent.core.events import (
    MAX_FUTURE_SKEW,
    MAX_TEXT_CHARS,
    SOURCE_TYPES,
    InvalidEvent,
    RawItem,
    clean_unicode,
    is_valid_unicode,
    parse_time,
    stable_id,
    utcnow,
)

_UTC = timezone.utc  # noqa: UP017 (finsent supports Python 3.10: no datetime.UTC)


class Skip(Exception):
    """An item that must not be published; ``reason`` is a short code used as a metrics label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------

_BLOCK_TAGS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tbody",
        "td",
        "tfoot",
        "th",
        "thead",
        "tr",
        "ul",
    }
)
_DROP_TAGS = frozenset({"script", "style", "noscript", "template", "iframe", "svg", "head"})
_TAG_RE = re.compile(r"<\s*/?\s*[a-zA-Z][^>]*>|<!--|<!\[CDATA\[")
# zero-width and BOM characters that survive copy/paste from web pages
_INVISIBLE_RE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_WS_RE = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    """Collect visible text; block elements become spaces so words never glue together."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._drop_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP_TAGS:
            self._drop_depth += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP_TAGS:
            self._drop_depth = max(0, self._drop_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._drop_depth:
            self.parts.append(data)


def strip_html(value: str) -> str:
    """Visible text of an HTML fragment with entities decoded (no whitespace collapsing)."""
    value = value.replace("<![CDATA[", "").replace("]]>", "")
    parser = _TextExtractor()
    try:
        parser.feed(value)
        parser.close()
    except Exception:  # HTMLParser is lenient; this is belt and braces for pathological input
        return html.unescape(re.sub(r"<[^>]*>", " ", value))
    return "".join(parser.parts)


def clean_text(value: Any) -> str:
    """Plain, single-spaced text from whatever a source gave us (HTML, entities, odd whitespace).

    Entities are decoded exactly once for plain text (``AT&amp;T`` -> ``AT&T``); HTML is parsed
    so tags vanish and block boundaries become spaces.
    """
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = decode_bytes(value)
    text = str(value)
    if not is_valid_unicode(text):  # a lone surrogate (from a JSON escape) could never be encoded for Kafka
        text = clean_unicode(text)
    if _TAG_RE.search(text):
        text = strip_html(text)
    elif "&" in text:
        text = html.unescape(text)
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE_RE.sub("", text)
    text = _CONTROL_RE.sub(" ", text)
    return _WS_RE.sub(" ", text).strip()  # \s covers NBSP and the other Unicode spaces


_XML_DECL_RE = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._\-]+)["']""")
_META_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9._\-]+)""", re.IGNORECASE)


def charset_from_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    m = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9._\-]+)", content_type, re.IGNORECASE)
    return m.group(1) if m else None


def known_text_encoding(encoding: str | None) -> str | None:
    """The codec name of a declared charset, or None when Python has no such TEXT encoding.

    ``rot13`` and ``base64`` are codecs but not text encodings (``bytes.decode`` refuses them),
    so they count as unknown: a declared charset we cannot honour is never a crash.
    """
    if not encoding:
        return None
    try:
        info = codecs.lookup(encoding)
    except (LookupError, ValueError):
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


_known = known_text_encoding


class UndecodableBytes(ValueError):
    """Bytes that are not valid in their declared (or the default, UTF-8) charset; ``offset`` is the first bad byte.

    Raised by :func:`decode_bytes` with ``strict=True`` (JSON bodies: RFC 8259 says JSON is UTF-8, and a
    client whose one item has a bad byte must hear about it, not get the whole request re-read in another
    charset). The message names the offset and the byte, so the client can find it.
    """

    def __init__(self, encoding: str, offset: int, bad: bytes) -> None:
        super().__init__(
            f"byte 0x{bad[:1].hex()} at offset {offset} is not valid {encoding}: send the body as valid "
            f"{encoding}{' (RFC 8259: JSON is UTF-8)' if encoding == 'utf-8' else ''}; nothing of it was accepted"
        )
        self.encoding = encoding
        self.offset = offset


def _cp1252_bytes(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler: only the bytes that are not UTF-8 are read as Windows-1252 (each on its own)."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    return bad.decode("cp1252", errors="replace"), exc.end


def _latin1_bytes(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler for "ISO-8859-1" read as cp1252: the 5 bytes cp1252 leaves undefined are Latin-1."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error("finsent-cp1252-bytes", _cp1252_bytes)
codecs.register_error("finsent-latin1-bytes", _latin1_bytes)


def decode_bytes(data: bytes, content_type: str | None = None, *, strict: bool = False) -> str:
    """Decode bytes honouring the declared encoding: BOM, HTTP charset, XML declaration, <meta>.

    Undeclared bytes are UTF-8. Text that *is* good UTF-8 is never re-decoded: the old fallback read the
    whole input as Windows-1252 when one byte was bad, which turned every other valid character of it into
    mojibake (``Société`` -> ``SociÃ©tÃ©``, in other items of the same push request). Now:

    * ``strict=False`` (loose text: a field given as bytes): only the bytes that are not UTF-8 are read as
      Windows-1252, one by one (``caf\\xe9`` is still ``café``); a declared charset decodes with U+FFFD for
      what it cannot read. Nothing raises.
    * ``strict=True`` (a JSON body, :mod:`finsent.ingest.http_push`): a byte that is not valid in the
      declared charset (UTF-8 when none is declared) raises :class:`UndecodableBytes` naming its offset,
      so the request is refused with 400 instead of being stored garbled.

    A declared ``ISO-8859-1`` is read as Windows-1252 (what such content really is: curly quotes in
    0x80-0x9f), the 5 bytes cp1252 leaves undefined as Latin-1, so it never fails.
    """
    errors = "strict" if strict else "replace"
    start = 0
    encoding = None
    for bom, enc in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            encoding, start = enc, (len(bom) if enc == "utf-8" else 0)
            break
    if encoding is None:
        encoding = _known(charset_from_content_type(content_type))
        if encoding is None:
            m = _XML_DECL_RE.match(data[:200]) or _META_CHARSET_RE.search(data[:2048])
            encoding = _known(m.group(1).decode("ascii")) if m else None
        if encoding in ("latin-1", "iso8859-1"):
            encoding, errors = "cp1252", "finsent-latin1-bytes"  # see the docstring
        elif encoding is None:
            encoding, errors = "utf-8", "strict" if strict else "finsent-cp1252-bytes"
    try:
        return data[start:].decode(encoding, errors=errors).lstrip("\ufeff")
    except UnicodeDecodeError as exc:  # strict only
        raise UndecodableBytes(encoding, start + exc.start, exc.object[exc.start : exc.end]) from None


def truncate(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut at a word boundary (if one is near) so the classifier never sees half a word."""
    if len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    space = cut.rfind(" ", max(0, max_chars - 200))
    if space > 0:
        cut = cut[:space]
    return cut.rstrip(), True


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------


class ImpossibleTime(ValueError):
    """A time written in a known format whose fields do not exist (2024-02-30, month 13, 25:00),
    or an epoch outside what a datetime can hold."""


# ISO 8601 shapes (extended 2024-02-30T10:00, basic 20240230T1000; also 2024/02/30, 2024.02.30) whose
# fields are checked before feedparser sees them: its parsers go through timegm/gmtime and so roll
# 2024-02-30 over to March 1 (and it reads 2024/03/01 as December 1)
_ISO_EXTENDED_RE = re.compile(r"(\d{4})([-/.])(\d{1,2})\2(\d{1,2})(?:[T ]\s*(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?)?")
_ISO_BASIC_RE = re.compile(
    r"(\d{4})(\d{2})(\d{2})(?:T?(\d{2})(\d{2})(\d{2})?)?(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?", re.IGNORECASE
)


def _impossible_fields(y: int, mo: int, d: int, h: int | None, mi: int | None, sec: int | None) -> str | None:
    """Why these calendar/clock fields name no instant (None when they do; 24:00 and :60 pass)."""
    try:
        datetime(y, mo, d)
    except ValueError as exc:  # "month must be in 1..12", "day is out of range for month", year 0
        return str(exc)
    if h is None:
        return None
    if not (h <= 23 or (h == 24 and mi == 0 and not sec)):
        return f"hour {h} is out of range"
    if mi is not None and mi > 59:
        return f"minute {mi} is out of range"
    if sec is not None and sec > 60:  # 60: a leap second
        return f"second {sec} is out of range"
    return None


def _impossible_string(text: str) -> str | None:
    """Why an ISO-8601-shaped or RFC-822 string names a date that does not exist, else None."""
    m = _ISO_EXTENDED_RE.match(text)
    if m:
        f = [int(g) if g is not None else None for g in m.groups()[:1] + m.groups()[2:]]
        return _impossible_fields(f[0], f[1], f[2], f[3], f[4], f[5])  # type: ignore[arg-type]
    m = _ISO_BASIC_RE.fullmatch(text)
    if m:
        f = [int(g) if g is not None else None for g in m.groups()]
        return _impossible_fields(f[0], f[1], f[2], f[3], f[4], f[5])  # type: ignore[arg-type]
    parsed = email.utils.parsedate_tz(text)
    if parsed is not None:
        y, mo, d, h, mi, sec = parsed[:6]
        return _impossible_fields(y, mo, d, h, mi, sec)
    return None


#: the instants the store can hold: ClickHouse's DateTime is a UInt32 of epoch seconds (1970-01-01 .. 2106-02-07)
MIN_TIME = datetime(1970, 1, 1, tzinfo=_UTC)
MAX_TIME = datetime.fromtimestamp(2**32 - 1, tz=_UTC)


def to_utc(value: Any, *, strict: bool = False) -> datetime | None:
    """:func:`_to_utc`, and a time the store cannot hold (before 1970, after 2106-02-07) is not a time.

    The store would otherwise clamp it silently to 1970 or 2106 (a wrong time looks right); here it
    is ``None``, or with ``strict=True`` :class:`ImpossibleTime` with the reason (push and replay reject
    the item as ``bad_time``).
    """
    ts = _to_utc(value, strict=strict)
    if ts is not None and not MIN_TIME <= ts <= MAX_TIME:
        if strict:
            raise ImpossibleTime(
                f"{str(value)[:40]!r} is {ts.isoformat()}, outside what the store can hold "
                "(1970-01-01 .. 2106-02-07 UTC); send a real publication time or none"
            )
        return None
    return ts


def read_published(value: Any, now: datetime | None = None) -> tuple[datetime | None, str | None]:
    """A publication time as every ingester reads it: ``(time, None)``; ``(None, None)`` when there is none;
    ``(None, why)`` when one is there but unreadable (the item is kept: see the module doc).

    Raises :class:`Skip` ``bad_time`` for a time more than ``MAX_FUTURE_SKEW`` ahead of ``now`` (default: this
    host's clock), with what to fix.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    try:
        ts = to_utc(value, strict=True)
    except ImpossibleTime as exc:
        return None, str(exc)
    if ts is None:
        return None, (
            f"{str(value)[:40]!r} is not a time finsent reads (ISO 8601, RFC 822, epoch seconds or milliseconds)"
        )
    limit = (now or utcnow()) + MAX_FUTURE_SKEW
    if ts > limit:
        raise Skip(
            "bad_time",
            f"published_at {str(value)[:40]!r} is {ts.isoformat()}, more than "
            f"{int(MAX_FUTURE_SKEW.total_seconds() // 60)} min ahead of this host's clock; fix the source's clock "
            "or its time zone",
        )
    return ts, None


def _to_utc(value: Any, *, strict: bool = False) -> datetime | None:
    """Aware UTC datetime from a datetime, struct_time (feedparser: UTC), epoch (s or ms) or string.

    Strings may be ISO 8601 or RFC 822/2822 (what RSS uses). Anything unreadable is ``None``:
    a wrong "now" would put old stories into the current alert window. A date that does not
    exist (2024-02-30, 2024-13-01, 25:00) is never rolled over into one that does: it is
    ``None`` as well, or with ``strict=True`` raises :class:`ImpossibleTime` (replay reports the
    row as ``bad_time``); so is an epoch no datetime can hold.
    """
    if value is None or value == "":
        return None
    try:
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=_UTC)).astimezone(_UTC)
        if isinstance(value, time.struct_time):
            return datetime.fromtimestamp(calendar.timegm(value), tz=_UTC)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value) / 1000.0 if abs(value) > 1e11 else float(value)  # epoch milliseconds
            try:
                return datetime.fromtimestamp(seconds, tz=_UTC)
            except (OverflowError, OSError, ValueError) as exc:
                if strict:
                    raise ImpossibleTime(f"epoch {value!r} is out of range ({exc})") from None
                return None
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            if re.fullmatch(r"\d{9,13}(\.\d+)?", text):
                return _to_utc(float(text), strict=strict)
            try:
                return parse_time(text, "published_at")
            except InvalidEvent:
                pass
            problem = _impossible_string(text)
            if problem is not None:
                if strict:
                    raise ImpossibleTime(f"{text[:40]!r}: {problem}")
                return None
            m = _ISO_EXTENDED_RE.match(text)
            if m and m.group(2) != "-":  # 2024/03/01 10:00: ISO with other separators (feedparser misreads it)
                iso = f"{int(m.group(1)):04d}-{int(m.group(3)):02d}-{int(m.group(4)):02d}"
                try:
                    return parse_time(iso + text[m.end(4) :], "published_at")
                except InvalidEvent:
                    return None
            try:
                ts = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                ts = None
            if ts is not None:
                return _to_utc(ts)
            import feedparser  # its date parser knows a dozen more formats (W3C-DTF, Korean, Greek...)

            parsed = feedparser.datetimes._parse_date(text)
            return _to_utc(parsed) if parsed else None
    except ImpossibleTime:
        raise
    except (OverflowError, OSError, ValueError):
        return None
    return None


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------

TRACKING_PARAMS = frozenset(
    {
        "fbclid",
        "gclid",
        "dclid",
        "gbraid",
        "wbraid",
        "msclkid",
        "yclid",
        "twclid",
        "igshid",
        "mc_cid",
        "mc_eid",
        "_ga",
        "_gl",
        "_hsenc",
        "_hsmi",
        "mkt_tok",
        "ocid",
        "ncid",
        "cmpid",
        "guccounter",
        "guce_referrer",
        "guce_referrer_sig",
        "soc_src",
        "soc_trk",
        "ref_src",
        "ref_url",
        "spm",
        "share",
        "s_cid",
        "smid",
    }
)


def _is_tracking(key: str) -> bool:
    k = key.lower()
    return k.startswith(("utm_", "__hs", "vero_", "pk_", "mtm_")) or k in TRACKING_PARAMS


def canonical_url(url: Any) -> str | None:
    """The URL two sources would agree on: tracking params and fragment gone, host lowercased.

    Only http(s) URLs are kept (``javascript:``, ``mailto:`` and junk give ``None``). Remaining
    query parameters keep their order; default ports and empty paths are normalised.
    """
    if not url or not isinstance(url, str):
        return None
    url = url.strip()
    if url.startswith("//"):
        url = "https:" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    if port and not ((scheme == "http" and port == 80) or (scheme == "https" and port == 443)):
        host = f"{host}:{port}"
    # user:password@ is dropped on purpose: credentials in a shared link are an accident
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)]
    path = parts.path or "/"
    return urlunsplit((scheme, host, path, urlencode(query, doseq=True), ""))


# ---------------------------------------------------------------------------------------------
# Tickers
# ---------------------------------------------------------------------------------------------

EXCHANGES = (
    "NASDAQ|NYSE|NYSEARCA|NYSEAMERICAN|NYSEMKT|AMEX|BATS|CBOE|OTC|OTCQX|OTCQB|OTCMKTS|TSX|TSXV|LSE|ASX|HKEX|ETR|XETRA"
)
# $AAPL, $BRK.B, $BTC.X ; not $5, $5B, $1.2bn, nor a$AP inside words
_CASHTAG_RE = re.compile(r"(?<![\w$])\$([A-Z]{1,6}(?:\.[A-Z]{1,2})?)(?![\w.]*\d)(?![a-z])")
_EXCHANGE_RE = re.compile(rf"\b(?:{EXCHANGES})\s*:\s*([A-Z]{{1,6}}(?:\.[A-Z]{{1,2}})?)\b")


def extract_tickers(*texts: str | None, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Ticker symbols mentioned as cashtags or exchange-qualified symbols, in first-seen order."""
    seen: dict[str, None] = {}
    for sym in extra:
        if isinstance(sym, str) and (s := sym.strip().lstrip("$").upper()) and re.fullmatch(r"[A-Z0-9.\-]{1,12}", s):
            seen.setdefault(s, None)
    for text in texts:
        if not text:
            continue
        for m in _CASHTAG_RE.finditer(text):
            seen.setdefault(m.group(1), None)
        for m in _EXCHANGE_RE.finditer(text):
            seen.setdefault(m.group(1), None)
    return tuple(seen)


# ---------------------------------------------------------------------------------------------
# The item factory
# ---------------------------------------------------------------------------------------------


def item_id(source: str, *, url: str | None, guid: str | None, title: str, text: str) -> str:
    """Stable id: canonical URL (cross-source), else the source's GUID, else a content digest."""
    if url:
        return stable_id("url", url)
    if guid:
        return stable_id("guid", source, guid)
    return stable_id("content", source, title, text)


def make_item(
    *,
    source: str,
    source_type: str,
    text: Any,
    title: Any = None,
    url: Any = None,
    author: Any = None,
    published: Any = None,
    guid: Any = None,
    item_id_override: str | None = None,
    tickers: Iterable[str] = (),
    max_text_chars: int = MAX_TEXT_CHARS,
    ingested_at: datetime | None = None,
    on_unparsed_date: Callable[[str], None] | None = None,
) -> RawItem:
    """Build a normalised :class:`RawItem`; raises :class:`Skip` when there is nothing to publish.

    ``item_id_override`` is for sources whose ids are already stable by construction (replay:
    file name + row; HTTP push: the client's own id). ``published``: :func:`read_published` -- an
    unreadable one gives ``published_at=None`` and ``on_unparsed_date(why)``; one in the future,
    ``Skip("bad_time")``.
    """
    if source_type not in SOURCE_TYPES:
        raise Skip("bad_source_type", f"{source_type!r} not in {SOURCE_TYPES}")
    source = clean_text(source)[:200] or "unknown"
    body = clean_text(text)
    head = clean_text(title) or None
    if not body:
        raise Skip("empty_text", "no text after cleaning")
    body, truncated = truncate(body, max_text_chars)
    if head is not None:
        head, _ = truncate(head, 1000)
    canon = canonical_url(url) if url else None
    guid_s = str(guid).strip() if guid not in (None, "") else None
    author_s = clean_text(author)[:200] or None
    if item_id_override is not None:
        the_id = str(item_id_override)
        if the_id != the_id.strip():  # stripping would make " a" and "a" one item: refuse, say why
            raise Skip(
                "bad_id",
                f"id {the_id[:60]!r} has leading or trailing whitespace; send it without: ids "
                "are used as given, so ' a' and 'a' would be two different items",
            )
        if not the_id or len(the_id) > 256:
            raise Skip("bad_id", "id must be 1..256 characters")
        if not is_valid_unicode(the_id):
            raise Skip("bad_id", "id is not valid Unicode (a lone UTF-16 surrogate)")
    else:
        the_id = item_id(source, url=canon, guid=guid_s, title=head or "", text=body)
    published_at, unreadable = read_published(published)
    if unreadable is not None and on_unparsed_date is not None:
        on_unparsed_date(unreadable)
    return RawItem(
        id=the_id,
        source=source,
        source_type=source_type,  # type: ignore[arg-type]
        text=body,
        title=head,
        url=canon,
        author=author_s,
        published_at=published_at,
        ingested_at=ingested_at or utcnow(),
        tickers=extract_tickers(head, body, extra=tickers),
        truncated=truncated,
    )


def dedup_keys(item: RawItem, guid: str | None = None) -> list[str]:
    """Keys under which an item counts as already seen: its id, its canonical URL, its source GUID."""
    keys = [f"id:{item.id}"]
    if item.url:
        keys.append(f"url:{item.url}")
    if guid:
        keys.append(f"guid:{item.source}:{guid}")
    return keys


def to_output(item: RawItem) -> dict[str, Any]:
    """The JSON shape printed by ``--dry-run`` (the wire format, minus the version tag)."""
    d = item.to_dict()
    d.pop("v", None)
    return d
