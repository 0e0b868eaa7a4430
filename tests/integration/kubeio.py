"""Straight writes to kube-apiserver and the list/watch helpers that the watch tests share."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import differential
from support.controlplane import ControlPlane
from watchclient import WatchStream, changes, replay, summary

if TYPE_CHECKING:
    from conftest import Proxy

API = "/apis/ray.io/v1"
MERGE = "application/merge-patch+json"


def collection(ns: str | None) -> str:
    return f"{API}/namespaces/{ns}/rayclusters" if ns else f"{API}/rayclusters"


def small_cluster(name: str, ns: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A RayCluster of about 1.5 KB as stored: fan-out tests multiply every byte by 1,000."""
    head = {"containers": [{"name": "ray-head", "image": "rayproject/ray:2.9.0"}]}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"headGroupSpec": {"rayStartParams": {}, "template": {"spec": head}}},
    }


def rv_of(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


class KubeWriter:
    """Writes straight to kube-apiserver on one kept-alive connection per thread: the fan-out
    test makes hundreds of writes, and a TLS handshake each would dominate its run time."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self._local = threading.local()

    def _connection(self, fresh: bool = False) -> http.client.HTTPSConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            url = urllib.parse.urlsplit(self.cp.server)
            conn = http.client.HTTPSConnection(
                url.hostname or "", url.port, context=self.cp.ssl_context(), timeout=60
            )
            self._local.conn = conn
        return conn

    def call(self, method: str, path: str, body: object = None, *, merge: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.cp.admin.token}"}
        if data is not None:
            headers["Content-Type"] = MERGE if merge else "application/json"
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request(method, path, data, headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.RemoteDisconnected, ConnectionError, ssl.SSLEOFError):
                # A kept-alive connection that kube-apiserver closed (it restarted) before
                # reading the request: nothing was done, so sending it again is safe.
                if attempt:
                    raise
        assert resp.status in (200, 201), (method, path, resp.status, raw[:500])
        return json.loads(raw)

    def create(
        self, name: str, ns: str, labels: dict[str, str] | None = None, *, pad: int = 0
    ) -> int:
        obj = small_cluster(name, ns, labels)
        if pad:
            obj["metadata"]["annotations"] = {"watchcache.test/pad": "x" * pad}
        return rv_of(self.call("POST", collection(ns), obj))

    def patch(self, ns: str, name: str, body: object, subresource: str = "") -> int:
        return rv_of(self.call("PATCH", f"{collection(ns)}/{name}{subresource}", body, merge=True))

    def delete(self, ns: str, name: str) -> None:
        """A custom resource's DELETE answers with a Status: the deletion's version is unknown."""
        self.call("DELETE", f"{collection(ns)}/{name}")


def listed(fetch: differential.Fetch, path: str) -> tuple[int, dict[str, int]]:
    """A list's version and items. A 429 with Retry-After (kube-apiserver's storage still
    initializing after a restart) is retried as a client would, a few times."""
    got = fetch(path)
    for _ in range(30):
        if got.code != 429:
            break
        time.sleep(float((got.body or {}).get("details", {}).get("retryAfterSeconds") or 1))
        got = fetch(path)
    assert got.code == 200, (path, got.code, got.raw[:300])
    return got.rv, {item["metadata"]["name"]: rv_of(item) for item in got.body["items"]}


def wait_cached(proxy: Proxy, cp: ControlPlane, path: str) -> dict[str, int]:
    """Polls until the proxy lists what kube-apiserver lists at ``path``; returns that."""
    kube, cache = differential.kube(cp), differential.proxy(proxy)
    last: dict[str, int] = {}

    def same() -> bool:
        last.clear()
        last.update(listed(kube, path)[1])
        return listed(cache, path)[1] == last

    differential.wait_until(same, what=f"the cache to list what kube lists at {path}")
    return last


def kube_watch(cp: ControlPlane, path: str, headers: dict[str, str] | None = None) -> WatchStream:
    auth = {"Authorization": f"Bearer {cp.admin.token}", **(headers or {})}
    return WatchStream(cp.server, path, headers=auth, ssl_context=cp.ssl_context())


def proxy_watch(proxy: Proxy, path: str, headers: dict[str, str] | None = None) -> WatchStream:
    return WatchStream(proxy.base, path, headers=headers)


def watch_path(ns: str | None, query: str) -> str:
    return f"{collection(ns)}?watch=true" + (f"&{query}" if query else "")


def is_expired(event: dict[str, Any]) -> bool:
    return event["type"] == "ERROR" and (event.get("object") or {}).get("code") == 410


class Follower:
    """A client as client-go's reflector is one: it keeps ``state`` (name -> resourceVersion)
    from a watch, and when the watch ends with 410 Expired it lists again (through the same
    server) and watches from that list's version. ``events`` holds every change it was sent,
    ``expired`` the 410s it got, ``states`` the state it held at each version it was given
    (a list's or a change's)."""

    def __init__(
        self,
        proxy: Proxy,
        path: str,
        stream: WatchStream,
        state: dict[str, int],
        query: str = "",
    ) -> None:
        self.proxy, self.path, self.query = proxy, path, query
        self.stream, self.state = stream, state
        self.events: list[dict[str, Any]] = []
        self.expired: list[dict[str, Any]] = []
        self.states: list[tuple[int, dict[str, int]]] = []

    def relist(self) -> None:
        self.stream.close()
        rv, self.state = listed(differential.proxy(self.proxy), self.path + "?" + self.query)
        self.states.append((rv, dict(self.state)))
        query = "&".join(q for q in (self.query, f"resourceVersion={rv}") if q)
        self.stream = proxy_watch(self.proxy, f"{self.path}?watch=true&{query}")

    def until(self, done: Callable[[dict[str, int]], bool], timeout: float = 60) -> None:
        """Follows the watch until ``done(state)``; fails if the stream ends otherwise."""
        deadline = time.monotonic() + timeout
        while not done(self.state):
            event = self.stream.next(deadline - time.monotonic())
            assert event is not None, (self.path, self.stream.error, changes(self.events))
            if is_expired(event):
                self.expired.append(event)
                self.relist()
                continue
            replay([event], self.state)
            if event["type"] != "BOOKMARK":
                self.events.append(event)
                self.states.append((summary(event)[2], dict(self.state)))

    def close(self) -> None:
        self.stream.close()


def kube_json(cp: ControlPlane, method: str, path: str, body: object = None, **kw: Any) -> Any:
    """A direct call to kube-apiserver that must succeed; its JSON answer."""
    code, raw = cp.request(method, path, body, **kw)
    assert code in (200, 201), f"{method} {path}: {code} {raw[:500]!r}"
    return json.loads(raw)


def event(name: str, api_version: str, kind: str, about: str, namespace: str) -> dict[str, Any]:
    """An events.k8s.io Event about the object ``kind``/``about`` in ``namespace``."""
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "watchcache.test/controller",
        "reportingInstance": "test",
        "action": "Testing",
        "reason": "Testing",
        "type": "Normal",
        "note": f"about {kind} {about}",
        "regarding": {
            "apiVersion": api_version,
            "kind": kind,
            "name": about,
            "namespace": namespace,
        },
    }
