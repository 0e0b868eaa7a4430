"""Fixture factories that test modules share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from support import population

if TYPE_CHECKING:
    from support.controlplane import ControlPlane


def module_namespace(name: str) -> Callable[..., Iterator[str]]:
    """A module-scoped ``namespace`` fixture: ``name`` made on the control plane, its Ray
    resources deleted once the module is done (``namespace = module_namespace(NS)``)."""

    @pytest.fixture(scope="module")
    def namespace(controlplane: ControlPlane) -> Iterator[str]:
        population.ensure_namespaces(controlplane.request, [name])
        yield name
        population.delete_all(controlplane.request, [name])

    return namespace
