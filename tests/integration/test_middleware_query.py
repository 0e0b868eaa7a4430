"""A middleware's change to ``request.query`` reaches the endpoint, even made in place."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Proxy
from differential import wait_until
from support.controlplane import ControlPlane

NS = "wc-mw-query"
SERVER = Path(__file__).with_name("query_rewriting_server.py")


@pytest.fixture(scope="module")
def two_teams(controlplane: ControlPlane) -> None:
    controlplane.request("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    for name, team in (("in-a", "a"), ("in-b", "b")):
        obj = {
            "apiVersion": "ray.io/v1",
            "kind": "RayCluster",
            "metadata": {"name": name, "labels": {"team": team}},
            "spec": {
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {
                        "spec": {
                            "containers": [{"name": "ray-head", "image": "rayproject/ray:2.46.0"}]
                        }
                    },
                }
            },
        }
        code, body = controlplane.request(
            "POST", f"/apis/ray.io/v1/namespaces/{NS}/rayclusters", obj
        )
        assert code == 201, body


@pytest.mark.parametrize("mode", [[], ["--no-cache"]], ids=["cache", "pass-through"])
def test_a_query_changed_in_place_by_middleware_is_what_gets_answered(
    proxy_factory: Callable[..., Proxy], two_teams: None, mode: list[str]
) -> None:
    proxy = proxy_factory(*mode, command=[str(SERVER)])

    def names() -> list[str]:
        code, listed = proxy.json("GET", f"/apis/ray.io/v1/namespaces/{NS}/rayclusters")
        assert code == 200, listed
        return [item["metadata"]["name"] for item in listed["items"]]

    wait_until(lambda: names() == ["in-a"], timeout=30, what="only team a listed")
