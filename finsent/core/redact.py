"""The one redaction of URLs for logs and ``finsent config``: passwords and secret query values become ``***``.

Every URL-valued setting (the store URL, ``FINSENT_ALERTMANAGER_URL``, ``FINSENT_MLFLOW_TRACKING_URI``, and
any other) and every log line that names one goes through :func:`redact_url`, so there is one rule to
get right:

* the userinfo's password is replaced by ``***`` whole; the username may show (it says *which* account
  without granting it). A URL with a user and no password is left alone;
* the userinfo ends at the **last** ``@`` of the authority (as :func:`urllib.parse.urlsplit` reads it),
  so a raw ``@`` or ``:`` in a password is hidden with the rest of it (the old regex stopped at the first
  ``@`` and printed ``probe:***@Sekr1t@host``);
* a raw ``/``, ``?`` or ``#`` in a password ends the authority for ``urlsplit`` (``u:pa/ss@host``), which
  would leave the password's tail in the path, and nothing tells such a password from a path. So the
  userinfo ends at the last ``@`` of the URL that is followed by a host name and has a ``:`` before it,
  wherever it is; only without one is urlsplit's authority used. A URL with an ``@`` in its path or
  query (``?to=ops@example.com``) is then over-redacted: that costs readability, never a secret;
* query (and fragment) parameters whose name looks like a credential -- contains ``token``, ``pass``,
  ``pwd``, ``secret``, ``key``, ``auth``, ``sig``, ``credential`` or ``session`` -- get the value ``***``;
  other parameters are kept byte for byte;
* a string that is not a URL at all (no ``scheme://``) is returned unchanged; one that cannot be parsed
  keeps only what follows its last ``@``.

Kept in the leaf core (it imports nothing of finsent) so that settings, the store and the CLI share it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

__all__ = ["MASK", "is_secret_param", "redact_url"]

MASK = "***"
_SECRET_PARAM_RE = re.compile(r"token|pass|pwd|secret|key|auth|sig|credential|session", re.IGNORECASE)
_HOST_AFTER_AT_RE = re.compile(r"@(\[[0-9A-Fa-f:.]+\]|[\w.\-]+)(:\d*)?(?=[/?#]|$)")


def is_secret_param(name: str) -> bool:
    """Whether a query parameter called ``name`` carries a credential (its value must not be shown)."""
    return bool(_SECRET_PARAM_RE.search(unquote(name)))


def _redact_params(params: str) -> str:
    """``a=1&token=x`` -> ``a=1&token=***``: secret values masked, every other byte kept."""
    if "=" not in params:
        return params
    out = []
    for sep_part in re.split(r"([&;])", params):
        name, eq, _value = sep_part.partition("=")
        out.append(f"{name}={MASK}" if eq and is_secret_param(name) else sep_part)
    return "".join(out)


def _redact_tail(tail: str) -> str:
    """Path, query and fragment of a URL (``/db?password=x#t``) with secret parameter values masked."""
    path, qmark, rest = tail.partition("?")
    if not qmark:
        path, hash_, frag = tail.partition("#")
        return path + (hash_ + _redact_params(frag) if hash_ else "")
    query, hash_, frag = rest.partition("#")
    return path + "?" + _redact_params(query) + (hash_ + _redact_params(frag) if hash_ else "")


def _credentials_end(rest: str, netloc: str) -> int | None:
    """Index in ``rest`` (the URL after ``scheme://``) of the ``@`` that ends the userinfo, or None.

    The last ``@`` followed by a host name with a ``:`` somewhere before it, wherever it is: a raw ``/``,
    ``?`` or ``#`` in a password cuts urlsplit's authority short, and no reading of the URL can tell such a
    password from a path, so the safe one is taken (see the module docstring). Else urlsplit's reading.
    """
    last = None
    for m in _HOST_AFTER_AT_RE.finditer(rest):
        if ":" in rest[: m.start()]:
            last = m.start()
    if last is not None:
        return last
    return netloc.rindex("@") if "@" in netloc else None


def redact_url(url: str) -> str:
    """``url`` safe to print: its password and secret query values replaced by ``***`` (module docstring)."""
    if not isinstance(url, str) or "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # e.g. an unbalanced [ in the host: keep only what follows the credentials
        return f"{scheme}://{MASK}@{rest.rsplit('@', 1)[-1]}" if "@" in rest else url
    at = _credentials_end(rest, netloc)
    shown = ""
    if at is not None:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, _password = userinfo.partition(":")
        if not colon:
            shown = f"{userinfo}@"  # a user name alone: no password to hide
        elif re.search(r"[/?#]", user):
            shown = f"{MASK}@"
        else:
            shown = f"{user}:{MASK}@"
    host_end = re.search(r"[/?#]", rest)
    hostport, tail = (rest[: host_end.start()], rest[host_end.start() :]) if host_end else (rest, "")
    return f"{scheme}://{shown}{hostport}{_redact_tail(tail)}"
