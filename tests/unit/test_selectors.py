"""Selector grammar, errors and matching, checked against what k8s.io/apimachinery v0.36 does.

Every expected error message below was produced by the real Go code (labels.Parse,
fields.ParseSelector and the apiextensions field label check) on the same input.
"""

from __future__ import annotations

import pytest

from watchcache.kube.selectors import (
    FieldRequirement,
    LabelSelector,
    Requirement,
    SelectorError,
    field_selector_status_message,
    label_selector_status_message,
    lookup_path,
    parse_field_selector,
    parse_label_selector,
    scalar_to_field_string,
)

KEY_RULE = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
VALUE_RULE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
SUBDOMAIN_RULE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    r"used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
UNABLE = "unable to parse requirement: "
INTEGER_RULE = "for 'Gt', 'Lt' operators, the value must be an integer"


def reqs(text: str) -> list[tuple[str, str, set[str]]]:
    return [(r.key, r.op, set(r.values)) for r in parse_label_selector(text).requirements]


def label_error(text: str) -> str:
    with pytest.raises(SelectorError) as info:
        parse_label_selector(text)
    return str(info.value)


def field_error(text: str, allowed: set[str] | None = None) -> str:
    with pytest.raises(SelectorError) as info:
        parse_field_selector(text, allowed=None if allowed is None else allowed.__contains__)
    return str(info.value)


# --- label grammar ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t\r\n"])
def test_empty_or_blank_label_selector_is_empty_and_matches_everything(text: str) -> None:
    selector = parse_label_selector(text)
    assert selector.empty
    assert selector.requirements == ()
    assert selector.matches({})
    assert selector.matches({"a": "b"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=b", ("a", "=", {"b"})),
        ("a==b", ("a", "=", {"b"})),
        ("a!=b", ("a", "!=", {"b"})),
        ("a in (b,c)", ("a", "in", {"b", "c"})),
        ("a notin (b)", ("a", "notin", {"b"})),
        ("a", ("a", "exists", set())),
        ("!a", ("a", "!", set())),
        ("a>5", ("a", "gt", {"5"})),
        ("a<5", ("a", "lt", {"5"})),
    ],
)
def test_each_operator_parses_to_its_requirement(
    text: str, expected: tuple[str, str, set[str]]
) -> None:
    assert reqs(text) == [expected]


def test_double_equals_is_normalised_to_equals() -> None:
    assert parse_label_selector("a==b") == parse_label_selector("a=b")


@pytest.mark.parametrize(
    "text",
    [
        "  a  =  b  ,  c  in  ( x , y )  ,  !  d  ",
        "a=b,c in (x,y),!d",
        "\ta\r\n=\nb,c\tin\t(x,\ty),!d",
    ],
)
def test_whitespace_around_tokens_is_ignored(text: str) -> None:
    assert reqs(text) == [("a", "=", {"b"}), ("c", "in", {"x", "y"}), ("d", "!", set())]


def test_operators_need_no_whitespace_around_them() -> None:
    assert reqs("a!=b,c==d,e=f") == [("a", "!=", {"b"}), ("c", "=", {"d"}), ("e", "=", {"f"})]


def test_requirements_are_sorted_by_key_like_kubernetes() -> None:
    assert [r.key for r in parse_label_selector("z,b=1,!a,m in (x)").requirements] == [
        "a",
        "b",
        "m",
        "z",
    ]


def test_in_and_notin_are_plain_words_outside_the_operator_position() -> None:
    assert reqs("in=notin") == [("in", "=", {"notin"})]
    assert reqs("a in (in,notin)") == [("a", "in", {"in", "notin"})]
    assert reqs("notin") == [("notin", "exists", set())]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("a=", {""}),
        ("a==", {""}),
        ("a!=", {""}),
        ("a in ()", {""}),
        ("a in (,)", {""}),
        ("a in (,b)", {"", "b"}),
        ("a in (b,)", {"", "b"}),
        ("a in (b,,c)", {"", "b", "c"}),
        ("a notin ()", {""}),
    ],
)
def test_empty_values_are_allowed_where_kubernetes_allows_them(text: str, values: set) -> None:
    assert parse_label_selector(text).requirements[0].values == frozenset(values)


def test_empty_exact_value_before_a_comma_is_the_empty_string() -> None:
    assert reqs("a=,b") == [("a", "=", {""}), ("b", "exists", set())]


def test_duplicate_set_values_collapse() -> None:
    assert reqs("a in (b,b,c)") == [("a", "in", {"b", "c"})]


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "A-b_c.d",
        "123",
        "example.com/app",
        "k8s.io/a",
        "x" * 63,
        ("p" * 63 + ".") * 3 + "p" * 61 + "/n",  # a 253-byte prefix
    ],
)
def test_valid_label_keys_are_accepted(key: str) -> None:
    assert reqs(key + "=v") == [(key, "=", {"v"})]


@pytest.mark.parametrize("value", ["", "v", "V-1_2.3", "x" * 63, "007"])
def test_valid_label_values_are_accepted(value: str) -> None:
    assert reqs("a=" + value) == [("a", "=", {value})]


def test_nul_ends_the_input_where_a_token_would_start_as_in_go() -> None:
    assert reqs("a=b \x00c") == [("a", "=", {"b"})]


def test_nul_right_after_a_word_only_splits_it_as_in_go() -> None:
    assert label_error("a=b\x00c") == "found 'c', expected: ',' or 'end of string'"


# --- label errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("=b", "found '=', expected: !, identifier, or 'end of string'"),
        (")", "found ')', expected: !, identifier, or 'end of string'"),
        ("a,", "found '', expected: identifier after ','"),
        ("a,,b", "found ',', expected: identifier after ','"),
        ("a,=b", "found '=', expected: identifier after ','"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("a=b=c", "found '=', expected: ',' or 'end of string'"),
        ("a=b)", "found ')', expected: ',' or 'end of string'"),
        ("a in (b))", "found ')', expected: ',' or 'end of string'"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("!a in (b)", "found 'in', expected: ',' or 'end of string'"),
        ("!", UNABLE + "found '', expected: identifier"),
        ("!!a", UNABLE + "found '!', expected: identifier"),
        ("a b", UNABLE + "found 'b', expected: in, notin, =, ==, !=, gt, lt"),
        ("a!b", UNABLE + "found '!', expected: in, notin, =, ==, !=, gt, lt"),
        ("a in", UNABLE + "found '' expected: '('"),
        ("a in b", UNABLE + "found 'b' expected: '('"),
        ("a notin b", UNABLE + "found 'b' expected: '('"),
        ("a in (", UNABLE + "found '', expected: ',', ')' or identifier"),
        ("a in (b", UNABLE + "found '', expected: ',' or ')'"),
        ("a in (b,c", UNABLE + "found '', expected: ',' or ')'"),
        ("a in (b c)", UNABLE + "found 'c', expected: ',' or ')'"),
        ("a in (b,", UNABLE + "found '', expected: ',', or identifier"),
        ("a=(b)", UNABLE + "found '(', expected: identifier"),
        # Empty keys, as kube-apiserver answers them.
        ("==ml", "found '==', expected: !, identifier, or 'end of string'"),
        ("!=ml", "found '!=', expected: !, identifier, or 'end of string'"),
        (" =ml", "found '=', expected: !, identifier, or 'end of string'"),
        ("in (ml)", UNABLE + "found '(', expected: in, notin, =, ==, !=, gt, lt"),
        ("team=ml,=x", "found '=', expected: identifier after ','"),
        ("a>b", UNABLE + 'values[0]: Invalid value: "b": ' + INTEGER_RULE),
        (
            "a<99999999999999999999",
            UNABLE + 'values[0]: Invalid value: "99999999999999999999": ' + INTEGER_RULE,
        ),
    ],
)
def test_malformed_label_selector_gives_kubernetes_message(text: str, message: str) -> None:
    assert label_error(text) == message


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        ("a@b", "name part " + KEY_RULE),
        ("-a", "name part " + KEY_RULE),
        ("a/", "name part must be non-empty; name part " + KEY_RULE),
        ("/a", "prefix part must be non-empty"),
        ("Example.com/a", "prefix part " + SUBDOMAIN_RULE),
        (
            "a/b/c",
            f"a valid label key {KEY_RULE} with an optional DNS subdomain prefix and "
            "'/' (e.g. 'example.com/MyName')",
        ),
        ("k" * 64, "name part must be no more than 63 bytes"),
        ("p" * 254 + "/a", "prefix part must be no more than 253 bytes"),
        ("\u00e9" * 32, "name part must be no more than 63 bytes; name part " + KEY_RULE),
    ],
)
def test_invalid_label_key_is_rejected_with_validation_message(key: str, detail: str) -> None:
    assert label_error(key + "=1") == f'{UNABLE}<nil>: Invalid value: "{key}": {detail}'


def test_invalid_key_is_reported_for_exists_and_not_exists_too() -> None:
    assert label_error("a@") == f'{UNABLE}<nil>: Invalid value: "a@": name part {KEY_RULE}'
    assert label_error("!a@") == f'{UNABLE}<nil>: Invalid value: "a@": name part {KEY_RULE}'


def test_invalid_value_message_names_its_index_and_key() -> None:
    assert label_error("app=b@") == f'{UNABLE}values[0][app]: Invalid value: "b@": {VALUE_RULE}'


def test_too_long_value_is_rejected() -> None:
    value = "v" * 64
    expected = f'{UNABLE}values[0][a]: Invalid value: "{value}": must be no more than 63 bytes'
    assert label_error("a=" + value) == expected


def test_several_invalid_values_are_aggregated_in_sorted_order_without_duplicates() -> None:
    expected = (
        f'{UNABLE}[values[0][a]: Invalid value: "x@": {VALUE_RULE}, '
        f'values[1][a]: Invalid value: "y@": {VALUE_RULE}]'
    )
    assert label_error("a in (y@,x@,x@)") == expected


def test_gt_with_a_value_that_is_neither_integer_nor_label_gives_both_errors() -> None:
    expected = (
        f'{UNABLE}[values[0]: Invalid value: "x@": {INTEGER_RULE}, '
        f'values[0][a]: Invalid value: "x@": {VALUE_RULE}]'
    )
    assert label_error("a>x@") == expected


def test_offending_value_is_quoted_the_way_go_quotes_it() -> None:
    assert label_error('a"b=1') == f'{UNABLE}<nil>: Invalid value: "a\\"b": name part {KEY_RULE}'
    assert label_error("a\x01=1").startswith(f'{UNABLE}<nil>: Invalid value: "a\\x01": ')
    assert label_error("\u00e9=1").startswith(f'{UNABLE}<nil>: Invalid value: "\u00e9": ')


def test_selector_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_label_selector("a in (")


def test_label_status_message_is_the_parse_error_unchanged() -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector("a in (b")
    expected = "unable to parse requirement: found '', expected: ',' or ')'"
    assert label_selector_status_message(info.value) == expected


# --- label matching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a=b", {}, False),
        ("a=", {"a": ""}, True),
        ("a=", {}, False),
        ("a!=b", {"a": "c"}, True),
        ("a!=b", {"a": "b"}, False),
        ("a!=b", {}, True),
        ("a in (b,c)", {"a": "c"}, True),
        ("a in (b,c)", {"a": "d"}, False),
        ("a in (b,c)", {}, False),
        ("a notin (b,c)", {"a": "d"}, True),
        ("a notin (b,c)", {"a": "b"}, False),
        ("a notin (b,c)", {}, True),
        ("a", {"a": ""}, True),
        ("a", {"b": "x"}, False),
        ("!a", {"b": "x"}, True),
        ("!a", {"a": ""}, False),
        ("a>5", {"a": "6"}, True),
        ("a>5", {"a": "5"}, False),
        ("a>5", {"a": "007"}, True),
        ("a>5", {}, False),
        ("a>5", {"a": "six"}, False),
        ("a>5", {"a": "99999999999999999999"}, False),
        ("a<5", {"a": "-3"}, True),
        ("a<5", {"a": "+4"}, True),
        ("a<5", {"a": "5"}, False),
    ],
)
def test_requirement_matching_follows_kubernetes(text: str, labels: dict, matches: bool) -> None:
    assert parse_label_selector(text).matches(labels) is matches


def test_all_requirements_must_match() -> None:
    selector = parse_label_selector("app=ray,tier in (head,worker),!paused")
    assert selector.matches({"app": "ray", "tier": "head"})
    assert not selector.matches({"app": "ray", "tier": "head", "paused": "true"})
    assert not selector.matches({"app": "ray", "tier": "gpu"})


def test_requirement_matches_on_its_own() -> None:
    requirement = Requirement("a", "in", frozenset({"x"}))
    assert requirement.matches({"a": "x"})
    assert not requirement.matches({"a": "y"})


# --- index candidates -------------------------------------------------------------------------


def test_index_candidates_prefers_the_requirement_with_fewest_values() -> None:
    selector = parse_label_selector("a in (x,y,z),b=1,c in (p,q)")
    assert selector.index_candidates() == ("b", frozenset({"1"}))


def test_index_candidates_uses_in_when_there_is_no_equality() -> None:
    selector = parse_label_selector("a in (x,y,z),c in (p,q),d!=1")
    assert selector.index_candidates() == ("c", frozenset({"p", "q"}))


def test_index_candidates_counts_double_equals_as_equality() -> None:
    assert parse_label_selector("a==1").index_candidates() == ("a", frozenset({"1"}))


def test_index_candidates_takes_the_first_key_on_a_tie() -> None:
    assert parse_label_selector("z=1,b=2").index_candidates() == ("b", frozenset({"2"}))


@pytest.mark.parametrize("text", ["", "a!=1", "a notin (x)", "a", "!a", "a>1,b<2"])
def test_index_candidates_is_none_without_equality_or_in(text: str) -> None:
    assert parse_label_selector(text).index_candidates() is None


def test_empty_label_selector_built_directly_is_empty() -> None:
    assert LabelSelector(()).empty
    assert not parse_label_selector("a").empty


# --- field grammar ----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", ",", ",,", "=", "!=", "==", "=,!="])
def test_field_selector_without_terms_is_empty(text: str) -> None:
    selector = parse_field_selector(text)
    assert selector.empty
    assert selector.matches(lambda path: None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.name=foo", FieldRequirement("metadata.name", "=", "foo")),
        ("metadata.name==foo", FieldRequirement("metadata.name", "=", "foo")),
        ("metadata.name!=foo", FieldRequirement("metadata.name", "!=", "foo")),
        ("status.state=", FieldRequirement("status.state", "=", "")),
        ("=x", FieldRequirement("", "=", "x")),
        (" metadata.name = x", FieldRequirement(" metadata.name ", "=", " x")),
        ("a!b=c", FieldRequirement("a!b", "=", "c")),
        ("a=!b", FieldRequirement("a", "=", "!b")),
    ],
)
def test_field_term_splits_at_the_first_operator(text: str, expected: FieldRequirement) -> None:
    assert parse_field_selector(text).requirements == (expected,)


def test_field_terms_are_kept_in_sorted_order() -> None:
    selector = parse_field_selector("status.state=ready,metadata.name=x,,")
    assert selector.requirements == (
        FieldRequirement("metadata.name", "=", "x"),
        FieldRequirement("status.state", "=", "ready"),
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r"a=b\,c", "b,c"),
        (r"a=b\=c", "b=c"),
        (r"a=b\\c", "b\\c"),
        (r"a=x\\", "x\\"),
        (r"a=\,\=\\", ",=\\"),
    ],
)
def test_field_value_escapes_are_decoded(text: str, value: str) -> None:
    assert parse_field_selector(text).requirements == (FieldRequirement("a", "=", value),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", "invalid selector: 'a'; can't understand 'a'"),
        ("x=1,abc", "invalid selector: 'x=1,abc'; can't understand 'abc'"),
        (r"z=\q,a", r"invalid selector: 'z=\q,a'; can't understand 'a'"),
        (r"a=\q", r"invalid field selector: invalid escape sequence: \q"),
        ("a=\\\u00e9", "invalid field selector: invalid escape sequence: \\\u00e9"),
        ("a=b\\", "invalid field selector: invalid escape sequence: \\"),
        ("a=b=c", "invalid field selector: unescaped character in value: 61"),
        (r"a=b\,c=d", "invalid field selector: unescaped character in value: 61"),
    ],
)
def test_malformed_field_selector_gives_kubernetes_message(text: str, message: str) -> None:
    assert field_error(text) == message


def test_unsupported_field_label_is_rejected_when_allowed_says_no() -> None:
    allowed = {"metadata.name", "metadata.namespace", "status.state"}
    assert field_error("spec.foo=1", allowed) == "field label not supported: spec.foo"
    assert field_error("metadata.name=a,spec.x!=1,spec.a=1", allowed) == (
        "field label not supported: spec.a"
    )
    assert field_error("=x", allowed) == "field label not supported: "


@pytest.mark.parametrize("text", ["=rc-03", "==rc-03", "!=rc-03", " =x", "metadata.name=a,=b"])
def test_an_empty_field_path_is_never_a_supported_label_even_when_any_path_is(text: str) -> None:
    # kube-apiserver: 400 "field label not supported: " (the path, empty, after the colon).
    path = text.split(",")[-1].partition("=")[0].rstrip("!")
    assert field_error_any_path(text) == f"field label not supported: {path}"


def test_without_a_label_check_an_empty_field_path_is_grammar_only() -> None:
    assert parse_field_selector("=rc-03").requirements == (FieldRequirement("", "=", "rc-03"),)


def field_error_any_path(text: str) -> str:
    with pytest.raises(SelectorError) as info:
        parse_field_selector(text, allowed=lambda path: True)
    return str(info.value)


def test_syntax_errors_win_over_unsupported_field_labels() -> None:
    expected = "invalid selector: 'spec.foo=1,a'; can't understand 'a'"
    assert field_error("spec.foo=1,a", {"metadata.name"}) == expected


def test_empty_term_is_dropped_before_the_field_label_check() -> None:
    assert parse_field_selector("=", allowed=lambda path: False).empty


def test_allowed_field_labels_parse() -> None:
    selector = parse_field_selector("status.state=ready", allowed={"status.state"}.__contains__)
    assert selector.requirements == (FieldRequirement("status.state", "=", "ready"),)


def test_field_status_message_is_the_error_unchanged() -> None:
    with pytest.raises(SelectorError) as info:
        parse_field_selector("spec.x=1", allowed=lambda path: False)
    assert field_selector_status_message(info.value) == "field label not supported: spec.x"


# --- field matching ---------------------------------------------------------------------------


def test_field_selector_matches_by_lookup() -> None:
    fields = {"metadata.name": "a", "status.state": "ready"}
    assert parse_field_selector("metadata.name=a,status.state=ready").matches(fields.get)
    assert not parse_field_selector("metadata.name=a,status.state!=ready").matches(fields.get)


def test_absent_field_compares_as_empty_string() -> None:
    absent = {"metadata.name": "a"}.get
    assert parse_field_selector("status.state!=ready").matches(absent)
    assert parse_field_selector("status.state=").matches(absent)
    assert not parse_field_selector("status.state=ready").matches(absent)
    assert not parse_field_selector("status.state!=").matches(absent)


def test_value_for_gives_the_required_equality_value() -> None:
    selector = parse_field_selector("metadata.namespace=ns,metadata.name!=x,status.state==ok")
    assert selector.value_for("metadata.namespace") == "ns"
    assert selector.value_for("status.state") == "ok"
    assert selector.value_for("metadata.name") is None
    assert selector.value_for("spec.x") is None


def test_value_for_returns_an_empty_required_value() -> None:
    assert parse_field_selector("metadata.name=").value_for("metadata.name") == ""


# --- object fields ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("ready", "ready"),
        ("", ""),
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-12, "-12"),
        (2**63 - 1, "9223372036854775807"),
        (2**64, "18446744073709552000"),
        (1.0, "1"),
        (1.5, "1.5"),
        (-0.25, "-0.25"),
        (0.1, "0.1"),
        (1e6, "1000000"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-10, "1.5e-10"),
        (-0.0, "-0"),
        (None, None),
        ({"a": 1}, None),
        ([1], None),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_scalar_renders_like_go_json(value: object, rendered: str | None) -> None:
    assert scalar_to_field_string(value) == rendered


OBJ = {
    "metadata": {"name": "rc", "labels": {"app": "ray"}, "generation": 3},
    "spec": {"suspend": False, "workers": [{"replicas": 2}], "ratio": 0.5},
    "status": {"state": "ready", "reason": None},
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("metadata.name", "rc"),
        ("metadata.labels.app", "ray"),
        ("metadata.generation", "3"),
        ("spec.suspend", "false"),
        ("spec.ratio", "0.5"),
        ("status.state", "ready"),
        ("status.reason", None),
        ("status.missing", None),
        ("missing.deeper", None),
        ("metadata.name.deeper", None),
        ("spec.workers", None),
        ("spec.workers.0.replicas", None),
        ("metadata", None),
        ("", None),
    ],
)
def test_lookup_path_walks_dotted_segments_to_a_scalar(path: str, value: str | None) -> None:
    assert lookup_path(OBJ, path) == value


def test_lookup_path_feeds_field_selector_matching() -> None:
    selector = parse_field_selector("status.state=ready,spec.suspend=false,spec.missing!=x")
    assert selector.matches(lambda path: lookup_path(OBJ, path))
