"""The memo of parsed list queries (watchcache.http.read.ParsedQueries)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from watchcache.http import read
from watchcache.http.read import ParsedQueries
from watchcache.kube.status import StatusError


def memo() -> ParsedQueries:
    endpoint: Any = SimpleNamespace(
        allowed_field=lambda path: path in read.ALLOWED_FIELDS,
        resource=SimpleNamespace(codec=SimpleNamespace(ours=lambda token: False)),
    )
    return ParsedQueries(endpoint)


def test_a_repeated_query_is_parsed_once() -> None:
    parsed = memo()
    query = {"fieldSelector": ["metadata.name=a"], "labelSelector": ["x in (1,2)"]}
    first = parsed(query)
    assert parsed(dict(query)) is first
    assert first.field_selector.requirements[0].value == "a"


def test_queries_differing_in_any_value_or_order_are_parsed_apart() -> None:
    parsed = memo()
    a = parsed({"labelSelector": ["x=1"], "limit": ["5"]})
    assert parsed({"labelSelector": ["x=2"], "limit": ["5"]}) is not a
    assert parsed({"limit": ["5"], "labelSelector": ["x=1"]}) == a


def test_a_refused_query_is_refused_every_time_and_not_remembered() -> None:
    parsed = memo()
    for _ in range(2):
        with pytest.raises(StatusError):
            parsed({"fieldSelector": ["spec.x=1"]})
    assert parsed.parsed == {}


def test_continue_queries_are_not_remembered_and_the_memo_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(read, "PARSED_QUERIES", 3)
    parsed = memo()
    with pytest.raises(StatusError):  # not a token at all: decoded, refused
        parsed({"continue": ["junk"]})
    for n in range(10):
        parsed({"labelSelector": [f"x={n}"]})
        assert len(parsed.parsed) <= 3


def test_a_dashboard_polling_each_of_1000_names_in_turn_finds_each_query_parsed() -> None:
    parsed = memo()
    queries = [{"fieldSelector": [f"metadata.name=rc-{n}"]} for n in range(1000)]
    first = [parsed(q) for q in queries]
    assert all(parsed(dict(q)) is opts for q, opts in zip(queries, first, strict=True))
