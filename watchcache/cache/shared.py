"""Read-your-writes across worker processes: the highest version each worker has shown.

With ``--workers N`` every worker has its own cache, fed by its own watches, and a client's
next request may land on another worker whose cache is a few milliseconds behind. So after a
write's answer is held until the writer's cache shows it (``cache.writes.shown``), the writer
records, for the written object's feed, the version its cache then had; before a cached read
a worker waits (bounded by ``rv_wait``) until its own feed has reached what any worker
recorded, and delegates the read to the API server if it has not.

The table is a file the supervisor creates in its own temporary directory, mapped by every
worker: ``SLOTS`` pairs of (key hash, version), 8-byte aligned little-endian integers, open
addressing. Updates take an exclusive ``flock`` (writes are rare); reads take none (an
aligned 8-byte load is not torn on the platforms served). A key is a blake2b hash of the
resource and the feed (the namespace of a per-namespace feed, "" for an all-namespaces one).
If the table ever filled up, the last slot holds the maximum of every key left out and is
consulted for those keys: a longer wait, never a stale read. One worker: no table at all.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from pathlib import Path

SLOTS = 4096
SLOT = struct.Struct("<qq")
SIZE = SLOTS * SLOT.size
OVERFLOW = SLOTS - 1


def key_hash(resource: str, feed: str | None) -> int:
    """A non-zero 63-bit hash of (resource, feed); 0 marks an empty slot."""
    digest = hashlib.blake2b(f"{resource}\x00{feed or ''}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & ((1 << 63) - 1)) or 1


class WrittenVersions:
    """The shared (resource, feed) -> highest written version table, one file per server."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SIZE:
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self._lock = open(self.path, "rb")  # noqa: SIM115 - held for flock, closed in close()
        self._slots: dict[int, int] = {}  # key hash -> slot index, once found

    def _find(self, h: int, claim: bool) -> int | None:
        """The slot of ``h`` (claimed when ``claim`` and free), None when not there, or the
        overflow slot when the table is full."""
        known = self._slots.get(h)
        if known is not None:
            return known
        start = h % OVERFLOW
        for i in range(OVERFLOW):
            slot = (start + i) % OVERFLOW
            found, _ = SLOT.unpack_from(self._map, slot * SLOT.size)
            if found == h:
                self._slots[h] = slot
                return slot
            if found == 0:
                if not claim:
                    return None
                SLOT.pack_into(self._map, slot * SLOT.size, h, 0)
                self._slots[h] = slot
                return slot
        return OVERFLOW  # the table is full: the overflow slot stands for every other key

    def record(self, resource: str, feed: str | None, rv: int) -> None:
        """Raises the version of (resource, feed) to ``rv`` (never lowers it)."""
        h = key_hash(resource, feed)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            slot = self._find(h, claim=True)
            assert slot is not None
            at = slot * SLOT.size
            found, old = SLOT.unpack_from(self._map, at)
            if rv > old:
                SLOT.pack_into(self._map, at, found if slot != OVERFLOW else 0, rv)
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def get(self, resource: str, feed: str | None) -> int:
        """The highest version any worker recorded for (resource, feed); 0 if none."""
        h = key_hash(resource, feed)
        slot = self._find(h, claim=False)
        if slot is None:
            return 0
        return int(SLOT.unpack_from(self._map, slot * SLOT.size)[1])

    def close(self) -> None:
        self._map.close()
        self._lock.close()
