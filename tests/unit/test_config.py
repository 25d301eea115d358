"""farm.toml schema: parsing, defaults, every validation rule, and reporting all errors at once."""

from __future__ import annotations

import base64
import copy
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jailfarm import configschema as cs
from jailfarm import names
from jailfarm.config import (
    ConfigError,
    FarmConfig,
    format_size,
    hash_password,
    load_farm,
    parse_farm,
    parse_size,
    verify_password,
)
from jailfarm.errors import FarmError

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "config"

# The smallest valid farm.toml for each platform, as parsed TOML.
MINIMAL: dict[str, object] = {
    "farm": {"platform": "linux-dev"},
    "zfs": {"pool": "jailfarm", "root": "jailfarm/farm"},
    "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
    "trees": [{"name": "default", "url": "https://git.FreeBSD.org/ports.git"}],
}
FREEBSD: dict[str, object] = {
    **MINIMAL,
    "farm": {"platform": "freebsd"},
    "template": {"release": "14.1-RELEASE"},
    "signing": {"key_file": "/etc/jailfarm/repo.key"},
}
# A valid hash, made once (PBKDF2 at the minimum accepted iteration count is still ~50 ms).
OPS_HASH = hash_password("ops-password", salt="fixedsalt", iterations=cs.PBKDF2_MIN_ITERATIONS)
MINIMAL_TOML = """\
[farm]
platform = "linux-dev"
[zfs]
pool = "jailfarm"
root = "jailfarm/farm"
[[poudriere.jails]]
name = "141amd64"
version = "14.1-RELEASE"
[[trees]]
name = "default"
url = "https://git.FreeBSD.org/ports.git"
"""


def farm(base: dict[str, object] | None = None, /, **changes: object) -> dict[str, object]:
    """A deep copy of `base` (MINIMAL) with dotted-path changes; `__` separates path parts,
    digits index arrays, and the value DELETE removes the key: farm(zfs__reserve="2G")."""
    data = copy.deepcopy(MINIMAL if base is None else base)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node: object = data
        for part in parents:
            if isinstance(node, list):
                node = node[int(part)]
            else:
                assert isinstance(node, dict)
                node = node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            assert isinstance(node, dict)
            if value is DELETE:
                node.pop(last, None)
            else:
                node[last] = value
    return data


DELETE = object()


def problems(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_farm(data)
    return info.value.problems


def problem(data: dict[str, object]) -> str:
    """The one problem `data` has (fails if it has none or several)."""
    found = problems(data)
    assert len(found) == 1, found
    return found[0]


class LoadTests:
    def test_example_farm_parses(self) -> None:
        config = load_farm(ROOT / "examples" / "farm.toml")
        assert isinstance(config, FarmConfig)
        assert config.platform == "linux-dev"
        assert config.zfs.pool_size == 4 << 30
        assert config.poudriere_jails[0].abi == "FreeBSD:14:amd64"
        assert config.web.url.endswith("/")

    def test_minimal_linux_dev_file_takes_defaults(self, tmp_path: Path) -> None:
        path = tmp_path / "farm.toml"
        path.write_text(MINIMAL_TOML)
        config = load_farm(path)
        assert (config.name, config.prefix, config.state_dir) == (
            "jailfarm",
            "jf",
            "/var/lib/jailfarm",
        )
        assert config.zfs.reserve == 1 << 30
        assert config.zfs.pool_file == "/var/lib/jailfarm/pool.img"
        assert config.zfs.mountpoint == "/jf"
        assert [h.name for h in config.jail_hosts] == ["local"]
        assert config.jail_hosts[0].is_local and config.jail_hosts[0].max_jails == 2
        assert config.workers.children_max == 6
        assert config.workers.devfs_ruleset is None
        assert config.template.release is None and config.template.packages == ()
        assert config.poudriere_jails[0].arch == "amd64"
        assert config.trees[0].branch == "main"
        assert [s.name for s in config.sets] == ["default"]
        assert config.publish.root == "/var/lib/jailfarm/repo"
        assert config.signing.key_file == "/var/lib/jailfarm/keys/repo.key"
        assert (config.web.bind, config.web.port, config.web.auth) == ("127.0.0.1", 8010, "none")
        assert config.database.url.reveal() == "sqlite:///state.sqlite"

    def test_minimal_freebsd_file_takes_freebsd_defaults(self) -> None:
        config = parse_farm(FREEBSD)
        assert config.state_dir == "/var/db/jailfarm"
        assert config.zfs.pool_file is None and config.zfs.mountpoint is None
        assert config.workers.devfs_ruleset == 4
        assert "poudriere" in config.template.packages

    def test_missing_file_is_a_config_error_naming_the_path(self, tmp_path: Path) -> None:
        path = tmp_path / "nope.toml"
        with pytest.raises(ConfigError) as info:
            load_farm(path)
        assert info.value.source == str(path)
        assert "cannot read the file" in info.value.problems[0]

    def test_toml_syntax_error_reports_line_and_column(self, tmp_path: Path) -> None:
        path = tmp_path / "farm.toml"
        path.write_text('[farm]\nplatform = "linux-dev"\nname = demo\n')
        with pytest.raises(ConfigError) as info:
            load_farm(path)
        assert "TOML syntax error" in info.value.problems[0]
        assert "line 3" in info.value.problems[0]

    def test_non_utf8_file_is_a_config_error(self, tmp_path: Path) -> None:
        path = tmp_path / "farm.toml"
        path.write_bytes(b'[farm]\nname = "\xff"\n')
        with pytest.raises(ConfigError):
            load_farm(path)

    def test_config_error_is_a_farm_error_and_a_value_error(self) -> None:
        with pytest.raises(ConfigError) as info:
            parse_farm({}, source="x.toml")
        assert isinstance(info.value, FarmError) and isinstance(info.value, ValueError)
        assert str(info.value).startswith("x.toml: ")


class ReportTests:
    def test_broken_file_reports_every_problem_at_once(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_farm(FIXTURES / "broken.toml")
        found = info.value.problems
        # (key, bad value, what is expected) for each of the ten marked slips.
        expected = [
            ("farm.prefix", "'farm1'", "the limit is 4"),
            ("zfs.root", "'zroot/jailfarm'", "expected 'tank' or a dataset below it"),
            ("zfs.reserve", "'12Q'", "expected bytes or a number with K, M, G or T"),
            ("zfs.pooll", "unknown key", "did you mean 'pool'?"),
            ("workers.builders", "string '4'", "expected an integer >= 1"),
            ("poudriere.jails[0].arch", "'sparc64'", "expected one of amd64"),
            ("trees[0].branch", "'x y'", "expected a git branch name"),
            ("web.port", "9989", "expected a different port"),
            ("web.users[0].password_hash", "plaintext", "expected pbkdf2_sha256$"),
            ("database.url", "postgresql://buildbot:***@", "expected postgresql+psycopg2://"),
        ]
        assert len(found) == len(expected), found
        for (key, value, expectation), message in zip(
            expected, sorted(found, key=_order(expected)), strict=True
        ):
            assert message.startswith(key + ": "), message
            assert value in message and expectation in message, message

    def test_secrets_never_appear_in_the_report(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_farm(FIXTURES / "broken.toml")
        assert "s3cret" not in str(info.value) and "hunter2" not in str(info.value)

    def test_empty_document_lists_every_required_key(self) -> None:
        keys = [p.split(":")[0] for p in problems({})]
        assert keys == ["farm.platform", "zfs.pool", "zfs.root", "poudriere.jails", "trees"]

    def test_a_bad_value_does_not_cause_follow_on_problems(self) -> None:
        # An invalid pool is reported once, not again as "root is not in pool".
        assert problem(farm(zfs__pool="9bad")).startswith("zfs.pool: ")

    @pytest.mark.parametrize(
        ("path", "suggestion"),
        [
            ("farm__plaform", "platform"),
            ("zfs__reserv", "reserve"),
            ("workers__lease_time", "lease"),
            ("web__prot", "port"),
            ("trees__0__brnach", "branch"),
            ("databse", None),
        ],
    )
    def test_unknown_keys_are_reported_with_a_suggestion(
        self, path: str, suggestion: str | None
    ) -> None:
        message = problem(farm(**{path: "x"}))
        assert message.startswith(
            path.replace("__0__", "[0].").replace("__", ".") + ": unknown key"
        )
        if suggestion:
            assert f"did you mean {suggestion!r}?" in message

    def test_a_scalar_where_a_table_belongs_is_reported(self) -> None:
        assert problem(farm(workers=3)) == "workers: expected a table, got integer 3"

    def test_a_table_where_an_array_of_tables_belongs_is_reported(self) -> None:
        assert "expected an array of tables ([[trees]])" in problem(
            farm(trees={"name": "default", "url": "/src/ports"})
        )


def _order(expected: list[tuple[str, str, str]]) -> Callable[[str], int]:
    keys = [k for k, _, _ in expected]
    return lambda message: keys.index(message.split(": ")[0])


class FarmTests:
    def test_platform_is_required(self) -> None:
        assert problem(farm(farm={})).startswith("farm.platform: missing")

    def test_platform_must_be_known(self) -> None:
        assert "expected one of 'freebsd', 'linux-dev'" in problem(farm(farm__platform="bsd"))

    def test_name_is_a_lowercase_word(self) -> None:
        assert problem(farm(farm__name="My Farm")).startswith("farm.name: invalid farm name")
        assert parse_farm(farm(farm__name="ci-2")).name == "ci-2"

    def test_prefix_leaves_room_in_an_11_character_jail_name(self) -> None:
        assert problem(farm(farm__prefix="abcde")).startswith("farm.prefix:")
        assert parse_farm(farm(farm__prefix="abcd")).prefix == "abcd"

    def test_prefix_may_not_hold_a_dash(self) -> None:
        assert problem(farm(farm__prefix="j-f")).startswith("farm.prefix:")

    def test_state_dir_must_be_absolute(self) -> None:
        assert "not an absolute path" in problem(farm(farm__state_dir="var/lib/jf"))

    def test_state_dir_may_not_be_the_root_directory(self) -> None:
        assert "root directory" in problem(farm(farm__state_dir="/"))

    def test_paths_may_not_escape_with_dot_dot(self) -> None:
        assert "'..'" in problem(farm(farm__state_dir="/var/lib/../../etc"))

    def test_paths_are_normalised(self) -> None:
        assert parse_farm(farm(farm__state_dir="/srv//jf/")).state_dir == "/srv/jf"


class ZfsTests:
    def test_pool_and_root_are_required(self) -> None:
        found = problems(farm(zfs={}))
        assert [p.split(":")[0] for p in found] == ["zfs.pool", "zfs.root"]

    def test_root_must_be_in_the_pool(self) -> None:
        assert "is not in pool 'jailfarm'" in problem(farm(zfs__root="tank/farm"))

    def test_root_may_not_merely_share_a_name_prefix_with_the_pool(self) -> None:
        assert "is not in pool" in problem(farm(zfs__root="jailfarm2/farm"))

    def test_root_may_be_the_pool_itself(self) -> None:
        assert parse_farm(farm(zfs__root="jailfarm")).zfs.root == "jailfarm"

    def test_root_has_a_length_budget(self) -> None:
        root = "jailfarm/" + "a" * 100
        assert "too long" in problem(farm(zfs__root=root))

    def test_pool_names_reserved_by_zpool_are_refused(self) -> None:
        for pool in ("mirror1", "log", "c0t0"):
            assert problem(farm(zfs__pool=pool, zfs__root=pool)).startswith("zfs.pool:")
        assert parse_farm(farm(zfs__pool="logs", zfs__root="logs/f")).zfs.pool == "logs"

    def test_reserve_accepts_sizes_and_bytes(self) -> None:
        assert parse_farm(farm(zfs__reserve="512M")).zfs.reserve == 512 << 20
        assert parse_farm(farm(zfs__reserve=4096)).zfs.reserve == 4096

    def test_reserve_must_be_below_the_pool_size(self) -> None:
        message = problem(farm(zfs__reserve="4G", zfs__pool_size="4G"))
        assert message == "zfs.reserve: 4G is not below zfs.pool_size (4G); expected less"

    def test_pool_size_has_zpools_minimum(self) -> None:
        assert "expected at least 64M" in problem(farm(zfs__pool_size="32M", zfs__reserve=0))

    def test_mountpoint_defaults_to_the_prefix(self) -> None:
        assert parse_farm(farm(farm__prefix="ci")).zfs.mountpoint == "/ci"

    def test_mountpoint_is_kept_short(self) -> None:
        assert "too long" in problem(farm(zfs__mountpoint="/" + "m" * 40))

    @pytest.mark.parametrize("key", ["pool_file", "pool_size", "mountpoint"])
    def test_zfs_fuse_keys_are_refused_on_freebsd(self, key: str) -> None:
        message = problem(farm(FREEBSD, **{f"zfs__{key}": "/x" if key != "pool_size" else "1G"}))
        assert message.startswith(f"zfs.{key}: ")
        assert "only valid with platform 'linux-dev'" in message


class JailHostTests:
    def test_ssh_host_is_parsed(self) -> None:
        host = {"name": "build2", "ssh": "build2.example.org", "ssh_port": 2222}
        config = parse_farm(
            farm(jail_hosts=[{"name": "local"}, host], workers={"master_address": "10.0.0.1"})
        )
        remote = config.jail_hosts[1]
        assert (remote.ssh, remote.ssh_user, remote.ssh_port) == (
            "build2.example.org",
            "root",
            2222,
        )
        assert not remote.is_local

    def test_ssh_must_be_a_hostname(self) -> None:
        message = problem(farm(jail_hosts=[{"name": "b", "ssh": "-oProxyCommand=x"}]))
        assert message.startswith("jail_hosts[0].ssh: invalid hostname")

    def test_ssh_user_without_ssh_is_refused(self) -> None:
        message = problem(farm(jail_hosts=[{"name": "b", "ssh_user": "root"}]))
        assert message.startswith("jail_hosts[0].ssh_user: 'root' is set without ssh")

    def test_ssh_port_is_a_port(self) -> None:
        host = {"name": "b", "ssh": "b.example.org", "ssh_port": 0}
        assert "from 1 to 65535" in problem(farm(jail_hosts=[host]))

    def test_host_names_are_unique(self) -> None:
        hosts = [{"name": "a"}, {"name": "a", "ssh": "b.example.org"}]
        assert problem(farm(jail_hosts=hosts)).startswith("jail_hosts[1].name: 'a' repeats")

    def test_only_one_host_may_be_this_machine(self) -> None:
        message = problem(farm(jail_hosts=[{"name": "a"}, {"name": "b"}]))
        assert message.startswith("jail_hosts[1].ssh:") and "each machine once" in message

    def test_max_jails_is_at_least_one(self) -> None:
        assert "expected an integer >= 1" in problem(
            farm(jail_hosts=[{"name": "a", "max_jails": 0}])
        )

    def test_an_empty_host_list_is_refused(self) -> None:
        assert problem(farm(jail_hosts=[])).startswith("jail_hosts: empty")


class WorkersTests:
    def test_lease_must_outlast_attach_timeout(self) -> None:
        message = problem(farm(workers={"lease": 60, "attach_timeout": 120}))
        assert message.startswith("workers.lease: 60 is too short")

    def test_booleans_are_not_integers(self) -> None:
        assert "got boolean True" in problem(farm(workers__builders=True))

    def test_floats_are_not_integers(self) -> None:
        assert "got float 2.5" in problem(farm(workers__builders=2.5))

    def test_children_max_follows_builders(self) -> None:
        assert parse_farm(farm(workers__builders=4)).workers.children_max == 10

    def test_private_network_is_a_boolean(self) -> None:
        assert "expected true or false" in problem(farm(workers__private_network="yes"))

    @pytest.mark.parametrize(("key", "value"), [("devfs_ruleset", 5), ("memory_limit", "8G")])
    def test_freebsd_jail_limits_are_refused_on_linux_dev(self, key: str, value: object) -> None:
        assert "only valid with platform 'freebsd'" in problem(farm(**{f"workers__{key}": value}))

    def test_memory_limit_is_a_size_on_freebsd(self) -> None:
        assert parse_farm(farm(FREEBSD, workers__memory_limit="8G")).workers.memory_limit == 8 << 30

    def test_devfs_ruleset_range(self) -> None:
        assert "from 0 to 65535" in problem(farm(FREEBSD, workers__devfs_ruleset=70000))


class TemplateTests:
    def test_release_is_required_on_freebsd(self) -> None:
        assert problem(farm(FREEBSD, template={})).startswith("template.release: missing")

    @pytest.mark.parametrize("release", ["14.1-RELEASE", "13.3-RELEASE-p4", "15.0-CURRENT"])
    def test_release_accepts_freebsd_versions(self, release: str) -> None:
        assert parse_farm(farm(FREEBSD, template__release=release)).template.release == release

    @pytest.mark.parametrize("release", ["14.1", "14.1-release", "FreeBSD-14.1", "14.1-RELEASE "])
    def test_release_refuses_other_spellings(self, release: str) -> None:
        assert problem(farm(FREEBSD, template__release=release)).startswith("template.release:")

    def test_release_and_packages_are_refused_on_linux_dev(self) -> None:
        found = problems(farm(template={"release": "14.1-RELEASE", "packages": ["git"]}))
        assert [p.split(":")[0] for p in found] == ["template.release", "template.packages"]

    def test_package_names_may_not_look_like_options(self) -> None:
        message = problem(farm(FREEBSD, template__packages=["git", "-y"]))
        assert message.startswith("template.packages[1]: '-y'")

    def test_keep_is_at_least_one(self) -> None:
        assert problem(farm(template__keep=0)).startswith("template.keep: 0 is out of range")


class PoudriereJailTests:
    def test_at_least_one_jail_is_required(self) -> None:
        assert problem(farm(poudriere={})).startswith("poudriere.jails: missing")

    def test_jail_names_may_not_hold_dots_or_dashes(self) -> None:
        message = problem(farm(poudriere__jails__0__name="14.1-amd64"))
        assert message.startswith("poudriere.jails[0].name: invalid poudriere jail name")

    def test_version_is_a_freebsd_release(self) -> None:
        assert "is not valid" in problem(farm(poudriere__jails__0__version="14"))

    def test_arch_accepts_target_dot_target_arch(self) -> None:
        jail = parse_farm(farm(poudriere__jails__0__arch="arm64.aarch64")).poudriere_jails[0]
        assert (jail.arch, jail.poudriere_arch, jail.abi) == (
            "aarch64",
            "arm64.aarch64",
            "FreeBSD:14:aarch64",
        )

    def test_unknown_arch_is_refused(self) -> None:
        assert "not a supported arch" in problem(farm(poudriere__jails__0__arch="sparc64"))

    def test_jail_names_are_unique(self) -> None:
        jail = {"name": "141amd64", "version": "14.1-RELEASE"}
        assert "repeats" in problem(farm(poudriere={"jails": [jail, jail]}))


class TreeTests:
    def test_at_least_one_tree_is_required(self) -> None:
        assert problem(farm(trees=DELETE)).startswith("trees: missing")

    @pytest.mark.parametrize(
        "url",
        [
            "https://git.FreeBSD.org/ports.git",
            "ssh://anongit@git.example.org/ports.git",
            "git://git.example.org/ports",
            "file:///srv/git/ports.git",
            "git@github.com:freebsd/freebsd-ports.git",
            "/srv/git/ports",
        ],
    )
    def test_git_urls_are_accepted(self, url: str) -> None:
        assert parse_farm(farm(trees__0__url=url)).trees[0].url == url

    @pytest.mark.parametrize(
        "url",
        [
            "--upload-pack=touch /tmp/x",
            "ext::sh -c touch% /tmp/x",
            "ports",
            "https://",
            "file://host/srv/ports",
            "ftp://example.org/ports",
        ],
    )
    def test_other_urls_are_refused(self, url: str) -> None:
        assert "is not a git URL" in problem(farm(trees__0__url=url))

    def test_a_password_in_a_url_is_refused_and_masked(self) -> None:
        message = problem(farm(trees__0__url="https://bob:t0ken@git.example.org/p.git"))
        assert "carries a password" in message and "t0ken" not in message

    def test_branch_is_validated(self) -> None:
        assert problem(farm(trees__0__branch="a..b")).startswith("trees[0].branch: invalid branch")

    def test_tree_names_are_unique(self) -> None:
        tree = {"name": "default", "url": "/srv/ports"}
        assert problem(farm(trees=[tree, tree])).startswith("trees[1].name: 'default' repeats")


class SetTests:
    def test_a_default_set_exists_implicitly(self) -> None:
        config = parse_farm(farm(sets=[{"name": "ci"}]))
        assert [s.name for s in config.sets] == ["default", "ci"]

    def test_a_declared_default_set_is_not_doubled(self) -> None:
        config = parse_farm(farm(sets=[{"name": "default", "packages": ["devel/gmake"]}]))
        assert [(s.name, s.packages) for s in config.sets] == [("default", ("devel/gmake",))]

    def test_make_conf_keeps_file_order(self) -> None:
        conf = {"OPTIONS_UNSET": "DOCS", "DEFAULT_VERSIONS+": "ssl=openssl"}
        config = parse_farm(farm(sets=[{"name": "ci", "make_conf": conf}]))
        assert config.sets[1].make_conf == (
            ("OPTIONS_UNSET", "DOCS"),
            ("DEFAULT_VERSIONS+", "ssl=openssl"),
        )

    def test_make_conf_names_are_make_variables(self) -> None:
        message = problem(farm(sets=[{"name": "ci", "make_conf": {"A B": "x"}}]))
        assert message.startswith('sets[0].make_conf."A B": invalid make variable name')

    def test_make_conf_values_may_not_hold_newlines(self) -> None:
        message = problem(farm(sets=[{"name": "ci", "make_conf": {"A": "x\n.error"}}]))
        assert "control character" in message

    def test_packages_are_port_origins(self) -> None:
        message = problem(farm(sets=[{"name": "ci", "packages": ["devel/git@lite", "git"]}]))
        assert message.startswith("sets[0].packages[1]: invalid port origin")

    def test_set_names_are_unique(self) -> None:
        assert "repeats" in problem(farm(sets=[{"name": "ci"}, {"name": "ci"}]))


class PublishTests:
    def test_keep_is_at_least_one(self) -> None:
        assert problem(farm(publish__keep=0)).startswith("publish.keep:")
        assert "expected an integer >= 2" in problem(farm(publish__keep=1))

    def test_root_may_not_contain_the_state_dir(self) -> None:
        message = problem(farm(publish__root="/var/lib"))
        assert message.startswith("publish.root: '/var/lib' contains farm.state_dir")


class SigningTests:
    def test_freebsd_farms_must_sign(self) -> None:
        assert problem(farm(FREEBSD, signing=DELETE)).startswith("signing: missing")

    def test_key_file_and_command_are_exclusive(self) -> None:
        signing = {"key_file": "/k", "command": ["/usr/local/bin/sign"]}
        assert "expected exactly one" in problem(farm(signing=signing))

    def test_command_is_kept_as_argv(self) -> None:
        argv = ["ssh", "signer@sign.example.org", "/usr/local/bin/sign-pkg"]
        signing = parse_farm(farm(FREEBSD, signing={"command": argv})).signing
        assert (signing.key_file, signing.command) == (None, tuple(argv))

    @pytest.mark.parametrize("word", ["a;b", "$(id)", "two words", "`id`"])
    def test_command_words_may_not_hold_shell_syntax(self, word: str) -> None:
        message = problem(farm(signing={"command": ["/bin/sign", word]}))
        assert message.startswith("signing.command[1]:")

    @pytest.mark.parametrize("argv", [[], ["-x"]])
    def test_command_must_name_a_program(self, argv: list[str]) -> None:
        assert "names no program" in problem(farm(signing={"command": argv}))

    def test_key_file_may_not_be_published(self) -> None:
        signing = {"key_file": "/var/lib/jailfarm/repo/repo.key"}
        assert "nginx would serve the private key" in problem(farm(signing=signing))


class WebTests:
    def users(self, web: dict[str, object] | None = None, **user: object) -> dict[str, object]:
        """MINIMAL with auth = 'users', one user 'ops' (changed by `user`) and `web` keys."""
        entry = {"name": "ops", "password_hash": OPS_HASH, **user}
        return farm(web={"auth": "users", "users": [entry], **(web or {})})

    def test_users_are_parsed_and_their_hash_is_not_in_repr(self) -> None:
        web = parse_farm(self.users(role="admin")).web
        assert (web.users[0].name, web.users[0].role) == ("ops", "admin")
        assert OPS_HASH not in repr(web)

    def test_port_range(self) -> None:
        assert "from 1 to 65535" in problem(farm(web__port=70000))

    def test_default_url_follows_the_port(self) -> None:
        assert parse_farm(farm(web__port=8011)).web.url == "http://localhost:8011/"

    @pytest.mark.parametrize(
        "url", ["http://ci.example.org/buildbot", "ftp://ci/", "ci.example.org/", "http://u:p@h/"]
    )
    def test_url_must_be_http_and_end_with_a_slash(self, url: str) -> None:
        assert problem(farm(web__url=url)).startswith("web.url:")

    def test_bind_is_an_ip_address(self) -> None:
        assert "not an IP address" in problem(farm(web__bind="localhost"))

    def test_open_bind_needs_authentication(self) -> None:
        assert problem(farm(web__bind="0.0.0.0")).startswith("web.bind: '0.0.0.0'")
        assert parse_farm(self.users({"bind": "0.0.0.0"})).web.bind == "0.0.0.0"

    def test_auth_users_needs_users(self) -> None:
        assert problem(farm(web__auth="users")).startswith("web.auth: 'users' with 0 user(s)")

    def test_users_need_auth_users(self) -> None:
        assert problem(self.users({"auth": "none"})).startswith("web.auth: 'none' with 1 user(s)")

    def test_plaintext_password_is_refused_without_echoing_it(self) -> None:
        message = problem(self.users(password_hash="correct horse"))
        assert "plaintext" in message and "correct horse" not in message

    def test_unsupported_hash_is_refused(self) -> None:
        bcrypt = "$2b$12$" + "a" * 53
        assert "unsupported hash" in problem(self.users(password_hash=bcrypt))

    def test_weak_iteration_count_is_refused(self) -> None:
        weak = hash_password("pw", salt="s", iterations=1000)
        assert "1000 iterations" in problem(self.users(password_hash=weak))

    def test_role_is_one_of_three(self) -> None:
        assert "expected one of 'viewer', 'ops', 'admin'" in problem(self.users(role="root"))

    def test_user_names_are_unique(self) -> None:
        user = {"name": "ops", "password_hash": OPS_HASH}
        data = farm(web={"auth": "users", "users": [user, user]})
        assert problem(data).startswith("web.users[1].name: 'ops' repeats")

    def test_web_port_may_not_be_the_worker_port(self) -> None:
        assert "is also workers.pb_port" in problem(farm(web__port=9000, workers__pb_port=9000))


class DatabaseTests:
    def test_postgresql_with_psycopg2_is_accepted_and_masked(self) -> None:
        url = "postgresql+psycopg2://bb:s3cret@db.example.org:5432/buildbot"
        database = parse_farm(farm(database__url=url)).database
        assert database.url.reveal() == url
        assert database.display_url == "postgresql+psycopg2://bb:***@db.example.org:5432/buildbot"
        assert "s3cret" not in repr(database) and "s3cret" not in str(database.url)

    def test_bare_postgresql_is_refused_with_the_driver_hint(self) -> None:
        message = problem(farm(database__url="postgresql://bb:s3cret@db/buildbot"))
        assert "postgresql+psycopg2://" in message and "s3cret" not in message

    @pytest.mark.parametrize(
        "url",
        [
            "mysql://bb:s3cret@db/bb",
            "sqlite://",
            "postgresql+psycopg2://bb:s3cret@db/",
            "postgresql+psycopg2://bb:s3cret@db:99999/bb",
            "postgresql+psycopg2://bb:s3cret@db:port/bb",
        ],
    )
    def test_unsupported_urls_are_refused_without_the_password(self, url: str) -> None:
        message = problem(farm(database__url=url))
        assert "not a supported database URL" in message and "s3cret" not in message

    def test_a_password_with_an_at_sign_is_still_masked(self) -> None:
        message = problem(farm(database__url="mysql://bb:p@ss@db/bb"))
        assert "p@ss" not in message and "ss@db" not in message

    def test_absolute_sqlite_path_is_accepted(self) -> None:
        url = "sqlite:////var/db/jailfarm/state.sqlite"
        assert parse_farm(farm(database__url=url)).database.url.reveal() == url


class PasswordTests:
    def test_hash_verifies_its_password_only(self) -> None:
        encoded = hash_password("s3cret", iterations=1000)
        assert verify_password("s3cret", encoded)
        assert not verify_password("s3cret!", encoded)

    def test_hash_uses_the_django_pbkdf2_format(self) -> None:
        # Django's PBKDF2PasswordHasher output for ("password", "seasalt", 1000 iterations).
        assert hash_password("password", salt="seasalt", iterations=1000) == (
            "pbkdf2_sha256$1000$seasalt$"
            + base64.b64encode(
                hashlib.pbkdf2_hmac("sha256", b"password", b"seasalt", 1000)
            ).decode()
        )

    def test_malformed_hash_never_verifies(self) -> None:
        assert not verify_password("x", "x")

    def test_salt_may_not_hold_a_dollar(self) -> None:
        with pytest.raises(ValueError, match="salt"):
            hash_password("x", salt="a$b")

    def test_random_salts_differ(self) -> None:
        assert hash_password("x", iterations=1000) != hash_password("x", iterations=1000)


class SizeTests:
    @pytest.mark.parametrize(
        ("text", "size"),
        [("0", 0), ("512", 512), ("1K", 1024), ("512M", 512 << 20), ("2g", 2 << 30),
         ("1T", 1 << 40), (" 3 G ", 3 << 30), (4096, 4096)],
    )  # fmt: skip
    def test_sizes_parse_to_bytes(self, text: str | int, size: int) -> None:
        assert parse_size(text) == size

    @pytest.mark.parametrize("text", ["12Q", "1.5G", "-1", "", "G", "2GB"])
    def test_other_text_is_not_a_size(self, text: str) -> None:
        with pytest.raises(ConfigError, match="is not a size"):
            parse_size(text)

    def test_negative_and_boolean_byte_counts_are_not_sizes(self) -> None:
        for value in (-1, True):
            with pytest.raises(ConfigError):
                parse_size(value)

    @given(st.integers(min_value=0, max_value=1 << 60))
    def test_format_size_round_trips(self, n: int) -> None:
        assert parse_size(format_size(n)) == n

    @given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from("KMGTkmgt"))
    def test_units_are_powers_of_1024(self, n: int, unit: str) -> None:
        assert parse_size(f"{n}{unit}") == n * 1024 ** ("KMGT".index(unit.upper()) + 1)


# Name fields and the rule each must follow; a value passes parse_farm iff the rule passes.
NAME_FIELDS = [
    ("farm__name", cs.FARM_NAME),
    ("farm__prefix", cs.PREFIX),
    ("poudriere__jails__0__name", names.POUDRIERE_JAIL),
    ("trees__0__name", names.TREE),
    ("trees__0__branch", names.BRANCH),
]
NAMEISH = st.text(alphabet="abzAZ09_-./@{} \n", max_size=40) | st.text(max_size=12)


def _rule_passes(rule: names.NameRule, value: str) -> bool:
    return len(value) <= rule.max_len and rule.pattern.fullmatch(value) is not None


class NameFieldTests:
    @pytest.mark.parametrize(("path", "rule"), NAME_FIELDS)
    @given(value=NAMEISH)
    def test_name_fields_pass_only_values_their_rule_accepts(
        self, path: str, rule: names.NameRule, value: str
    ) -> None:
        data = farm(**{path: value})
        if _rule_passes(rule, value):
            parse_farm(data)
        else:
            assert problem(data).startswith(path.replace("__0__", "[0].").replace("__", ".") + ":")

    @given(value=NAMEISH)
    def test_set_names_pass_only_values_the_set_rule_accepts(self, value: str) -> None:
        data = farm(sets=[{"name": value}])
        if _rule_passes(names.SET, value):
            assert value in [s.name for s in parse_farm(data).sets]
        else:
            assert problem(data).startswith("sets[0].name:")

    @given(value=NAMEISH)
    def test_origins_pass_only_values_the_origin_rule_accepts(self, value: str) -> None:
        data = farm(sets=[{"name": "ci", "packages": [value]}])
        if _rule_passes(names.ORIGIN, value):
            assert parse_farm(data).sets[1].packages == (value,)
        else:
            assert problem(data).startswith("sets[0].packages[0]:")


def test_remote_jail_hosts_need_a_master_address_they_can_reach() -> None:
    data = {
        "farm": {"platform": "linux-dev"},
        "zfs": {"pool": "jailfarm", "root": "jailfarm/farm"},
        "jail_hosts": [{"name": "local"}, {"name": "b2", "ssh": "b2.example.org"}],
        "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
        "trees": [{"name": "default", "url": "/srv/ports"}],
    }
    with pytest.raises(ConfigError) as info:
        parse_farm(data)
    assert info.value.problems == [
        "workers.master_address: '127.0.0.1' (from web.bind) cannot be reached from the remote "
        "jail host(s) b2; expected an address of the master that those hosts can connect to"
    ]
    cfg = parse_farm({**data, "workers": {"master_address": "10.1.2.3"}})
    assert cfg.workers.master_address == "10.1.2.3"


def test_poudriere_result_policy() -> None:
    data = {
        "farm": {"platform": "linux-dev"},
        "zfs": {"pool": "jailfarm", "root": "jailfarm/farm"},
        "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
        "trees": [{"name": "default", "url": "/srv/ports"}],
    }
    assert parse_farm(data).on_port_failure == "failure"
    data["poudriere"]["on_port_failure"] = "warnings"  # type: ignore[index]
    assert parse_farm(data).on_port_failure == "warnings"
    data["poudriere"]["on_port_failure"] = "ignore"  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        parse_farm(data)
    assert info.value.problems[0].startswith("poudriere.on_port_failure: 'ignore'")


class NginxTests:
    def test_linux_dev_defaults(self) -> None:
        config = parse_farm(MINIMAL)
        n = config.nginx
        assert (n.bind, n.port, n.server_name) == ("127.0.0.1", 8080, "localhost")
        assert (n.tls_cert, n.tls_key, n.htpasswd, n.protect_packages) == (
            None,
            None,
            None,
            False,
        )
        assert not n.tls
        assert config.publish.logs == "/var/lib/jailfarm/logs/bulk"

    def test_freebsd_defaults(self) -> None:
        config = parse_farm(FREEBSD)
        assert (config.nginx.bind, config.nginx.port) == ("0.0.0.0", 80)
        assert config.publish.logs == "/var/db/jailfarm/logs/bulk"

    def test_example_farm_serves_buildbot_where_web_url_says(self) -> None:
        config = load_farm(ROOT / "examples" / "farm.toml")
        assert config.nginx.port == 8080
        assert config.web.url == "http://localhost:8080/buildbot/"

    def test_every_key_is_read(self) -> None:
        nginx = {
            "bind": "10.0.0.5",
            "port": 8443,
            "server_name": "ci.example.org",
            "tls_cert": "/etc/jf/tls.crt",
            "tls_key": "/etc/jf/tls.key",
            "htpasswd": "/etc/jf/htpasswd",
            "protect_packages": True,
        }
        n = parse_farm(farm(nginx=nginx)).nginx
        assert (n.bind, n.port, n.server_name, n.tls) == ("10.0.0.5", 8443, "ci.example.org", True)
        assert (n.tls_cert, n.tls_key) == ("/etc/jf/tls.crt", "/etc/jf/tls.key")
        assert (n.htpasswd, n.protect_packages) == ("/etc/jf/htpasswd", True)

    def test_tls_files_need_not_exist_when_the_config_is_checked(self) -> None:
        nginx = {"tls_cert": "/nonexistent/tls.crt", "tls_key": "/nonexistent/tls.key"}
        assert parse_farm(farm(nginx=nginx)).nginx.tls

    @pytest.mark.parametrize(
        ("given", "missing"), [("tls_cert", "tls_key"), ("tls_key", "tls_cert")]
    )
    def test_tls_needs_certificate_and_key(self, given: str, missing: str) -> None:
        message = problem(farm(nginx={given: "/etc/jf/x"}))
        assert (
            message == f"nginx.{missing}: missing; nginx.{given} is set: expected both or neither"
        )

    def test_protect_packages_needs_htpasswd(self) -> None:
        message = problem(farm(nginx__protect_packages=True))
        assert message.startswith("nginx.protect_packages: true without nginx.htpasswd")

    @pytest.mark.parametrize("key", ["tls_cert", "htpasswd"])
    @pytest.mark.parametrize("path", ["/etc/jf/a;b", "/etc/jf/{x}", "/etc/$jf", "/etc/'jf'"])
    def test_paths_nginx_would_misread_are_refused(self, key: str, path: str) -> None:
        data = farm(nginx={key: path, "tls_key": "/etc/jf/k"} if key == "tls_cert" else {key: path})
        message = problem(data)
        assert message.startswith(f"nginx.{key}: {path!r} contains ")
        assert "which nginx's configuration cannot carry" in message

    def test_bind_and_server_name_are_checked(self) -> None:
        found = problems(farm(nginx={"bind": "localhost", "server_name": "ci example"}))
        assert [p.split(":")[0] for p in found] == ["nginx.bind", "nginx.server_name"]

    def test_unknown_key_gets_a_suggestion(self) -> None:
        assert "did you mean 'htpasswd'?" in problem(farm(nginx__htpassword="/etc/jf/h"))

    @pytest.mark.parametrize("key", ["htpasswd", "tls_key"])
    @pytest.mark.parametrize("where", ["/var/lib/jailfarm/repo", "/var/lib/jailfarm/logs/bulk"])
    def test_secrets_may_not_be_served(self, key: str, where: str) -> None:
        nginx = {key: f"{where}/secret"}
        if key == "tls_key":
            nginx["tls_cert"] = "/etc/jf/tls.crt"
        message = problem(farm(nginx=nginx))
        assert message.startswith(f"nginx.{key}: '{where}/secret' is inside publish.")
        assert "(nginx would serve it)" in message

    def test_port_may_not_be_the_web_ui_port(self) -> None:
        message = problem(farm(nginx__port=8010))
        assert message == "nginx.port: 8010 is also web.port; expected a different port"

    def test_port_may_not_be_the_worker_port(self) -> None:
        message = problem(farm(nginx__port=9989))
        assert message == "nginx.port: 9989 is also workers.pb_port; expected a different port"

    def test_same_port_on_other_addresses_is_allowed(self) -> None:
        data = farm(nginx={"bind": "127.0.0.2", "port": 8010})
        assert parse_farm(data).nginx.port == 8010
        assert problem(farm(nginx={"bind": "0.0.0.0", "port": 8010})).startswith("nginx.port:")

    @pytest.mark.parametrize(
        "url",
        [
            "http://localhost:8080/",
            "http://127.0.0.1:8080/ui/",
            "http://localhost:8080/buildbot/sub/",
        ],
    )
    def test_web_url_through_nginx_must_be_its_buildbot_location(self, url: str) -> None:
        message = problem(farm(web__url=url))
        assert message.startswith(f"web.url: {url!r} points at nginx")
        assert message.endswith("/buildbot/'")

    def test_web_url_through_nginx_uses_its_scheme(self) -> None:
        tls = {"tls_cert": "/etc/jf/c", "tls_key": "/etc/jf/k", "port": 443}
        assert problem(farm(nginx=tls, web__url="http://localhost:443/buildbot/")).endswith(
            "expected 'https://localhost:443/buildbot/'"
        )
        assert parse_farm(farm(nginx=tls, web__url="https://localhost/buildbot/")).nginx.tls
        with_server = {**tls, "server_name": "ci.example.org"}
        assert problem(farm(nginx=with_server, web__url="https://ci.example.org/")).endswith(
            "expected 'https://ci.example.org/buildbot/'"
        )

    def test_web_url_elsewhere_is_not_judged(self) -> None:
        for url in ("http://localhost:8010/", "https://ci.example.org/", "http://other:8080/"):
            assert parse_farm(farm(web__url=url)).web.url == url

    def test_nginx_problems_come_with_the_others(self) -> None:
        data = farm(
            zfs__reserve="12Q",
            nginx={"port": 0, "tls_cert": "/c"},
            publish__logs="logs",
        )
        keys = sorted(p.split(":")[0] for p in problems(data))
        assert keys == ["nginx.port", "nginx.tls_key", "publish.logs", "zfs.reserve"]


class PublishLogsTests:
    def test_logs_root_is_read(self) -> None:
        assert parse_farm(farm(publish__logs="/srv/logs/bulk")).publish.logs == "/srv/logs/bulk"

    def test_logs_root_may_not_contain_the_state_dir(self) -> None:
        message = problem(farm(publish__logs="/var/lib"))
        assert message.startswith("publish.logs: '/var/lib' contains farm.state_dir")

    def test_logs_root_must_be_a_path_nginx_can_carry(self) -> None:
        assert "not an absolute path" in problem(farm(publish__logs="logs/bulk"))
        assert "cannot carry" in problem(farm(publish__logs="/srv/logs;bulk"))

    def test_signing_key_may_not_be_in_the_logs(self) -> None:
        data = farm(publish__logs="/srv/logs", signing__key_file="/srv/logs/repo.key")
        assert "nginx would serve the private key at /data" in problem(data)

    def test_publish_root_must_be_a_path_nginx_can_carry(self) -> None:
        message = problem(farm(publish__root="/srv/repo$x"))
        assert message.startswith("publish.root: '/srv/repo$x' contains '$'")

    def test_linux_dev_state_dir_must_be_a_path_nginx_can_carry(self) -> None:
        message = problem(farm(farm__state_dir="/srv/j{f}"))
        assert message.startswith("farm.state_dir: '/srv/j{f}' contains '{}'")


def test_publish_catalogue_pkg_is_freebsds_pkg_repo_only() -> None:
    assert parse_farm(farm(FREEBSD, publish__catalogue="pkg")).publish.catalogue == "pkg"
    assert parse_farm(farm(FREEBSD)).publish.catalogue == "jailfarm"
    assert "only valid with platform 'freebsd'" in problem(farm(publish__catalogue="pkg"))
    assert "expected one of" in problem(farm(FREEBSD, publish__catalogue="pkg-repo"))
