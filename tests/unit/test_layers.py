"""The package's layer rules, read from every import statement (TYPE_CHECKING ones too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "watchcache"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The watchcache modules ``name`` imports, anywhere in the file."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from watchcache.kube import bodies" imports the submodule when there is one.
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> str:
    return name.split(".")[1] if name.count(".") else ""


def test_every_module_is_seen() -> None:
    assert {"watchcache.kube.selectors", "watchcache.cache.store", "watchcache.server"} <= set(
        GRAPH
    )


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if layer(n) == "kube"))
def test_kube_imports_nothing_of_watchcache_outside_kube(name: str) -> None:
    assert {m for m in GRAPH[name] if layer(m) != "kube"} == set()


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if layer(n) == "cache"))
def test_cache_imports_no_http_middleware_or_upstream_code(name: str) -> None:
    assert {m for m in GRAPH[name] if layer(m) in ("http", "middleware", "upstream")} == set()


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if layer(n) == "auth"))
def test_auth_imports_no_http_middleware_or_cache_code(name: str) -> None:
    # Authentication and authorization decide from a request's attributes; they never
    # reach into how requests are served.
    assert {m for m in GRAPH[name] if layer(m) in ("http", "middleware", "cache")} == set()


@pytest.mark.parametrize(
    "name", sorted(n for n in GRAPH if layer(n) in ("kube", "cache", "upstream"))
)
def test_lower_layers_do_not_import_auth(name: str) -> None:
    assert {m for m in GRAPH[name] if layer(m) == "auth"} == set()


def test_nothing_imports_the_server_wiring_but_the_cli() -> None:
    # The package root re-exports Server: it is the library's public face, not a layer.
    importers = {n for n, deps in GRAPH.items() if "watchcache.server" in deps}
    assert importers <= {"watchcache.cli", "watchcache"}


def test_there_is_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            raise AssertionError(" -> ".join(cycle))
        if name in done:
            return
        for dep in sorted(GRAPH[name]):
            # A package imports what its __init__ re-exports; that is no cycle of modules.
            if not (
                dep != name and name.startswith(dep + ".") and MODULES[dep].name == "__init__.py"
            ):
                visit(dep, [*path, name])
        done.add(name)

    for name in sorted(GRAPH):
        if name != "watchcache":  # the root re-exports the public API from every layer
            visit(name, [])
