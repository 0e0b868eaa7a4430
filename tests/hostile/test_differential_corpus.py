"""The hostile differential corpus (issue 11): thousands of generated label and field
selectors and malformed paths, queries, headers and bodies, each sent to watchcache and to
kube-apiserver. Their status codes and Status reasons must agree, and watchcache must never
answer 500 where the API server does not.

Two documented extensions (README, "What it serves") are excluded: watchcache accepts field
selectors on any path, which kube-apiserver refuses with 400 "field label not supported";
and its reads carry an ETag, so ``If-None-Match`` may get a 304 where kube answers 200.
Where kube-apiserver's answer is no Status (its Go server's bare 400 for a path that does
not decode, the 404 page of its mux, an empty 406, a refused WebSocket handshake), only the
codes are compared; what watchcache answers itself is a Status even then.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
import differential  # the shared judge of tests/integration
from support import population
from support.controlplane import ControlPlane

from .conftest import assert_healthy
from .corpus import Case, generate

if TYPE_CHECKING:
    from conftest import Proxy

NAMESPACES = ("wc-corpus-a", "wc-corpus-b")
PLAN = population.plan(12, NAMESPACES, seed=20261202)
SEED = int(os.environ.get("WATCHCACHE_CORPUS_SEED", "1111"))
WORKERS = 4
TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    body: Any  # parsed JSON, or None
    raw: bytes

    @property
    def status(self) -> dict[str, Any] | None:
        """The body when it is a Status (kube's 504 has no kind: a failure with a code)."""
        body = self.body
        if isinstance(body, dict) and (body.get("kind") == "Status" or "code" in body):
            return body
        return None


class Side:
    """One keep-alive connection to one server, reopened when the server closes it."""

    def __init__(self, connect: Callable[[], http.client.HTTPConnection], headers: dict) -> None:
        self.connect = connect
        self.headers = headers
        self.conn: http.client.HTTPConnection | None = None

    def send(self, case: Case) -> Reply:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = self.connect()
            try:
                return self._exchange(self.conn, case)
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _exchange(self, conn: http.client.HTTPConnection, case: Case) -> Reply:
        conn.putrequest(case.method, case.target, skip_accept_encoding=True)
        for name, value in {**self.headers, **dict(case.headers)}.items():
            conn.putheader(name, value)
        if case.body is not None and "Content-Length" not in dict(case.headers):
            conn.putheader("Content-Length", str(len(case.body)))
        conn.endheaders(case.body)
        resp = conn.getresponse()
        if case.may_stream and resp.status in (101, 200):
            self.close()  # a watch (or its upgrade): the head is the answer compared
            return Reply(resp.status, None, b"")
        raw = resp.read()
        if resp.will_close:
            self.close()
        return Reply(resp.status, _json(raw), raw)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw.split(b"\n", 1)[0]) if raw[:1] == b"{" else None
    except ValueError:
        return None


def events(raw: bytes) -> list[str]:
    return [json.loads(line).get("type", "") for line in raw.splitlines() if line.strip()]


def judge(case: Case, kube: Reply, proxy: Reply) -> str:
    """'' when the answers agree; else what differs."""
    if proxy.code == 500 and kube.code != 500:
        return f"watchcache 500 (kube {kube.code}): {proxy.raw[:200]!r}"
    if kube.code != proxy.code:
        message = (kube.status or {}).get("message", "")
        if proxy.code == 200 and kube.code == 400 and "field label not supported" in message:
            return ""  # the documented extension: field selectors on any path
        if proxy.code == 304 and kube.code == 200 and "If-None-Match" in dict(case.headers):
            return ""  # documented: watchcache's reads carry an ETag and honour If-None-Match
        shown = f"{kube.raw[:160]!r} / {proxy.raw[:160]!r}"
        return f"codes (kube, watchcache) {kube.code}, {proxy.code}: {shown}"
    if kube.status is not None and kube.code >= 400:
        want, got = kube.status, proxy.status or {}
        if "kind" in want and "kind" in got:
            summary = (differential.status_summary(want), differential.status_summary(got))
        else:
            summary = ((want.get("reason"), want.get("code")), (got.get("reason"), got.get("code")))
        if summary[0] != summary[1]:
            return f"Status (kube, watchcache): {summary}"
    # A watch with a negative timeoutSeconds ends at once. kube-apiserver may race its
    # deadline and stream some of the state first; watchcache never does: at most an ERROR.
    negative = "timeoutSeconds=-" in case.query and "watch=" in case.query and kube.code == 200
    if negative and set(events(proxy.raw)) - {"ERROR"}:
        return f"watchcache streamed {events(proxy.raw)} past the deadline"
    return ""


@pytest.fixture(scope="module")
def corpus_population(controlplane: ControlPlane, cached: Proxy) -> Iterator[list[str]]:
    population.populate(
        controlplane.request, [population.build(p, controlplane.samples_dir) for p in PLAN]
    )
    differential.wait_for_same_state(differential.proxy(cached), differential.kube(controlplane))
    yield [p.name for p in PLAN]
    population.delete_all(controlplane.request, NAMESPACES)


def test_hostile_corpus_gets_the_api_servers_codes_and_reasons(
    controlplane: ControlPlane, cached: Proxy, corpus_population: list[str]
) -> None:
    cases = generate(SEED, corpus_population, NAMESPACES)
    selectors = sum(c.family in ("selector", "field") for c in cases)
    assert selectors >= 5000 and len(cases) - selectors >= 1000, (selectors, len(cases))
    proxy_host, proxy_port = cached.base.removeprefix("http://").split(":")
    local = threading.local()

    def sides() -> tuple[Side, Side]:
        if not hasattr(local, "sides"):
            kube = Side(
                lambda: http.client.HTTPSConnection(
                    "127.0.0.1", controlplane.port, timeout=TIMEOUT,
                    context=controlplane.ssl_context(),
                ),
                {"Authorization": f"Bearer {controlplane.admin.token}"},
            )  # fmt: skip
            proxy = Side(
                lambda: http.client.HTTPConnection(proxy_host, int(proxy_port), timeout=TIMEOUT),
                {},
            )
            local.sides = (kube, proxy)
        return local.sides

    def run(case: Case) -> str:
        kube, proxy = sides()
        got = proxy.send(case)
        want = kube.send(case)
        problem = judge(case, want, got)
        if problem:
            shown = f"{case.method} {case.target} {dict(case.headers)} {case.body!r:.60}"
            return f"{shown}\n    {problem}"
        return ""

    with ThreadPoolExecutor(WORKERS) as pool:
        problems = [p for p in pool.map(run, cases) if p]
    assert not problems, f"{len(problems)} of {len(cases)} cases differ:\n" + "\n".join(
        problems[:40]
    )
    assert_healthy(cached)
