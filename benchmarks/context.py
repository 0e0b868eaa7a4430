"""What every scenario shares: the sizes of a run, the targets, and where figures are recorded."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.procs import Target
from tests.support.controlplane import ControlPlane

TARGETS = ("direct", "no-cache", "cached")


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How big and how long. ``seconds`` per wrk run, stretched (up to ``max_seconds``) when
    single requests are slow, so that slow targets still complete enough requests."""

    namespaces: int
    per_namespace: int
    seconds: float
    max_seconds: float
    watchers: tuple[int, ...]
    many_watchers: int  # scenario 10: fan-out at scale, against the cached target only
    write_rate: float
    write_seconds: float
    writes: int

    @property
    def objects(self) -> int:
        return self.namespaces * self.per_namespace


FULL = Sizes(
    namespaces=10,
    per_namespace=1000,
    seconds=10,
    max_seconds=30,
    watchers=(100, 1000),
    many_watchers=10_000,
    write_rate=10,
    write_seconds=15,
    writes=200,
)
QUICK = Sizes(
    namespaces=5,
    per_namespace=100,
    seconds=1,
    max_seconds=3,
    watchers=(20, 100),
    many_watchers=1000,
    write_rate=10,
    write_seconds=2,
    writes=20,
)


@dataclass
class Row:
    """One figure for the three targets. ``better``: "higher" or "lower"."""

    scenario: str
    case: str
    metric: str
    better: str
    values: dict[str, float]
    unit: str = ""
    noisy: bool = False  # measured while processes outside the benchmark were busy

    def ratio(self, other: str) -> float:
        a, b = self.values.get("cached", math.nan), self.values.get(other, math.nan)
        return a / b if b and not math.isnan(b) else math.nan


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    goals: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        scenario: str,
        case: str,
        metric: str,
        better: str,
        values: dict[str, float],
        unit: str = "",
        *,
        noisy: bool = False,
    ) -> Row:
        row = Row(scenario, case, metric, better, values, unit, noisy)
        self.rows.append(row)
        return row

    def goal(self, scenario: str, goal: str, measured: str, met: bool | None) -> None:
        """A target of the issue; ``met`` None when this run cannot tell (e.g. --quick)."""
        self.goals.append({"scenario": scenario, "goal": goal, "measured": measured, "met": met})


@dataclass
class Bench:
    cp: ControlPlane
    sizes: Sizes
    quick: bool
    targets: dict[str, Target]
    workdir: Path
    results: Results
    namespaces: list[str]
    names: dict[str, list[str]]  # namespace -> object names, in creation order

    @property
    def server_pids(self) -> list[int]:
        """Every server process of the run: kube-apiserver, etcd and both watchcaches."""
        return sorted({pid for t in self.targets.values() for pid in t.all_pids})

    @property
    def ns(self) -> str:
        """The namespace of the one-namespace list."""
        return self.namespaces[0]
