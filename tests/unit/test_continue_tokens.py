"""Both continue-token codecs: the API server's (kube.continuetokens) and ours (cache.tokens)."""

from __future__ import annotations

import base64

import pytest

from watchcache.cache.tokens import PREFIX, ContinueCodec
from watchcache.kube.continuetokens import decode_continue, encode_continue
from watchcache.kube.status import StatusError


def test_the_api_servers_token_round_trips_byte_for_byte() -> None:
    token = encode_continue("ns-a/rc-1\x00", 1234)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert raw == b'{"v":"meta.k8s.io/v1","rv":1234,"start":"ns-a/rc-1\\u0000"}'
    got = decode_continue(token)
    assert (got.start, got.resource_version) == ("ns-a/rc-1\x00", 1234)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("!!", "continue key is not valid: illegal base64 data at input byte 0"),
        (
            base64.urlsafe_b64encode(b'{"v":"x","rv":1,"start":"a"}').decode().rstrip("="),
            "continue key is not valid: server does not recognize this encoded version x",
        ),
        (
            base64.urlsafe_b64encode(b'{"v":"meta.k8s.io/v1","rv":1,"start":""}')
            .decode()
            .rstrip("="),
            "continue key is not valid: encoded start key empty (version meta.k8s.io/v1)",
        ),
    ],
)
def test_the_api_servers_token_is_refused_with_its_words(token: str, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        decode_continue(token)


def test_our_token_names_its_snapshot_and_last_key() -> None:
    codec = ContinueCodec(key=b"k" * 32)
    token = codec.encode(77, "ns/b")
    assert token.startswith(PREFIX) and ContinueCodec.ours(token)
    assert codec.decode(token) == (77, "ns/b")
    assert not ContinueCodec.ours(encode_continue("ns/b\x00", 77))


def test_an_altered_token_is_400_and_another_processs_is_unknown() -> None:
    codec = ContinueCodec(key=b"k" * 32)
    token = codec.encode(77, "ns/b")
    body, mac = token[len(PREFIX) :].split(".", 1)
    with pytest.raises(StatusError) as exc:
        codec.decode(f"{PREFIX}{body}.{'A' * len(mac)}")
    assert exc.value.code == 400
    with pytest.raises(StatusError):
        codec.decode(PREFIX + "garbage")
    assert ContinueCodec(key=b"k" * 32).decode(token) is None  # another instance's snapshot
