"""The seam between a Reflector and whatever lists and watches for it (the upstream client).

The cache knows no HTTP and no transport: a Reflector is handed a ``Source`` and sees only
these few calls and the ``SourceError`` every transport failure is raised as.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar


class SourceError(Exception):
    """The source failed (no answer, a cut stream, an error status): try again later."""


class Page(Protocol):
    """A whole answer: its status code and body."""

    code: int
    body: bytes


class StreamSink(Protocol):
    """A streamed answer as it arrives: status, the start of an error body, and when the
    last byte came (a watch silent for too long is presumed stalled)."""

    code: int
    error_body: bytes
    last_data: float
    any_data: bool


# The sink a source makes (``line_sink``) and is handed back (``send``): its own kind.
SinkT = TypeVar("SinkT", bound=StreamSink)


class Source(Protocol[SinkT]):
    async def fetch(
        self, method: str, target: str, *, headers: Mapping[str, str] | None = None
    ) -> Page: ...

    async def send(
        self,
        method: str,
        target: str,
        sink: SinkT,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None: ...

    def line_sink(
        self,
        on_line: Callable[[bytes], Awaitable[None] | None],
        on_head: Callable[[int], None] | None = None,
    ) -> SinkT:
        """A sink that hands each line of a streamed body (a watch event) to ``on_line``."""
        ...
