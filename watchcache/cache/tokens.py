"""Continue tokens: opaque to clients, tamper-checked, and told apart from the API server's.

A token names the snapshot a paginated list is walking (its resourceVersion) and the last
key already returned. It is signed with a key of this process: a token whose signature does
not verify was forged or altered (400); one of another watchcache process refers to a
snapshot this one never had (410, as for an expired one). Tokens that are not ours at all
came from the API server (a list that was passed through) and go back to it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

import orjson

from watchcache.cache.store import Key
from watchcache.kube.status import StatusError

PREFIX = "wc1."


class ContinueCodec:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self._instance = secrets.token_hex(4)

    def _sign(self, payload: bytes) -> str:
        mac = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def encode(self, rv: int, last: Key) -> str:
        payload = orjson.dumps([self._instance, rv, last])
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return f"{PREFIX}{body}.{self._sign(payload)}"

    @staticmethod
    def ours(token: str) -> bool:
        return token.startswith(PREFIX)

    def decode(self, token: str) -> tuple[int, Key] | None:
        """(rv, last key) of one of our tokens; None when it is another process's."""
        try:
            body, mac = token[len(PREFIX) :].split(".", 1)
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            instance, rv, last = orjson.loads(payload)
            valid = hmac.compare_digest(mac, self._sign(payload))
        except (ValueError, binascii.Error, orjson.JSONDecodeError, TypeError):
            raise invalid_token() from None
        if instance != self._instance:
            return None
        if not valid or not isinstance(rv, int) or not isinstance(last, str):
            raise invalid_token()
        return rv, last


def invalid_token() -> StatusError:
    return StatusError(400, "continue key is not valid: the continue token has been altered")
