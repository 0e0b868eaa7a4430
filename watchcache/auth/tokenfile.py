"""Static bearer tokens from a file in kube-apiserver's ``--token-auth-file`` format.

One CSV record per token: ``token,user,uid[,"group1,group2"]`` (more columns are ignored).
The CSV is Go's (``encoding/csv`` with kube-apiserver's settings), which is stricter than
Python's: no comment lines (a ``#`` line is a record, and a one-column record makes the
file invalid), a quote inside an unquoted field is an error, a quoted field must end at a
comma or the line's end, quoted fields may span lines, only empty lines are skipped,
``\\r\\n`` is ``\\n``. A record with an empty token is skipped; of duplicate tokens the last
wins; the groups column is split on commas as it is (so an empty column is one empty group).

Unlike kube-apiserver, the file is read again when it changes (its modification time, size
or inode), looked at no more than once a second and only when a token is checked, so no
thread or timer is needed. A file that cannot be read or parsed then keeps the last good
tokens and logs one line (the error names a line, never a token).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchcache.auth.authn import TokenAuthenticator
from watchcache.auth.user import UserInfo

log = logging.getLogger(__name__)

# How often, at most, the file's metadata is looked at.
RECHECK_INTERVAL = 1.0


class TokenFileError(ValueError):
    """The file is not a valid token file. The message never contains a field's value."""


def parse_csv(text: str) -> list[list[str]]:
    """Records as Go's ``encoding/csv`` Reader reads them (comma-separated, ``"`` quoting,
    variable field counts, no comments, no lazy quotes, no trimming)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the text ended with a newline (or was empty)
    # Go drops a "\r" before each "\n", and one at the very end.
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    records: list[list[str]] = []
    i = 0
    while i < len(lines):
        line, pos, start = lines[i], 0, i + 1
        i += 1
        if line == "":
            continue  # an empty line
        fields: list[str] = []
        while True:  # one field per turn
            if not line.startswith('"', pos):
                comma = line.find(",", pos)
                field = line[pos:] if comma < 0 else line[pos:comma]
                if '"' in field:
                    raise TokenFileError(f'line {start}: bare " in a non-quoted field')
                fields.append(field)
                if comma < 0:
                    break
                pos = comma + 1
                continue
            pos += 1
            buf: list[str] = []
            while True:  # the quoted field, perhaps over several lines
                quote = line.find('"', pos)
                if quote < 0:
                    if i < len(lines):
                        buf.append(line[pos:] + "\n")
                        line, pos = lines[i], 0
                        i += 1
                        continue
                    raise TokenFileError(f'line {start}: extraneous or missing " in a quoted field')
                buf.append(line[pos:quote])
                pos = quote + 1
                if line.startswith('"', pos):
                    buf.append('"')
                    pos += 1
                    continue
                if pos == len(line) or line.startswith(",", pos):
                    break
                raise TokenFileError(f'line {start}: extraneous or missing " in a quoted field')
            fields.append("".join(buf))
            if pos == len(line):
                break
            pos += 1  # past the comma: another field follows
        records.append(fields)
    return records


def parse_token_file(text: str) -> dict[str, UserInfo]:
    """Tokens to users, as kube-apiserver reads the file."""
    tokens: dict[str, UserInfo] = {}
    for number, record in enumerate(parse_csv(text), 1):
        if len(record) < 3:
            raise TokenFileError(
                f"record {number} has {len(record)} columns; at least 3 are needed "
                "(token, user name, user uid)"
            )
        token, name, uid = record[0], record[1], record[2]
        if not token:
            log.warning("token file: record %d has an empty token; skipped", number)
            continue
        if token in tokens:
            log.warning("token file: record %d repeats a token; the last one counts", number)
        groups = record[3].split(",") if len(record) >= 4 else []
        tokens[token] = UserInfo.of(name, uid=uid, groups=groups)
    return tokens


def _read(path: Path) -> dict[str, UserInfo]:
    raw = path.read_bytes()
    return parse_token_file(raw.decode("utf-8", "surrogateescape"))


class TokenFileAuthenticator(TokenAuthenticator):
    """Bearer tokens of a static token file, re-read when it changes.

    The file must be valid when this is made (``TokenFileError``/``OSError`` otherwise, as
    kube-apiserver refuses to start)."""

    name = "token-file"

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.monotonic
    ):
        self.path = Path(path)
        self._clock = clock
        self._signature = self._stat()
        self._tokens = _read(self.path)
        self._checked = clock()
        self._bad: object = None  # the version of the file last found bad
        self.reloads = 0

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked < RECHECK_INTERVAL:
            return
        self._checked = now
        try:
            signature = self._stat()
        except OSError as exc:
            self._keep("unreadable", f"cannot stat it ({exc.strerror})")
            return
        if signature in (self._signature, self._bad):
            return
        try:
            tokens = _read(self.path)
        except (OSError, TokenFileError) as exc:
            self._keep(signature, exc.strerror if isinstance(exc, OSError) else str(exc))
            return
        self._tokens, self._signature, self._bad = tokens, signature, None
        self.reloads += 1
        log.info("token file %s reloaded: %d tokens", self.path, len(tokens))

    def _keep(self, bad: object, reason: str | None) -> None:
        """Keeps the last good tokens, and says so once per bad version of the file."""
        if bad == self._bad:
            return
        self._bad = bad
        log.warning("token file %s not reloaded, keeping the last good one: %s", self.path, reason)

    async def authenticate_token(self, token: str) -> UserInfo | None:
        self._maybe_reload()
        return self._tokens.get(token)

    def __len__(self) -> int:
        return len(self._tokens)
