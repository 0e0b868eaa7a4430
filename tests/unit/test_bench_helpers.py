"""The benchmark's pure helpers: the watch stream parser and the summary math."""

from __future__ import annotations

import math

from benchmarks.fanout import Dechunker, merge, split
from benchmarks.wrk import LoadResult, median_ratio, per_core


def chunked(*payloads: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads)


def test_dechunker_yields_whole_lines_across_any_split() -> None:
    lines = [b'{"type":"MODIFIED","n":%d}' % i for i in range(5)]
    wire = chunked(
        lines[0] + b"\n" + lines[1][:7], lines[1][7:] + b"\n", *(x + b"\n" for x in lines[2:])
    )
    wire += b"0\r\n\r\n"
    for step in (1, 2, 3, 7, len(wire)):
        d = Dechunker(chunked=True)
        got: list[bytes] = []
        for i in range(0, len(wire), step):
            got += d.feed(wire[i : i + step])
        assert got == lines, step
        assert d.done


def test_dechunker_plain_body() -> None:
    d = Dechunker(chunked=False)
    assert d.feed(b"a\nb") == [b"a"]
    assert d.feed(b"c\n") == [b"bc"]
    assert not d.done


def test_split_is_even_and_never_empty() -> None:
    assert split(10_000, 4) == [2500] * 4
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 5) == [1, 1]
    assert sum(split(9_999, 4)) == 9_999


def test_merge_takes_percentiles_over_every_delivery() -> None:
    base = {"errors": [], "sent": 3, "ended_early": 0, "cpu_s": 0.5}
    a = base | {"watchers": 1, "connected": 1, "expected": 3, "delivered": 3}
    b = base | {"watchers": 2, "connected": 2, "expected": 6, "delivered": 5, "errors": ["x"]}
    out = merge([a, b], [[1.0, 2.0, 3.0], [10.0] * 5])
    assert out["watchers"] == 3 and out["expected"] == 9 and out["delivered"] == 8
    assert out["cpu_s"] == 1.0
    assert out["p50_ms"] == 10.0  # the merged median, not the mean of two medians
    assert out["max_ms"] == 10.0 and out["errors"] == ["x"] and out["processes"] == 2
    assert math.isnan(merge([a], [[]])["p99_ms"])


def load(requests: int, own_cpu_s: float, api_cpu_s: float = 0.0) -> LoadResult:
    per_1k = 1000.0 / requests
    return LoadResult(
        requests=requests,
        seconds=4.0,
        rps=requests / 4.0,
        p50_ms=1.0,
        p99_ms=2.0,
        max_ms=3.0,
        errors=0,
        mb_per_s=1.0,
        server_cpu_per_1k=(own_cpu_s + api_cpu_s) * per_1k,
        api_cpu_per_1k=api_cpu_s * per_1k,
        other_cores=0.0,
    )


def test_per_core_counts_the_servers_own_cpu_not_the_api_servers() -> None:
    assert math.isclose(per_core(load(3000, own_cpu_s=1.5, api_cpu_s=0.5)), 2000.0)
    assert math.isnan(per_core(load(3000, own_cpu_s=0.0)))


def test_median_ratio_compares_runs_of_the_same_pass() -> None:
    # Pass by pass, a answers 0.9, 0.95 and 1.2 times b's requests per CPU second, while the
    # machine's speed moves both; the ratio of their medians would say 1.2.
    a = [load(900, 1.0), load(1900, 1.0), load(1200, 1.0)]
    b = [load(1000, 1.0), load(2000, 1.0), load(1000, 1.0)]
    assert math.isclose(median_ratio(a, b), 0.95)
    a[1] = load(1900, 2.0)  # the same requests on twice the CPU: half as many per core
    assert math.isclose(median_ratio(a, b), 0.9)
