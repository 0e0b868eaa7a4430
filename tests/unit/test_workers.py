"""The CPU count of --workers auto (affinity and cgroup v2 quota), the shared table of
written versions, and the merge of every worker's /metrics."""

from __future__ import annotations

from pathlib import Path

from watchcache.cache.shared import WrittenVersions
from watchcache.workers import available_cpus, cgroup_cpu_limit, merge


def fake_cgroup(tmp_path: Path, limits: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in limits.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel / "cpu.max").write_text(text)
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    (root / "kubepods/pod1/ctr").mkdir(parents=True, exist_ok=True)
    return proc, root


def test_no_quota_means_no_limit(tmp_path: Path) -> None:
    proc, root = fake_cgroup(tmp_path, {"kubepods/pod1/ctr": "max 100000\n"})
    assert cgroup_cpu_limit(proc, root) is None


def test_the_lowest_quota_of_the_cgroup_and_its_ancestors_counts(tmp_path: Path) -> None:
    proc, root = fake_cgroup(
        tmp_path, {"kubepods": "400000 100000\n", "kubepods/pod1/ctr": "150000 100000\n"}
    )
    assert cgroup_cpu_limit(proc, root) == 1.5
    assert available_cpus(proc, root) <= 2  # ceil(1.5), or fewer CPUs of affinity
    assert available_cpus(proc, root) >= 1


def test_a_tiny_quota_still_gives_one_worker_and_no_cgroup_v2_gives_none(tmp_path: Path) -> None:
    proc, root = fake_cgroup(tmp_path, {"kubepods/pod1/ctr": "10000 100000\n"})
    assert available_cpus(proc, root) == 1
    (tmp_path / "v1").write_text("4:cpu,cpuacct:/x\n")
    assert cgroup_cpu_limit(tmp_path / "v1", root) is None
    assert cgroup_cpu_limit(tmp_path / "missing", root) is None


def test_written_versions_are_shared_between_mappings_and_only_grow(tmp_path: Path) -> None:
    a, b = WrittenVersions(tmp_path / "w"), WrittenVersions(tmp_path / "w")
    assert b.get("ray.io/rayclusters", None) == 0
    a.record("ray.io/rayclusters", None, 10)
    assert b.get("ray.io/rayclusters", None) == 10
    b.record("ray.io/rayclusters", None, 7)  # lower: ignored
    assert a.get("ray.io/rayclusters", None) == 10
    a.record("ray.io/rayclusters", "team-a", 12)
    assert b.get("ray.io/rayclusters", "team-a") == 12
    assert b.get("ray.io/rayclusters", "team-b") == 0
    assert b.get("ray.io/rayjobs", None) == 0
    a.close()
    b.close()


def test_a_full_table_overflows_into_one_maximum_never_into_zero(tmp_path: Path) -> None:
    import watchcache.cache.shared as shared

    table = WrittenVersions(tmp_path / "w")
    for i in range(shared.OVERFLOW):
        table.record("r", f"ns-{i}", 1)
    table.record("r", "late-1", 50)
    table.record("r", "late-2", 40)
    assert table.get("r", "late-1") == 50
    assert table.get("r", "late-2") == 50  # a longer wait, never a stale read
    assert table.get("r", "ns-3") == 1
    table.close()


def test_merge_labels_every_sample_and_keeps_one_head_per_family() -> None:
    one = (
        '# HELP a_total A.\n# TYPE a_total counter\na_total{code="200"} 3\n'
        "# HELP g G.\n# TYPE g gauge\ng 1\n"
    )
    two = (
        '# HELP a_total A.\n# TYPE a_total counter\na_total{code="200"} 4\n'
        "# HELP g G.\n# TYPE g gauge\ng 2\n"
    )
    text = merge([(0, one), (1, two)], "watchcache_workers 2\n")
    assert text.count("# TYPE a_total counter") == 1
    assert 'a_total{worker="0",code="200"} 3' in text
    assert 'a_total{worker="1",code="200"} 4' in text
    assert 'g{worker="1"} 2' in text
    lines = text.splitlines()
    assert lines.index('g{worker="0"} 1') > lines.index("# TYPE g gauge")
    assert lines[-1] == "watchcache_workers 2"
