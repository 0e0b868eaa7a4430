"""The bounded body decoder: what kube-apiserver v1.36 accepts is accepted, what it refuses
is refused with its code and reason (the integration twins in tests/hostile ask the real one)."""

from __future__ import annotations

import pytest

from watchcache.kube.bodies import MAX_BODY, content_length, decode, dumps, encode
from watchcache.kube.status import StatusError

YAML = "application/yaml"


def bomb(levels: int = 10, fan_out: int = 10) -> bytes:
    """A "billion laughs": each level lists the previous one ``fan_out`` times."""
    lines = ["l0: &l0 [" + ",".join(["lol"] * fan_out) + "]"]
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [" + ",".join([f"*l{n - 1}"] * fan_out) + "]")
    return "\n".join(lines).encode()


def refusal(body: bytes, content_type: str = "application/json") -> StatusError:
    with pytest.raises(StatusError) as info:
        decode(body, content_type)
    return info.value


def test_an_alias_bomb_is_refused_as_excessive_aliasing_without_expanding() -> None:
    err = refusal(bomb(), YAML)
    assert (err.code, err.reason) == (400, "BadRequest")
    assert "excessive aliasing" in err.message


def test_a_few_aliases_are_expanded_into_independent_copies() -> None:
    body = b"base: &b {x: [1]}\none: *b\ntwo: [*b, *b]\nmerged: {<<: *b, y: 2}\n"
    value = decode(body, YAML).value
    assert value["one"] == {"x": [1]} and value["two"] == [{"x": [1]}, {"x": [1]}]
    assert value["merged"] == {"x": [1], "y": 2}
    value["one"]["x"].append(2)
    assert value["base"] == {"x": [1]}, "an alias must not share its target with the document"


def test_an_expansion_past_the_body_limit_is_kept_shared_and_refused_when_re_encoded() -> None:
    body = b"a: [&s " + b"x" * (1024 * 1024) + b", *s, *s, *s]"
    decoded = decode(body, YAML)
    assert decoded.shared, "an expansion over 3 MiB must never be materialised"


def test_an_undefined_or_self_referencing_alias_is_a_bad_request() -> None:
    assert "unknown anchor 'x'" in refusal(b"a: *x", YAML).message
    assert "contains itself" in refusal(b"a: &x [*x]", YAML).message


@pytest.mark.parametrize("depth", [1000, 1025, 9_999])
def test_json_nested_as_deep_as_kube_allows_is_decoded(depth: int) -> None:
    value = decode(b"[" * depth + b"]" * depth, "application/json").value
    for _ in range(depth - 1):
        value = value[0]
    assert value == []


def test_json_nested_past_ten_thousand_is_a_bad_request() -> None:
    err = refusal(b"[" * 10_001 + b"]" * 10_001)
    assert err.code == 400 and "exceeded max depth" in err.message


@pytest.mark.parametrize("depth", [1000, 5000])
def test_yaml_nested_deep_is_decoded_without_recursion(depth: int) -> None:
    flow = decode(b"a: " + b"[" * depth + b"]" * depth, YAML).value
    assert isinstance(flow["a"], list)
    block = b"a:\n" + b"".join(b" " * (i + 1) + b"k:\n" for i in range(depth // 5))
    assert isinstance(decode(block, YAML).value["a"], dict)


def test_yaml_nested_past_ten_thousand_is_a_bad_request() -> None:
    err = refusal(b"a: " + b"[" * 10_001 + b"]" * 10_001, YAML)
    assert err.code == 400


def test_invalid_utf8_and_lone_surrogates_become_replacement_characters() -> None:
    assert decode(b'["\xff\xe2\x82"]', "application/json").value == ["\ufffd" * 3]
    assert decode(b'["\\ud800x\\ud83d\\ude00"]', "").value == ["\ufffdx\U0001f600"]


def test_json_numbers_follow_go_range_checks_never_int_of_huge_text() -> None:
    assert decode(b"[9223372036854775807]", "").value == [2**63 - 1]
    assert decode(b"[" + b"1" * 30 + b"]", "").value == [float("1" * 30)]
    assert "cannot unmarshal number" in refusal(b"[" + b"1" * 5000 + b"]").message
    # orjson's fallback too: a lone surrogate sends the body to the slow path
    body = b'["\\ud800", ' + b"1" * 5000 + b"]"
    assert refusal(body).code == 400


def test_yaml_integers_out_of_range_become_floats_or_text_as_in_go() -> None:
    assert decode(b"a: " + b"1" * 25, YAML).value == {"a": float("1" * 25)}
    assert decode(b"a: " + b"1" * 5000, YAML).value == {"a": "1" * 5000}
    assert decode(b"a: 0x1F", YAML).value == {"a": 31}


def test_yaml_takes_the_first_document_and_stringifies_keys() -> None:
    assert decode(b"a: 1\n---\nb: 2\n", YAML).value == {"a": 1}
    value = decode(b"{1: a, true: b, null: c}", YAML).value
    assert value == {"1": "a", "true": "b", "null": "c"}
    assert decode(b"a: 2001-12-14", YAML).value == {"a": "2001-12-14"}


def test_syntax_errors_are_bad_requests() -> None:
    assert refusal(b'{"a":}').code == 400
    assert refusal(b'{"a":1} x').code == 400
    assert refusal(b"a: [", YAML).code == 400
    assert refusal(b"? [a]\n: b", YAML).code == 400


def test_encode_handles_any_depth_and_holds_the_body_limit() -> None:
    deep: list[object] = []
    for _ in range(3000):
        deep = [deep]
    assert encode(deep) == b"[" * 3001 + b"]" * 3001
    with pytest.raises(StatusError) as info:
        encode({"a": "x" * MAX_BODY})
    assert (info.value.code, info.value.reason) == (413, "RequestEntityTooLarge")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["0"], 0),
        (["12"], 12),
        (["12", "12"], 12),
        (["9223372036854775807"], 2**63 - 1),
        (["9223372036854775808"], None),
        (["1" * 5000], None),
        (["12", "13"], None),
        (["2, 2"], None),
        (["+2"], None),
        (["-1"], None),
        (["abc"], None),
        ([""], None),
        (["\u0661"], None),  # a non-ASCII digit
    ],
)
def test_content_length_is_read_as_go_reads_it(values: list[str], expected: int | None) -> None:
    assert content_length(values) == expected


def test_dumps_has_no_depth_limit_for_answers() -> None:
    deep: dict[str, object] = {}
    for _ in range(2000):
        deep = {"a": deep, "b": [1.5, None, True, "x\u2028"]}
    text = dumps(deep)  # (== on such a tree would recurse)
    assert text.startswith(b'{"a":{"a":') and dumps(decode(text, "").value) == text


@pytest.mark.parametrize(
    "body", [b"a: !!float 1a", b"a: !!float", b"a: !!int x1", b"a: !!binary '*'"]
)
def test_an_explicit_tag_the_text_does_not_fit_is_a_bad_request(body: bytes) -> None:
    assert refusal(body, YAML).code == 400
