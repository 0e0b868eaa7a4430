"""Request bodies, decoded and encoded with bounds: the one place a client's body is read.

A body is at most 3 MiB (kube-apiserver's limit), and what is decoded from it is bounded the
way kube-apiserver bounds it, so that what it accepts is accepted here and what it refuses
is refused with the same code and reason (400 BadRequest, 413 RequestEntityTooLarge):

- nesting: 10,000 levels for JSON (its json decoder) and for YAML (its YAML scanner, then the
  same JSON limit on the converted document). orjson stops at 1,024, so deeper JSON is read
  by an iterative parser here; no step recurses, so no depth reaches Python's stack.
- YAML aliases: refused when they make up almost all of the decoded nodes, go-yaml's rule
  (over 100 aliased nodes, over 1,000 in all, and a ratio above 99 % for small documents,
  10 % for very large ones), which is what stops a "billion laughs". Nodes an alias repeats
  are shared while decoding and copied only when the expansion fits in 3 MiB, so memory
  follows the body's size, never the expansion's.
- decoded size: a body re-encoded for the API server (a middleware changed it) is held to
  3 MiB like any body; an expansion past that is refused with 413 when it would be sent.
- text: invalid UTF-8 in a JSON string becomes U+FFFD and so does a lone surrogate escape,
  as Go decodes them; an integer is never parsed past 20 digits (Python's int() of a
  4,300-digit string raises), a number out of float range is a 400 as in Go.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import ctypes
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson
import yaml

from watchcache.kube.status import StatusError

# kube-apiserver's limit on a request body, and the one a re-encoded body is held to.
MAX_BODY = 3 * 1024 * 1024
# Nesting kube-apiserver decodes (sigs.k8s.io/json's and go-yaml's maxNestingDepth).
MAX_DEPTH = 10_000
_INT64 = (-(2**63), 2**63)
_UINT64_END = 2**64

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# libyaml stops at 1,000 levels; its own setter (exported by PyYAML's extension) lifts that
# to go-yaml's 10,000. Without it YAML deeper than 1,000 is refused (a 400, never a crash).
with contextlib.suppress(AttributeError, OSError, ImportError):
    import yaml._yaml as _cyaml

    ctypes.CDLL(_cyaml.__file__).yaml_set_max_nest_level(MAX_DEPTH + 1)


def request_too_large() -> StatusError:
    return StatusError(413, f"Request entity too large: limit is {MAX_BODY}")


def bad_request(message: str) -> StatusError:
    return StatusError(400, message)


def content_length(values: list[str]) -> int | None:
    """net/http's reading of Content-Length: digits only, below 2**63, repeated headers all
    equal. None when Go would answer 400 (no huge int is ever built)."""
    if not values:
        return None
    first = values[0].strip(" \t")
    if any(v.strip(" \t") != first for v in values[1:]):
        return None
    if not first or len(first) > 19 or not (first.isascii() and first.isdigit()):
        return None
    number = int(first)
    return number if number < 2**63 else None


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded body. ``shared`` is set when YAML aliases expand past MAX_BODY: the value
    then shares the repeated nodes (it must not be changed, nor re-encoded)."""

    value: Any
    shared: bool = False


def decode(body: bytes, content_type: str) -> Decoded:
    """The body as JSON, or as YAML when the content type says so (as the API server reads
    either); a Status error for anything the API server would refuse to decode."""
    if len(body) > MAX_BODY:
        raise request_too_large()
    if "yaml" in content_type:
        return _YamlBuilder(body).build()
    return Decoded(decode_json(body))


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # orjson is stricter than Go in places (depth, surrogates, UTF-8): ask the slow path
    try:
        return _JsonParser(body.decode("utf-8", "watchcache-go-utf8")).parse()
    except _JsonError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None


def dumps(obj: Any) -> bytes:
    """``obj`` as JSON, at any depth (orjson stops at 254 levels; a loop takes over)."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return _encode_iteratively(obj)


def encode(obj: Any) -> bytes:
    """``obj`` as a request body for the API server, held to MAX_BODY (413 past it)."""
    data = dumps(obj)
    if len(data) > MAX_BODY:
        raise request_too_large()
    return data


# --- JSON ------------------------------------------------------------------------------------


def _go_utf8(exc: UnicodeError) -> tuple[str, int]:
    """Go's decoding of invalid UTF-8: one U+FFFD per byte that does not fit."""
    assert isinstance(exc, UnicodeDecodeError)
    return "\ufffd" * (exc.end - exc.start), exc.end


codecs.register_error("watchcache-go-utf8", _go_utf8)

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LITERALS = {"true": True, "false": False, "null": None}


class _JsonError(ValueError):
    pass


def _depth_error() -> _JsonError:
    return _JsonError("invalid character exceeded max depth")


class _JsonParser:
    """An iterative JSON parser: Go's grammar and limits, an explicit stack for nesting."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def ws(self) -> None:
        self.i = _WS.match(self.text, self.i).end()  # type: ignore[union-attr]

    def fail(self, what: str) -> _JsonError:
        near = self.text[self.i : self.i + 1]
        where = f"invalid character {near!r}" if near else "unexpected end of JSON input"
        return _JsonError(f"{where} {what} (offset {self.i})")

    def string(self) -> str:
        try:
            value, self.i = json.decoder.scanstring(self.text, self.i + 1, True)  # type: ignore[attr-defined]
        except json.JSONDecodeError as exc:
            raise _JsonError(f"{exc.msg} (offset {exc.pos})") from None
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value

    def key(self) -> str:
        self.ws()
        if self.text[self.i : self.i + 1] != '"':
            raise self.fail("looking for beginning of object key string")
        key = self.string()
        self.ws()
        if self.text[self.i : self.i + 1] != ":":
            raise self.fail("after object key")
        self.i += 1
        return key

    def number(self) -> Any:
        m = _NUMBER.match(self.text, self.i)
        if m is None:
            raise self.fail("looking for beginning of value")
        self.i = m.end()
        text = m.group()
        if m.group(1) is None and m.group(2) is None and len(text) <= 20:
            number = int(text)
            if _INT64[0] <= number < _UINT64_END:
                return number
        value = float(text)  # float() has no digit limit; Go's range check follows
        if math.isinf(value):
            raise _JsonError(f"cannot unmarshal number {text[:40]} into Go value of type float64")
        return value

    def parse(self) -> Any:
        text = self.text
        stack: list[Any] = []
        keys: list[str] = []
        while True:
            self.ws()
            c = text[self.i : self.i + 1]
            value: Any
            if c in ("{", "["):
                if len(stack) >= MAX_DEPTH:
                    raise _depth_error()
                self.i += 1
                self.ws()
                close = "}" if c == "{" else "]"
                if text[self.i : self.i + 1] == close:
                    self.i += 1
                    value = {} if c == "{" else []
                else:
                    stack.append({} if c == "{" else [])
                    if c == "{":
                        keys.append(self.key())
                    continue
            elif c == '"':
                value = self.string()
            elif c in _FIRST_OF_LITERAL:
                word = text[self.i : self.i + len(_FIRST_OF_LITERAL[c])]
                if word != _FIRST_OF_LITERAL[c]:
                    raise self.fail("in literal")
                self.i += len(word)
                value = _LITERALS[word]
            else:
                value = self.number()
            while True:  # place the value, then read what follows it
                if not stack:
                    self.ws()
                    if self.i != len(text):
                        raise self.fail("after top-level value")
                    return value
                top = stack[-1]
                if isinstance(top, list):
                    top.append(value)
                else:
                    top[keys.pop()] = value
                self.ws()
                c = text[self.i : self.i + 1]
                if c == ",":
                    self.i += 1
                    if isinstance(top, dict):
                        keys.append(self.key())
                    break
                if c == ("]" if isinstance(top, list) else "}"):
                    self.i += 1
                    value = stack.pop()
                    continue
                raise self.fail("after array element or object key:value pair")


_FIRST_OF_LITERAL = {"t": "true", "f": "false", "n": "null"}


def _encode_iteratively(obj: Any) -> bytes:
    """JSON for any depth: an explicit stack, orjson for each scalar."""
    out: list[bytes] = []
    stack: list[Any] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, dict):
            out.append(b"{")
            parts: list[Any] = []
            for n, (key, value) in enumerate(item.items()):
                parts += [b"," if n else b"", orjson.dumps(str(key)) + b":", value]
            stack.append(b"}")
            stack.extend(reversed(parts))
        elif isinstance(item, list | tuple):
            out.append(b"[")
            parts = []
            for n, value in enumerate(item):
                parts += [b"," if n else b"", value]
            stack.append(b"]")
            stack.extend(reversed(parts))
        elif isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**64:
            out.append(orjson.dumps(float(item)))
        else:
            out.append(orjson.dumps(item))
    return b"".join(out)


def _copy(value: Any) -> Any:
    """A deep copy of a JSON-like tree (lists and dicts), without recursion."""
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    work = [(value, root)]
    while work:
        src, dst = work.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for key, child in items:
            if isinstance(child, dict | list):
                copied: Any = {} if isinstance(child, dict) else []
                work.append((child, copied))
                child = copied
            if isinstance(dst, dict):
                dst[key] = child
            else:
                dst.append(child)
    return root


# --- YAML ------------------------------------------------------------------------------------

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


def _allowed_alias_ratio(decodes: int) -> float:
    """go-yaml's share of decoded nodes that may come from aliases, by document size."""
    low, high = 400_000, 4_000_000
    if decodes <= low:
        return 0.99
    if decodes >= high:
        return 0.10
    return 0.99 - 0.89 * (decodes - low) / (high - low)


@dataclass(slots=True)
class _Node:
    """A finished YAML node: its value and what it costs when expanded like go-yaml does."""

    value: Any
    decodes: int  # go-yaml's unmarshal calls for it, aliases expanded
    size: int  # estimated bytes of its JSON
    height: int  # nesting levels, itself included
    collection: bool = False


@dataclass(slots=True)
class _Frame:
    value: Any
    anchor: str | None
    decodes: int = 1
    size: int = 2
    height: int = 1
    key: Any = None
    has_key: bool = False
    merge_next: bool = False
    merges: list[Any] | None = None


class _YamlBuilder:
    """Builds the document from libyaml's events, one loop, no recursion; counts what an
    expansion of its aliases would cost and refuses as go-yaml (or the 3 MiB limit) does."""

    def __init__(self, body: bytes) -> None:
        self.loader = _Loader(body)
        self.anchors: dict[str, _Node] = {}
        self.stack: list[_Frame] = []
        self.decodes = 1  # the document node
        self.aliased = 0
        self.aliased_collections = False

    def build(self) -> Decoded:
        try:
            root = self._document()
        except yaml.YAMLError as exc:
            raise bad_request(f"the body is not valid YAML: {exc}") from None
        finally:
            self.loader.dispose()
        if root is None:
            return Decoded(None)
        if root.size > MAX_BODY:
            return Decoded(root.value, shared=True)
        return Decoded(_copy(root.value) if self.aliased_collections else root.value)

    def _document(self) -> _Node | None:
        loader = self.loader
        loader.get_event()  # StreamStart
        if loader.check_event(yaml.StreamEndEvent):
            return None
        loader.get_event()  # DocumentStart
        while True:
            event = loader.get_event()
            if isinstance(event, yaml.DocumentEndEvent):
                return None  # an empty document
            done = self._event(event)
            if done is not None:
                return done  # the first document only, as the API server reads it

    def _count(self, decodes: int = 1, aliased: int = 0) -> None:
        self.decodes += decodes
        self.aliased += aliased
        if (
            self.aliased > 100
            and self.decodes > 1000
            and self.aliased / self.decodes > _allowed_alias_ratio(self.decodes)
        ):
            raise bad_request("yaml: document contains excessive aliasing")

    def _event(self, event: Any) -> _Node | None:
        """Handles one event; returns the root once it is complete."""
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            self._count()
            if len(self.stack) >= MAX_DEPTH:
                raise bad_request("json parse error: invalid character exceeded max depth")
            is_map = isinstance(event, yaml.MappingStartEvent)
            self.stack.append(_Frame({} if is_map else [], event.anchor))
            return None
        if isinstance(event, yaml.ScalarEvent):
            self._count()
            node = _Node(self._scalar(event), 1, len(event.value) + 2, 0)
            if event.anchor:
                self.anchors[event.anchor] = node
        elif isinstance(event, yaml.AliasEvent):
            node = self._alias(event)
        else:  # the end of a collection
            frame = self.stack.pop()
            if frame.merges:
                frame.value = _merged(frame.value, frame.merges)
            node = _Node(frame.value, frame.decodes, frame.size, frame.height, True)
            if frame.anchor:
                self.anchors[frame.anchor] = node
        return self._place(node, event)

    def _alias(self, event: Any) -> _Node:
        self._count()
        target = self.anchors.get(event.anchor)
        if target is None:
            if any(f.anchor == event.anchor for f in self.stack):
                raise bad_request(f"yaml: anchor '{event.anchor}' value contains itself")
            raise bad_request(f"yaml: unknown anchor '{event.anchor}' referenced")
        self._count(target.decodes, target.decodes)
        if len(self.stack) + target.height > MAX_DEPTH:
            raise bad_request("json parse error: invalid character exceeded max depth")
        self.aliased_collections |= target.collection
        return _Node(
            target.value, 1 + target.decodes, target.size, target.height, target.collection
        )

    def _place(self, node: _Node, event: Any) -> _Node | None:
        if not self.stack:
            return node
        frame = self.stack[-1]
        frame.decodes += node.decodes
        frame.size += node.size + 1
        frame.height = max(frame.height, node.height + 1)
        if isinstance(frame.value, list):
            frame.value.append(node.value)
            return None
        if not frame.has_key:
            if isinstance(event, yaml.ScalarEvent) and self._is_merge(event):
                frame.merge_next = True
                frame.decodes -= 1  # go-yaml does not decode a merge key
            elif node.collection:
                raise bad_request("yaml: invalid map key: a mapping or sequence")
            frame.key, frame.has_key = _key(node.value), True
            return None
        frame.has_key = False
        if frame.merge_next:
            frame.merge_next = False
            frame.merges = (frame.merges or []) + _merge_sources(node.value)
        else:
            frame.value[frame.key] = node.value
        return None

    def _is_merge(self, event: Any) -> bool:
        return event.tag is None and event.value == "<<" and event.implicit[0]

    def _scalar(self, event: Any) -> Any:
        value: str = event.value
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, value, event.implicit)
        if tag in (_STR, _MERGE) or not tag.startswith("tag:yaml.org,2002:"):
            return value
        kind = tag.rsplit(":", 1)[1]
        try:
            return self._typed(kind, yaml.ScalarNode(tag, value), event.tag not in (None, "!"))
        except (ValueError, IndexError, TypeError):
            # Only an explicit tag can ask for what the text is not (``!!float abc``).
            raise bad_request(f"yaml: cannot decode {value[:40]!r} as a !!{kind}") from None

    def _typed(self, kind: str, node: yaml.ScalarNode, explicit: bool) -> Any:
        value: str = node.value
        if kind == "null":
            return None
        if kind == "bool":
            return self.loader.construct_yaml_bool(node)
        if kind == "int":
            return self._int(node, explicit)
        if kind == "float":
            return self.loader.construct_yaml_float(node)
        if kind == "binary":
            try:
                data = "".join(value.split()).encode()
                return base64.b64decode(data, validate=True).decode("utf-8", "replace")
            except ValueError as exc:
                raise bad_request(f"yaml: invalid base64 data: {exc}") from None
        return value  # timestamps stay text, as go-yaml leaves them for JSON

    def _int(self, node: yaml.ScalarNode, explicit: bool) -> Any:
        """An integer in go-yaml's range (int64, then uint64), else a float, else the text;
        long digit strings never reach int(). Text an explicit ``!!int`` cannot read is an
        error, as in go-yaml."""
        plain = node.value.replace("_", "")
        if len(plain) <= 70:
            try:
                number = self.loader.construct_yaml_int(node)
            except ValueError:
                if explicit:
                    raise
            else:
                if _INT64[0] <= number < _UINT64_END:
                    return number
        if re.fullmatch(r"[-+]?[0-9]+", plain):
            as_float = float(plain)
            if not math.isinf(as_float):
                return as_float
        return node.value


def _key(value: Any) -> str:
    """A mapping key as the JSON conversion writes it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value) if isinstance(value, int) else repr(value)


def _merge_sources(value: Any) -> list[dict[str, Any]]:
    sources = value if isinstance(value, list) else [value]
    if not all(isinstance(s, dict) for s in sources):
        raise bad_request("yaml: map merge requires map or sequence of maps as the value")
    return sources


def _merged(explicit: dict[str, Any], merges: list[dict[str, Any]]) -> dict[str, Any]:
    """``<<`` merges: keys the mapping sets win, then earlier merged mappings."""
    out: dict[str, Any] = {}
    for source in reversed(merges):
        out.update(source)
    out.update(explicit)
    return out
