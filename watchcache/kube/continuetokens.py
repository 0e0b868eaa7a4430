"""The API server's own continue tokens (storage.EncodeContinue / DecodeContinue), decoded
and refused with its exact messages, down to the quirks of Go's JSON decoder.

watchcache's cache issues tokens of its own (``pagination``); these are the API server's, met
when a list was passed through and its token comes back.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from watchcache.kube.selectors import _go_quote  # Go's strconv.Quote; shared rather than copied


@dataclass(frozen=True, slots=True)
class ContinueToken:
    """Where a paged list goes on: the first key (namespace/name, compared as bytes) at or
    after ``start`` and the snapshot RV, -1 meaning the latest state."""

    start: str
    resource_version: int


def _go_json_string(text: str) -> str:
    """encoding/json's string: HTML-safe, and U+2028/2029 escaped, unlike Python's."""
    text = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    out = json.dumps(text, ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        out = out.replace(raw, escaped)
    return out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def encode_continue(start: str, resource_version: int) -> str:
    """A token byte-for-byte as the apiserver would write it; to start after key K pass
    K + "\\0", as the apiserver does."""
    doc = f'{{"v":"meta.k8s.io/v1","rv":{resource_version},"start":{_go_json_string(start)}}}'
    return base64.urlsafe_b64encode(doc.encode("utf-8")).rstrip(b"=").decode("ascii")


_B64 = {ch: i for i, ch in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")}
_B64 |= {ch: 52 + i for i, ch in enumerate(b"0123456789-_")}
_INVALID_KEY = "continue key is not valid"
_NOT_RECOGNIZED = f"{_INVALID_KEY}: server does not recognize this encoded version"
_V1 = "(version meta.k8s.io/v1)"


def _decode_b64(data: bytes) -> bytes:
    """base64.RawURLEncoding.DecodeString: CR and LF skipped, no padding allowed."""
    sextets = [(_B64.get(byte), i) for i, byte in enumerate(data) if byte not in (10, 13)]
    for value, index in sextets:
        if value is None:
            raise ValueError(f"illegal base64 data at input byte {index}")
    if len(sextets) % 4 == 1:
        raise ValueError(f"illegal base64 data at input byte {len(data) - 1}")
    bits = "".join(f"{value:06b}" for value, _ in sextets)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - 7, 8))


def decode_continue(token: str) -> ContinueToken:
    """storage.DecodeContinue; ValueError(message) as the apiserver words it."""
    try:
        doc = _check_json(_decode_b64(token.encode("utf-8", "surrogateescape")))
        version, rv, start = _token_fields(doc)
    except ValueError as exc:
        raise ValueError(f"{_INVALID_KEY}: {exc}") from None
    if version != "meta.k8s.io/v1":
        raise ValueError(f"{_NOT_RECOGNIZED} {version}")
    if rv == 0:
        raise ValueError(f"{_INVALID_KEY}: incorrect encoded start resourceVersion {_V1}")
    if not start:
        raise ValueError(f"{_INVALID_KEY}: encoded start key empty {_V1}")
    key = start if start.startswith("/") else "/" + start
    # path.Clean(key) == key: no empty, "." or ".." segment and no trailing slash.
    if key != "/" and any(seg in ("", ".", "..") for seg in key[1:].split("/")):
        raise ValueError(f"{_INVALID_KEY}: {start}")
    return ContinueToken(key[1:], rv)


# encoding/json, as far as a continue token needs it: its syntax errors, then its type errors.


class _Object(list[tuple[str, Any]]):  # a JSON object's (key, value) pairs, in order
    __slots__ = ()


class _Number(str):  # a JSON number's literal text
    __slots__ = ()


_HEX_ESCAPE = "in \\u hexadecimal character escape"


def _quote_char(byte: int) -> str:
    if byte in (0x22, 0x27):
        return "'\\''" if byte == 0x27 else "'\"'"
    return "'" + _go_quote(chr(byte))[1:-1] + "'"


class _Syntax:
    """Go's scanner, as a recursive descent giving the same first error. At the end of the
    input Go feeds one space, so a number or literal cut short complains about ' '."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def fail(self, context: str, *, at_end_space: bool = False) -> ValueError:
        byte = self.peek()
        if byte < 0 and not at_end_space:
            return ValueError("unexpected end of JSON input")
        return ValueError(f"invalid character {_quote_char(byte if byte >= 0 else 0x20)} {context}")

    def space(self) -> int:
        while self.peek() in (0x20, 0x09, 0x0A, 0x0D):
            self.pos += 1
        return self.peek()

    def check(self) -> None:
        self.space()
        self.value(0)
        if self.space() >= 0:
            raise self.fail("after top-level value")

    def value(self, depth: int) -> None:
        byte = self.space()
        if byte in (0x7B, 0x5B) and depth >= 10000:
            raise self.fail("exceeded max depth")
        if byte == 0x7B:  # {
            self.pos += 1
            if self.space() == 0x7D:
                self.pos += 1
                return
            while True:
                if self.space() != 0x22:
                    raise self.fail("looking for beginning of object key string")
                self.string()
                if self.space() != 0x3A:
                    raise self.fail("after object key")
                self.pos += 1
                self.value(depth + 1)
                byte = self.space()
                self.pos += 1
                if byte == 0x7D:
                    return
                if byte != 0x2C:
                    self.pos -= 1
                    raise self.fail("after object key:value pair")
        elif byte == 0x5B:  # [
            self.pos += 1
            if self.space() == 0x5D:
                self.pos += 1
                return
            while True:
                self.value(depth + 1)
                byte = self.space()
                self.pos += 1
                if byte == 0x5D:
                    return
                if byte != 0x2C:
                    self.pos -= 1
                    raise self.fail("after array element")
        elif byte == 0x22:
            self.string()
        elif byte == 0x2D or 0x30 <= byte <= 0x39:
            self.number()
        elif byte in (0x74, 0x66, 0x6E):  # t f n
            word = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}[byte]
            for expected in word[1:]:
                self.pos += 1
                if self.peek() != expected:
                    context = f"in literal {word.decode()} (expecting {_quote_char(expected)})"
                    raise self.fail(context, at_end_space=True)
            self.pos += 1
        else:
            raise self.fail("looking for beginning of value")

    def string(self) -> None:
        self.pos += 1
        while (byte := self.peek()) != 0x22:
            if byte < 0:
                raise self.fail("")
            if byte < 0x20:
                raise self.fail("in string literal")
            self.pos += 1
            if byte == 0x5C:
                escape = self.peek()
                if escape == 0x75:  # \uXXXX
                    for _ in range(4):
                        self.pos += 1
                        if self.peek() < 0 or chr(self.peek()) not in "0123456789abcdefABCDEF":
                            raise self.fail(_HEX_ESCAPE, at_end_space=True)
                elif escape < 0 or chr(escape) not in 'bfnrt\\/"':
                    raise self.fail("in string escape code", at_end_space=True)
                self.pos += 1
        self.pos += 1

    def digits(self) -> None:
        while 0x30 <= self.peek() <= 0x39:
            self.pos += 1

    def number(self) -> None:
        if self.peek() == 0x2D:
            self.pos += 1
            if not 0x30 <= self.peek() <= 0x39:
                raise self.fail("in numeric literal", at_end_space=True)
        if self.peek() == 0x30:
            self.pos += 1
        else:
            self.digits()
        if self.peek() == 0x2E:
            self.pos += 1
            if not 0x30 <= self.peek() <= 0x39:
                raise self.fail("after decimal point in numeric literal", at_end_space=True)
            self.digits()
        if self.peek() in (0x65, 0x45):
            self.pos += 1
            if self.peek() in (0x2B, 0x2D):
                self.pos += 1
            if not 0x30 <= self.peek() <= 0x39:
                raise self.fail("in exponent of numeric literal", at_end_space=True)
            self.digits()


def _check_json(data: bytes) -> Any:
    """json.Unmarshal's syntax pass, then the document (objects as _Object, numbers as
    _Number). Go turns invalid UTF-8 in strings into U+FFFD, as 'replace' does. Go nests up
    to 10000 deep; Python's stack gives out first, reported with Go's depth message."""
    try:
        _Syntax(data).check()
        return json.loads(
            data.decode("utf-8", "replace"),
            object_pairs_hook=_Object,
            parse_int=_Number,
            parse_float=_Number,
        )
    except RecursionError:
        raise ValueError("invalid character '[' exceeded max depth") from None


def _json_kind(value: Any) -> str:
    if isinstance(value, _Object):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, _Number):
        return "number"
    return "bool" if isinstance(value, bool) else "string"


def _token_fields(doc: Any) -> tuple[str, int, str]:
    """Unmarshal into continueToken{v string; rv int64; start string}: keys match exactly,
    else ignoring case; null changes nothing; the first type error is the one reported, after
    the rest is decoded."""
    fields: dict[str, Any] = {"v": "", "rv": 0, "start": ""}
    if doc is None:
        return "", 0, ""
    if not isinstance(doc, _Object):
        kind = _json_kind(doc)
        raise ValueError(
            f"json: cannot unmarshal {kind} into Go value of type storage.continueToken"
        )
    error: str | None = None
    for key, value in doc:
        name = key if key in fields else key.lower() if key.lower() in fields else None
        if name is None or value is None:
            continue
        want = "int64" if name == "rv" else "string"
        if want == "string" and isinstance(value, str) and not isinstance(value, _Number):
            fields[name] = value
            continue
        if want == "int64" and isinstance(value, _Number):
            number = _int64_literal(value)
            if number is not None:
                fields[name] = number
                continue
        kind = _json_kind(value)
        if kind == "number" and want == "int64":
            kind = f"number {value}"
        field = f"Go struct field continueToken.{name} of type {want}"
        error = error or f"json: cannot unmarshal {kind} into {field}"
    if error:
        raise ValueError(error)
    return fields["v"], fields["rv"], fields["start"]


def _int64_literal(text: str) -> int | None:
    if any(ch in text for ch in ".eE") or len(text.lstrip("-")) > 19:
        return None  # past 19 digits it is out of range (and int() would refuse 4,300)
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None
