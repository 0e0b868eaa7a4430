"""Label and field selectors, parsed and matched exactly as the Kubernetes API server does.

A client must not be able to tell us from the API server by sending a selector: the same text
is accepted or rejected, rejections carry the same message, and the same objects match. So the
grammar follows ``k8s.io/apimachinery`` v0.36 (``labels.Parse``, ``fields.ParseSelector``) to
the letter, quirks included; each quirk is noted where it is reproduced.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal


class SelectorError(ValueError):
    """A malformed selector; str(exc) is the message the Kubernetes API server would put in its
    400 Status."""


# --- label and value validation (apimachinery pkg/api/validate/content) -----------------------

_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_VALUE_FMT = f"({_KEY_FMT})?"
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + ")*"
_KEY_RE = re.compile(_KEY_FMT)
_VALUE_RE = re.compile(_VALUE_FMT)
_SUBDOMAIN_RE = re.compile(_DNS1123_SUBDOMAIN_FMT)
_INT64_RE = re.compile("[+-]?[0-9]+")
_KEY_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', "
    "and must start and end with an alphanumeric character"
)
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, "
    "'-', '_' or '.', and must start and end with an alphanumeric character"
)
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character"
)


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    # Go builds "'a', " + " or " + "'b', ": the doubled space is in the real message.
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _byte_len(text: str) -> int:
    """Go measures strings in UTF-8 bytes, and so do its length limits."""
    return len(text.encode("utf-8", "surrogatepass"))


def _label_key_errors(key: str) -> list[str]:
    errs: list[str] = []
    parts = key.split("/")
    if len(parts) > 2:
        return [
            "a valid label key "
            + _regex_error(_KEY_MSG, _KEY_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            if _byte_len(prefix) > 253:
                errs.append("prefix part must be no more than 253 bytes")
            if not _SUBDOMAIN_RE.fullmatch(prefix):
                errs.append(
                    "prefix part "
                    + _regex_error(_SUBDOMAIN_MSG, _DNS1123_SUBDOMAIN_FMT, "example.com")
                )
    if not name:
        errs.append("name part must be non-empty")
    elif _byte_len(name) > 63:
        errs.append("name part must be no more than 63 bytes")
    if not _KEY_RE.fullmatch(name):
        errs.append("name part " + _regex_error(_KEY_MSG, _KEY_FMT, "MyName", "my.name", "123-abc"))
    return errs


def _label_value_errors(value: str) -> list[str]:
    errs: list[str] = []
    if _byte_len(value) > 63:
        errs.append("must be no more than 63 bytes")
    if not _VALUE_RE.fullmatch(value):
        errs.append(_regex_error(_VALUE_MSG, _VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


_GO_ESCAPES = {"\a": "a", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t", "\v": "v"}


def _go_quote(text: str) -> str:
    """Go's %q, which field.Error uses to show the offending value."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():  # the same classes as Go's unicode.IsPrint
            out.append(ch)
        elif ch in _GO_ESCAPES:
            out.append("\\" + _GO_ESCAPES[ch])
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _invalid(path: str, value: str, detail: str) -> str:
    """One field.Invalid error as text; the parser's own path is nil, printed '<nil>'."""
    return f"{path}: Invalid value: {_go_quote(value)}: {detail}"


def _aggregate(errors: list[str]) -> str:
    """utilerrors.Aggregate's text: one error alone, several de-duplicated inside brackets."""
    unique = list(dict.fromkeys(errors))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


def _parse_int64(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64): ASCII digits with an optional sign, in int64 range.
    More than 19 significant digits is out of range before int() sees them (Python's int()
    refuses 4,300 digits); leading zeros are fine, as in Go."""
    if not _INT64_RE.fullmatch(text):
        return None
    digits = text.lstrip("+-").lstrip("0") or "0"
    if len(digits) > 19:
        return None
    number = -int(digits) if text[0] == "-" else int(digits)
    return number if -(2**63) <= number < 2**63 else None


# --- label selectors --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    """One label requirement. op is a selection.Operator value: '=', '!=', 'in', 'notin',
    'exists', '!', or 'gt'/'lt' (the API server accepts 'a>1' and 'a<1' too); '==' is '='."""

    key: str
    op: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """labels.Requirement.Matches: '!=' and 'notin' match an absent key, 'in' does not."""
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        value = labels.get(self.key)
        if op in ("=", "in"):
            return value is not None and value in self.values
        if op in ("!=", "notin"):
            return value is None or value not in self.values
        if op in ("gt", "lt") and value is not None and len(self.values) == 1:
            have, (want_text,) = _parse_int64(value), self.values
            want = _parse_int64(want_text)
            if have is None or want is None:
                return False
            return have > want if op == "gt" else have < want
        return False


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """All requirements must match (sorted by key, as Kubernetes sorts them)."""

    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(req.matches(labels) for req in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def index_candidates(self) -> tuple[str, frozenset[str]] | None:
        """The most selective (key, allowed values) pair usable with a label index: from an '='
        or 'in' requirement (fewest values); None when there is none. Lets a store look up
        candidates by index then check matches()."""
        best: Requirement | None = None
        for req in self.requirements:
            if req.op in ("=", "in") and (best is None or len(req.values) < len(best.values)):
                best = req
        return None if best is None else (best.key, best.values)


# A token is (kind, literal): the kind of an operator or keyword is its literal.
_IDENT, _END = "identifier", "end of string"
_KEYWORDS = frozenset({"(", ")", ",", "!", "=", "==", "!=", ">", "<", "in", "notin"})
_BINARY_OPS = {"in": "in", "notin": "notin", "=": "=", "==": "=", "!=": "!=", ">": "gt", "<": "lt"}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")


def _lex(text: str) -> list[tuple[str, str]]:
    """The labels lexer. Like Go's, it reads NUL as 'end': a NUL where a token would start ends
    the input, while one right after a token is consumed and skipped."""
    items: list[tuple[str, str]] = []
    pos, size = 0, len(text)
    while True:
        while pos < size and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= size or text[pos] == "\0":
            items.append((_END, ""))
            return items
        start = pos
        if text[pos] in _SPECIAL:
            # Longest operator: only '==' and '!=' are two characters long.
            pos += 2 if text[pos : pos + 2] in ("==", "!=") else 1
        else:
            while pos < size and text[pos] not in _SPECIAL and text[pos] not in _WHITESPACE:
                if text[pos] == "\0":
                    break
                pos += 1
        literal = text[start:pos]
        if pos < size and text[pos] == "\0":
            pos += 1
        items.append((literal if literal in _KEYWORDS else _IDENT, literal))


class _RequirementError(Exception):
    """A failure inside one requirement; parse() prefixes 'unable to parse requirement: '."""


class _LabelParser:
    def __init__(self, text: str) -> None:
        self._items = _lex(text)
        self._pos = 0

    def _peek(self, *, values: bool = True) -> tuple[str, str]:
        return self._token(self._items[self._pos], values)

    def _next(self, *, values: bool = True) -> tuple[str, str]:
        self._pos += 1
        return self._token(self._items[self._pos - 1], values)

    @staticmethod
    def _token(item: tuple[str, str], values: bool) -> tuple[str, str]:
        # Outside the operator position 'in' and 'notin' are plain words: 'in in (notin)'.
        if values and item[0] in ("in", "notin"):
            return _IDENT, item[1]
        return item

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            tok, lit = self._peek()
            if tok == _END:
                return requirements
            if tok not in (_IDENT, "!"):
                raise SelectorError(f"found '{lit}', expected: !, identifier, or 'end of string'")
            try:
                requirements.append(self._requirement())
            except _RequirementError as exc:
                raise SelectorError(f"unable to parse requirement: {exc}") from None
            tok, lit = self._next()
            if tok == _END:
                return requirements
            if tok != ",":
                raise SelectorError(f"found '{lit}', expected: ',' or 'end of string'")
            tok, lit = self._peek()
            if tok not in (_IDENT, "!"):
                raise SelectorError(f"found '{lit}', expected: identifier after ','")

    def _requirement(self) -> Requirement:
        tok, key = self._next()
        negated = tok == "!"
        if negated:
            tok, key = self._next()
        if tok != _IDENT:
            raise _RequirementError(f"found '{key}', expected: identifier")
        if errs := _label_key_errors(key):
            raise _RequirementError(_invalid("<nil>", key, "; ".join(errs)))
        if negated:
            # '!a=b' ends here; parse() then rejects the '=' it finds instead of a comma.
            return Requirement(key, "!", frozenset())
        if self._peek()[0] in (_END, ","):
            return Requirement(key, "exists", frozenset())
        tok, lit = self._next(values=False)
        if tok not in _BINARY_OPS:
            raise _RequirementError(f"found '{lit}', expected: in, notin, =, ==, !=, gt, lt")
        op = _BINARY_OPS[tok]
        values = self._value_set() if op in ("in", "notin") else self._exact_value()
        return self._validated(key, op, values)

    def _value_set(self) -> set[str]:
        tok, lit = self._next()
        if tok != "(":
            raise _RequirementError(f"found '{lit}' expected: '('")
        tok, lit = self._peek()
        if tok == ")":  # 'a in ()' means the one value ""
            self._next()
            return {""}
        if tok not in (_IDENT, ","):
            raise _RequirementError(f"found '{lit}', expected: ',', ')' or identifier")
        values: set[str] = set()
        while True:
            tok, lit = self._next()
            if tok == _IDENT:
                values.add(lit)
                after, after_lit = self._peek()
                if after == ")":
                    self._next()
                    return values
                if after != ",":
                    raise _RequirementError(f"found '{after_lit}', expected: ',' or ')'")
            elif tok == ",":
                # Commas delimit possibly empty values: '(,b)', '(b,)' and '(b,,c)' hold "".
                if not values or self._peek()[0] in (",", ")"):
                    values.add("")
                if self._peek()[0] == ")":
                    self._next()
                    return values
            else:
                raise _RequirementError(f"found '{lit}', expected: ',', or identifier")

    def _exact_value(self) -> set[str]:
        if self._peek()[0] in (_END, ","):  # 'a=' means the value ""
            return {""}
        tok, lit = self._next()
        if tok != _IDENT:
            raise _RequirementError(f"found '{lit}', expected: identifier")
        return {lit}

    @staticmethod
    def _validated(key: str, op: str, values: set[str]) -> Requirement:
        """labels.NewRequirement's checks, over the values in sorted order as Go indexes them."""
        ordered = sorted(values)
        errs: list[str] = []
        if op in ("gt", "lt"):
            detail = "for 'Gt', 'Lt' operators, the value must be an integer"
            errs += [
                _invalid(f"values[{i}]", v, detail)
                for i, v in enumerate(ordered)
                if _parse_int64(v) is None
            ]
        for i, value in enumerate(ordered):
            if value_errs := _label_value_errors(value):
                errs.append(_invalid(f"values[{i}][{key}]", value, "; ".join(value_errs)))
        if errs:
            raise _RequirementError(_aggregate(errs))
        return Requirement(key, op, frozenset(values))


def parse_label_selector(text: str) -> LabelSelector:
    """labels.Parse: '' (or only whitespace) is the empty selector, which matches everything."""
    requirements = _LabelParser(text).parse()
    return LabelSelector(tuple(sorted(requirements, key=lambda req: req.key)))


def label_selector_status_message(exc: SelectorError) -> str:
    """The message of the 400 BadRequest Status for a bad labelSelector on a list or watch.

    The list handler passes the parse error's text through errors.NewBadRequest unchanged.
    """
    return str(exc)


# --- field selectors --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: str
    op: str  # "=" or "!="
    value: str


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """All requirements must match, in the order Kubernetes keeps them (terms sorted as text)."""

    requirements: tuple[FieldRequirement, ...]

    def matches(self, lookup: Callable[[str], str | None]) -> bool:
        """lookup(path) is the field as a string, or None when absent; absent compares as ""."""
        for req in self.requirements:
            value = lookup(req.path)
            if ((value or "") == req.value) != (req.op == "="):
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.requirements

    def value_for(self, path: str) -> str | None:
        """The '=' value required for path (fields.Selector.RequiresExactMatch), if any."""
        for req in self.requirements:
            if req.path == path and req.op == "=":
                return req.value
        return None


def _split_terms(text: str) -> list[str]:
    """Splits on commas not escaped by a backslash; the escapes stay in the terms."""
    terms: list[str] = []
    start, escaped = 0, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


_TERM_RE = re.compile("(.*?)(!=|==|=)(.*)", re.DOTALL)


def _unescape(value: str) -> str:
    out: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            if ch not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence: \\{ch}")
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in ",=":  # Go prints the rune as a number: '=' is 61
            raise SelectorError(f"invalid field selector: unescaped character in value: {ord(ch)}")
        else:
            out.append(ch)
    if escaped:
        raise SelectorError("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def parse_field_selector(
    text: str, *, allowed: Callable[[str], bool] | None = None
) -> FieldSelector:
    """fields.ParseSelector, then the apiserver's field label check.

    allowed(path) False -> SelectorError with the message the API server gives for a custom
    resource ('field label not supported: <path>'); an empty path is refused so whenever the
    labels are checked. None checks no label (the grammar only). As in Kubernetes,
    every term is parsed before any label is checked, terms are taken in sorted order (so the
    first error reported is the first in that order), paths are not trimmed, and a term with
    an empty path and value ('=' or '!=') is dropped before the check.
    """
    parsed: list[FieldRequirement] = []
    for term in sorted(_split_terms(text)):
        if not term:
            continue
        found = _TERM_RE.match(term)
        if found is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        path, op, raw = found.groups()
        value = _unescape(raw)
        if path or value:
            parsed.append(FieldRequirement(path, "!=" if op == "!=" else "=", value))
    if allowed is not None:
        for req in parsed:
            # An empty (or blank) path names no field: never supported, whatever ``allowed`` says.
            if not req.path.strip() or not allowed(req.path):
                raise SelectorError(f"field label not supported: {req.path}")
    return FieldSelector(tuple(parsed))


def field_selector_status_message(exc: SelectorError) -> str:
    """The message of the 400 BadRequest Status for a bad fieldSelector on a custom resource
    list or watch: both the parse error and the field label error pass through unchanged."""
    return str(exc)


# --- object fields ----------------------------------------------------------------------------


def scalar_to_field_string(value: object) -> str | None:
    """How an object's scalar is rendered for field matching: str as is, bool 'true'/'false',
    int/float like Go's JSON (1, 1.5), None/dict/list -> None (not a scalar).

    For the types a CRD may declare selectable (string, integer, boolean) this is also what the
    API server's fmt.Sprint gives; floats follow encoding/json so a selector can use the number
    exactly as a client sees it in the object.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # Go decodes a JSON integer outside int64 as a float64, and renders it as one.
        if -(2**63) <= value < 2**63:
            return str(value)
        try:
            return _go_json_float(float(value))
        except OverflowError:  # beyond float64: Go cannot decode it either
            return None
    if isinstance(value, float):
        return _go_json_float(value)
    return None


def _go_json_float(number: float) -> str | None:
    """encoding/json's float64: shortest digits, exponent form below 1e-6 and from 1e21."""
    if not math.isfinite(number):
        return None  # not JSON; Go refuses to encode it
    if number == 0:
        return "-0" if math.copysign(1.0, number) < 0 else "0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    mantissa = "".join(map(str, digits))
    assert isinstance(exponent, int)
    point = len(mantissa) + exponent  # position of the decimal point in the mantissa
    magnitude = abs(number)
    if magnitude < 1e-6 or magnitude >= 1e21:
        head, tail = mantissa[0], mantissa[1:]
        text = f"{head}.{tail}" if tail else head
        # Go writes e-07 then trims it to e-7; positive exponents here are >= 21 anyway.
        text += f"e{point - 1:+d}"
    elif point <= 0:
        text = "0." + "0" * -point + mantissa
    elif point >= len(mantissa):
        text = mantissa + "0" * (point - len(mantissa))
    else:
        text = f"{mantissa[:point]}.{mantissa[point:]}"
    return ("-" if sign else "") + text


def lookup_path(obj: Mapping[str, object], path: str) -> str | None:
    """Walks a dotted path ('status.state', 'spec.suspend', 'metadata.labels.app' ... plain dot
    segments) in a decoded JSON object and returns scalar_to_field_string of the leaf, or None."""
    node: object = obj
    for segment in path.split("."):
        if not isinstance(node, Mapping) or segment not in node:
            return None
        node = node[segment]
    return scalar_to_field_string(node)
