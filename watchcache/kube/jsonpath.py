"""The subset of client-go's JSONPath that CRD printer columns use, compiled once.

``.a.b``, escaped dots (``.a\\.b``), ``['a.b']``, ``[0]``, ``[*]`` and ``[?(@.x=="v")]``;
missing keys give no result, as the tableconvertor (which allows missing keys) sees it.
Anything else raises ``Unsupported``: its caller then leaves the work to the API server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson


class Unsupported(Exception):
    """An expression (or printer column) not evaluated here exactly as kube-apiserver does."""


Step = Callable[[Any], list[Any]]
_TOKEN = re.compile(
    r"""\.(?P<field>(?:\\.|[^.\[\\])+)"""
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[(?P<star>\*)\]"""
    r"""|\[(?P<quote>['"])(?P<key>.*?)(?P=quote)\]"""
    r"""|\[\?\(@(?P<fpath>(?:\.[A-Za-z0-9_\-/]+)+)\s*(?P<op>==|!=)\s*"""
    r"""(?P<fquote>['"])(?P<fvalue>.*?)(?P=fquote)\)\]"""
)


def compile_jsonpath(expr: str) -> Callable[[Any], list[Any]]:
    """A function from an object to the values the expression finds in it, in order."""
    body = expr.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    if not body.startswith(".") and not body.startswith("["):
        raise Unsupported(expr)
    steps: list[Step] = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None:
            raise Unsupported(expr)
        pos = m.end()
        if m["field"] is not None:
            steps.append(_key_step(re.sub(r"\\(.)", r"\1", m["field"])))
        elif m["index"] is not None:
            steps.append(_index_step(int(m["index"])))
        elif m["star"] is not None:
            steps.append(_star_step)
        elif m["quote"] is not None:
            steps.append(_key_step(m["key"]))
        else:
            steps.append(_filter_step(m["fpath"][1:].split("."), m["op"], m["fvalue"]))

    def find(obj: Any) -> list[Any]:
        values = [obj]
        for step in steps:
            values = [out for v in values for out in step(v)]
            if not values:
                break
        return values

    return find


def _key_step(key: str) -> Step:
    return lambda v: [v[key]] if isinstance(v, dict) and key in v else []


def _index_step(i: int) -> Step:
    return lambda v: [v[i]] if isinstance(v, list) and -len(v) <= i < len(v) else []


def _star_step(v: Any) -> list[Any]:
    if isinstance(v, list):
        return list(v)
    if isinstance(v, dict):
        return [v[k] for k in sorted(v)]
    return []


def _filter_step(path: list[str], op: str, want: str) -> Step:
    def test(item: Any) -> bool:
        for key in path:
            if not isinstance(item, dict) or key not in item:
                return False
            item = item[key]
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        return (text == want) == (op == "==")

    return lambda v: [item for item in v if test(item)] if isinstance(v, list) else []
