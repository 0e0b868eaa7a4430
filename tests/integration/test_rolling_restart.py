"""A rolling restart of two watchcache replicas under load, judged against kube-apiserver.

Two `watchcache serve` processes (replicas, `--shutdown-delay`) on the one control plane;
100 watchers (allowWatchBookmarks=true) spread over them, each a client as client-go's
reflector is one (list, then watch from the list's version); a writer making creates,
patches and deletes at a steady rate through whichever replica is ready, as a load balancer
routes on /readyz. Replica 0 is stopped with SIGTERM and started again on its port, then
replica 1. A watcher whose stream ends resumes on the other replica from the last version it
was given (an event's or the shutdown's bookmark), or lists again after a 410: every tenth
watcher waits, after its first shutdown, until more has changed than a replica's history
(`--watch-history-events`) holds, so that its resume is refused and it lists again.

What must hold: the shutdown's order (/readyz fails, /livez does not, while the port still
serves; then the port closes; a create in flight across it is answered), every write
answered, every watch ended by a shutdown ended cleanly after a last bookmark, and each
watcher's events, range by range, exactly the events a direct watch on kube-apiserver saw
(none twice, none missing), its states at its lists kube's states at those versions, and
its final state (whole objects) the API server's own list.
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from differential import wait_until
from kubeio import (
    MERGE,
    KubeWriter,
    collection,
    is_expired,
    kube_json,
    kube_watch,
    rv_of,
    small_cluster,
    watch_path,
)
from support import population
from support.controlplane import ControlPlane
from watchclient import Event, Summary, WatchStream, assert_bookmarks_monotonic, summary

if TYPE_CHECKING:
    from conftest import Proxy

NS = "wc-rolling"
WATCHERS = 100
SEEDS = 10  # objects made before anything starts
DELAY, GRACE = 1.5, 10.0  # each replica's --shutdown-delay and --shutdown-grace
WRITE_EVERY = 0.04  # seconds between two writes
WRITES_BETWEEN = 25  # writes answered between two steps of the rolling restart
PROBE_EVERY = 0.02  # seconds between two looks at a replica's /readyz
HISTORY = 50  # each replica's --watch-history-events
LAGGARD_EVERY = 10  # every 10th watcher waits, after its first shutdown, until it is too old
BOUND = 60.0  # seconds any one wait may take


@pytest.fixture(scope="module", autouse=True)
def namespace(controlplane: ControlPlane) -> Iterator[None]:
    population.ensure_namespaces(controlplane.request, (NS,))
    population.delete_all(controlplane.request, (NS,))
    yield
    population.delete_all(controlplane.request, (NS,))


# ---- the replicas, and what a load balancer sees of them ------------------------------------


def probe(proxy: Proxy, path: str = "/readyz") -> str:
    """ok, shutdown (kube-apiserver's failing readyz), closed (nothing accepts the
    connection), or another code."""
    try:
        code, _, body = proxy.request("GET", path, timeout=10)
    except (OSError, http.client.HTTPException):  # refused, or reset unanswered
        return "closed"
    if code == 200:
        return "ok"
    if code == 500 and b"[-]shutdown failed" in body and b"[+]ping ok" in body:
        return "shutdown"
    return str(code)


@dataclass
class Replica:
    index: int
    proxy: Proxy
    ready: bool = True  # as the prober last saw it

    @property
    def port(self) -> int:
        return urlsplit(self.proxy.base).port or 0


class Prober(threading.Thread):
    """Routes traffic as a load balancer does: a replica takes requests while its /readyz
    answers 200."""

    def __init__(self, replicas: list[Replica]) -> None:
        super().__init__(daemon=True)
        self.replicas = replicas
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(PROBE_EVERY):
            for replica in self.replicas:
                replica.ready = probe(replica.proxy) == "ok"

    def pick(self, avoid: Replica | None = None) -> Replica:
        """A ready replica, another than ``avoid`` when there is one."""
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            ready = [r for r in self.replicas if r.ready]
            others = [r for r in ready if r is not avoid]
            if others or ready:
                return random.choice(others or ready)
            time.sleep(PROBE_EVERY)
        raise AssertionError("no replica ready")


def send(replica: Replica, method: str, path: str, body: bytes | None, ctype: str) -> Any:
    """One request on a new connection: None when nothing accepted the connection (never
    sent), else (code, JSON answer); a connection cut before the answer raises."""
    conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=30)
    try:
        try:
            conn.connect()
        except ConnectionRefusedError:
            return None
        headers = {"Content-Type": ctype} if body is not None else {}
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


# ---- the writer -----------------------------------------------------------------------------


class Writer(threading.Thread):
    """Creates, patches and deletes RayClusters at a steady rate, each through a ready
    replica; records every answer, and every write whose connection was cut unanswered."""

    def __init__(self, prober: Prober, live: set[str]) -> None:
        super().__init__(daemon=True)
        self.prober = prober
        self.live = set(live)
        self.rng = random.Random(14)
        self.answered: list[tuple[str, str, int, int]] = []  # method, name, code, replica
        self.lost: list[str] = []
        self.refused = 0  # connections nothing accepted: never sent, sent again elsewhere
        self.failure: str | None = None
        self.stopping = threading.Event()
        self.count = 0
        self.lock = threading.Lock()  # ``live`` is also added to by the test (adopt)

    def run(self) -> None:
        try:
            while not self.stopping.wait(WRITE_EVERY):
                self.step()
        except BaseException:
            self.failure = traceback.format_exc()

    def adopt(self, name: str) -> None:
        """An object made by another client, which the writer may now patch and delete."""
        with self.lock:
            self.live.add(name)

    def step(self) -> None:
        self.count += 1
        n = self.count
        roll = self.rng.random()
        with self.lock:
            live = sorted(self.live)
        if len(live) < 5 or (roll < 0.4 and len(live) < 30):
            name = f"roll-{n}"
            self.write("POST", name, collection(NS), small_cluster(name, NS, {"n": str(n)}))
            self.adopt(name)
        elif roll < 0.8:
            name = self.rng.choice(live)
            patch = {"metadata": {"labels": {"n": str(n)}}}
            self.write("PATCH", name, f"{collection(NS)}/{name}", patch, MERGE)
        else:
            name = self.rng.choice(live)
            self.write("DELETE", name, f"{collection(NS)}/{name}", None)
            with self.lock:
                self.live.discard(name)

    def write(
        self, method: str, name: str, path: str, obj: Any, ctype: str = "application/json"
    ) -> None:
        body = None if obj is None else json.dumps(obj).encode()
        for _ in range(100):
            replica = self.prober.pick()
            try:
                answer = send(replica, method, path, body, ctype)
            except (OSError, http.client.HTTPException) as exc:
                self.lost.append(f"{method} {name} on replica {replica.index}: {exc!r}")
                return
            if answer is None:
                self.refused += 1
                time.sleep(PROBE_EVERY)
                continue
            code, got = answer
            assert code in (200, 201), (method, name, code, got)
            self.answered.append((method, name, code, replica.index))
            return
        raise AssertionError(f"{method} {name}: never accepted")


class SlowCreate:
    """A create whose headers and first bytes are sent before SIGTERM and the rest after
    the port has closed: a write in flight across the shutdown."""

    def __init__(self, replica: Replica, name: str) -> None:
        self.name = name
        self.body = json.dumps(small_cluster(name, NS)).encode()
        self.conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=30)
        self.conn.putrequest("POST", collection(NS))
        self.conn.putheader("Content-Type", "application/json")
        self.conn.putheader("Content-Length", str(len(self.body)))
        self.conn.endheaders()
        self.conn.send(self.body[:10])

    def finish(self) -> tuple[int, Any]:
        try:
            self.conn.send(self.body[10:])
            resp = self.conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            self.conn.close()


# ---- the watchers ---------------------------------------------------------------------------


@dataclass
class Segment:
    """One unbroken range of a watcher's history: it started from ``start`` (a list's
    version, ``state`` its items), then was given ``events``; ``seen`` is the last version
    it was given (an event's or a bookmark's)."""

    start: int
    state: dict[str, int]
    events: list[Summary] = field(default_factory=list)
    seen: int = 0


@dataclass
class End:
    replica: int
    clean: bool | None
    last: str  # the type of the stream's last event ("" for none)
    last_rv: int
    high: int  # the highest version given before that last event


class Watcher(threading.Thread):
    """A reflector-like client: list, watch from the list's version with bookmarks, resume
    from the last version given on another replica when the stream ends, list again on a
    410. Done once it was given ``target`` (set by the test). ``lag``, if any, is waited
    for after the first stream that a shutdown ended, before resuming."""

    def __init__(
        self, index: int, prober: Prober, first: Replica, lag: Callable[[], None] | None
    ) -> None:
        super().__init__(daemon=True)
        self.index = index
        self.prober = prober
        self.replica = first
        self.lag = lag
        self.state: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.segments: list[Segment] = []
        self.ends: list[End] = []
        self.retries = 0  # watch requests that got no answer head (a closing port)
        self.target: int | None = None
        self.done = threading.Event()
        self.failure: str | None = None
        self.stream: WatchStream | None = None

    def run(self) -> None:
        try:
            self.relist()
            while not self.finished():
                self.follow(self.open())
        except BaseException:
            self.failure = traceback.format_exc()
        finally:
            if self.stream is not None:
                self.stream.close()
            self.done.set()

    def finished(self) -> bool:
        return self.target is not None and self.rv >= self.target

    def relist(self) -> None:
        code, _, raw = self.replica.proxy.request("GET", collection(NS))
        assert code == 200, (code, raw[:300])
        listed = json.loads(raw)
        self.state = {item["metadata"]["name"]: item for item in listed["items"]}
        self.rv = int(listed["metadata"]["resourceVersion"])
        state = {name: rv_of(obj) for name, obj in self.state.items()}
        self.segments.append(Segment(self.rv, state, seen=self.rv))

    def open(self) -> WatchStream:
        """A watch from the last version given, on a ready replica; a connection that no one
        answers (a port closing under the prober's last look) is tried again."""
        path = watch_path(NS, f"allowWatchBookmarks=true&resourceVersion={self.rv}")
        for _ in range(100):
            try:
                stream = WatchStream(self.replica.proxy.base, path)
            except (OSError, http.client.HTTPException):
                self.retries += 1
                self.replica = self.prober.pick(avoid=self.replica)
                continue
            assert stream.status == 200, (self.replica.index, stream.status)
            self.stream = stream
            return stream
        raise AssertionError("no watch answered")

    def follow(self, stream: WatchStream) -> None:
        """Reads the stream until it ends or the watcher is done."""
        segment = self.segments[-1]
        last: Event | None = None
        high = self.rv  # the last version given before ``last``
        while not self.finished():
            try:
                event = stream.next(0.2)
            except AssertionError:  # nothing within the wait: look at the target again
                continue
            if event is None:
                break
            last, high = event, self.rv
            kind, name, rv = summary(event)
            if is_expired(event):
                continue  # the stream ends after it: listed again below
            assert kind != "ERROR", event
            if kind != "BOOKMARK":
                assert rv > self.rv, (kind, name, rv, self.rv)
                segment.events.append((kind, name, rv))
                if kind == "DELETED":
                    self.state.pop(name, None)  # type: ignore[arg-type]
                else:
                    self.state[name] = event["object"]  # type: ignore[index]
            self.rv = max(self.rv, rv)
            segment.seen = self.rv
        stream.close()
        self.stream = None
        assert_bookmarks_monotonic(stream.events, f"watcher {self.index}")
        if self.finished():
            return
        typ = last["type"] if last is not None else ""
        self.ends.append(
            End(self.replica.index, stream.clean_end, typ, summary(last)[2] if last else 0, high)
        )
        if last is not None and is_expired(last):
            self.relist()  # on the replica that said 410: its history starts after our version
            return
        if self.lag is not None:
            lag, self.lag = self.lag, None
            lag()
        self.replica = self.prober.pick(avoid=self.replica)


# ---- kube-apiserver's own view --------------------------------------------------------------


class Reference:
    """kube-apiserver's sequence of events from ``start`` (its list's version and items)."""

    def __init__(self, cp: ControlPlane) -> None:
        listed = kube_json(cp, "GET", collection(NS))
        self.start = int(listed["metadata"]["resourceVersion"])
        self.initial = {i["metadata"]["name"]: rv_of(i) for i in listed["items"]}
        query = f"resourceVersion={self.start}&timeoutSeconds=600"
        self.stream = kube_watch(cp, watch_path(NS, query))
        self.events: list[Summary] = []

    def read_to(self, rv: int) -> None:
        deadline = time.monotonic() + BOUND
        while not self.events or self.events[-1][2] < rv:
            event = self.stream.next(deadline - time.monotonic())
            assert event is not None, f"kube's watch ended ({self.stream.error})"
            assert event["type"] != "ERROR", event
            if event["type"] != "BOOKMARK":
                self.events.append(summary(event))

    def between(self, after: int, upto: int) -> list[Summary]:
        return [e for e in self.events if after < e[2] <= upto]

    def state_at(self, rv: int) -> dict[str, int]:
        state = dict(self.initial)
        for kind, name, at in self.between(0, rv):
            if kind == "DELETED":
                state.pop(name, None)  # type: ignore[arg-type]
            else:
                state[name] = at  # type: ignore[index]
        return state


# ---- the test -------------------------------------------------------------------------------


def roll(replica: Replica, writer: Writer, start: Callable[[int], Proxy]) -> None:
    """SIGTERM, the shutdown watched from outside, then the replica started on its port."""
    proxy = replica.proxy
    slow = SlowCreate(replica, f"in-flight-{replica.index}")
    proxy.proc.send_signal(signal.SIGTERM)
    seen: list[str] = []
    livez: list[str] = []
    deadline = time.monotonic() + BOUND
    while not seen or seen[-1] != "closed":
        assert time.monotonic() < deadline, f"the port never closed: {seen}"
        state = probe(proxy)
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "shutdown" and not livez:
            livez.append(probe(proxy, "/livez"))
        time.sleep(0.01)
    # /readyz failed while the port still served, /livez did not; only then did it close.
    assert seen in (["ok", "shutdown", "closed"], ["shutdown", "closed"]), seen
    assert livez == ["ok"], livez
    code, created = slow.finish()  # the rest of the body, sent after the port closed
    assert code == 201, created
    writer.adopt(slow.name)
    assert proxy.proc.wait(DELAY + GRACE + 30) == 0, proxy.log()[-3000:]
    assert "Traceback" not in proxy.log(), proxy.log()[-3000:]
    replica.proxy = start(replica.port)


def test_a_rolling_restart_loses_no_event_and_no_write(
    controlplane: ControlPlane, proxy_factory: Callable[..., Proxy]
) -> None:
    cp, kube = controlplane, KubeWriter(controlplane)
    seeds = {f"seed-{i}" for i in range(SEEDS)}
    for name in sorted(seeds):
        kube.create(name, NS, {"seed": "yes"})

    def start(port: int | None = None) -> Proxy:
        flags = ("--namespace", NS, "--watch-history-events", str(HISTORY))
        flags += ("--shutdown-delay", str(DELAY), "--shutdown-grace", str(GRACE))
        return proxy_factory(*flags, port=port)

    def lag() -> None:
        """Until more changes were made than a replica's history holds: the resume gets a
        410 and the watcher lists again."""
        mark = len(writer.answered)
        wait_until(
            lambda: len(writer.answered) > mark + HISTORY + 10 or writer.stopping.is_set(),
            timeout=BOUND,
            what="a laggard's version to fall out of the history",
        )

    replicas = [Replica(0, start()), Replica(1, start())]
    prober = Prober(replicas)
    prober.start()
    reference = Reference(cp)
    writer = Writer(prober, seeds)
    watchers = [
        Watcher(i, prober, replicas[i % 2], lag if i % LAGGARD_EVERY == 0 else None)
        for i in range(WATCHERS)
    ]
    try:
        for watcher in watchers:
            watcher.start()
        wait_until(lambda: all(w.segments for w in watchers), timeout=BOUND, what="every list")
        writer.start()

        def writes(n: int) -> None:
            mark = len(writer.answered)
            what = f"{n} more writes answered"
            wait_until(lambda: len(writer.answered) >= mark + n or writer.failure, what=what)
            assert writer.failure is None, writer.failure

        writes(WRITES_BETWEEN)
        for replica in replicas:
            roll(replica, writer, start)
            writes(WRITES_BETWEEN)
        writer.stopping.set()
        writer.join(BOUND)
        assert writer.failure is None, writer.failure
        # The end marker, straight on kube-apiserver: once a watcher has it, it has all.
        target = kube.create("roll-end", NS)
        for watcher in watchers:
            watcher.target = target
        for watcher in watchers:
            assert watcher.done.wait(BOUND), f"watcher {watcher.index} never reached {target}"
        reference.read_to(target)
        final = kube_json(cp, "GET", collection(NS))
    finally:
        writer.stopping.set()
        prober.stopping.set()
        for watcher in watchers:
            watcher.target = 0
        for watcher in watchers:
            watcher.join(BOUND)
        reference.stream.close()

    # Every write was answered: none cut by a shutdown, none unanswered.
    assert writer.lost == [], writer.lost
    assert len(writer.answered) >= 3 * WRITES_BETWEEN
    assert {r for *_, r in writer.answered} == {0, 1}

    upstream = {item["metadata"]["name"]: item for item in final["items"]}
    for w in watchers:
        where = f"watcher {w.index}"
        assert w.failure is None, f"{where}: {w.failure}"
        # Its state is the API server's, object for object.
        assert w.state == upstream, f"{where}: {sorted(w.state)} != {sorted(upstream)}"
        for seg in w.segments:
            # Each list was kube's state at its version; each range kube's events exactly.
            assert seg.state == reference.state_at(seg.start), f"{where}: list at {seg.start}"
            want = reference.between(seg.start, seg.seen)
            assert seg.events == want, f"{where}: from {seg.start}:\n{seg.events}\n!= {want}"
        # Every stream a shutdown ended ended cleanly, its last event a bookmark no older
        # than anything before it; a replica restart ended at least one of each watcher's.
        if w.index % LAGGARD_EVERY == 0:  # replica 0's: its first resume came too late
            assert [e.last for e in w.ends][:2] == ["BOOKMARK", "ERROR"], f"{where}: {w.ends}"
            assert len(w.segments) >= 2, f"{where}: never listed again"
        shutdowns = [e for e in w.ends if e.last != "ERROR"]
        assert shutdowns, f"{where}: no stream of it was ended by a shutdown"
        for end in shutdowns:
            assert end.clean, f"{where}: cut off on replica {end.replica}"
            assert end.last == "BOOKMARK" and end.last_rv >= end.high, f"{where}: {end}"
