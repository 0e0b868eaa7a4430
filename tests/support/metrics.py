"""Reading one sample of a server's /metrics, as the tests check its counters and gauges."""

from __future__ import annotations

import re
from typing import Protocol


class Requester(Protocol):
    def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]: ...


def sample(server: Requester, name: str, **labels: str) -> float | None:
    """The value of ``name`` with exactly ``labels`` (in the order the server writes them);
    None when /metrics has no such sample."""
    code, _, body = server.request("GET", "/metrics")
    assert code == 200, body[:200]
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = re.escape(name) + (rf"\{{{re.escape(wanted)}\}}" if labels else "")
    found = re.search(rf"^{series} (\S+)$", body.decode(), re.MULTILINE)
    return float(found.group(1)) if found else None


def metric(server: Requester, name: str, **labels: str) -> float:
    """``sample``, which must be there."""
    value = sample(server, name, **labels)
    assert value is not None, f"{name} {labels} not in /metrics"
    return value
