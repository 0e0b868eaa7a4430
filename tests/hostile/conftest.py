"""What every hostile-input test checks after its attack: the server is still well.

The fixtures (control plane, watchcache processes) are the shared ones of tests/conftest.py;
test modules here import these helpers relatively: ``from .conftest import assert_healthy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Proxy

# The resident memory a watchcache process may hold after any single attack.
RSS_BUDGET = 300 * 1024 * 1024
# Generous on purpose: a slow shared machine must not fail a test; a hung server still does.
PROBE_TIMEOUT = 10.0


def rss_of(proxy: Proxy) -> int:
    """The process's resident set size in bytes (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{proxy.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {proxy.proc.pid}")


def assert_healthy(proxy: Proxy, probe: str = "/readyz", rss_budget: int = RSS_BUDGET) -> None:
    """The process lives, answers ``probe`` with 200, holds under ``rss_budget`` and has
    logged no traceback."""
    assert proxy.proc.poll() is None, f"watchcache exited with {proxy.proc.returncode}"
    code, _, body = proxy.request("GET", probe, timeout=PROBE_TIMEOUT)
    assert code == 200, (code, body[:300])
    rss = rss_of(proxy)
    assert rss < rss_budget, f"RSS {rss / 2**20:.0f} MiB over {rss_budget / 2**20:.0f} MiB"
    log = proxy.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 300 :][:3000]
