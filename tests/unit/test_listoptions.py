"""Query parsing of get, list and watch, checked against what kube-apiserver v1.36.3 answers.

Every expected code, reason and message below was produced by the real apiserver (a local
v1.36.3 control plane) or by the k8s.io v0.36.3 Go functions on the same input.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from watchcache.kube.listoptions import (
    ContinueToken,
    ListOptions,
    check_request_timeout,
    continue_expired,
    decode_continue,
    encode_continue,
    go_bool,
    invalid_continue,
    list_too_old,
    parse_get_options,
    parse_go_duration,
    parse_list_options,
    resource_version_int,
    too_large_resource_version,
    watch_too_old,
)
from watchcache.kube.status import StatusError

STRICT = {"metadata.name", "metadata.namespace"}.__contains__
RV_ABC = 'resourceVersion: Invalid value: "abc": strconv.ParseUint: parsing "abc": invalid syntax'
INVALID = 'ListOptions.meta.k8s.io "" is invalid: '
# etcd's token to go on from default/a\0 at the latest RV, as the real apiserver sent it.
RESUME_TOKEN = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6LTEsInN0YXJ0IjoiZGVmYXVsdC9hXHUwMDAwIn0"


def q(**params: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in params.items()}


def opts(**params: str | list[str]) -> ListOptions:
    return parse_list_options(q(**params), allowed_field=STRICT)


def refusal(**params: str | list[str]) -> StatusError:
    with pytest.raises(StatusError) as info:
        parse_list_options(q(**params), allowed_field=STRICT)
    return info.value


def body(err: StatusError) -> dict[str, Any]:
    return err.to_dict()


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def forbidden(detail: str, field: str = "resourceVersionMatch") -> dict[str, str]:
    return {"reason": "FieldValueForbidden", "message": f"Forbidden: {detail}", "field": field}


# --- parameter forms --------------------------------------------------------------------------


def test_empty_query_is_a_plain_list_of_everything() -> None:
    got = parse_list_options({})
    assert not got.watch and got.label_selector.empty and got.field_selector.empty
    assert got.resource_version is None and got.resource_version_match is None
    assert got.send_initial_events is None and got.timeout_seconds is None
    assert got.limit == 0 and got.continue_token is None and got.continue_at is None


@pytest.mark.parametrize("value", ["true", "1", "yes", "x", "", "TRUE", "no"])
def test_watch_is_true_for_anything_but_false_or_zero(value: str) -> None:
    assert opts(watch=value).watch


@pytest.mark.parametrize("value", ["false", "FALSE", "fAlSe", "0"])
def test_watch_false_forms_mean_a_list(value: str) -> None:
    assert not opts(watch=value).watch


def test_only_the_first_value_of_a_repeated_parameter_counts() -> None:
    assert not opts(watch=["false", "true"]).watch
    assert opts(limit=["5", "abc"]).limit == 5


def test_garbage_booleans_are_true() -> None:
    assert opts(watch="1", allowWatchBookmarks="x").allow_watch_bookmarks
    assert not opts(watch="1", allowWatchBookmarks="0").allow_watch_bookmarks
    assert go_bool("") and not go_bool(None) and not go_bool("False")


def test_unknown_parameters_and_shard_selector_are_ignored() -> None:
    assert opts(foo="bar", shardSelector="garbage").limit == 0


@pytest.mark.parametrize(("value", "limit"), [("5", 5), ("+5", 5), ("0", 0), ("-1", 0)])
def test_limit_forms_and_negative_limit_means_none(value: str, limit: int) -> None:
    assert opts(limit=value).limit == limit


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("abc", "invalid syntax"),
        ("", "invalid syntax"),
        ("1_0", "invalid syntax"),
        (" 1", "invalid syntax"),
        ("+", "invalid syntax"),
        ("99999999999999999999", "value out of range"),
        ("99999999999999999999x", "value out of range"),  # Go stops at the overflow
        ("9223372036854775808", "value out of range"),
    ],
)
def test_unparsable_limit_is_a_bad_request_with_the_strconv_message(value: str, kind: str) -> None:
    err = refusal(limit=value)
    assert (err.code, err.reason) == (400, "BadRequest")
    assert err.message == f'strconv.ParseInt: parsing "{value}": {kind}'


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5), ("0", 0), ("-1", -1), ("-9223372036854775808", -(2**63))],
)
def test_timeout_seconds_forms_are_kept_as_given(value: str, seconds: int) -> None:
    assert opts(watch="1", timeoutSeconds=value).timeout_seconds == seconds


def test_unparsable_timeout_seconds_is_a_bad_request() -> None:
    assert (
        refusal(timeoutSeconds="abc").message == 'strconv.ParseInt: parsing "abc": invalid syntax'
    )
    assert (
        refusal(timeoutSeconds="0x10").message == 'strconv.ParseInt: parsing "0x10": invalid syntax'
    )


def test_timeout_seconds_is_checked_before_limit_and_selectors() -> None:
    err = refusal(limit="xyz", timeoutSeconds="abc", labelSelector="a in")
    assert err.message == 'strconv.ParseInt: parsing "abc": invalid syntax'


def test_limit_is_checked_before_selectors() -> None:
    assert refusal(limit="x", labelSelector="a in").message.startswith("strconv.ParseInt")


def test_empty_resource_version_is_absent_and_raw_text_is_kept() -> None:
    assert opts(resourceVersion="").resource_version is None
    assert opts(resourceVersion="00").resource_version == "00"


# --- the request timeout filter ---------------------------------------------------------------


def test_bad_timeout_on_a_list_is_a_bad_request_before_anything_else() -> None:
    err = refusal(timeout="abc", limit="x")
    assert (err.code, err.reason) == (400, "BadRequest")
    assert (
        err.message == 'invalid timeout specified in the request URL - time: invalid duration "abc"'
    )


def test_watch_ignores_the_timeout_parameter() -> None:
    assert opts(watch="true", timeout="abc").watch


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1", 'time: missing unit in duration "1"'),
        ("1x", 'time: unknown unit "x" in duration "1x"'),
        (".s", 'time: invalid duration ".s"'),
        ("-", 'time: invalid duration "-"'),
        ("99999999999h", 'time: invalid duration "99999999999h"'),
        ("1é", 'time: unknown unit "\\xc3\\xa9" in duration "1\\xc3\\xa9"'),
    ],
)
def test_go_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_go_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("0", 0),
        ("-0", 0),
        ("1.5h", 5400 * 10**9),
        ("1µs", 1000),
        ("1μs", 1000),
        ("1h2m3s", 3723 * 10**9),
    ],
)
def test_go_duration_values(text: str, nanos: int) -> None:
    assert parse_go_duration(text) == nanos
    assert check_request_timeout(q(timeout=text)) == nanos


def test_empty_timeout_is_no_timeout() -> None:
    assert check_request_timeout(q(timeout="")) is None


# --- selectors --------------------------------------------------------------------------------


def test_label_selector_error_is_a_bad_request_with_the_parser_message() -> None:
    err = refusal(labelSelector="a in")
    assert (err.code, err.reason) == (400, "BadRequest")
    assert err.message == "unable to parse requirement: found '' expected: '('"


def test_label_selector_is_parsed_before_field_selector() -> None:
    err = refusal(labelSelector="!!", fieldSelector="x")
    assert err.message == "unable to parse requirement: found '!', expected: identifier"


def test_field_selector_syntax_error_is_a_bad_request() -> None:
    assert refusal(fieldSelector="x").message == "invalid selector: 'x'; can't understand 'x'"


def test_unsupported_field_label_is_a_bad_request_after_validation() -> None:
    assert refusal(fieldSelector="status.x=y").message == "field label not supported: status.x"
    err = refusal(fieldSelector="status.x=y", resourceVersionMatch="Exact")
    assert err.code == 422


def test_any_field_label_is_allowed_without_allowed_field() -> None:
    got = parse_list_options(q(fieldSelector="status.state=ready"))
    assert got.field_selector.value_for("status.state") == "ready"


def test_selector_texts_are_kept_raw_for_cache_keys() -> None:
    got = opts(labelSelector="b=1, a", fieldSelector="metadata.name=x")
    assert (got.label_selector_text, got.field_selector_text) == ("b=1, a", "metadata.name=x")


# --- validation of a list ---------------------------------------------------------------------


def test_match_without_resource_version_is_invalid() -> None:
    err = refusal(resourceVersionMatch="Exact")
    detail = "resourceVersionMatch is forbidden unless resourceVersion is provided"
    assert body(err) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"{INVALID}resourceVersionMatch: Forbidden: {detail}",
        "reason": "Invalid",
        "details": {"group": "meta.k8s.io", "kind": "ListOptions", "causes": [forbidden(detail)]},
        "code": 422,
    }


def test_every_list_validation_error_is_reported_in_order() -> None:
    err = refusal(resourceVersionMatch="foo", **{"continue": "x"})
    assert err.message == (
        f"{INVALID}[resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
        "resourceVersion is provided, resourceVersionMatch: Forbidden: resourceVersionMatch is "
        'forbidden when continue is provided, resourceVersionMatch: Unsupported value: "foo": '
        'supported values: "Exact", "NotOlderThan", ""]'
    )
    assert [c["reason"] for c in err.details["causes"]] == [
        "FieldValueForbidden",
        "FieldValueForbidden",
        "FieldValueNotSupported",
    ]
    assert err.details["causes"][2]["message"] == (
        'Unsupported value: "foo": supported values: "Exact", "NotOlderThan", ""'
    )


def test_match_values_are_case_sensitive() -> None:
    err = refusal(resourceVersion="0", resourceVersionMatch="exact")
    assert err.message == (
        f'{INVALID}resourceVersionMatch: Unsupported value: "exact": supported values: '
        '"Exact", "NotOlderThan", ""'
    )


def test_exact_match_with_resource_version_zero_is_invalid() -> None:
    err = refusal(resourceVersion="0", resourceVersionMatch="Exact")
    assert err.message == (
        f'{INVALID}resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden '
        'for resourceVersion "0"'
    )


def test_unsupported_match_value_is_quoted_as_go_does() -> None:
    err = refusal(resourceVersion="1", resourceVersionMatch='é"\n')
    assert err.details["causes"][0]["message"].startswith('Unsupported value: "é\\"\\n"')


@pytest.mark.parametrize("value", ["true", "false", "", "0"])
def test_send_initial_events_on_a_list_is_invalid_whatever_its_value(value: str) -> None:
    err = refusal(sendInitialEvents=value, resourceVersion="1", resourceVersionMatch="NotOlderThan")
    assert err.code == 422
    assert err.message == (
        f"{INVALID}sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
    )
    assert err.details["causes"] == [
        forbidden("sendInitialEvents is forbidden for list", "sendInitialEvents")
    ]


@pytest.mark.parametrize("match", ["NotOlderThan", "Exact"])
def test_list_match_values_with_a_resource_version_are_accepted(match: str) -> None:
    got = opts(resourceVersion="5", resourceVersionMatch=match)
    assert (got.resource_version, got.resource_version_match) == ("5", match)


# --- validation and defaulting of a watch -----------------------------------------------------


@pytest.mark.parametrize("rv", [None, "", "0"])
def test_plain_watch_from_unset_or_zero_is_defaulted_to_initial_events(rv: str | None) -> None:
    got = opts(watch="1") if rv is None else opts(watch="1", resourceVersion=rv)
    assert got.send_initial_events is True
    assert got.resource_version_match == "NotOlderThan"
    assert not got.is_list_watch
    assert opts(watch="1", allowWatchBookmarks="true").is_list_watch


def test_watch_from_a_resource_version_is_not_defaulted() -> None:
    got = opts(watch="1", resourceVersion="5")
    assert got.send_initial_events is None and got.resource_version_match is None


def test_watch_match_without_send_initial_events_is_invalid() -> None:
    err = refusal(watch="1", resourceVersionMatch="NotOlderThan")
    assert err.message == (
        f"{INVALID}resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch "
        "unless sendInitialEvents is provided"
    )


@pytest.mark.parametrize("value", ["true", "false"])
def test_send_initial_events_without_not_older_than_is_invalid(value: str) -> None:
    err = refusal(watch="1", sendInitialEvents=value)
    assert err.message == (
        f"{INVALID}resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
        "resourceVersionMatch to NotOlderThan"
    )


def test_exact_is_not_supported_for_watch() -> None:
    err = refusal(watch="1", resourceVersionMatch="Exact")
    assert err.message == (
        f"{INVALID}[resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch "
        "unless sendInitialEvents is provided, resourceVersionMatch: Unsupported value: "
        '"Exact": supported values: "NotOlderThan"]'
    )


def test_every_watch_validation_error_is_reported_in_order() -> None:
    err = refusal(
        watch="1", resourceVersionMatch="Exact", sendInitialEvents="1", **{"continue": "a"}
    )
    assert [c["message"] for c in err.details["causes"]] == [
        "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        'Unsupported value: "Exact": supported values: "NotOlderThan"',
        "Forbidden: resourceVersionMatch is forbidden when continue is provided",
    ]


@pytest.mark.parametrize(("value", "initial"), [("true", True), ("0", False), ("x", True)])
def test_send_initial_events_with_not_older_than_is_accepted(value: str, initial: bool) -> None:
    got = opts(watch="1", sendInitialEvents=value, resourceVersionMatch="NotOlderThan")
    assert got.send_initial_events is initial


def test_watch_ignores_the_continue_token_contents() -> None:
    got = opts(watch="1", resourceVersion="5", **{"continue": "abc!"})
    assert got.continue_token == "abc!" and got.continue_at is None


# --- resource versions ------------------------------------------------------------------------


def test_non_numeric_resource_version_on_a_list_is_a_bad_request() -> None:
    err = refusal(resourceVersion="abc")
    assert (err.code, err.reason) == (400, "BadRequest")
    assert err.message == f"invalid resource version: {RV_ABC}"


def test_non_numeric_resource_version_on_a_watch_is_a_500_without_reason() -> None:
    err = refusal(watch="1", resourceVersion="abc")
    assert body(err) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": RV_ABC,
        "code": 500,
    }


@pytest.mark.parametrize(
    ("rv", "error"),
    [
        ("-1", 'strconv.ParseUint: parsing "-1": invalid syntax'),
        ("+5", 'strconv.ParseUint: parsing "+5": invalid syntax'),
        (
            "18446744073709551616",
            'strconv.ParseUint: parsing "18446744073709551616": value out of range',
        ),
        ("1é", 'strconv.ParseUint: parsing "1é": invalid syntax'),
    ],
)
def test_resource_version_must_be_an_unsigned_64_bit_integer(rv: str, error: str) -> None:
    with pytest.raises(StatusError) as info:
        resource_version_int(rv)
    assert (
        info.value.message
        == f'invalid resource version: resourceVersion: Invalid value: "{rv}": {error}'
    )


@pytest.mark.parametrize(
    ("rv", "number"), [("", 0), ("0", 0), ("00", 0), ("18446744073709551615", 2**64 - 1)]
)
def test_resource_version_values(rv: str, number: int) -> None:
    assert resource_version_int(rv, verb="watch") == number


def test_resource_version_is_validated_after_validation_errors() -> None:
    assert refusal(resourceVersion="abc", resourceVersionMatch="foo").code == 422


# --- continue ---------------------------------------------------------------------------------


def test_list_decodes_its_continue_token() -> None:
    token = encode_continue("default/a\x00", 2)
    got = opts(**{"continue": token})
    assert got.continue_token == token
    assert got.continue_at == ContinueToken("default/a\x00", 2)


def test_continue_with_a_resource_version_is_a_bad_request() -> None:
    err = refusal(resourceVersion="5", **{"continue": encode_continue("a", 2)})
    assert (err.code, err.message) == (
        400,
        "specifying resource version is not allowed when using continue",
    )
    assert refusal(resourceVersion="abc", **{"continue": encode_continue("a", 2)}).code == 400


def ours(token: str) -> bool:
    return token.startswith("wc1.")


def test_callers_own_tokens_are_left_undecoded() -> None:
    got = parse_list_options(q(**{"continue": "wc1.abc!"}), own_token=ours)
    assert got.continue_token == "wc1.abc!" and got.continue_at is None
    assert refusal(**{"continue": "wc1.abc"}).code == 400  # not owned: an apiserver token


def test_callers_own_tokens_still_exclude_a_resource_version() -> None:
    with pytest.raises(StatusError) as info:
        parse_list_options(q(resourceVersion="5", **{"continue": "wc1.x"}), own_token=ours)
    assert info.value.message == "specifying resource version is not allowed when using continue"


def test_continue_with_resource_version_zero_is_allowed() -> None:
    assert opts(resourceVersion="0", **{"continue": encode_continue("a", 2)}).continue_at


def test_undecodable_continue_is_reported_before_the_resource_version() -> None:
    err = refusal(resourceVersion="5", **{"continue": "abc!"})
    assert body(err)["message"] == (
        "invalid continue token: continue key is not valid: illegal base64 data at input byte 3"
    )


@pytest.mark.parametrize(
    ("token", "detail"),
    [
        ("abc!", "illegal base64 data at input byte 3"),
        ("e30=", "illegal base64 data at input byte 3"),
        ("a", "illegal base64 data at input byte 0"),
        ("abc", "invalid character 'i' looking for beginning of value"),
        ("_-_-", "invalid character 'ÿ' looking for beginning of value"),
        (b64(""), "unexpected end of JSON input"),
        (b64('{"v":'), "unexpected end of JSON input"),
        (b64('{"v" 1}'), "invalid character '1' after object key"),
        (b64('{"v":1 2}'), "invalid character '2' after object key:value pair"),
        (b64("[1 2]"), "invalid character '2' after array element"),
        (b64('{"a":tru}'), "invalid character '}' in literal true (expecting 'e')"),
        (b64("tru"), "invalid character ' ' in literal true (expecting 'e')"),
        (b64('{"a":"\\q"}'), "invalid character 'q' in string escape code"),
        (b64('"\\u12'), "invalid character ' ' in \\u hexadecimal character escape"),
        (b64('{"a":"x\ny"}'), "invalid character '\\n' in string literal"),
        (b64("{,}"), "invalid character ',' looking for beginning of object key string"),
        (b64("NaN"), "invalid character 'N' looking for beginning of value"),
        (b64('{"rv":01}'), "invalid character '1' after object key:value pair"),
        (b64("{} x"), "invalid character 'x' after top-level value"),
        (b64("[]"), "json: cannot unmarshal array into Go value of type storage.continueToken"),
        (b64('"x"'), "json: cannot unmarshal string into Go value of type storage.continueToken"),
        (
            b64('{"rv":"5"}'),
            "json: cannot unmarshal string into Go struct field continueToken.rv of type int64",
        ),
        (
            b64('{"rv":1.5}'),
            "json: cannot unmarshal number 1.5 into Go struct field continueToken.rv of type int64",
        ),
        (
            b64('{"v":5}'),
            "json: cannot unmarshal number into Go struct field continueToken.v of type string",
        ),
        ("e30", "server does not recognize this encoded version "),
        (b64("null"), "server does not recognize this encoded version "),
        (b64('{"v":"x"}'), "server does not recognize this encoded version x"),
        (
            b64('{"v":"meta.k8s.io/v1"}'),
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        ),
        (
            b64('{"v":"meta.k8s.io/v1","rv":5}'),
            "encoded start key empty (version meta.k8s.io/v1)",
        ),
        (b64('{"v":"meta.k8s.io/v1","rv":5,"start":"../x"}'), "../x"),
        (b64('{"v":"meta.k8s.io/v1","rv":5,"start":"a//b"}'), "a//b"),
        (b64('{"v":"meta.k8s.io/v1","rv":5,"start":"a/b/"}'), "a/b/"),
    ],
)
def test_continue_decoding_errors_match_go(token: str, detail: str) -> None:
    with pytest.raises(ValueError) as info:
        decode_continue(token)
    assert str(info.value) == f"continue key is not valid: {detail}"


def test_continue_decoding_follows_go_json_and_path_rules() -> None:
    token = b64('{"RV":5,"V":"meta.k8s.io/v1","START":"/a/b"}')
    assert decode_continue(token) == ContinueToken("a/b", 5)
    good = encode_continue("ns/a", 3)
    assert decode_continue(good[:5] + "\r\n" + good[5:]) == ContinueToken("ns/a", 3)
    assert decode_continue(b64('{"v":"meta.k8s.io/v1","rv":5,"start":"a","v":null}')).start == "a"


def test_continue_tokens_are_written_as_the_apiserver_writes_them() -> None:
    token = encode_continue("default/a\x00", 2)
    assert token == "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6Miwic3RhcnQiOiJkZWZhdWx0L2FcdTAwMDAifQ"
    raw = base64.urlsafe_b64decode(encode_continue("<&>\u2028", -1) + "==").decode()
    assert raw == '{"v":"meta.k8s.io/v1","rv":-1,"start":"\\u003c\\u0026\\u003e\\u2028"}'
    assert decode_continue(encode_continue("ns/name\x00", 7)) == ContinueToken("ns/name\x00", 7)


# --- get --------------------------------------------------------------------------------------


def test_get_returns_its_resource_version() -> None:
    assert parse_get_options({}) is None
    assert parse_get_options(q(resourceVersion="")) is None
    assert parse_get_options(q(resourceVersion=["7", "8"], watch="true", foo="x")) == "7"


def test_get_with_non_numeric_resource_version_is_a_500_without_reason() -> None:
    with pytest.raises(StatusError) as info:
        parse_get_options(q(resourceVersion="abc"))
    assert info.value.code == 500 and "reason" not in body(info.value)
    assert info.value.message == RV_ABC


@pytest.mark.parametrize(
    ("value", "refused"), [("true", True), ("", True), ("false", False), ("0", False)]
)
def test_get_refuses_export(value: str, refused: bool) -> None:
    if not refused:
        assert parse_get_options(q(export=value)) is None
        return
    with pytest.raises(StatusError) as info:
        parse_get_options(q(export=value))
    assert (info.value.code, info.value.message) == (
        400,
        "the export parameter, deprecated since v1.14, is no longer supported",
    )


def test_get_checks_timeout_first() -> None:
    with pytest.raises(StatusError) as info:
        parse_get_options(q(timeout="1", export="true"))
    assert info.value.message == (
        'invalid timeout specified in the request URL - time: missing unit in duration "1"'
    )


# --- the Status constructors ------------------------------------------------------------------


def test_too_large_resource_version_is_the_cacher_504() -> None:
    err = too_large_resource_version(999999, 201)
    assert err.headers == {"Retry-After": "1"}
    assert json.loads(err.body()) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Timeout: Too large resource version: 999999, current: 201",
        "reason": "Timeout",
        "details": {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
        "code": 504,
    }


def test_too_large_resource_version_without_retry_has_no_retry_after() -> None:
    err = too_large_resource_version(9, 5, retry_after=0)
    assert err.headers == {} and "retryAfterSeconds" not in err.details


def test_list_too_old_is_the_etcd_410() -> None:
    assert body(list_too_old(2)) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "The resourceVersion for the provided list is too old.",
        "reason": "Expired",
        "code": 410,
    }


def test_expired_continue_carries_a_token_for_the_latest_state() -> None:
    assert body(continue_expired("default/a\x00")) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {"continue": RESUME_TOKEN},
        "status": "Failure",
        "message": (
            "The provided continue parameter is too old to display a consistent list result. "
            "You can start a new list without the continue parameter, or use the continue "
            "token in this response to retrieve the remainder of the results. Continuing with "
            "the provided token results in an inconsistent list - objects that were created, "
            "modified, or deleted between the time the first chunk was returned and now may "
            "show up in the list."
        ),
        "reason": "Expired",
        "code": 410,
    }


def test_expired_continue_without_start_key_has_the_short_message() -> None:
    err = continue_expired()
    assert (err.code, err.reason) == (410, "Expired")
    assert err.message == (
        "The provided continue parameter is too old to display a consistent list result. "
        "You can start a new list without the continue parameter."
    )
    assert body(err)["metadata"] == {}


def test_watch_too_old_shows_the_oldest_resumable_version() -> None:
    assert watch_too_old(1, 202) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 1 (201)",
        "reason": "Expired",
        "code": 410,
    }


def test_invalid_continue_is_a_bad_request() -> None:
    err = invalid_continue("continue key is not valid: illegal base64 data at input byte 3")
    assert (err.code, err.reason) == (400, "BadRequest")
    assert err.message == (
        "invalid continue token: continue key is not valid: illegal base64 data at input byte 3"
    )
