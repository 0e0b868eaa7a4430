"""Integers in a query, parsed as Go's strconv does: range-checked digit by digit, never
Python's int() of a huge string (which raises past 4,300 digits). Expected codes and
messages are kube-apiserver v1.36's answers to the same queries."""

from __future__ import annotations

import base64

import pytest

from watchcache.kube.continuetokens import decode_continue, encode_continue
from watchcache.kube.listoptions import parse_get_options, parse_list_options
from watchcache.kube.selectors import SelectorError, parse_label_selector
from watchcache.kube.status import StatusError

HUGE = "1" * 5000


def list_refusal(**params: str) -> StatusError:
    with pytest.raises(StatusError) as info:
        parse_list_options({k: [v] for k, v in params.items()})
    return info.value


@pytest.mark.parametrize("op", [">", "<"])
def test_a_label_selector_bound_of_five_thousand_digits_is_an_invalid_value(op: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector(f"x{op}{HUGE}")
    assert "the value must be an integer" in str(info.value)


def test_label_selector_bounds_keep_go_range_and_leading_zeros() -> None:
    assert parse_label_selector("x>" + "0" * 30 + "7").requirements[0].values == {"0" * 30 + "7"}
    with pytest.raises(SelectorError):
        parse_label_selector("x>9223372036854775808")
    parse_label_selector("x>9223372036854775807")


@pytest.mark.parametrize("name", ["limit", "timeoutSeconds"])
def test_huge_limit_and_timeout_seconds_are_out_of_range(name: str) -> None:
    err = list_refusal(**{name: HUGE})
    assert (err.code, err.reason) == (400, "BadRequest")
    assert err.message.endswith(": value out of range")


def test_a_huge_list_resource_version_is_a_bad_request() -> None:
    err = list_refusal(resourceVersion=HUGE)
    assert err.code == 400 and err.message.startswith("invalid resource version")


def test_a_huge_watch_or_get_resource_version_is_kubes_bare_500() -> None:
    assert list_refusal(watch="1", resourceVersion=HUGE).code == 500
    with pytest.raises(StatusError) as info:
        parse_get_options({"resourceVersion": [HUGE]})
    assert info.value.code == 500


def test_a_continue_token_with_a_huge_resource_version_is_refused_not_a_crash() -> None:
    assert decode_continue(encode_continue("a", 1)).resource_version == 1
    raw = ('{"v":"meta.k8s.io/v1","rv":' + HUGE + ',"start":"a"}').encode()
    with pytest.raises(ValueError, match="cannot unmarshal number"):
        decode_continue(base64.urlsafe_b64encode(raw).decode().rstrip("="))
