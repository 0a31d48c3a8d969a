"""Build the shipped entity table (``models/entities/entities.jsonl.gz``) from maintained offline sources.

Run ``python -m finsent.models.entity_table build`` after ``pip install -e .[entities-build]``. Nothing here runs
at run time: the linker (:mod:`finsent.models.linking`) reads only the compact file this writes, so the heavy
sources (``edgartools`` pulls pandas, httpx, lxml...) never become runtime dependencies.

Sources, in priority order (an alias or symbol claimed by an earlier source is not taken by a later one):

1. the hand-curated crypto assets, central banks and other names below (ids ``X:BTC``, ``CB:FED``, ``PRIV:FTX``,
   ``IDX:SPX``, ``CMD:BRENT``, ``ORG:OPEC``);
2. ``pytickersymbols`` (MIT): about 1,840 companies of 20 US, European and Japanese indices, with Yahoo/Google
   symbols, ISINs and key people;
3. the SEC's ``company_tickers`` table (US government work, public domain) as bundled in ``edgartools`` (MIT):
   about 10,000 US tickers with CIK and registrant name, in market-cap order, for US breadth.

Each entity is one JSON object per line: ``id`` (the US ticker when the company has a US listing, class shares
written ``BRK.B``; otherwise the home market's Yahoo symbol such as ``7203.T``; ``X:``/``CB:`` for the curated
kinds), ``name``, ``kind``, ``aliases`` (legal suffixes stripped), ``weak`` (the aliases that are common English
words: the linker needs a ticker, cashtag or another alias of the same entity in the item to accept them),
``symbols`` (every ticker and Yahoo symbol, normalised), ``tickers`` (exchange -> ticker), ``isin``, ``cik`` and
``people``. The first line is a header with the sources, their licences and the build time.

Why the common-word rule: ticker collisions are one trap (see the linker), company names are the other: "Next",
"Match", "Block", "Ball" and "General" are index members' names. A word is common when it is a whole word among
the first :data:`CURATED_COMMON_RANK` entries of BERT's uncased WordPiece vocabulary (roughly frequency order;
the shipped model's ``tokenizer.json``); for SEC-only names, any whole word of that vocabulary is common.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from finsent.models import linking

ENTITIES_DIR = Path(__file__).resolve().parent / "entities"
TABLE_FILE = ENTITIES_DIR / "entities.jsonl.gz"
FORMAT = 1
#: whole words among this many of BERT's vocabulary words make a curated single-word alias weak
CURATED_COMMON_RANK = 2000

#: legal forms only listing titles carry ("Grupo Televisa S.A.B. de C.V.", "Citibank N.A.")
LISTING_FORMS: frozenset[str] = frozenset(["sab", "cv", "de", "na"])

#: Legal-form and filler words dropped from the end of a name to make its alias ("Apple Inc." -> "Apple"): the
#: linker's set (which it strips from unlinked names) plus words that only listing titles carry.
LEGAL_SUFFIXES: frozenset[str] = (
    linking.LEGAL_SUFFIXES | LISTING_FORMS | frozenset(["the", "adr", "ads", "reit", "trust"])
)

#: the legal forms alone (no filler such as "group", "holdings", "trust"): the linker's, and the listing titles'
LEGAL_ONLY: frozenset[str] = linking.LEGAL_FORMS | LISTING_FORMS
#: single words of financial news that index members' short names collide with: always weak
FINANCE_WORDS: frozenset[str] = frozenset(
    [
        "crypto",
        "bullish",
        "bearish",
        "investor",
        "investors",
        "partners",
        "capital",
        "markets",
        "market",
        "trading",
        "exchange",
        "finance",
        "financial",
        "digital",
        "blockchain",
        "token",
        "tokens",
        "coin",
        "coins",
        "nft",
        "nfts",
        "defi",
        "web3",
        "metaverse",
        "fintech",
        "bank",
        "banks",
        "energy",
        "gold",
        "silver",
        "oil",
        "gas",
        "bond",
        "bonds",
        "stock",
        "stocks",
        "equity",
        "fund",
        "funds",
        "trust",
        "holdings",
        "global",
        "international",
        "american",
        "national",
        "general",
        "pool",
        "first",
        "united",
        "standard",
        "premier",
        "pioneer",
        "summit",
        "frontier",
        "ally",
        "progressive",
        "travelers",
        "principal",
        "citizens",
        "regions",
    ]
)
_AMOUNT = re.compile(r"\d+(?:k|m|b|bn|mm)")
_PAREN = re.compile(r"\s*\([^)]*\)")
_STATE = re.compile(r"\s*/[A-Z]{2,3}/?\s*$|\s*\\[A-Z]+\\\s*$")  # "Voyager Technologies, Inc./DE", "\NEW\"
_TOKENS = re.compile(r"[^\W_]+", re.UNICODE)

# ---------------------------------------------------------------------------------------------
# Curated kinds: crypto assets and central banks
# ---------------------------------------------------------------------------------------------

#: (id, name, aliases, symbols that may stand bare, symbols that need a cashtag or backing)
CRYPTO: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...]], ...] = (
    ("X:BTC", "Bitcoin", ("Bitcoin", "BTC"), ("BTC", "XBT"), ()),
    ("X:ETH", "Ether", ("Ethereum", "Ether"), ("ETH",), ()),
    ("X:USDT", "Tether", ("Tether", "USDT"), ("USDT",), ()),
    ("X:USDC", "USD Coin", ("USD Coin", "USDC"), ("USDC",), ()),
    ("X:BNB", "BNB", ("BNB", "Binance Coin"), ("BNB",), ()),
    ("X:XRP", "XRP", ("XRP",), ("XRP",), ()),
    ("X:SOL", "Solana", ("Solana",), (), ("SOL",)),
    ("X:ADA", "Cardano", ("Cardano",), (), ("ADA",)),
    ("X:DOGE", "Dogecoin", ("Dogecoin",), ("DOGE",), ()),
    ("X:TRX", "TRON", ("TRON", "Tronix"), ("TRX",), ()),
    ("X:TON", "Toncoin", ("Toncoin",), (), ("TON",)),
    ("X:DOT", "Polkadot", ("Polkadot",), (), ("DOT",)),
    ("X:MATIC", "Polygon", ("Polygon", "MATIC"), ("MATIC", "POL"), ()),
    ("X:LTC", "Litecoin", ("Litecoin",), ("LTC",), ()),
    ("X:SHIB", "Shiba Inu", ("Shiba Inu", "SHIB"), ("SHIB",), ()),
    ("X:AVAX", "Avalanche", ("Avalanche",), ("AVAX",), ()),
    ("X:LINK", "Chainlink", ("Chainlink",), (), ("LINK",)),
    ("X:BCH", "Bitcoin Cash", ("Bitcoin Cash",), ("BCH",), ()),
    ("X:ETC", "Ethereum Classic", ("Ethereum Classic",), (), ("ETC",)),
    ("X:XLM", "Stellar", ("Stellar Lumens", "XLM"), ("XLM",), ()),
    ("X:XMR", "Monero", ("Monero",), ("XMR",), ()),
    ("X:ATOM", "Cosmos", ("Cosmos Hub",), (), ("ATOM",)),
    ("X:UNI", "Uniswap", ("Uniswap",), (), ("UNI",)),
    ("X:APT", "Aptos", ("Aptos",), (), ("APT",)),
    ("X:ARB", "Arbitrum", ("Arbitrum",), (), ("ARB",)),
    ("X:FIL", "Filecoin", ("Filecoin",), (), ("FIL",)),
    ("X:ALGO", "Algorand", ("Algorand",), ("ALGO",), ()),
    ("X:XTZ", "Tezos", ("Tezos",), ("XTZ",), ()),
    ("X:HBAR", "Hedera", ("Hedera", "Hedera Hashgraph"), ("HBAR",), ()),
    ("X:DAI", "Dai", ("DAI stablecoin",), (), ("DAI",)),
    ("X:BUSD", "Binance USD", ("Binance USD", "BUSD"), ("BUSD",), ()),
    ("X:FTT", "FTX Token", ("FTX Token", "FTT"), ("FTT",), ()),
    ("X:LUNA", "Terra", ("Terra Luna", "LUNA", "TerraUSD", "UST stablecoin"), ("LUNA",), ()),
    ("X:SUI", "Sui", ("Sui Network",), (), ("SUI",)),
)

#: Other names financial news is about that no listing table holds: private and non-US firms (notably the crypto
#: firms whose collapses the entity alerts must catch), market indices, commodities and organisations.
#: (id, name, kind, aliases, symbols)
OTHERS: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("PRIV:FTX", "FTX", "private", ("FTX", "FTX.com", "FTX Trading", "FTX US"), ()),
    ("PRIV:ALAMEDA", "Alameda Research", "private", ("Alameda Research", "Alameda"), ()),
    ("PRIV:BINANCE", "Binance", "private", ("Binance", "Binance.US", "Binance US"), ()),
    ("PRIV:CELSIUS", "Celsius Network", "private", ("Celsius Network", "Celsius"), ("CEL",)),
    (
        "PRIV:GENESIS",
        "Genesis Global",
        "private",
        ("Genesis Global", "Genesis Global Trading", "Genesis Trading", "Genesis Global Capital", "Genesis"),
        (),
    ),
    ("PRIV:DCG", "Digital Currency Group", "private", ("Digital Currency Group", "DCG"), ()),
    ("PRIV:BLOCKFI", "BlockFi", "private", ("BlockFi",), ()),
    ("PRIV:VOYAGER", "Voyager Digital", "private", ("Voyager Digital", "Voyager"), ()),
    ("PRIV:3AC", "Three Arrows Capital", "private", ("Three Arrows Capital", "Three Arrows", "3AC"), ()),
    ("PRIV:TORNADO", "Tornado Cash", "private", ("Tornado Cash",), ()),
    ("PRIV:KRAKEN", "Kraken", "private", ("Kraken",), ()),
    ("PRIV:GEMINI", "Gemini", "private", ("Gemini exchange", "Gemini Trust", "Gemini Earn"), ()),
    ("PRIV:CRYPTOCOM", "Crypto.com", "private", ("Crypto.com",), ("CRO",)),
    ("PRIV:CIRCLE", "Circle", "private", ("Circle Internet Financial",), ()),
    ("PRIV:OPENAI", "OpenAI", "private", ("OpenAI",), ()),
    ("PRIV:SPACEX", "SpaceX", "private", ("SpaceX",), ()),
    ("PRIV:TWITTER", "Twitter", "private", ("Twitter", "X Corp"), ()),
    ("005930.KS", "Samsung Electronics", "company", ("Samsung Electronics", "Samsung"), ()),
    ("0700.HK", "Tencent", "company", ("Tencent", "Tencent Holdings"), ()),
    ("IDX:SPX", "S&P 500", "index", ("S&P 500", "S&P500", "Standard & Poor's 500", "SPX"), ()),
    ("IDX:DJI", "Dow Jones Industrial Average", "index", ("Dow Jones Industrial Average", "Dow Jones", "DJIA"), ()),
    (
        "IDX:IXIC",
        "Nasdaq Composite",
        "index",
        ("Nasdaq Composite", "Nasdaq Composite Index", "IXIC", "Nasdaq"),
        (),
    ),  # "the Nasdaq" is the index in market news
    ("IDX:NDX", "Nasdaq 100", "index", ("Nasdaq 100", "Nasdaq-100", "NDX"), ()),
    ("IDX:RUT", "Russell 2000", "index", ("Russell 2000",), ()),
    ("IDX:STOXX600", "STOXX Europe 600", "index", ("STOXX 600", "STOXX Europe 600", "pan-European STOXX 600"), ()),
    ("IDX:FTSE100", "FTSE 100", "index", ("FTSE 100", "FTSE"), ()),
    ("IDX:DAX", "DAX", "index", ("DAX",), ()),
    ("IDX:N225", "Nikkei 225", "index", ("Nikkei 225", "Nikkei"), ()),
    ("IDX:HSI", "Hang Seng", "index", ("Hang Seng", "Hang Seng Index"), ()),
    ("IDX:VIX", "VIX", "index", ("VIX", "Cboe Volatility Index"), ()),
    (
        "IDX:SOX",
        "Philadelphia Semiconductor Index",
        "index",
        ("Philadelphia Semiconductor Index", "Philadelphia SE Semiconductor Index"),
        (),
    ),
    ("CMD:BRENT", "Brent crude", "commodity", ("Brent", "Brent crude", "Brent crude futures"), ()),
    (
        "CMD:WTI",
        "West Texas Intermediate",
        "commodity",
        ("West Texas Intermediate", "WTI", "U.S. West Texas Intermediate"),
        (),
    ),
    ("ORG:OPEC", "OPEC", "organisation", ("OPEC", "OPEC+"), ()),
    (
        "ORG:SEC",
        "US Securities and Exchange Commission",
        "regulator",
        ("Securities and Exchange Commission", "U.S. Securities and Exchange Commission"),
        (),
    ),
    ("ORG:IMF", "International Monetary Fund", "organisation", ("International Monetary Fund", "IMF"), ()),
    ("ORG:USTREASURY", "US Treasury", "government", ("U.S. Treasury", "US Treasury", "Treasury Department"), ()),
)

#: (id, name, aliases; acronyms are matched case-sensitively as written)
CENTRAL_BANKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "CB:FED",
        "Federal Reserve",
        (
            "Federal Reserve",
            "Fed",
            "FOMC",
            "Federal Open Market Committee",
            "Federal Reserve Board",
            "US Federal Reserve",
            "U.S. Federal Reserve",
        ),
    ),
    ("CB:ECB", "European Central Bank", ("European Central Bank", "ECB")),
    ("CB:BOE", "Bank of England", ("Bank of England", "BoE", "BOE")),
    ("CB:BOJ", "Bank of Japan", ("Bank of Japan", "BoJ", "BOJ")),
    ("CB:PBOC", "People's Bank of China", ("People's Bank of China", "Peoples Bank of China", "PBoC", "PBOC")),
    ("CB:SNB", "Swiss National Bank", ("Swiss National Bank", "SNB")),
    ("CB:BOC", "Bank of Canada", ("Bank of Canada",)),
    ("CB:RBA", "Reserve Bank of Australia", ("Reserve Bank of Australia", "RBA")),
    ("CB:RBNZ", "Reserve Bank of New Zealand", ("Reserve Bank of New Zealand", "RBNZ")),
    ("CB:RBI", "Reserve Bank of India", ("Reserve Bank of India", "RBI")),
    ("CB:RIKSBANK", "Sveriges Riksbank", ("Riksbank", "Sveriges Riksbank")),
    ("CB:NORGES", "Norges Bank", ("Norges Bank",)),
    ("CB:BUNDESBANK", "Deutsche Bundesbank", ("Bundesbank", "Deutsche Bundesbank")),
    ("CB:BCB", "Banco Central do Brasil", ("Banco Central do Brasil", "Central Bank of Brazil")),
    ("CB:CBR", "Bank of Russia", ("Bank of Russia", "Central Bank of Russia")),
    ("CB:BOK", "Bank of Korea", ("Bank of Korea",)),
    (
        "CB:CBRT",
        "Central Bank of the Republic of Turkey",
        ("Central Bank of Turkey", "Turkish central bank", "Central Bank of the Republic of Turkey", "CBRT"),
    ),
    ("CB:BANXICO", "Banco de Mexico", ("Banxico", "Banco de Mexico", "Bank of Mexico")),
    ("CB:SARB", "South African Reserve Bank", ("South African Reserve Bank", "SARB")),
    ("CB:HKMA", "Hong Kong Monetary Authority", ("Hong Kong Monetary Authority", "HKMA")),
    ("CB:MAS", "Monetary Authority of Singapore", ("Monetary Authority of Singapore",)),
)

#: Short names the press uses that no source lists (checked by hand against FinEntity and the crypto headlines)
EXTRA_ALIASES: dict[str, tuple[str, ...]] = {
    "JPM": ("JPMorgan", "J.P. Morgan", "JP Morgan", "JPMorgan Chase & Co."),
    "GOOGL": ("Google",),
    "META": ("Facebook", "Meta Platforms", "Meta"),
    "BRK.B": ("Berkshire",),
    "GS": ("Goldman", "Goldman Sachs"),
    "MS": ("Morgan Stanley",),
    "C": ("Citigroup", "Citi", "Citibank"),
    "WFC": ("Wells Fargo",),
    "BAC": ("BofA", "Bank of America"),
    "COIN": ("Coinbase",),
    "MSTR": ("MicroStrategy",),
    "HOOD": ("Robinhood",),
    "TSLA": ("Tesla",),
    "NVDA": ("Nvidia",),
    "AMD": ("AMD", "Advanced Micro Devices"),
    "BLK": ("BlackRock",),
    "XOM": ("Exxon", "ExxonMobil", "Exxon Mobil"),
    "F": ("Ford",),
    "DIS": ("Disney",),
    "RTX": ("Raytheon", "Raytheon Technologies"),
    "JEF": ("Jefferies",),
    "CG": ("Carlyle",),
    "MU": ("Micron",),
    "WMT": ("Walmart", "Wal-Mart"),
    "KO": ("Coca-Cola", "Coke"),
    "CVX": ("Chevron",),
    "SHEL": ("Shell",),
    "V": ("Visa",),
    "MA": ("Mastercard",),
}

# ---------------------------------------------------------------------------------------------
# Normalisation shared with the linker's build-time needs
# ---------------------------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    """Casefolded alphanumeric runs: the unit aliases are matched in (``"AT&T"`` -> ``["at", "t"]``)."""
    return [t.casefold() for t in _TOKENS.findall(text)]


def alias_key_of(name: str) -> str:
    return " ".join(tokens(name))


def strip_legal(name: str, legal_only: bool = False) -> str:
    """``name`` without parentheses, a state tag and trailing legal-form words ("Apple Inc." -> "Apple").

    A name that is nothing but such words is kept as is ("The Company" stays).
    """
    cleaned = _STATE.sub("", _PAREN.sub("", name)).strip(" ,.&")
    words = cleaned.split()
    suffixes = LEGAL_ONLY if legal_only else LEGAL_SUFFIXES
    while len(words) > 1 and (
        tokens(words[-1]) == [] or " ".join(tokens(words[-1])) in suffixes or words[-1] in {"&", "+"}
    ):
        words.pop()
    if len(words) > 1 and words[0].casefold() == "the":
        words = words[1:]
    return " ".join(words).strip(" ,.&")


def display_name(name: str) -> str:
    """A readable name: an ALL-CAPS SEC registrant name is title-cased ("MICROSOFT CORP" -> "Microsoft Corp")."""
    cleaned = _STATE.sub("", name).strip(" ,")
    if cleaned.upper() != cleaned or len(cleaned) <= 4:
        return cleaned
    small = {
        "OF": "of",
        "AND": "and",
        "THE": "the",
        "FOR": "for",
        "INC": "Inc",
        "CORP": "Corp",
        "CO": "Co",
        "LTD": "Ltd",
        "COM": "Com",
    }
    out = [small.get(w) or (w if len(w) <= 3 or not w.isalpha() else w.capitalize()) for w in cleaned.split()]
    if out:
        out[0] = out[0][0].upper() + out[0][1:]
    return " ".join(out)


def norm_symbol(symbol: str) -> str:
    """One spelling per listed symbol: upper case, class shares with a dot (``BRK-B``, ``BRK/B`` -> ``BRK.B``)."""
    s = symbol.strip().upper().lstrip("$")
    return re.sub(r"[-/ ](?=[A-Z0-9]{1,2}$)", ".", s)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

US_EXCHANGES = ("NASDAQ", "NYSE", "NYSEAMERICAN", "NYSEARCA", "CBOE", "BATS")


class _Table:
    """Entities in priority order, with the aliases and symbols already claimed."""

    def __init__(self, common_all: set[str], common_top: set[str]) -> None:
        self.entities: dict[str, dict[str, Any]] = {}
        self.alias_owner: dict[str, str] = {}
        self.symbol_owner: dict[str, str] = {}
        self.common_all = common_all
        self.common_top = common_top

    def add(
        self,
        ent: dict[str, Any],
        aliases: Iterable[str],
        symbols: Iterable[str],
        curated: bool,
        loose: frozenset[str] = frozenset(),
        strong: frozenset[str] = frozenset(),
    ) -> None:
        """Add an entity unless its id is taken; ``curated``: a well-known name (index member, hand list);
        ``loose``: aliases made by dropping filler words ("Partners Group" -> "Partners"), weak when common."""
        eid = ent["id"]
        if eid in self.entities:
            return
        kept_aliases: list[str] = []
        weak: list[str] = []
        for alias in aliases:
            alias = alias.strip()
            key = " ".join(tokens(alias))
            if not key or len(key) < 2 or self.alias_owner.get(key, eid) != eid or alias in kept_aliases:
                continue  # owned by an entity added before this one
            self.alias_owner[key] = eid
            kept_aliases.append(alias)
            if not curated and alias not in strong and all(t in self.common_all for t in key.split(" ")):
                weak.append(alias)  # an SEC-only name of common words only: "First National", "Global Partners"
            elif (
                " " not in key
                and alias not in strong
                and (
                    not curated
                    or key in self.common_top
                    or key in FINANCE_WORDS
                    or (alias in loose and key in self.common_all)
                    or _AMOUNT.fullmatch(key)
                )
            ):
                weak.append(alias)
        kept_symbols: list[str] = []
        for sym in symbols:
            sym = norm_symbol(sym)
            if not sym or sym in self.symbol_owner:
                continue
            self.symbol_owner[sym] = eid
            kept_symbols.append(sym)
        if not kept_aliases and not kept_symbols:
            return  # everything it would be found by belongs to an entity added before it
        ent["aliases"] = kept_aliases
        if weak:
            ent["weak"] = weak
        ent["symbols"] = kept_symbols
        words = [sym for sym in kept_symbols if sym.isalpha() and (len(sym) == 1 or sym.lower() in self.common_all)]
        if words and ent.get("kind") == "company":
            ent["word_symbols"] = words  # "ALL", "KEY", "A": a bare one must also stand in brackets
        self.entities[eid] = {k: v for k, v in ent.items() if v not in (None, [], {}, "")}


def _common_words(tokenizer_json: Path) -> tuple[set[str], set[str]]:
    vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    words = [
        w
        for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])
        if w.isascii() and w.isalpha() and len(w) > 1 and not w.startswith("##")
    ]
    return set(words), set(words[:CURATED_COMMON_RANK])


def _people(text: str | None) -> list[str]:
    """Names out of Wikipedia's "key people" line: "Tim Cook (CEO) Kevan Parekh (CFO)" -> both names."""
    if not text:
        return []
    out = []
    for m in re.finditer(r"([^()]+?)\s*\(", text):
        name = m.group(1).strip(" ,;")
        name = re.sub(r"^(Sir|Dame|Dr\.?|Prof\.?)\s+", "", name)
        if 2 <= len(name.split()) <= 5 and not any(ch.isdigit() for ch in name):
            out.append(name)
    return list(dict.fromkeys(out))[:6]


def _sec_rows(parquet: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(parquet).to_pylist()


def find_sec_parquet() -> Path:
    """The SEC ticker table inside the installed edgartools (``edgar/reference/data/company_tickers.parquet``)."""
    try:
        import edgar  # noqa: F401  (only to find its folder)
    except ImportError:
        raise SystemExit("edgartools is not installed: pip install -e .[entities-build]") from None
    import importlib.util

    spec = importlib.util.find_spec("edgar")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "reference" / "data" / "company_tickers.parquet"
    if not path.is_file():
        raise SystemExit(f"{path} not found: this edgartools version keeps the SEC table elsewhere")
    return path


def _add_curated(table: _Table) -> None:
    """The hand-curated names first: they win every alias and symbol a listed company would also claim."""
    for eid, name, aliases, bare, backed in CRYPTO:
        table.add(
            {"id": eid, "name": name, "kind": "crypto", "bare": list(bare)},
            (name, *aliases),
            (*bare, *backed),
            curated=True,
        )
    for eid, name, aliases in CENTRAL_BANKS:
        table.add({"id": eid, "name": name, "kind": "central_bank"}, (name, *aliases), (), curated=True)
        table.entities[eid].pop("weak", None)  # curated acronyms: matched case-sensitively by the linker
    for eid, name, kind, aliases, symbols in OTHERS:
        table.add({"id": eid, "name": name, "kind": kind}, (name, *aliases), symbols, curated=True)
        table.entities[eid].pop("weak", None)  # hand-picked: each alias was chosen to stand alone


class _Sec:
    """The SEC table looked up two ways: by normalised ticker (an index member's CIK and registrant name) and by
    CIK (every ticker of one registrant, largest first); ``used_ciks``: the registrants that already have an
    entity, so a company is one entity however many share classes and sources list it."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.by_ticker = {norm_symbol(r["ticker"]): r for r in rows if r.get("ticker")}
        self.by_cik: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            self.by_cik.setdefault(r["cik"], []).append(r)
        self.used_ciks: set[str] = set()


def _index_companies(indices: dict[str, Any]) -> list[dict[str, Any]]:
    """pytickersymbols' companies, once each: the same company sits in several indices (keyed by ISIN, else name)."""
    seen: dict[str, dict[str, Any]] = {}
    for index in indices.values():
        for c in index["companies"]:
            key = (c.get("isins") or [None])[0] or c["name"]
            seen.setdefault(key, c)
    return list(seen.values())


def _listings(c: dict[str, Any]) -> tuple[dict[str, str], list[str], list[str]]:
    """A company's listings: exchange -> ticker, the symbols it is found by, and its US tickers (the id candidates,
    its main symbol first when that is a plain US ticker)."""
    tickers: dict[str, str] = {}
    symbols: list[str] = []
    us: list[str] = []
    for s in c.get("symbols") or ():
        y, g = s.get("yahoo"), s.get("google")
        if y:  # Yahoo symbols carry their market ("APC.F", "7203.T"): no clash with a bare US ticker
            symbols.append(y)
        if g and ":" in g:  # a local ticker is findable only with its exchange ("FRA:APC"), via tickers
            exch, tick = g.split(":", 1)
            tickers.setdefault(exch.upper(), norm_symbol(tick))
            if exch.upper() in US_EXCHANGES:
                us.append(norm_symbol(tick))
                symbols.append(tick)
    main = norm_symbol(c.get("symbol") or "")
    if main and "." not in main.replace(".B", "").replace(".A", "") and main not in us:
        us.insert(0, main)
    return tickers, symbols, us


def _company_id(c: dict[str, Any], us: list[str], sec: _Sec) -> str:
    """The id: a US ticker the SEC knows, else the first US ticker, else the home market's symbol ("" for none)."""
    return next((t for t in us if t in sec.by_ticker), None) or (us[0] if us else norm_symbol(c.get("symbol") or ""))


def _company_aliases(eid: str, name: str, row: dict[str, Any] | None) -> tuple[list[str], set[str]]:
    """The names a company is found by, and the ``loose`` ones (filler words dropped: weak when common). The SEC
    registrant's short name is added when it differs: it is how US news often writes the company."""
    aliases = [strip_legal(name), name, *EXTRA_ALIASES.get(eid, ())]
    loose = {strip_legal(name)} if strip_legal(name) != strip_legal(name, legal_only=True) else set()
    if row:  # the registrant's name: its short form is taken only where it is not a common word
        sec_short = strip_legal(display_name(row["name"]))
        if alias_key_of(sec_short) not in {alias_key_of(a) for a in aliases}:
            aliases.append(sec_short)
            loose.add(sec_short)
    return aliases, loose


def _add_index_company(table: _Table, c: dict[str, Any], sec: _Sec) -> None:
    """One index member as a curated company, with every ticker of its SEC registrant (when it has one)."""
    tickers, symbols, us = _listings(c)
    eid = _company_id(c, us, sec)
    if not eid:
        return
    row = sec.by_ticker.get(eid)
    cik = row["cik"] if row else None
    if cik in sec.used_ciks:  # another share class of a company already added (GOOG after GOOGL)
        return
    if cik:
        sec.used_ciks.add(cik)
        for r in sec.by_cik.get(cik, ()):
            symbols.append(r["ticker"])
            if r.get("exchange"):
                tickers.setdefault(r["exchange"].upper(), norm_symbol(r["ticker"]))
    meta = c.get("metadata") or {}
    name = c["name"]
    aliases, loose = _company_aliases(eid, name, row)
    table.add(
        {
            "id": eid,
            "name": strip_legal(name) or name,
            "kind": "company",
            "tickers": tickers,
            "isin": list(dict.fromkeys(c.get("isins") or [])),
            "cik": cik,
            "people": _people(meta.get("key_people")),
        },
        aliases,
        [eid, *symbols],
        curated=True,
        loose=frozenset(loose),
        strong=frozenset(EXTRA_ALIASES.get(eid, ())),
    )


def _add_sec_rest(table: _Table, sec: _Sec) -> None:
    """The rest of the US universe from the SEC, one entity per CIK, id = its first (largest) ticker; not
    curated, so its common-word names are weak (the linker wants more evidence for them)."""
    for cik, rows in sec.by_cik.items():
        if cik in sec.used_ciks:
            continue
        first = norm_symbol(rows[0]["ticker"])
        name = display_name(rows[0]["name"])
        tickers = {}
        for r in rows:
            if r.get("exchange"):
                tickers.setdefault(r["exchange"].upper(), norm_symbol(r["ticker"]))
        table.add(
            {"id": first, "name": strip_legal(name) or name, "kind": "company", "tickers": tickers, "cik": cik},
            [strip_legal(name), name, *EXTRA_ALIASES.get(first, ())],
            [r["ticker"] for r in rows],
            curated=False,
            strong=frozenset(EXTRA_ALIASES.get(first, ())),
        )


def _header(table: _Table) -> dict[str, Any]:
    """The first line: format, counts and each source with its version and licence (what the table owes whom)."""
    from importlib.metadata import version

    return {
        "format": FORMAT,
        "entities": len(table.entities),
        "aliases": len(table.alias_owner),
        "symbols": len(table.symbol_owner),
        "sources": {
            "curated": "finsent (Apache-2.0): crypto assets, central banks, private firms, indices, commodities, "
            "organisations, short press names",
            "pytickersymbols": f"pytickersymbols {version('pytickersymbols')} (MIT)",
            "sec": f"SEC company_tickers (US government work, public domain) via edgartools {version('edgartools')} "
            "(MIT)",
        },
    }


def _write_table(out: Path, header: dict[str, Any], table: _Table) -> None:
    """Gzip JSON lines with mtime 0: the same sources give the same bytes (a test rebuilds and compares)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(out, "wb", mtime=0) as gz:
        gz.write((json.dumps(header, ensure_ascii=False) + "\n").encode("utf-8"))
        for ent in table.entities.values():
            gz.write((json.dumps(ent, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))


def build(out: Path = TABLE_FILE, tokenizer_json: Path | None = None) -> dict[str, Any]:
    """Write the table; returns the header (with counts). The sources in priority order: curated, the index
    members (pytickersymbols), then the SEC's other registrants (an alias or symbol goes to the first claimant)."""
    try:
        from pytickersymbols.indices_data import INDICES
    except ImportError:
        raise SystemExit("pytickersymbols is not installed: pip install -e .[entities-build]") from None
    from finsent.models import resolve_model_dir
    from finsent.models.modeldir import TOKENIZER_FILE

    table = _Table(*_common_words(tokenizer_json or resolve_model_dir(None) / TOKENIZER_FILE))
    _add_curated(table)
    sec = _Sec(_sec_rows(find_sec_parquet()))
    for c in _index_companies(INDICES):
        _add_index_company(table, c, sec)
    _add_sec_rest(table, sec)
    header = _header(table)
    _write_table(out, header, table)
    return header


def read_table(path: Path = TABLE_FILE) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the entities of a table file (gzip JSON lines)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        header = json.loads(fh.readline())
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: entity table format {header.get('format')!r}, this finsent reads {FORMAT}")
        return header, [json.loads(line) for line in fh if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m finsent.models.entity_table",
        description="Build the shipped entity table (needs pip install -e .[entities-build])",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="read pytickersymbols and the SEC table, write the gzip JSON lines table")
    b.add_argument("--out", type=Path, default=TABLE_FILE, help=f"default {TABLE_FILE}")
    b.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer.json whose vocabulary defines common words (default: the shipped model's)",
    )
    args = p.parse_args(argv)
    header = build(args.out, args.tokenizer)
    size = args.out.stat().st_size
    print(
        f"{args.out}: {header['entities']} entities, {header['aliases']} aliases, {header['symbols']} symbols, "
        f"{size / 1e6:.2f} MB",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
