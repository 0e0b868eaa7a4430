"""What a partial ``sendmsg`` leaves goes to the stream whole, in order, large pieces uncopied."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from tornado import iostream

from watchcache.http.adapter import SHARE_ABOVE, write_rest


class Recording:
    """The part of an IOStream ``write_rest`` uses: ``write``, recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes | memoryview] = []

    def write(self, data: bytes | memoryview) -> asyncio.Future[None]:
        self.writes.append(data)
        return cast("asyncio.Future[None]", object())


def rest_of(bufs: list[bytes], sent: int) -> list[bytes | memoryview]:
    stream = Recording()
    write_rest(cast(iostream.IOStream, cast(Any, stream)), bufs, sent)
    return stream.writes


def test_the_rest_is_every_byte_not_sent_in_order() -> None:
    big = b"x" * (SHARE_ABOVE + 1)
    bufs = [b"5\r\n", b"ab", big, b"cd", b"e", b"\r\n"]
    whole = b"".join(bufs)
    for sent in range(0, len(whole)):
        assert b"".join(rest_of(bufs, sent)) == whole[sent:], sent


def test_a_large_piece_goes_to_the_stream_as_a_view_of_the_shared_bytes() -> None:
    big = b"x" * (SHARE_ABOVE * 2)
    writes = rest_of([b"10\r\n", big, b"\r\n"], 4 + 100)
    view = writes[0]
    assert isinstance(view, memoryview) and view.obj is big and len(view) == len(big) - 100


def test_runs_of_small_pieces_are_joined_into_one_write() -> None:
    big = b"y" * SHARE_ABOVE
    writes = rest_of([b"head", b"a", b"b", big, b"c", b"d"], 1)
    assert [bytes(w) for w in writes] == [b"eadab", big, b"cd"]
