"""The benchmark's population: RayClusters only, N per namespace, created over keep-alive.

Built with ``tests.support.population`` (the ray-operator samples, labels, status), plus
one label of our own, ``bench.watchcache.io/shard`` (s00..s99, by creation index), so that a
selector matches exactly 1% of the objects: the fleet's own labels have no 1% value.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support import population as pop

SHARD_LABEL = "bench.watchcache.io/shard"


def shard_of(index: int) -> str:
    return f"s{index % 100:02d}"


def plan_rayclusters(
    per_namespace: int, namespaces: Sequence[str], seed: int = 7
) -> list[pop.ObjectPlan]:
    """``per_namespace`` RayClusters in each namespace, labelled as a real fleet is."""
    rng = random.Random(seed)
    out: list[pop.ObjectPlan] = []
    i = 0
    for ns in namespaces:
        for _ in range(per_namespace):
            labels = {k: rng.choice(vs) for k, vs, p in pop.LABELS if rng.random() < p}
            labels[SHARD_LABEL] = shard_of(i)
            suspend = rng.random() < 0.1
            state = None if rng.random() < 0.15 else rng.choice(pop.STATES["RayCluster"])
            if suspend and state is not None:
                state = "suspended"
            name = f"{rng.choice(pop.WORDS)}-{rng.choice(pop.WORDS)}-{i:05d}"
            out.append(
                pop.ObjectPlan(
                    namespace=ns,
                    name=name,
                    kind="RayCluster",
                    labels=labels,
                    variant=rng.randrange(8),
                    state=state,
                    suspend=suspend,
                )
            )
            i += 1
    return out


class KeepAliveClient:
    """A ``request_fn`` for ``population``: one persistent HTTPS connection per thread."""

    def __init__(self, server: str, token: str, ssl_context: ssl.SSLContext) -> None:
        url = urlsplit(server)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 443
        self.token = token
        self.ssl_context = ssl_context
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPSConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.ssl_context, timeout=60
            )
            self.local.conn = conn
        return conn

    def __call__(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")


@dataclass
class Filled:
    objects: int
    requests: int
    seconds: float
    json_bytes: int  # the objects as the API server stored them, compact JSON

    @property
    def per_second(self) -> float:
        return self.objects / self.seconds


def fill(
    client: KeepAliveClient,
    plans: Sequence[pop.ObjectPlan],
    samples_dir: Path,
    *,
    workers: int = 16,
) -> Filled:
    """Creates the objects (and their status), ``workers`` requests in flight."""
    objects = [pop.build(p, samples_dir) for p in plans]
    started = time.monotonic()
    stored = pop.populate(client, objects, workers=workers)
    seconds = time.monotonic() - started
    requests = len(objects) + sum(1 for o in objects if "status" in o)
    size = sum(len(json.dumps(o, separators=(",", ":"))) for o in stored)
    return Filled(len(stored), requests, seconds, size)
