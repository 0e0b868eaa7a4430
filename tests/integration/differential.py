"""The differential judge: one request to watchcache and to kube-apiserver, answers compared.

What must match, request for request (the README, "What it serves", says what watchcache
answers as kube-apiserver does):

- the status code; for errors, a ``kind: Status`` body with the same ``reason``, ``code`` and
  the same causes (reason, field) where Kubernetes gives them (client-go reads the cause
  ``ResourceVersionTooLarge`` to recognise a 504 it may retry);
- for a get, the object itself;
- for a list, ``kind``, ``apiVersion``, the items (namespace, name, resourceVersion) in order
  and then whole, whether ``metadata.continue`` is present and whether it is non-empty (a
  custom resource's last page carries ``continue: ""``), and ``remainingItemCount``;
- for every answer, its last byte (kube's compact JSON ends with a newline);
- a list's ``metadata.resourceVersion`` only loosely: kube-apiserver's consistent list carries
  the global etcd revision, the cache its own, so the proxy's must be no older than any item
  it returns (nor than a requested one) and no newer than kube's, asked afterwards. With
  ``resourceVersionMatch=Exact`` each side must answer at exactly the version it was asked.

Paths may hold placeholders, resolved per side just before the request, because each side
may only be handed its own tokens: ``{rv}`` is the resourceVersion of a plain list of the same
collection on that side, ``{continue}`` the continue token of its first page of ``limit=5``;
``{newest}`` is a resourceVersion both sides know (the newest object's).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from support.controlplane import ControlPlane

RESOURCES = ("rayclusters", "rayjobs", "rayservices")
MAX_PAGES = 500
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Answer:
    code: int
    body: Any  # the parsed JSON, None when the body is not JSON
    raw: bytes

    @property
    def is_list(self) -> bool:
        return isinstance(self.body, dict) and "items" in self.body

    @property
    def meta(self) -> dict[str, Any]:
        return (self.body or {}).get("metadata") or {}

    @property
    def rv(self) -> int:
        return int(self.meta["resourceVersion"])

    def item_keys(self) -> list[tuple[str, str, str]]:
        return [key(item) for item in self.body["items"]]


Fetch = Callable[[str], Answer]


class _Requester(Protocol):
    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Any = None
    ) -> tuple[int, dict[str, str], bytes]: ...


def answer(code: int, raw: bytes) -> Answer:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    return Answer(code, body, raw)


def kube(cp: ControlPlane, headers: dict[str, str] | None = None) -> Fetch:
    """GET straight from kube-apiserver, as the admin (with ``headers``, if any)."""
    if not headers:
        return lambda path: answer(*cp.request("GET", path))

    def fetch(path: str) -> Answer:
        req = urllib.request.Request(cp.server + path, method="GET", headers=headers)
        req.add_header("Authorization", f"Bearer {cp.admin.token}")
        try:
            with urllib.request.urlopen(req, context=cp.ssl_context(), timeout=30) as resp:
                return answer(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return answer(exc.code, exc.read())

    return fetch


def proxy(p: _Requester, headers: dict[str, str] | None = None) -> Fetch:
    """GET through a watchcache process (with ``headers``, if any)."""

    def fetch(path: str) -> Answer:
        code, _, raw = p.request("GET", path, headers=headers)
        return answer(code, raw)

    return fetch


def key(item: dict[str, Any]) -> tuple[str, str, str]:
    meta = item["metadata"]
    return meta.get("namespace", ""), meta["name"], meta["resourceVersion"]


# ---- polling ------------------------------------------------------------------------------


def wait_until(
    probe: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Calls probe until it returns something truthy (returned), failing after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or probe}; last: {result!r}")
        time.sleep(interval)


def state(fetch: Fetch, resources: Iterable[str] = RESOURCES) -> dict[str, list[tuple]] | None:
    """Every object of each resource, all namespaces, as (namespace, name, resourceVersion);
    None when a list is refused (kube-apiserver answers 429 for a moment after a restart)."""
    out: dict[str, list[tuple]] = {}
    for plural in resources:
        got = fetch(f"/apis/ray.io/v1/{plural}")
        if got.code != 200:
            return None
        out[plural] = got.item_keys()
    return out


def state_diff(want: dict[str, list[tuple]] | None, got: dict[str, list[tuple]] | None) -> str:
    """'' when both hold the same objects at the same versions; else what differs, briefly.
    Order is left to the differential corpus, which reports it request by request."""
    if want is None or got is None:
        refused = f"a list was refused (kube: {want is None}, proxy: {got is None})"
        return "" if want == got else refused
    return "; ".join(
        f"{plural}: {diff(want[plural], got.get(plural, []))}"
        for plural in want
        if sorted(want[plural]) != sorted(got.get(plural, []))
    )


def wait_for_same_state(target: Fetch, reference: Fetch, *, timeout: float = 60.0) -> None:
    """Polls until target lists exactly what reference lists, for every Ray resource."""
    last = ["nothing compared yet"]

    def same() -> bool:
        want = state(reference)
        last[0] = state_diff(want, state(target)) if want is not None else "kube refused a list"
        return not last[0]

    try:
        wait_until(same, timeout=timeout, interval=0.1, what="the cache to hold kube's objects")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n  last difference: {last[0]}") from None


# ---- requests and comparisons -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One request of the corpus. ``walk``: follow ``metadata.continue`` to the last page."""

    path: str
    walk: bool = False

    @property
    def collection(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def exact(self) -> bool:
        return "resourceVersionMatch=Exact" in self.path


def resolve(path: str, fetch: Fetch, *, newest: int) -> tuple[str, int | None]:
    """The path with its placeholders filled for one side, and the resourceVersion put in
    ``{rv}`` or ``{newest}`` (None when the path asks for none)."""
    collection = path.split("?", 1)[0]
    asked: int | None = None
    if "{rv}" in path:
        first = fetch(collection)
        assert first.code == 200, (collection, first.code, first.raw[:300])
        asked = first.rv
        path = path.replace("{rv}", str(asked))
    if "{newest}" in path:
        asked = newest
        path = path.replace("{newest}", str(newest))
    if "{continue}" in path:
        first = fetch(collection + "?limit=5")
        assert first.code == 200 and first.meta.get("continue"), (collection, first.raw[:300])
        path = path.replace("{continue}", urllib.parse.quote(first.meta["continue"], safe=""))
    return path, asked


def walk(fetch: Fetch, path: str) -> list[Answer]:
    """The pages of a list, following continue tokens as client-go's pager does (the later
    pages without resourceVersion or resourceVersionMatch, which kube forbids next to a
    continue token); stops at the first non-200 page."""
    pages = [fetch(path)]
    collection, _, query = path.partition("?")
    kept = [
        part
        for part in query.split("&")
        if part and part.split("=", 1)[0] not in ("resourceVersion", "resourceVersionMatch")
    ]
    while pages[-1].code == 200 and pages[-1].meta.get("continue"):
        assert len(pages) < MAX_PAGES, f"{path}: more than {MAX_PAGES} pages"
        token = urllib.parse.quote(pages[-1].meta["continue"], safe="")
        pages.append(fetch(f"{collection}?{'&'.join([*kept, f'continue={token}'])}"))
    return pages


def run_case(case: Case, target: Fetch, reference: Fetch, *, newest: int) -> None:
    """Sends the case to target (the proxy) and then to reference (kube), and compares.

    The proxy is asked first, so that its list resourceVersion can be checked to be no newer
    than kube's: kube-apiserver's own writes (its lease) move the global revision meanwhile.
    """
    target_path, target_asked = resolve(case.path, target, newest=newest)
    got = walk(target, target_path) if case.walk else [target(target_path)]
    reference_path, reference_asked = resolve(case.path, reference, newest=newest)
    want = walk(reference, reference_path) if case.walk else [reference(reference_path)]
    where = f"{case.path}\n  proxy: {target_path}\n  kube:  {reference_path}"
    if case.exact and want[0].code == 200:
        assert [p.rv for p in want] == [reference_asked] * len(want), where
    compare_pages(where, want, got, asked=target_asked, exact=case.exact)


def compare_pages(
    where: str,
    want: Sequence[Answer],
    got: Sequence[Answer],
    *,
    asked: int | None = None,
    exact: bool = False,
) -> None:
    """Compares one answer (a single page) or a whole walk of pages."""
    codes = ([p.code for p in want], [p.code for p in got])
    assert codes[1] == codes[0], f"{where}\n  status codes (kube, proxy): {codes}"
    # Every JSON answer (object, list, Status) ends as kube's encoder ends it.
    ends = ([p.raw[-1:] for p in want], [p.raw[-1:] for p in got])
    assert ends[1] == ends[0], f"{where}\n  last bytes (kube, proxy): {ends}"
    for w, g in zip(want, got, strict=True):
        assert g.body is not None, f"{where}\n  proxy body is not JSON: {g.raw[:300]!r}"
        if not w.is_list:
            compare_single(where, w, g)
    if not want[0].is_list:
        return
    assert all(g.is_list for g in got), f"{where}\n  proxy pages: {[g.raw[:200] for g in got]}"
    items_want = [k for p in want for k in p.item_keys()]
    items_got = [k for p in got for k in p.item_keys()]
    assert items_got == items_want, f"{where}\n  {diff(items_want, items_got)}"
    objects = zip(
        (i for p in want for i in p.body["items"]),
        (i for p in got for i in p.body["items"]),
        strict=True,
    )
    for w_item, g_item in objects:
        assert g_item == w_item, f"{where}\n  {key(w_item)}: {diff_objects(w_item, g_item)}"
    sizes = ([len(p.body["items"]) for p in want], [len(p.body["items"]) for p in got])
    assert len(sizes[1]) == len(sizes[0]), f"{where}\n  page sizes (kube, proxy): {sizes}"
    # Kube fills every page but the last; where it does, so must the proxy.
    if len(set(sizes[0][:-1])) <= 1:
        assert sizes[1] == sizes[0], f"{where}\n  page sizes (kube, proxy): {sizes}"
    for n, (w, g) in enumerate(zip(want, got, strict=True)):
        page = f"{where}\n  page {n + 1}"
        assert g.body["kind"] == w.body["kind"], page
        assert g.body["apiVersion"] == w.body["apiVersion"], page
        assert bool(g.meta.get("continue")) == bool(w.meta.get("continue")), page
        # A custom resource's list always has the key: "" on its last page.
        assert ("continue" in g.meta) == ("continue" in w.meta), f"{page}\n  {g.meta}"
        if not w.meta.get("continue") and "continue" in w.meta:
            assert g.meta["continue"] == "", f"{page}\n  {g.meta}"
        assert g.meta.get("remainingItemCount") == w.meta.get("remainingItemCount"), (
            f"{page}\n  remainingItemCount (kube, proxy): "
            f"{w.meta.get('remainingItemCount')}, {g.meta.get('remainingItemCount')}"
        )
    # Every page of one walk is a view of one snapshot: one resourceVersion throughout.
    assert len({p.rv for p in got}) == 1, f"{where}\n  proxy page RVs: {[p.rv for p in got]}"
    rv = got[0].rv
    if exact:
        assert rv == asked, f"{where}\n  Exact list at {rv}, asked {asked}"
        return
    newest_item = max((int(k[2]) for k in items_got), default=0)
    assert newest_item <= rv <= want[0].rv, (
        f"{where}\n  proxy list RV {rv}: newest item {newest_item}, kube's list {want[0].rv}"
    )
    if asked is not None:
        assert rv >= asked, f"{where}\n  list RV {rv} older than the requested {asked}"


def compare_single(where: str, want: Answer, got: Answer) -> None:
    """A get's object, or an error's Status."""
    if isinstance(want.body, dict) and want.body.get("kind") == "Status":
        assert isinstance(got.body, dict) and got.body.get("kind") == "Status", (
            f"{where}\n  proxy answered {got.code} with a non-Status: {got.raw[:300]!r}"
        )
        summary = (status_summary(want.body), status_summary(got.body))
        assert summary[1] == summary[0], f"{where}\n  Status (kube, proxy): {summary}"
        # A refused query: in the very words (clients show them), but for a tampered
        # continue token, which each server refuses on its own token format.
        if want.code == 400 and "continue=" not in where:
            messages = (want.body.get("message"), got.body.get("message"))
            assert messages[1] == messages[0], f"{where}\n  messages (kube, proxy): {messages}"
        assert got.body.get("message"), f"{where}\n  proxy Status without a message"
        return
    assert got.body == want.body, f"{where}\n  objects differ: {diff_objects(want.body, got.body)}"


def status_summary(status: dict[str, Any]) -> tuple[Any, ...]:
    causes = (status.get("details") or {}).get("causes") or []
    return (
        status.get("reason"),
        status.get("code"),
        sorted((c.get("reason", ""), c.get("field", "")) for c in causes),
    )


def diff(want: Sequence[tuple], got: Sequence[tuple]) -> str:
    missing = [k for k in want if k not in set(got)]
    extra = [k for k in got if k not in set(want)]
    if not missing and not extra:
        return f"same items, different order: kube {want[:5]}..., proxy {got[:5]}..."
    return f"kube has {len(want)}, proxy {len(got)}; missing {missing[:5]}, extra {extra[:5]}"


def diff_objects(want: Any, got: Any, path: str = "") -> str:
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(set(want) | set(got)):
            if want.get(k) != got.get(k):
                return diff_objects(want.get(k), got.get(k), f"{path}.{k}")
    return f"at {path or '.'}: kube {json.dumps(want)[:200]}, proxy {json.dumps(got)[:200]}"
