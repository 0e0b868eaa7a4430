"""Middleware on the real adapter and socket, over a recorded upstream (no control plane)."""

from __future__ import annotations

import json

from support.inprocess import in_process

from watchcache.middleware import Next, Request, Response
from watchcache.middleware.features import compute_templates

RAY = "/apis/ray.io/v1/namespaces/team-a/rayclusters"


def test_a_middleware_sees_the_resource_and_wraps_a_cached_list() -> None:
    seen: list[tuple[str, str | None, dict[str, str]]] = []

    async def tag(request: Request, call_next: Next) -> Response:
        spec = request.resource
        seen.append((request.method, spec.plural if spec else None, dict(request.path_params)))
        response = await call_next(request)
        response.headers["X-Tag"] = "seen"
        return response

    with in_process(middleware=[tag]) as client:
        client.wait_ready()
        code, headers, body = client.request("GET", RAY)
    assert code == 200 and headers.get("X-Tag") == "seen"
    assert json.loads(body)["kind"] == "RayClusterList"
    assert ("GET", "rayclusters", {"namespace": "team-a"}) in seen


def test_a_middleware_answers_a_route_of_its_own_and_others_stay_404() -> None:
    async def hello(request: Request, call_next: Next) -> Response:
        if request.path == "/hello":
            return Response.json({"hello": "world"})
        return await call_next(request)

    with in_process(middleware=[hello]) as client:
        assert client.request("GET", "/hello")[:1] == (200,)
        code, _, body = client.request("GET", "/nowhere")
    status = json.loads(body)
    assert code == 404 and status["kind"] == "Status" and status["reason"] == "NotFound"


def test_a_write_goes_upstream_after_the_chain_and_comes_back_unchanged() -> None:
    with in_process() as client:
        client.wait_ready()
        body = json.dumps({"metadata": {"name": "x"}}).encode()
        code, _, answer = client.request(
            "POST", RAY, body, headers={"Content-Type": "application/json"}
        )
        asked = list(client.recorded.requests)
    assert code == 404 and json.loads(answer)["kind"] == "Status"  # what was recorded
    assert any(m == "POST" and p.startswith(RAY) for m, p in asked)


def test_without_the_feature_its_routes_are_404_and_with_it_they_answer() -> None:
    templates = "/apis/v1/namespaces/team-a/compute_templates"
    with in_process(features=[]) as client:
        assert client.request("GET", templates)[0] == 404
    with in_process(features=[compute_templates()]) as client:
        client.wait_ready()
        assert client.request("GET", templates)[0] == 200
