"""A request URL read as kube-apiserver's Go ``net/url`` reads it, so that watchcache routes
and parses exactly what the API server would.

Go and Python differ on malformed URLs, and a client must not tell the two apart by them:

- The query: Go splits on ``&`` only, skips a pair that holds a ``;`` or an undecodable
  ``%`` escape (the rest of the query still counts), and reads no parameter at all when there
  are more than 10,000. Python keeps such pairs, undecoded.
- The path: Go decodes it before anything routes on it (``%2F`` is a ``/``, ``%2E`` a
  ``.``), and refuses a path with an undecodable escape (400); watchcache's router
  (http.adapter.Router) matches the decoded path too.
"""

from __future__ import annotations

from functools import lru_cache

MAX_QUERY_PARAMS = 10_000  # net/url's default (GODEBUG urlmaxqueryparams)
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _unescape(data: bytes, *, plus: bool) -> bytes | None:
    """net/url's unescape: None for a ``%`` not followed by two hex digits."""
    if b"%" not in data and not (plus and b"+" in data):
        return data
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        ch = data[i]
        if ch == 0x25:  # %
            if i + 2 >= n or data[i + 1] not in _HEX or data[i + 2] not in _HEX:
                return None
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(0x20 if plus and ch == 0x2B else ch)
        i += 1
    return bytes(out)


def parse_query(raw: str | bytes) -> dict[str, list[str]]:
    """url.ParseQuery's values (errors dropped, as Request.URL.Query() drops them); bytes
    that are not UTF-8 become U+FFFD. A fresh dict each time (a caller may change it); the
    parse of a query string seen lately is remembered (a poll repeats its query)."""
    if isinstance(raw, str) and len(raw) <= _REMEMBERED_QUERY_CHARS:
        return {k: list(v) for k, v in _parsed(raw)}
    return _parse_query(raw)


_REMEMBERED_QUERY_CHARS = 2048  # longer ones (junk, mostly) are parsed every time


@lru_cache(maxsize=1024)
def _parsed(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((k, tuple(v)) for k, v in _parse_query(raw).items())


def _parse_query(raw: str | bytes) -> dict[str, list[str]]:
    data = raw.encode("latin-1", "replace") if isinstance(raw, str) else raw
    out: dict[str, list[str]] = {}
    if data.count(b"&") + 1 > MAX_QUERY_PARAMS:
        return out
    for pair in data.split(b"&"):
        if not pair or b";" in pair:
            continue
        key, _, value = pair.partition(b"=")
        k, v = _unescape(key, plus=True), _unescape(value, plus=True)
        if k is None or v is None:
            continue
        out.setdefault(k.decode("utf-8", "replace"), []).append(v.decode("utf-8", "replace"))
    return out


def decode_path(raw: str) -> str | None:
    """The path as Go's URL.Path holds it, or None when it does not decode (Go: 400)."""
    decoded = _unescape(raw.encode("latin-1", "replace"), plus=False)
    return None if decoded is None else decoded.decode("utf-8", "replace")
