"""The middleware chain on its own: order, short-circuits, StatusError, changed requests."""

from __future__ import annotations

import asyncio

from watchcache.kube.status import StatusError
from watchcache.middleware.core import Headers, Next, Request, Response, compose


def request(path: str = "/apis/ray.io/v1/rayclusters") -> Request:
    return Request(method="GET", path=path, query={}, headers=Headers())


def run(chain: Next, req: Request) -> Response:
    return asyncio.run(chain(req))


def test_middleware_run_in_order_first_outermost() -> None:
    seen: list[str] = []

    def named(name: str):  # type: ignore[no-untyped-def]
        async def mw(req: Request, call_next: Next) -> Response:
            seen.append(f"{name} in")
            resp = await call_next(req)
            seen.append(f"{name} out")
            return resp

        return mw

    async def endpoint(req: Request) -> Response:
        seen.append("endpoint")
        return Response.json({"ok": True})

    resp = run(compose([named("a"), named("b")], endpoint), request())
    assert resp.status == 200
    assert seen == ["a in", "b in", "endpoint", "b out", "a out"]


def test_a_middleware_may_answer_without_calling_the_rest() -> None:
    async def gate(req: Request, call_next: Next) -> Response:
        return Response.json({"gated": True}, 418)

    async def endpoint(req: Request) -> Response:
        raise AssertionError("not reached")

    assert run(compose([gate], endpoint), request()).status == 418


def test_a_status_error_becomes_a_status_that_outer_middleware_still_see() -> None:
    codes: list[int] = []

    async def outer(req: Request, call_next: Next) -> Response:
        resp = await call_next(req)
        codes.append(resp.status)
        return resp

    async def refuse(req: Request, call_next: Next) -> Response:
        raise StatusError(422, "RayCluster needs a team label")

    async def endpoint(req: Request) -> Response:
        raise AssertionError("not reached")

    resp = run(compose([outer, refuse], endpoint), request())
    assert codes == [422] and resp.status == 422
    assert b'"kind":"Status"' in (resp.body or b"")


def test_an_endpoint_status_error_is_a_status_response() -> None:
    async def endpoint(req: Request) -> Response:
        raise StatusError(404, 'rayclusters.ray.io "x" not found', reason="NotFound")

    resp = run(compose([], endpoint), request())
    assert resp.status == 404 and b'"reason":"NotFound"' in (resp.body or b"")


def test_a_changed_request_is_what_the_rest_of_the_chain_sees() -> None:
    async def rewrite(req: Request, call_next: Next) -> Response:
        req.query["labelSelector"] = ["team=ml"]
        req.path = "/apis/ray.io/v1/namespaces/ml/rayclusters"
        return await call_next(req)

    async def endpoint(req: Request) -> Response:
        return Response.json({"path": req.path, "query": req.query})

    resp = run(compose([rewrite], endpoint), request())
    assert b'"path":"/apis/ray.io/v1/namespaces/ml/rayclusters"' in (resp.body or b"")
    assert b'"labelSelector":["team=ml"]' in (resp.body or b"")
