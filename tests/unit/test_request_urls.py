"""A request URL as kube-apiserver reads it: Go's query and path decoding, the long-running
check and ``?timeout=``, the name and namespace checks of a read, /version's Accept."""

from __future__ import annotations

import pytest

from watchcache.config import ResourceSpec
from watchcache.kube.gourl import decode_path, parse_query
from watchcache.kube.negotiation import accepts_json, restful_accepts_json
from watchcache.kube.requestinfo import check_deadline, is_long_running
from watchcache.kube.status import StatusError
from watchcache.kube.validation import check_read_target, name_problems

RAYCLUSTERS = ResourceSpec(group="ray.io", version="v1", plural="rayclusters", kind="RayCluster")


def test_query_pairs_go_cannot_decode_are_dropped_and_the_rest_kept() -> None:
    assert parse_query("limit=1&labelSelector=%zz&a=%4") == {"limit": ["1"]}
    assert parse_query("limit=1;labelSelector=x&b=2") == {"b": ["2"]}
    assert parse_query("a=x+y&a=%2B&&c") == {"a": ["x y", "+"], "c": [""]}
    assert parse_query("k=%ff") == {"k": ["\ufffd"]}
    assert parse_query("a=1" + "&b=2" * 10_000) == {}  # past Go's 10,000 parameters


def test_paths_decode_as_go_decodes_them() -> None:
    assert decode_path("/a%2Fb/%2E/c+d") == "/a/b/./c+d"
    assert decode_path("/a/%zz") is None
    assert decode_path("/a/%4") is None


@pytest.mark.parametrize(
    ("method", "path", "query", "long"),
    [
        ("GET", "/apis/ray.io/v1/namespaces/a/rayclusters", {"watch": ["1"]}, True),
        ("GET", "/apis/ray.io/v1/rayclusters", {"watch": ["false"]}, False),
        ("GET", "/apis/ray.io/v1/namespaces/a/rayclusters/x", {"watch": ["1"]}, False),
        ("GET", "/apis/ray.io/v1/watch/rayclusters", {}, True),
        ("GET", "/api/v1/namespaces/a/services/s/proxy/x", {}, True),
        ("GET", "/healthz", {"watch": ["1"]}, False),
        ("GET", "/apis/ray.io/v1", {"watch": ["1"]}, False),
        ("POST", "/apis/ray.io/v1/namespaces/a/rayclusters", {"watch": ["1"]}, False),
    ],
)
def test_long_running_requests_are_told_as_the_api_server_tells_them(
    method: str, path: str, query: dict[str, list[str]], long: bool
) -> None:
    assert is_long_running(method, path, query) is long


def test_timeout_is_checked_everywhere_but_on_long_running_requests() -> None:
    with pytest.raises(StatusError) as bad:
        check_deadline("GET", "/healthz", {"timeout": ["zz"]}, 0.0)
    assert bad.value.code == 400
    check_deadline("GET", "/apis/ray.io/v1/rayclusters", {"watch": ["1"], "timeout": ["x"]}, 0)
    with pytest.raises(StatusError) as late:
        check_deadline("GET", "/version", {"timeout": ["1ns"]}, 0.001)
    assert (late.value.code, late.value.reason) == (504, "Timeout")
    check_deadline("GET", "/version", {"timeout": ["-1s"]}, 5.0)  # <= 0: the 60 s maximum
    check_deadline("POST", "/apis/ray.io/v1/namespaces/a/rayclusters", {"timeout": ["1ns"]}, 1)


def test_names_that_cannot_be_a_path_segment_are_a_bad_request() -> None:
    assert name_problems(".") == ["may not be '.'"]
    assert name_problems("a%b/c") == ["may not contain '/'", "may not contain '%'"]
    assert name_problems("fine-name") == []
    with pytest.raises(StatusError) as err:
        check_read_target(RAYCLUSTERS, "default", "..")
    assert (err.value.code, err.value.message) == (
        400,
        "Name parameter invalid: \"..\": may not be '..'",
    )


def test_a_dot_namespace_is_the_storage_layers_invalid_key() -> None:
    check_read_target(RAYCLUSTERS, "Bad_NS", None)  # not validated on reads
    with pytest.raises(StatusError) as err:
        check_read_target(RAYCLUSTERS, ".", "x")
    assert err.value.code == 500
    assert err.value.to_dict()["message"] == 'invalid key: "/ray.io/rayclusters/./x"'
    assert "reason" not in err.value.to_dict()


def test_openapi_ignores_q_and_version_matches_as_go_restful() -> None:
    assert accepts_json("application/json;q=0")
    assert accepts_json("*/*;q=0")
    assert not accepts_json("text/html")
    assert restful_accepts_json("") and restful_accepts_json("text/html, */*;q=0.1")
    assert not restful_accepts_json("application/*")
    assert not restful_accepts_json("text/html")


def test_a_remembered_query_is_a_fresh_dict_each_time() -> None:
    """The parse of a repeated query is remembered, but a caller that changes its dict
    (a middleware rewriting the query) changes only its own."""
    raw = "fieldSelector=metadata.name%3Da&limit=5&limit=6"
    first = parse_query(raw)
    first["limit"].append("7")
    first["extra"] = ["x"]
    assert parse_query(raw) == {"fieldSelector": ["metadata.name=a"], "limit": ["5", "6"]}
    assert parse_query(raw.encode()) == parse_query(raw)
    long = "a=" + "b" * 5000  # parsed every time, not remembered
    assert parse_query(long) == {"a": ["b" * 5000]}
