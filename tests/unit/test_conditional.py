"""ETag matching and gzip, shared by every endpoint that answers from memory."""

from __future__ import annotations

import gzip

from watchcache.http.conditional import GZIP_THRESHOLD, encoded, etag_matches


def test_if_none_match_names_the_tag_in_a_list_or_is_a_star() -> None:
    assert etag_matches('W/"a", "b"', '"b"')
    assert etag_matches(" * ", 'W/"x"')
    assert not etag_matches('"a"', '"b"') and not etag_matches(None, '"b"')


def test_small_answers_and_clients_without_gzip_get_the_body_as_it_is() -> None:
    small, big = b"x" * 10, b"y" * (GZIP_THRESHOLD + 1)
    assert encoded(small, "gzip") == (small, False)
    assert encoded(big, "identity") == (big, False)


def test_a_kept_body_keeps_its_gzip_form_and_reuses_it() -> None:
    big = b"y" * (GZIP_THRESHOLD + 1)
    kept: list[bytes] = []
    zipped, is_gzip = encoded(big, "gzip, deflate", keep=kept.append)
    assert is_gzip and gzip.decompress(zipped) == big and kept == [zipped]
    assert encoded(big, "gzip", kept=b"reused") == (b"reused", True)
