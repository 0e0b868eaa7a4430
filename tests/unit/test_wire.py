"""Bodies as kube-apiserver writes them: when they are indented (``isPrettyPrint`` and the
``pretty`` media-type parameter), Go's ``json.MarshalIndent`` layout and escaping, and the
shape of a list per kind. The real server's bytes are compared in
tests/integration/test_wire_differential.py."""

from __future__ import annotations

import orjson
import pytest

from watchcache.cache.store import Entry
from watchcache.config import RAY_RESOURCES
from watchcache.kube.negotiation import wants_pretty
from watchcache.kube.wire import go_escape, go_indent, list_body
from watchcache.middleware.kuberay import RAY_EVENTS


@pytest.mark.parametrize("value", ["1", "t", "T", "true", "True", "TRUE"])
def test_pretty_query_values_go_parses_as_true_indent(value: str) -> None:
    assert wants_pretty({"pretty": [value]}, "kubectl/v1.36")


@pytest.mark.parametrize("value", ["0", "false", "yes", "x", "on"])
def test_other_pretty_values_are_false_even_for_curl(value: str) -> None:
    assert not wants_pretty({"pretty": [value]}, "curl/8.5.0")


@pytest.mark.parametrize("agent", ["curl/8.5.0", "Wget/1.21", "Mozilla/5.0 (X11; Linux)"])
def test_human_user_agents_get_indented_answers(agent: str) -> None:
    assert wants_pretty({}, agent)
    assert wants_pretty({"pretty": [""]}, agent)  # an empty value leaves it to the agent


@pytest.mark.parametrize("agent", [None, "", "kubectl/v1.36", "python-requests/2", "Curl/8"])
def test_other_user_agents_get_compact_answers(agent: str | None) -> None:
    assert not wants_pretty({}, agent)


def test_the_pretty_media_type_parameter_indents() -> None:
    assert wants_pretty({}, None, "application/json;pretty=1")
    assert not wants_pretty({}, None, "application/json;pretty=true")  # only "1" counts
    assert not wants_pretty({}, None, "application/json, application/yaml;pretty=1")


def test_indent_is_go_marshal_indent_two_spaces_no_final_newline() -> None:
    body = b'{"b":[],"a":{},"c":[1,{"d":"x&y<z>"}],"e":null}\n'
    assert go_indent(body) == (
        b'{\n  "b": [],\n  "a": {},\n  "c": [\n    1,\n    {\n'
        b'      "d": "x\\u0026y\\u003cz\\u003e"\n    }\n  ],\n  "e": null\n}'
    )


def test_go_escape_escapes_html_and_line_separators_and_copies_nothing_otherwise() -> None:
    assert go_escape('{"a":"<&>\u2028\u2029"}'.encode()) == (
        b'{"a":"\\u003c\\u0026\\u003e\\u2028\\u2029"}'
    )
    plain = b'{"a":"b"}'
    assert go_escape(plain) is plain


def _entries(*objs: dict) -> list[Entry]:
    return [Entry.from_object(o) for o in objs]


def test_a_custom_resource_list_has_sorted_keys_and_continue_empty_on_its_last_page() -> None:
    rc = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "a", "resourceVersion": "5"},
    }
    body = list_body(RAY_RESOURCES[0], _entries(rc), 7, None, None)
    assert body == (
        b'{"apiVersion":"ray.io/v1","items":[{"apiVersion":"ray.io/v1","kind":"RayCluster",'
        b'"metadata":{"name":"a","resourceVersion":"5"}}],"kind":"RayClusterList",'
        b'"metadata":{"continue":"","resourceVersion":"7"}}\n'
    )
    paged = orjson.loads(list_body(RAY_RESOURCES[0], _entries(rc), 7, "tok", 3))
    assert paged["metadata"] == {"continue": "tok", "remainingItemCount": 3, "resourceVersion": "7"}


def test_a_built_in_kinds_list_follows_its_go_struct_and_items_lose_their_type() -> None:
    event = {
        "kind": "Event",
        "apiVersion": "events.k8s.io/v1",
        "metadata": {"name": "e", "resourceVersion": "5"},
    }
    body = list_body(RAY_EVENTS, _entries(event), 7, None, None)
    assert body == (
        b'{"kind":"EventList","apiVersion":"events.k8s.io/v1","metadata":{"resourceVersion":"7"},'
        b'"items":[{"metadata":{"name":"e","resourceVersion":"5"}}]}\n'
    )
    paged = orjson.loads(list_body(RAY_EVENTS, _entries(event), 7, "tok", None))
    assert list(paged["metadata"]) == ["resourceVersion", "continue"]
