"""What a review (TokenReview, SubjectAccessReview) needs of the upstream client: a small
protocol that ``watchcache.upstream.client.Upstream`` meets, and test doubles can too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class Answer(Protocol):
    """A whole answer of the API server."""

    code: int
    body: bytes


class Fetcher(Protocol):
    """``Upstream.fetch``: one small request, answered whole."""

    async def fetch(
        self,
        method: str,
        target: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer: ...
