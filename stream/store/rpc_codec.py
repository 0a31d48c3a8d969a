"""The tagged JSON that store calls travel in between a command and the worker that owns the store.

Why a codec of our own: the Store methods take and return datetimes, timedeltas, tuples and the core
dataclasses (:class:`ScoredItem`, :class:`Label`, :class:`Alert`, ...), which plain JSON flattens or
refuses, and pickle would let whoever reaches the endpoint run code in the worker. Here every value
that JSON cannot carry as itself is an object with a ``"__t"`` tag, and :func:`decode` builds only the
types named below (:data:`CLASSES` for dataclasses): anything else is a :class:`CodecError`.

Tags: ``dt`` (aware or naive datetime, ISO 8601), ``td`` (timedelta, exact microseconds), ``d`` (date),
``tuple``, ``set``, ``bytes`` (base64), ``map`` (a dict whose keys are not all strings, or that holds
the key ``__t``: a list of pairs), ``dc`` (a whitelisted dataclass: class name and its fields), ``caps``
(the store's :class:`~finsent.stream.store.schema.Capabilities`, as its version text).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import date, datetime, timedelta
from typing import Any

from finsent.core.errors import InputError
from finsent.core.events import Alert, EntityMention, RawItem, ScoredItem
from finsent.core.store import Label, TopicCounts

#: the dataclasses :func:`decode` may build, by name: the core values the Store methods take and give
CLASSES: dict[str, type] = {
    cls.__name__: cls for cls in (Alert, EntityMention, Label, RawItem, ScoredItem, TopicCounts)
}
_TAG = "__t"


class CodecError(InputError):
    """A store call's JSON that names a type the codec does not build, or is malformed."""


def encode(value: Any) -> Any:
    """``value`` as JSON-ready data (see the module docs for the tags)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):  # before date: a datetime is a date
        return {_TAG: "dt", "v": value.isoformat()}
    if isinstance(value, date):
        return {_TAG: "d", "v": value.isoformat()}
    if isinstance(value, timedelta):
        return {_TAG: "td", "us": (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return {_TAG: "tuple", "v": [encode(v) for v in value]}
    if isinstance(value, set | frozenset):
        return {_TAG: "set", "v": [encode(v) for v in value]}
    if isinstance(value, bytes | bytearray):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: encode(v) for k, v in value.items()}
        return {_TAG: "map", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if CLASSES.get(name) is not type(value):
            raise CodecError(f"a store call cannot carry a {type(value).__module__}.{name}")
        return {_TAG: "dc", "c": name, "f": {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    version_text = getattr(value, "version_text", None)
    if type(value).__name__ == "Capabilities" and isinstance(version_text, str):
        return {_TAG: "caps", "v": version_text}
    raise CodecError(f"a store call cannot carry a {type(value).__name__}")


def decode(data: Any) -> Any:
    """The value :func:`encode` made ``data`` from; :class:`CodecError` for a tag or class not listed."""
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        raise CodecError(f"unexpected JSON value of type {type(data).__name__}")
    tag = data.get(_TAG)
    if tag is None:
        return {k: decode(v) for k, v in data.items()}
    try:
        if tag == "dt":
            return datetime.fromisoformat(data["v"])
        if tag == "d":
            return date.fromisoformat(data["v"])
        if tag == "td":
            return timedelta(microseconds=int(data["us"]))
        if tag == "tuple":
            return tuple(decode(v) for v in _list(data["v"]))
        if tag == "set":
            return {decode(v) for v in _list(data["v"])}
        if tag == "bytes":
            return base64.b64decode(str(data["v"]), validate=True)
        if tag == "map":
            return {decode(k): decode(v) for k, v in _list(data["v"])}
        if tag == "caps":
            from finsent.stream.store.schema import Capabilities

            return Capabilities.parse(str(data["v"]))
        if tag == "dc":
            cls = CLASSES.get(str(data["c"]))
            if cls is None:
                raise CodecError(f"a store call cannot build a {data['c']!r}; known: {', '.join(sorted(CLASSES))}")
            fields = data["f"]
            if not isinstance(fields, dict):
                raise CodecError(f"the fields of a {data['c']} must be an object")
            return cls(**{k: decode(v) for k, v in fields.items()})
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"malformed {tag!r} value in a store call: {type(exc).__name__}: {exc}") from None
    raise CodecError(f"unknown tag {tag!r} in a store call")


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise CodecError("a tagged sequence must be a JSON array")
    return value


def dumps(value: Any) -> bytes:
    """``value`` encoded, as UTF-8 JSON bytes (NaN and infinities travel as JSON's common extensions)."""
    return json.dumps(encode(value), ensure_ascii=False, separators=(",", ":")).encode()


def loads(raw: bytes | str) -> Any:
    """The value of :func:`dumps`' bytes; :class:`CodecError` when they are not JSON."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"a store call's body is not JSON: {exc}") from None
    return decode(data)


__all__ = ["CLASSES", "CodecError", "decode", "dumps", "encode", "loads"]
