"""The retry policy (the reference APIServer's documented one, less the answers a retry cannot
change) and the duplicate-create guard."""

from __future__ import annotations

import json

import pytest
import yaml

from watchcache.upstream.retry import (
    INSPECTED,
    NO_RETRIES,
    RETRYABLE,
    RetryPolicy,
    may_duplicate,
    request_deadline,
    resource_version_too_large,
)

POLICY = RetryPolicy()


def test_defaults_are_the_reference_policy() -> None:
    assert (POLICY.max_retries, POLICY.initial, POLICY.max_delay, POLICY.overall) == (
        3,
        0.5,
        10.0,
        30.0,
    )
    assert frozenset({408, 429, 500, 502, 503, 504}) == RETRYABLE == POLICY.codes


def test_backoff_doubles_from_half_a_second() -> None:
    waits = [POLICY.delay(i, 0.0, code=503) for i in range(3)]
    assert waits == [0.5, 1.0, 2.0]


def test_backoff_is_capped_at_ten_seconds() -> None:
    policy = RetryPolicy(max_retries=10, overall=1000.0)
    waits = [policy.delay(i, 0.0, code=503) for i in range(8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_gives_up_after_three_retries() -> None:
    assert POLICY.delay(2, 0.0, code=503) is not None
    assert POLICY.delay(3, 0.0, code=503) is None


def test_gives_up_when_the_wait_would_pass_thirty_seconds_in_all() -> None:
    assert POLICY.delay(1, 29.0, code=503) == 1.0
    assert POLICY.delay(1, 29.5, code=503) is None
    assert POLICY.delay(0, 30.0, code=None) is None


@pytest.mark.parametrize("code", sorted(RETRYABLE))
def test_transient_codes_are_retried(code: int) -> None:
    assert POLICY.delay(0, 0.0, code=code) == 0.5


@pytest.mark.parametrize("code", [200, 201, 400, 401, 403, 404, 409, 410, 413, 415, 422, 501])
def test_other_codes_are_not_retried(code: int) -> None:
    assert POLICY.delay(0, 0.0, code=code) is None
    assert POLICY.delay(0, 0.0, code=code, retry_after="1") is None


def test_a_connection_failure_is_retried_with_the_same_backoff() -> None:
    assert [POLICY.delay(i, 0.0, code=None) for i in range(4)] == [0.5, 1.0, 2.0, None]


@pytest.mark.parametrize(
    ("retry_after", "wait"),
    [("3", 3.0), ("0", 0.0), ("1.5", 1.5), ("120", 10.0), ("-4", 0.0)],
)
def test_retry_after_replaces_the_backoff_and_is_capped(retry_after: str, wait: float) -> None:
    assert POLICY.delay(0, 0.0, code=429, retry_after=retry_after) == wait


def test_retry_after_as_an_http_date_falls_back_to_the_backoff() -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert POLICY.delay(1, 0.0, code=503, retry_after=date) == 1.0


def test_retry_after_counts_against_the_overall_budget() -> None:
    assert POLICY.delay(0, 25.0, code=429, retry_after="5") == 5.0
    assert POLICY.delay(0, 25.0, code=429, retry_after="6") is None


def test_retry_after_does_not_extend_the_number_of_retries() -> None:
    assert POLICY.delay(3, 0.0, code=429, retry_after="0") is None


def test_no_retries_policy_never_retries() -> None:
    assert NO_RETRIES.delay(0, 0.0, code=503) is None
    assert NO_RETRIES.delay(0, 0.0, code=None) is None


def test_the_retried_codes_are_configurable() -> None:
    policy = RetryPolicy(codes=frozenset({503}))
    assert policy.delay(0, 0.0, code=503) == 0.5
    assert policy.delay(0, 0.0, code=429) is None


# ---- answers a retry cannot change ------------------------------------------------------------

# kube-apiserver's answer to a list at a resourceVersion it has not reached (after 3 s).
TOO_LARGE = json.dumps(
    {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Timeout: Too large resource version: 1009, current: 9",
        "reason": "Timeout",
        "details": {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
        "code": 504,
    }
).encode()
# Its request-timeout 504, and a gateway's.
TIMED_OUT = (
    b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
    b'"message":"Timeout: request did not complete within the allotted timeout",'
    b'"reason":"Timeout","details":{},"code":504}'
)
GATEWAY = b"<html><body><h1>504 Gateway Time-out</h1></body></html>"


def test_a_504_too_large_resource_version_is_never_retried() -> None:
    assert POLICY.delay(0, 0.0, code=504, retry_after="1", body=TOO_LARGE) is None
    assert POLICY.delay(0, 0.0, code=504, body=TOO_LARGE) is None


def test_a_too_large_resource_version_is_recognised_in_protobuf_and_yaml_too() -> None:
    protobuf = b"k8s\x00\n\x0c\n\x02v1\x12\x06Status\x12*Timeout: Too large resource version: 5"
    yaml_body = b"details:\n  causes:\n  - reason: ResourceVersionTooLarge\n"
    assert resource_version_too_large(protobuf)
    assert resource_version_too_large(yaml_body)
    assert POLICY.delay(0, 0.0, code=504, body=protobuf) is None


@pytest.mark.parametrize(
    "body", [TIMED_OUT, GATEWAY, b"", None], ids=["timeout", "gw", "empty", "unread"]
)
def test_other_504s_are_still_retried(body: bytes | None) -> None:
    assert POLICY.delay(0, 0.0, code=504, body=body) == 0.5


def test_the_too_large_marker_matters_only_on_a_504() -> None:
    """A 503 whose message happens to quote the words is still transient."""
    assert POLICY.delay(0, 0.0, code=503, body=TOO_LARGE) == 0.5


def test_504_is_the_code_whose_body_is_inspected() -> None:
    assert frozenset({504}) == INSPECTED


def test_a_request_whose_deadline_has_passed_is_not_retried() -> None:
    assert POLICY.delay(0, 2.0, code=503, deadline=2.0) is None
    assert POLICY.delay(0, 5.0, code=None, deadline=2.0) is None


def test_a_retry_whose_wait_would_pass_the_deadline_is_not_made() -> None:
    assert POLICY.delay(0, 0.0, code=503, deadline=0.4) is None  # the wait is 0.5 s
    assert POLICY.delay(0, 0.0, code=429, retry_after="2", deadline=1.0) is None
    assert POLICY.delay(0, 0.0, code=429, retry_after="2", deadline=3.0) == 2.0


def test_a_request_within_its_deadline_is_retried_as_usual() -> None:
    assert POLICY.delay(1, 0.2, code=503, deadline=10.0) == 1.0


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [("1s", 1.0), ("250ms", 0.25), ("1m", 60.0), ("2h", 60.0), ("0", 60.0), ("-3s", 60.0)],
)
def test_the_deadline_is_the_timeout_parameter_bounded_as_kube_apiserver_bounds_it(
    timeout: str, seconds: float
) -> None:
    assert request_deadline({"timeout": [timeout]}) == seconds


@pytest.mark.parametrize(
    "query", [{}, {"timeout": [""]}, {"timeout": ["soon"]}, {"timeout": ["9" * 5000 + "s"]}]
)
def test_no_valid_timeout_parameter_means_no_deadline(query: dict[str, list[str]]) -> None:
    assert request_deadline(query) is None


# ---- may_duplicate --------------------------------------------------------------------------


def _obj(**metadata: str) -> dict[str, object]:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": metadata, "spec": {}}


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _yaml(obj: object) -> bytes:
    return yaml.safe_dump(obj).encode()


@pytest.mark.parametrize("encode", [_json, _yaml], ids=["json", "yaml"])
def test_create_with_only_generate_name_may_duplicate(encode) -> None:
    assert may_duplicate("POST", encode(_obj(generateName="ray-")))


@pytest.mark.parametrize("encode", [_json, _yaml], ids=["json", "yaml"])
def test_create_with_an_empty_name_and_generate_name_may_duplicate(encode) -> None:
    assert may_duplicate("POST", encode(_obj(name="", generateName="ray-")))


@pytest.mark.parametrize("encode", [_json, _yaml], ids=["json", "yaml"])
def test_create_with_a_name_never_duplicates(encode) -> None:
    assert not may_duplicate("POST", encode(_obj(name="ray-a", generateName="ray-")))
    assert not may_duplicate("POST", encode(_obj(name="ray-a")))


def test_generate_name_elsewhere_in_a_named_object_does_not_matter() -> None:
    obj = _obj(name="ray-a")
    obj["spec"] = {"template": {"metadata": {"generateName": "pod-"}}}
    assert not may_duplicate("POST", _json(obj))


def test_only_a_create_may_duplicate() -> None:
    body = _json(_obj(generateName="ray-"))
    for method in ("PUT", "PATCH", "DELETE", "GET"):
        assert not may_duplicate(method, body)
    assert not may_duplicate("POST", None)
    assert not may_duplicate("POST", b"")


def test_an_unreadable_body_with_generate_name_is_not_risked() -> None:
    assert may_duplicate("POST", b'{"metadata": {"generateName": "ray-", ')
