"""The pure parts of Table rendering: negotiation, JSONPath, cells, ages, and the Table bytes.

What kube-apiserver renders is compared with the real server in
tests/integration/test_discovery_tables.py; these pin the corner cases one at a time.
"""

from __future__ import annotations

import json

import orjson
import pytest

from watchcache.kube.jsonpath import Unsupported, compile_jsonpath
from watchcache.kube.negotiation import negotiate
from watchcache.kube.status import StatusError
from watchcache.kube.tables import (
    TableSpec,
    go_float,
    human_duration,
    include_object,
    partial_metadata,
    render,
)

KUBECTL = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (None, "json"),
        ("", "json"),
        ("application/json", "json"),
        ("*/*", "json"),
        ("application/*", "json"),
        (KUBECTL, ("table", "v1")),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", ("table", "v1beta1")),
        ("application/json;as=Table;v=v1;g=meta.k8s.io;foo=bar", ("table", "v1")),
        # Not a Table kube accepts: the next clause, or the API server's 406.
        ("application/json;as=Table;g=meta.k8s.io", "forward"),
        ("application/json;as=Table;v=v2;g=meta.k8s.io, application/json;q=0.5", "json"),
        ("application/yaml", "forward"),
        ("application/vnd.kubernetes.protobuf", "forward"),
        ("application/vnd.kubernetes.protobuf;q=0.5,application/json", "json"),
        ("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io", "forward"),
        ("text/html", "forward"),
    ],
)
def test_negotiate_picks_what_the_api_server_would_and_forwards_what_the_cache_cannot_render(
    accept: str | None, wanted: object
) -> None:
    assert negotiate(accept) == wanted


def test_include_object_defaults_to_metadata_and_rejects_unknown_values_as_kube_does() -> None:
    assert include_object({}) == "Metadata"
    assert include_object({"includeObject": ["None"]}) == "None"
    with pytest.raises(StatusError) as err:
        include_object({"includeObject": ["Bogus"]})
    assert err.value.code == 400
    assert 'Invalid value: "Bogus"' in err.value.message


@pytest.mark.parametrize(
    ("expr", "obj", "found"),
    [
        (".status.state", {"status": {"state": "ready"}}, ["ready"]),
        (".status.state", {"status": "x"}, []),
        (".status.missing", {"status": {}}, []),
        (
            ".metadata.labels.app\\.kubernetes\\.io/name",
            {"metadata": {"labels": {"app.kubernetes.io/name": "r"}}},
            ["r"],
        ),
        (".metadata.labels['a.b']", {"metadata": {"labels": {"a.b": "x"}}}, ["x"]),
        (".spec.items[1]", {"spec": {"items": [1, 2]}}, [2]),
        (".spec.items[-1]", {"spec": {"items": [1, 2, 3]}}, [3]),
        (".spec.items[*].n", {"spec": {"items": [{"n": 1}, {"n": 2}]}}, [1, 2]),
        (
            '.status.conditions[?(@.type=="Ready")].status',
            {
                "status": {
                    "conditions": [{"type": "A", "status": "F"}, {"type": "Ready", "status": "T"}]
                }
            },
            ["T"],
        ),
    ],
)
def test_jsonpath_subset_finds_what_client_go_finds(expr: str, obj: object, found: list) -> None:
    assert compile_jsonpath(expr)(obj) == found


@pytest.mark.parametrize("expr", ["status.state", ".a[1:2]", ".a..b", "{range .items[*]}"])
def test_jsonpath_beyond_the_subset_is_unsupported(expr: str) -> None:
    with pytest.raises(Unsupported):
        compile_jsonpath(expr)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (2 * 86400, "2d"),
        (2 * 86400 + 3600, "2d1h"),
        (8 * 86400, "8d"),
        (2 * 365 * 86400, "2y"),
        (2 * 365 * 86400 + 86400, "2y1d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_human_duration_matches_apimachinery(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.5, "1.5"), (3.0, "3"), (123456.0, "123456"), (1234567.0, "1.234567e+06"), (1e-5, "1e-05")],
)
def test_go_float_is_gos_default_format(value: float, text: str) -> None:
    assert go_float(value) == text


CRD = {
    "spec": {
        "versions": [
            {
                "name": "v1",
                "additionalPrinterColumns": [
                    {"name": "n", "type": "integer", "jsonPath": ".status.n"},
                    {"name": "s", "type": "string", "jsonPath": ".status.s", "priority": 1},
                    {"name": "age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            },
            {"name": "v2"},
        ]
    }
}
NOW = 1_700_000_000.0
STAMP = "2023-11-14T22:11:40Z"  # NOW - 100 s


def test_cells_follow_each_columns_type_as_the_tableconvertor_does() -> None:
    spec = TableSpec.from_crd(CRD, "v1")
    obj = {"metadata": {"name": "a", "creationTimestamp": STAMP}, "status": {"n": 2.7, "s": 3}}
    assert spec.cells(obj, NOW) == ["a", 2, "3", "100s"]
    assert spec.cells({"metadata": {"name": "b"}, "status": {"n": "x"}}, NOW) == [
        "b",
        None,
        None,
        None,
    ]
    bad = {"metadata": {"name": "c", "creationTimestamp": "yesterday"}, "status": {"s": {"k": 1}}}
    assert spec.cells(bad, NOW) == ["c", None, '{"k":1}', "<invalid>"]


def test_a_version_without_printer_columns_gets_name_and_age() -> None:
    spec = TableSpec.from_crd(CRD, "v2")
    defs = json.loads(spec.definitions)
    assert [(d["name"], d["type"], d["priority"]) for d in defs] == [
        ("Name", "string", 0),
        ("Age", "date", 0),
    ]


def test_partial_metadata_lists_fields_in_object_meta_order() -> None:
    meta = {
        "uid": "u",
        "name": "a",
        "labels": {"b": "2", "a": "1"},
        "managedFields": [{"time": "t", "manager": "m", "operation": "Update"}],
        "namespace": "ns",
        "generation": 1,
    }
    out = orjson.loads(partial_metadata(meta))
    assert list(out) == ["kind", "apiVersion", "metadata"]
    assert list(out["metadata"]) == [
        "name",
        "namespace",
        "uid",
        "generation",
        "labels",
        "managedFields",
    ]
    assert list(out["metadata"]["labels"]) == ["a", "b"]
    assert list(out["metadata"]["managedFields"][0]) == ["manager", "operation", "time"]


@pytest.mark.parametrize("include", ["Metadata", "Object", "None"])
def test_render_gives_one_row_per_object_with_the_object_asked_for(include: str) -> None:
    spec = TableSpec.from_crd(CRD, "v1")
    raws = [orjson.dumps({"kind": "K", "metadata": {"name": n, "uid": n}}) for n in "ab"]
    table = orjson.loads(
        render(spec, raws, list_meta={"resourceVersion": "7"}, include=include, now=NOW)
    )
    assert (table["kind"], table["apiVersion"], table["metadata"]) == (
        "Table",
        "meta.k8s.io/v1",
        {"resourceVersion": "7"},
    )
    assert [row["cells"][0] for row in table["rows"]] == ["a", "b"]
    objects = [row["object"] for row in table["rows"]]
    if include == "None":
        assert objects == [None, None]
    elif include == "Object":
        assert objects == [orjson.loads(r) for r in raws]
    else:
        assert [o["kind"] for o in objects] == ["PartialObjectMetadata"] * 2


def test_render_of_nothing_is_an_empty_row_list() -> None:
    spec = TableSpec.from_crd(CRD, "v1")
    table = orjson.loads(render(spec, [], list_meta={}, version="v1beta1", now=NOW))
    assert table["rows"] == [] and table["apiVersion"] == "meta.k8s.io/v1beta1"
