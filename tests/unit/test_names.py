"""Name validation: examples for every rule, length budgets, and the invariants that keep a
name inside its argv element (pure)."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jailfarm import names
from jailfarm.errors import InvalidName, UnsafeOperation
from jailfarm.names import (
    BRANCH,
    DATASET,
    ENV_KEY,
    HOSTNAME,
    JAIL,
    ORIGIN,
    POUDRIERE_JAIL,
    PROPERTY_VALUE,
    SET,
    SNAPSHOT_TAG,
    TREE,
    USER,
    USER_PROPERTY,
    NameRule,
    require_under,
    snapshot_name,
    split_snapshot,
)

RULES = {
    "JAIL": JAIL,
    "HOSTNAME": HOSTNAME,
    "DATASET": DATASET,
    "SNAPSHOT_TAG": SNAPSHOT_TAG,
    "POUDRIERE_JAIL": POUDRIERE_JAIL,
    "TREE": TREE,
    "SET": SET,
    "ORIGIN": ORIGIN,
    "BRANCH": BRANCH,
    "USER_PROPERTY": USER_PROPERTY,
    "PROPERTY_VALUE": PROPERTY_VALUE,
    "USER": USER,
    "ENV_KEY": ENV_KEY,
}
SHELL_META = set(";&|$`<>()*?[]{}'\"\\")

VALID = {
    "JAIL": ["w", "w1", "build-01", "a_b", "poudriere1"],
    "HOSTNAME": ["h", "build1", "build1.example.org", "10.0.0.7", "a-b.c-d", "1x"],
    "DATASET": ["pool", "pool/farm/w1", "p/a.b:c-d_e", "zroot/1", "Pool/A"],
    "SNAPSHOT_TAG": ["1", "base", "2024-01-01T00:00", "v2.1_rc", "A"],
    "POUDRIERE_JAIL": ["14amd64", "FreeBSD_14_1", "j"],
    "TREE": ["default", "ports_2024Q4", "HEAD"],
    "SET": ["default", "ci", "py311_flavor"],
    "ORIGIN": ["www/nginx", "lang/python311", "devel/py-setuptools@py311", "x11/c++-x.y"],
    "BRANCH": ["main", "release/14.1", "feature/x_y-z", "v1.2", "a/b/c", "2024Q4"],
    "USER_PROPERTY": ["jailfarm:owner", "jailfarm:build_id2", "jailfarm:expires"],
    # Unvalued, dashed and '-' values are accepted: a value only ever appears after "key=".
    "PROPERTY_VALUE": ["w1", "1767225600", "/mnt/farm", "a=b,c", "lz4", "x-1", "on@x+y"],
    "USER": ["root", "_pkg", "build-1", "www", "a_"],
    "ENV_KEY": ["PATH", "_x", "a1", "HTTP_PROXY"],
}
INVALID = {
    "JAIL": ["", "1w", "W1", "a.b", "-a", "_a", "a b", "a/b", "a;b", "a\n", "\u00e9"],
    "HOSTNAME": ["", "-a", "a-", "A", "a..b", ".a", "a.", "a_b", "a b", "x" * 64, "a.-b"],
    "DATASET": [
        "",
        "/pool",
        "pool/",
        "pool//a",
        "pool/../x",
        "pool/.x",
        "pool/-x",
        "-pool",
        "pool@snap",
        "pool a",
        "pool/a;b",
        "pool/a\n",
        "pool/*",
        "pool/\u00e9",
    ],
    "SNAPSHOT_TAG": ["", "-x", "a/b", "a@b", ".x", "a b", "_x", "a$"],
    "POUDRIERE_JAIL": ["", "14-amd64", "a.b", "_a", "-a", "a b"],
    "TREE": ["", "my-tree", "a.b", "_a", "-a"],
    "SET": ["", "py-311", "a.b", "_a", "-a"],
    "ORIGIN": [
        "",
        "nginx",
        "www/",
        "/nginx",
        "www/nginx/extra",
        "www/nginx@",
        "www/nginx@py-3",
        "-www/nginx",
        "../ports",
        "www/..",
        "www/.x",
        "www /nginx",
        "www/nginx;id",
    ],
    "BRANCH": [
        "",
        "-main",
        "a..b",
        "a//b",
        "a/",
        "a.",
        "a.lock",
        "x@{1}",
        "a b",
        "a~1",
        "a^",
        "a:b",
        ".hidden",
        "/a",
        "a\n",
    ],
    "USER_PROPERTY": [
        "owner",
        "jailfarm:",
        "jailfarm:Owner",
        "com.x:owner",
        "jailfarm:1x",
        "jailfarm:a-b",
        "jailfarm:a.b",
        " jailfarm:a",
    ],
    # "" and "-": zfs prints "-" for unset; a leading "-" reads like an option.
    "PROPERTY_VALUE": ["a b", "a;b", "a\nb", "$x", "\u00e9", "a'b", "a\tb", "*", "", "-", "-1"],
    "USER": ["", "Root", "1user", "-u", "a b", "a.b", "a@b", "a$"],
    "ENV_KEY": ["", "1A", "A-B", "A=B", "A B", "-A", "A\n", "$A"],
}


# A longest valid value for each rule, exactly at its budget.
AT_LIMIT = {
    "JAIL": "w" * 11,
    "HOSTNAME": ".".join(["a" * 63] * 3 + ["b" * 61]),
    "DATASET": "p/" + "a" * 253,
    "SNAPSHOT_TAG": "t" * 64,
    "POUDRIERE_JAIL": "j" * 32,
    "TREE": "t" * 32,
    "SET": "s" * 32,
    "ORIGIN": "c/" + "p" * 158,
    "BRANCH": "b" * 200,
    "USER_PROPERTY": "jailfarm:" + "a" * 55,
    "PROPERTY_VALUE": "v" * 1024,
    "USER": "u" * 32,
    "ENV_KEY": "E" * 128,
}
LIMITS = {
    "JAIL": 11,  # "e0b_" + name must fit IFNAMSIZ (16 with the NUL)
    "HOSTNAME": 253,
    "DATASET": 255,  # ZFS_MAX_DATASET_NAME_LEN 256 with the NUL
    "SNAPSHOT_TAG": 64,
    "POUDRIERE_JAIL": 32,
    "TREE": 32,
    "SET": 32,
    "ORIGIN": 160,
    "BRANCH": 200,
    "USER_PROPERTY": 64,
    "PROPERTY_VALUE": 1024,
    "USER": 32,
    "ENV_KEY": 128,
}


def _cases(table: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(rule, value) for rule, values in table.items() for value in values]


class NameRuleTests:
    def test_every_rule_has_examples(self) -> None:
        declared = {k for k, v in vars(names).items() if isinstance(v, NameRule)}
        assert declared == set(RULES) == set(VALID) == set(INVALID) == set(AT_LIMIT)

    @pytest.mark.parametrize(("rule", "value"), _cases(VALID))
    def test_valid_name_is_returned_unchanged(self, rule: str, value: str) -> None:
        assert RULES[rule].check(value) is value

    @pytest.mark.parametrize(("rule", "value"), _cases(INVALID))
    def test_invalid_name_is_rejected_with_what_was_expected(self, rule: str, value: str) -> None:
        r = RULES[rule]
        with pytest.raises(InvalidName) as info:
            r.check(value)
        message = str(info.value)
        assert r.kind in message
        assert repr(value) in message
        if len(value) <= r.max_len:
            assert r.expected in message

    @pytest.mark.parametrize("rule", sorted(RULES))
    def test_exactly_at_the_length_limit_passes(self, rule: str) -> None:
        value = AT_LIMIT[rule]
        assert len(value) == LIMITS[rule] == RULES[rule].max_len
        assert RULES[rule].check(value) == value

    @pytest.mark.parametrize("rule", sorted(RULES))
    def test_one_over_the_limit_fails_naming_the_limit(self, rule: str) -> None:
        value = AT_LIMIT[rule] + "1"
        with pytest.raises(
            InvalidName,
            match=rf"is {LIMITS[rule] + 1} characters; "
            rf"the limit is {LIMITS[rule]}$",
        ):
            RULES[rule].check(value)

    @pytest.mark.parametrize("value", [None, 3, b"pool", ["pool"]])
    def test_non_string_is_rejected(self, value: object) -> None:
        with pytest.raises(InvalidName, match="must be a string"):
            DATASET.check(value)

    def test_invalid_name_is_a_value_error(self) -> None:
        with pytest.raises(ValueError):
            JAIL.check("Bad")


# Characters near every rule's alphabet, plus everything a rule must keep out.
NEAR = (
    string.ascii_letters
    + string.digits
    + "-_.:/@+=,~#!%^ \t\n\r\x0b\x00\u00e9\u2028"
    + "".join(SHELL_META)
)


@st.composite
def near_miss(draw: st.DrawFn, rule: NameRule) -> str:
    """A valid name with one character from NEAR inserted somewhere."""
    valid = draw(st.from_regex(rule.pattern, fullmatch=True))
    at = draw(st.integers(0, len(valid)))
    return valid[:at] + draw(st.sampled_from(NEAR)) + valid[at:]


def candidates(rule: NameRule) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(),
        st.text(NEAR),
        st.from_regex(rule.pattern, fullmatch=True),
        near_miss(rule),
    )


def accepted(rule: NameRule, value: str) -> bool:
    try:
        rule.check(value)
    except InvalidName:
        return False
    return True


class NameInvariantTests:
    @pytest.mark.parametrize("rule", sorted(RULES))
    @given(data=st.data())
    def test_accepted_names_hold_no_whitespace_or_shell_characters(
        self, rule: str, data: st.DataObject
    ) -> None:
        value = data.draw(candidates(RULES[rule]))
        if accepted(RULES[rule], value):
            assert not any(c.isspace() for c in value)
            assert not SHELL_META & set(value)
            assert "\0" not in value
            assert value.isascii()
            assert len(value) <= RULES[rule].max_len

    @pytest.mark.parametrize("rule", sorted(set(RULES) - {"PROPERTY_VALUE"}))
    @given(data=st.data())
    def test_accepted_names_never_start_with_a_dash(self, rule: str, data: st.DataObject) -> None:
        # A leading '-' would read as an option of zfs, jail, poudriere, git...
        value = data.draw(candidates(RULES[rule]))
        if accepted(RULES[rule], value):
            assert value
            assert not value.startswith("-")

    @given(candidates(DATASET))
    def test_accepted_dataset_has_no_path_escape_or_empty_component(self, value: str) -> None:
        if accepted(DATASET, value):
            parts = value.split("/")
            assert all(parts)
            assert not {".", ".."} & set(parts)
            assert all(p[0].isalnum() for p in parts)


DATASETS = st.from_regex(DATASET.pattern, fullmatch=True).filter(lambda d: len(d) <= 120)


@st.composite
def adversarial(draw: st.DrawFn, root: str) -> str:
    tail = draw(st.text(NEAR, max_size=20))
    return draw(
        st.sampled_from(
            [
                root,
                root + "/",
                root + tail,
                root + "x",
                root + "/../" + tail,
                root + "/./" + tail,
                root + "//" + tail,
                " " + root + "/a",
                root + "/a ",
                "-" + root + "/a",
                "/" + root + "/a",
                root.upper() + "/a",
                root.rpartition("/")[0] + "/" + tail,
                tail + root + "/a",
                root + "@" + tail,
                root + "/" + tail,
                root + "/a@" + tail,
                tail,
            ]
        )
    )


class RequireUnderTests:
    def test_dataset_strictly_below_root_is_returned(self) -> None:
        assert require_under("pool/farm", "pool/farm/w1") == "pool/farm/w1"
        assert require_under("pool/farm", "pool/farm/a/b") == "pool/farm/a/b"

    def test_snapshot_below_root_is_returned(self) -> None:
        assert require_under("pool/farm", "pool/farm/tpl@1") == "pool/farm/tpl@1"

    @pytest.mark.parametrize(
        "target",
        [
            "pool/farm",
            "pool/farmer",
            "pool/farmer/a",
            "pool",
            "other/farm/a",
            "pool/farm@1",
            "pool/farmx/a@1",
        ],
    )
    def test_root_itself_siblings_and_prefix_lookalikes_are_refused(self, target: str) -> None:
        with pytest.raises(UnsafeOperation, match=f"refusing to touch '{re.escape(target)}'"):
            require_under("pool/farm", target)

    @pytest.mark.parametrize(
        "target", ["pool/farm/../x", "pool/farm/", " pool/farm/a", "pool/farm//a", "-pool/farm/a"]
    )
    def test_malformed_targets_are_invalid_names(self, target: str) -> None:
        with pytest.raises(InvalidName):
            require_under("pool/farm", target)

    def test_invalid_root_is_rejected(self) -> None:
        with pytest.raises(InvalidName):
            require_under("pool/farm/", "pool/farm/a")

    @given(DATASETS.flatmap(lambda root: st.tuples(st.just(root), adversarial(root))))
    @example(("pool/farm", "pool/farm/../x"))
    @example(("pool/farm", "pool/farmx"))
    @example(("pool/farm", "pool/farm"))
    @example(("pool/farm", " pool/farm/a"))
    def test_never_accepts_anything_outside_root(self, case: tuple[str, str]) -> None:
        root, target = case
        try:
            out = require_under(root, target)
        except (InvalidName, UnsafeOperation):
            return
        base = out.partition("@")[0]
        assert out is target
        assert out.startswith(root + "/")
        assert DATASET.check(base) == base
        assert not out.startswith("-")
        assert not any(c.isspace() for c in base)

    @pytest.mark.parametrize("target", ["pool/farm/a@x y", "pool/farm/a@-r", "pool/farm/a@;id"])
    def test_snapshot_tag_is_validated_too(self, target: str) -> None:
        with pytest.raises(InvalidName):
            require_under("pool/farm", target)


class SnapshotNameTests:
    def test_snapshot_name_joins_dataset_and_tag(self) -> None:
        assert snapshot_name("pool/farm/tpl", "1") == "pool/farm/tpl@1"

    @pytest.mark.parametrize(
        ("dataset", "tag"),
        [("pool/a@x", "1"), ("-pool", "1"), ("pool/a", "a b"), ("pool/a", "b@c"), ("pool/a", "")],
    )
    def test_snapshot_name_validates_both_parts(self, dataset: str, tag: str) -> None:
        with pytest.raises(InvalidName):
            snapshot_name(dataset, tag)

    def test_split_snapshot_returns_dataset_and_tag(self) -> None:
        assert split_snapshot("pool/farm/tpl@base.2") == ("pool/farm/tpl", "base.2")

    def test_split_snapshot_without_at_says_what_was_expected(self) -> None:
        with pytest.raises(InvalidName, match="expected dataset@tag"):
            split_snapshot("pool/farm/tpl")

    @pytest.mark.parametrize(
        "name", ["pool/a@", "@1", "pool/a@b@c", "pool/a@-x", "-pool@1", "pool/a@1 ", "pool/../a@1"]
    )
    def test_split_snapshot_rejects_malformed_names(self, name: str) -> None:
        with pytest.raises(InvalidName):
            split_snapshot(name)

    @given(
        DATASETS, st.from_regex(SNAPSHOT_TAG.pattern, fullmatch=True).filter(lambda t: len(t) <= 64)
    )
    def test_split_snapshot_inverts_snapshot_name(self, dataset: str, tag: str) -> None:
        assert split_snapshot(snapshot_name(dataset, tag)) == (dataset, tag)
