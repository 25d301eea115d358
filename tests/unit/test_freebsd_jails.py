"""FreeBSD jails without FreeBSD: jail parameter quoting and rendering (golden jail.conf files),
profiles, command builders, jls parsers, and `FreeBsdJails` driven through `FakeRunner`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jailfarm.cmd import Cmd, Result, Secret
from jailfarm.errors import CommandFailed, InvalidName, JailError, ParseError
from jailfarm.host.base import CAP_NESTED, CAP_RCTL, CAP_VNET, CAP_ZFS_JAILED, JailSpec, Mount
from jailfarm.host.freebsd import (
    FreeBsdJails,
    jexec_cmd,
    jls_cmd,
    jls_params_cmd,
    parse_jls_json,
    write_file_cmd,
)
from jailfarm.host.jailconf import (
    Param,
    jail_create_argv,
    jail_params,
    param_mismatches,
    parse_jls_params,
    quote,
    render_jail_conf,
)
from jailfarm.runner import FakeRunner
from tests.support import resolve

T = TypeVar("T")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

WORKER = JailSpec(
    name="w0",
    path="/j/w0",
    hostname="w0.farm.example",
    profile="worker",
    children_max=10,
    mounts=(
        Mount("/usr/ports", "/usr/ports"),
        Mount("/var/cache/distfiles", "/distfiles", read_only=False),
    ),
    delegated_datasets=("tank/jf/w0-data",),
    devfs_ruleset=5,
    rctl=("vmemoryuse:deny=8g", "pcpu:deny=400"),
)
SERVICE = JailSpec(
    name="master",
    path="/j/master",
    hostname="master.farm.example",
    ip4=("lo1|10.17.0.2",),
    ip6=("lo1|fd00:17::2/64",),
    mounts=(Mount("/var/db/jailfarm/keys/pub", "/usr/local/etc/pkg/keys"),),
    rctl=("vmemoryuse:deny=2g",),
)
CONF = "/var/run/jailfarm/w0.conf"


def fixture(*parts: str) -> str:
    return FIXTURES.joinpath(*parts).read_text()


def golden(name: str) -> str:
    """A golden jail.conf without its provenance header (the lines before the first blank)."""
    header, _, body = fixture("jailconf", name).partition("\n\n")
    assert all(line.startswith("#") for line in header.splitlines())
    return body


# ------------------------------------------------------------------------------------------------
# A reference reader for the jail.conf subset we emit, written from jaillex.l (freebsd-src
# usr.sbin/jail): bare words, double-quoted strings with backslash escapes, '#' comments. An
# unescaped '$' in a double-quoted string would be a variable, so it is an error here.

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\n]+)|(?P<comment>\#[^\n]*)|(?P<pleq>\+=)|(?P<punct>[;={}])
    |(?P<word>[A-Za-z0-9_!%&()\-.:<>?@\[\]^`|~]+)|(?P<dq>"(?:[^"\\]|\\[\s\S])*")""",
    re.X,
)


class ConfSyntaxError(Exception):
    pass


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        char = body[i]
        if char == "$":
            raise ConfSyntaxError(f"unescaped $ would expand a variable: {body!r}")
        if char == "\\":
            if body[i + 1] not in '\\"$':
                raise ConfSyntaxError(f"escape we never emit: {body[i : i + 2]!r}")
            char, i = body[i + 1], i + 1
        out.append(char)
        i += 1
    return "".join(out)


def tokens(text: str) -> list[tuple[str, str]]:
    result, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ConfSyntaxError(f"unexpected {text[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        if kind == "dq":
            result.append(("str", _unescape(match.group()[1:-1])))
        elif kind == "word":
            result.append(("str", match.group()))
        elif kind not in ("space", "comment"):
            result.append(("op", match.group()))
        pos = match.end()
    return result


def parse_conf(text: str) -> tuple[str, list[tuple[str, str, str | None]]]:
    """(jail name, [(param, "flag"|"="|"+=", value)]) of a one-block jail.conf."""
    toks = tokens(text)
    if len(toks) < 3 or toks[1] != ("op", "{") or toks[-1] != ("op", "}"):
        raise ConfSyntaxError("expected `name { ... }`")
    statements: list[tuple[str, str, str | None]] = []
    body, i = toks[2:-1], 0
    while i < len(body):
        kind, name = body[i]
        if kind != "str":
            raise ConfSyntaxError(f"expected a parameter name, got {name!r}")
        if body[i + 1] == ("op", ";"):
            statements.append((name, "flag", None))
            i += 2
        elif body[i + 1] in (("op", "="), ("op", "+=")) and body[i + 3] == ("op", ";"):
            statements.append((name, body[i + 1][1], body[i + 2][1]))
            i += 4
        else:
            raise ConfSyntaxError(f"bad statement for {name!r}")
    return toks[0][1], statements


def by_name(text: str) -> dict[str, list[tuple[str, str | None]]]:
    table: dict[str, list[tuple[str, str | None]]] = {}
    for name, op, value in parse_conf(text)[1]:
        table.setdefault(name, []).append((op, value))
    return table


# ------------------------------------------------------------------------------------------------
# Quoting and rendering


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("plain", "plain"),
        ("w0.farm-1_x", "w0.farm-1_x"),
        ("10", "10"),
        ("", '""'),
        ("two words", '"two words"'),
        ("$HOME/x", '"\\$HOME/x"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("lo1|10.0.0.1", '"lo1|10.0.0.1"'),
        ("a:b", '"a:b"'),
        ("/j/w0", '"/j/w0"'),
        ("${host.hostname}", '"\\${host.hostname}"'),
    ],
)
def test_quote_quotes_everything_but_plain_words(value: str, rendered: str) -> None:
    assert quote(value) == rendered
    assert parse_conf(f"j {{ x = {rendered}; }}")[1] == [("x", "=", value)]


@pytest.mark.parametrize("value", ["a\nb", "a\tb", "nul\x00", "cr\r"])
def test_control_characters_are_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        quote(value)
    with pytest.raises(ValueError, match="control character"):
        Param("exec.start", (value,))


def test_vnet_interface_is_never_quoted() -> None:
    conf = render_jail_conf(
        "j", [Param("vnet", "new"), Param("vnet.interface", ("e0b_j", "e1b_j"))]
    )
    assert "    vnet.interface += e0b_j;\n    vnet.interface += e1b_j;\n" in conf
    with pytest.raises(ValueError, match="never quoted"):
        Param("vnet.interface", ("e0b j",))


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("Bad", True, ValueError),
        ("name", "x", ValueError),  # implied by the block label (jail(8) config.c)
        ("allow.mount", False, ValueError),
        ("exec.start", (), TypeError),
        ("exec.start", ("ok", 3), TypeError),
        ("x", 1.5, TypeError),
    ],
)
def test_param_rejects_bad_names_and_values(name: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        Param(name, value)


def test_render_rejects_a_parameter_given_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        render_jail_conf("j", [Param("persist", True), Param("persist", True)])


_PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)


@given(value=_PRINTABLE, more=st.lists(_PRINTABLE, min_size=1, max_size=3))
def test_rendered_values_read_back_unchanged(value: str, more: list[str]) -> None:
    conf = render_jail_conf("j", [Param("osrelease", value), Param("exec.start", tuple(more))])
    name, statements = parse_conf(conf)
    assert name == "j"
    assert statements == [("osrelease", "=", value)] + [("exec.start", "+=", v) for v in more]


# ------------------------------------------------------------------------------------------------
# Profiles and golden files


def test_worker_conf_matches_golden() -> None:
    assert FreeBsdJails(FakeRunner()).render(WORKER) == golden("worker.conf")


def test_service_conf_matches_golden() -> None:
    assert FreeBsdJails(FakeRunner()).render(SERVICE) == golden("service.conf")


def test_worker_profile_has_what_poudriere_checks() -> None:
    conf = by_name(golden("worker.conf"))
    assert conf["enforce_statfs"] == [("=", "1")]
    assert conf["children.max"] == [("=", "10")]
    for flag in (
        "allow.mount",
        "allow.mount.devfs",
        "allow.mount.nullfs",
        "allow.mount.tmpfs",
        "allow.mount.procfs",
        "allow.mount.zfs",
        "allow.raw_sockets",
        "allow.socket_af",
        "allow.chflags",
        "allow.sysvipc",
        "allow.mlock",
        "mount.devfs",
        "mount.fdescfs",
        "persist",
        "exec.clean",
        "allow.noset_hostname",
    ):
        assert conf[flag] == [("flag", None)], flag
    assert [v for _, v in conf["sysvmsg"]] == ["new"]
    assert conf["devfs_ruleset"] != [("=", "0")]
    assert conf["exec.timeout"] == [("=", "90")]
    assert conf["stop.timeout"] == [("=", "30")]
    assert conf["exec.consolelog"] == [("=", "/var/log/jailfarm/w0.console")]
    assert conf["exec.created"] == [
        ("+=", "/sbin/zfs set jailed=on tank/jf/w0-data"),
        ("+=", "/sbin/zfs jail w0 tank/jf/w0-data"),
        ("+=", "/usr/bin/rctl -a jail:w0:vmemoryuse:deny=8g"),
        ("+=", "/usr/bin/rctl -a jail:w0:pcpu:deny=400"),
    ]
    assert conf["exec.poststop"] == [("+=", "/usr/bin/rctl -r jail:w0")]
    assert conf["exec.start"] == [("+=", "/sbin/zfs mount -a"), ("+=", "/bin/sh /etc/rc")]
    assert conf["mount"] == [
        ("+=", "/usr/ports /j/w0/usr/ports nullfs ro 0 0"),
        ("+=", "/var/cache/distfiles /j/w0/distfiles nullfs rw 0 0"),
    ]
    assert conf["ip4"] == [("=", "inherit")]


def test_service_profile_is_restricted() -> None:
    conf = by_name(golden("service.conf"))
    assert conf["children.max"] == [("=", "0")]
    assert conf["enforce_statfs"] == [("=", "2")]
    assert not [name for name in conf if name.startswith("allow.") and "mount" in name]
    assert {conf[k][0][1] for k in ("sysvmsg", "sysvsem", "sysvshm")} == {"disable"}
    assert "exec.timeout" in conf and "stop.timeout" in conf
    assert conf["ip4.addr"] == [("+=", "lo1|10.17.0.2")]
    assert "allow.sysvipc" not in conf and "ip4" not in conf


def test_worker_without_datasets_gets_no_zfs_privilege() -> None:
    spec = dataclasses.replace(WORKER, delegated_datasets=(), rctl=())
    conf = by_name(render_jail_conf("w0", jail_params(spec)))
    assert "allow.mount.zfs" not in conf and "exec.created" not in conf
    assert conf["exec.start"] == [("+=", "/bin/sh /etc/rc")]


def test_private_network_is_vnet_without_addresses() -> None:
    conf = by_name(
        render_jail_conf("w0", jail_params(dataclasses.replace(WORKER, private_network=True)))
    )
    assert conf["vnet"] == [("=", "new")]
    assert not {"ip4", "ip6", "ip4.addr", "ip6.addr"} & set(conf)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"children_max": 2}, "poudriere needs"),
        ({"devfs_ruleset": 0}, "devfs_ruleset must be > 0"),
        ({"mounts": (Mount("usr/ports", "/usr/ports"),)}, "absolute path"),
        ({"mounts": (Mount("/usr/ports", "/usr/../etc"),)}, "components"),
        ({"mounts": (Mount("/usr/my ports", "/usr/ports"),)}, "whitespace"),
        ({"mounts": (Mount("/", "/host"),)}, "below /"),
        ({"rctl": ("vmemoryuse deny 8g",)}, "rctl rule"),
        ({"private_network": True, "ip4": ("10.0.0.5",)}, "vnet jail cannot"),
        ({"ip4": ("10.0.0.300",)}, "is not"),
        ({"ip6": ("10.0.0.3",)}, "is not"),
        ({"ip4": ("10.0.0.3/33",)}, "is not"),
        ({"ip6": ("fd00::3/129",)}, "is not"),
        ({"path": "/j/w0/../etc"}, "components"),
    ],
)
def test_worker_profile_refuses_what_would_fail_later(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        jail_params(dataclasses.replace(WORKER, **change))


def test_addresses_may_name_an_interface_and_a_prefix() -> None:
    spec = dataclasses.replace(SERVICE, ip4=("10.0.0.5", "lo1|10.0.0.6/32"), ip6=("fd00::3/112",))
    conf = by_name(render_jail_conf("master", jail_params(spec)))
    assert conf["ip4.addr"] == [("+=", "10.0.0.5"), ("+=", "lo1|10.0.0.6/32")]
    assert conf["ip6.addr"] == [("+=", "fd00::3/112")]


def test_delegated_dataset_names_are_validated() -> None:
    with pytest.raises(InvalidName):
        jail_params(dataclasses.replace(WORKER, delegated_datasets=("tank/w0;reboot",)))


def test_service_profile_refuses_a_delegated_dataset() -> None:
    with pytest.raises(ValueError, match=r"allow\.mount\.zfs"):
        jail_params(dataclasses.replace(SERVICE, delegated_datasets=("tank/jf/x",)))


# ------------------------------------------------------------------------------------------------
# The command-line form


def test_jail_create_argv_one_element_per_parameter() -> None:
    params = [
        Param("path", "/j/a b"),
        Param("persist", True),
        Param("children.max", 0),
        Param("ip4.addr", ("10.0.0.1", "10.0.0.2")),
        Param("exec.start", ("/bin/sh /etc/rc",)),
    ]
    assert jail_create_argv("a", params) == (
        "jail",
        "-c",
        "name=a",
        "path=/j/a b",
        "persist",
        "children.max=0",
        "ip4.addr=10.0.0.1,10.0.0.2",
        "exec.start=/bin/sh /etc/rc",
    )


def test_jail_create_argv_refuses_several_hook_commands() -> None:
    with pytest.raises(ValueError, match=r"jail\.conf"):
        jail_create_argv("w0", jail_params(WORKER))


# ------------------------------------------------------------------------------------------------
# Command builders


def test_jexec_uses_a_clean_environment_and_passes_env_inside() -> None:
    cmd = jexec_cmd(
        "w0",
        ["poudriere", "bulk"],
        user="builder",
        env={"B": "2", "TOKEN": Secret("s3")},
        timeout=60,
    )
    assert cmd.revealed_argv() == [
        "jexec", "-l", "-U", "builder", "w0",
        "/usr/bin/env", "B=2", "TOKEN=s3", "poudriere", "bulk",
    ]  # fmt: skip
    # The whole K=V word is a Secret, so it logs as *** (as SshRunner does).
    assert "s3" not in str(cmd) and "/usr/bin/env B=2 *** poudriere" in str(cmd)
    assert cmd.timeout == 60 and not cmd.env


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": "w0", "argv": []}, ValueError),
        ({"name": "w0", "argv": ["id"], "user": "Root"}, InvalidName),
        ({"name": "-w0", "argv": ["id"]}, InvalidName),
        ({"name": "w0", "argv": ["A=1"], "env": {"B": "2"}}, ValueError),
        ({"name": "w0", "argv": ["id"], "env": {"B-C": "2"}}, ValueError),
    ],
)
def test_jexec_refuses_bad_input(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        jexec_cmd(**kwargs)


def test_jls_commands_put_options_before_the_jail() -> None:
    assert jls_cmd().argv == ("jls", "--libxo", "json", "-v")
    assert jls_cmd("w0").argv == ("jls", "--libxo", "json", "-v", "-j", "w0")
    assert jls_params_cmd("w0").argv == ("jls", "-s", "-j", "w0")


def test_conf_is_written_through_stdin_not_a_shell() -> None:
    cmd = write_file_cmd(CONF, "w0 {\n}\n")
    assert cmd.argv == ("tee", CONF) and cmd.stdin == b"w0 {\n}\n"


# ------------------------------------------------------------------------------------------------
# jls parsers


def test_parse_jls_json_reads_verbose_output() -> None:
    (jail,) = parse_jls_json(fixture("jls", "v_one_jail.json"))
    assert (jail.name, jail.jid, jail.path, jail.hostname) == ("w0", 3, "/j/w0", "w0.farm.example")
    assert jail.extra == {"state": "ACTIVE", "cpusetid": "4", "ipv4_addrs": "", "ipv6_addrs": ""}


def test_parse_jls_json_reads_many_and_none() -> None:
    jails = parse_jls_json(fixture("jls", "v_mixed.json"))
    assert [(j.name, j.jid) for j in jails] == [
        ("master", 2), ("w0", 3), ("w0.142amd64-default-job-01", 7), ("www", 9),
    ]  # fmt: skip
    assert jails[0].extra["ipv4_addrs"] == "10.17.0.2"
    assert parse_jls_json(fixture("jls", "v_empty.json")) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bad_truncated.json", "not JSON"),
        ("bad_human_table.txt", "not JSON"),
        ("bad_default_mode.json", "no 'name' \\(run jls with -v\\)"),
        ("bad_jid_string.json", "'jid' is not int"),
        ("bad_version.json", "__version '2'"),
    ],
)
def test_parse_jls_json_refuses_unexpected_output(name: str, message: str) -> None:
    with pytest.raises(ParseError, match=message) as raised:
        parse_jls_json(fixture("jls", name))
    assert raised.value.tool == "jls"


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"__version": "2", "jail-information": {"jail": {}}}',
        '{"__version": "2", "jail-information": {"jail": [3]}}',
        '{"__version": "2", "jail-information": {"jail": '
        '[{"jid": true, "name": "a", "hostname": "", "path": "/"}]}}',
        '{"__version": "2", "jail-information": {"jail": '
        '[{"jid": 1, "name": "a", "hostname": "", "path": "/", "x": {"y": 1}}]}}',
    ],
)
def test_parse_jls_json_never_returns_partial_data(text: str) -> None:
    with pytest.raises(ParseError):
        parse_jls_json(text)


def test_parse_jls_params_reads_flags_values_and_quotes() -> None:
    params = parse_jls_params(fixture("jls", "s_w0.txt"))
    assert params["enforce_statfs"] == "1"
    assert params["allow.mount.nullfs"] is True
    assert params["allow.mount.fdescfs"] is False  # printed as allow.nomount.fdescfs
    assert params["allow.set_hostname"] is False
    assert params["host.domainname"] == ""
    assert parse_jls_params("""a="x y" b='say "hi"' noc d.noe""") == {
        "a": "x y", "b": 'say "hi"', "c": False, "d.e": False,
    }  # fmt: skip


@pytest.mark.parametrize("text", ["", "a=1\nb=2", 'a="unterminated', "Bad=1"])
def test_parse_jls_params_refuses_unexpected_output(text: str) -> None:
    with pytest.raises(ParseError):
        parse_jls_params(text)


def test_running_worker_matches_its_profile() -> None:
    actual = parse_jls_params(fixture("jls", "s_w0.txt"))
    assert param_mismatches(jail_params(WORKER), actual) == []
    actual["enforce_statfs"] = "2"
    del actual["allow.mount.zfs"]
    assert param_mismatches(jail_params(WORKER), actual) == [
        "enforce_statfs: wanted '1', jls -s reports '2'",
        "allow.mount.zfs: wanted True, jls -s reports None",
    ]


# ------------------------------------------------------------------------------------------------
# FreeBsdJails through FakeRunner

JLS_ALL = ("jls", "--libxo", "json", "-v")
LISTED = fixture("jls", "v_mixed.json")
GONE = fixture("jls", "v_empty.json")


def expect_start(runner: FakeRunner) -> None:
    def conf_is_golden(cmd: Cmd) -> None:
        assert cmd.stdin == golden("worker.conf").encode()

    runner.expect("install", "-d", "-m", "0700", "/var/run/jailfarm", "/var/log/jailfarm")
    runner.expect("tee", CONF, stdout=golden("worker.conf"), check=conf_is_golden)


def test_start_writes_conf_creates_and_reports_the_jail() -> None:
    runner = FakeRunner()
    expect_start(runner)
    runner.expect("jail", "-f", CONF, "-c", "w0", stdout="w0: created\n")
    runner.expect(*JLS_ALL, "-j", "w0", stdout=fixture("jls", "v_one_jail.json"))
    info = resolve(FreeBsdJails(runner).start(WORKER))
    runner.assert_all_commands_ran()
    assert (info.name, info.jid, info.path) == ("w0", 3, "/j/w0")


def test_start_failure_carries_stderr_and_points_to_the_console_log() -> None:
    runner = FakeRunner()
    expect_start(runner)
    runner.expect(
        "jail", "-f", CONF, "-c", "w0", rc=1,
        stderr="jail: w0: exec.created: /sbin/zfs jail w0 tank/jf/w0-data: failed\n",
    )  # fmt: skip
    with pytest.raises(JailError) as raised:
        resolve(FreeBsdJails(runner).start(WORKER))
    runner.assert_all_commands_ran()
    assert "zfs jail w0 tank/jf/w0-data: failed" in str(raised.value)
    assert "/var/log/jailfarm/w0.console" in str(raised.value)


def test_start_fails_if_jls_does_not_show_the_jail() -> None:
    runner = FakeRunner()
    expect_start(runner)
    runner.expect("jail", "-f", CONF, "-c", "w0")
    runner.expect(*JLS_ALL, "-j", "w0", rc=1, stderr='jls: jail "w0" not found\n')
    with pytest.raises(JailError, match="jls does not show it"):
        resolve(FreeBsdJails(runner).start(WORKER))
    runner.assert_all_commands_ran()


def test_start_stops_when_the_conf_cannot_be_written() -> None:
    runner = FakeRunner()
    runner.expect("install", "-d", "-m", "0700", "/var/run/jailfarm", "/var/log/jailfarm")
    runner.expect("tee", CONF, rc=1, stderr="tee: /var/run/jailfarm/w0.conf: Read-only file system")
    with pytest.raises(CommandFailed, match="Read-only"):
        resolve(FreeBsdJails(runner).start(WORKER))
    runner.assert_all_commands_ran()


def test_remove_stops_verifies_and_deletes_the_conf() -> None:
    def bounded(cmd: Cmd) -> None:
        assert cmd.timeout == 120

    runner = FakeRunner()
    runner.expect(*JLS_ALL, stdout=LISTED)
    runner.expect("jail", "-f", CONF, "-r", "w0", stdout="w0: removed\n", check=bounded)
    runner.expect(*JLS_ALL, stdout=GONE)
    runner.expect("rm", "-f", CONF)
    resolve(FreeBsdJails(runner).remove("w0", timeout=120))
    runner.assert_all_commands_ran()


def test_remove_escalates_to_jail_R_and_clears_rctl_rules() -> None:
    runner = FakeRunner()
    runner.expect(*JLS_ALL, stdout=LISTED)
    runner.expect("jail", "-f", CONF, "-r", "w0", rc=1, stderr="jail: w0: exec.stop: timed out\n")
    runner.expect("jail", "-R", "w0")
    runner.expect(*JLS_ALL, stdout=GONE)
    runner.expect(
        "rctl", "-r", "jail:w0", rc=1, stderr="rctl: failed to remove rule: No such process"
    )
    runner.expect("rm", "-f", CONF)
    resolve(FreeBsdJails(runner).remove("w0"))
    runner.assert_all_commands_ran()
    assert runner.calls[1].timeout == 300.0


def test_remove_escalates_when_jail_r_succeeds_but_the_jail_stays() -> None:
    runner = FakeRunner()
    runner.expect(*JLS_ALL, stdout=LISTED)
    runner.expect("jail", "-f", CONF, "-r", "w0")
    runner.expect(*JLS_ALL, stdout=LISTED)
    runner.expect("jail", "-R", "w0")
    runner.expect(*JLS_ALL, stdout=GONE)
    runner.expect("rctl", "-r", "jail:w0")
    runner.expect("rm", "-f", CONF)
    resolve(FreeBsdJails(runner).remove("w0"))
    runner.assert_all_commands_ran()


def test_remove_raises_if_still_listed_after_jail_R() -> None:
    runner = FakeRunner()
    runner.expect(*JLS_ALL, stdout=LISTED)
    runner.expect("jail", "-f", CONF, "-r", "w0", rc=1, stderr="jail: w0: exec.stop: timed out\n")
    runner.expect("jail", "-R", "w0", rc=1, stderr="jail: w0: Device busy\n")
    runner.expect(*JLS_ALL, stdout=LISTED)
    with pytest.raises(JailError) as raised:
        resolve(FreeBsdJails(runner).remove("w0"))
    runner.assert_all_commands_ran()
    assert "still running after jail -r" in str(raised.value)
    assert "Device busy" in str(raised.value) and "timed out" in str(raised.value)


def test_remove_reports_rctl_rules_it_could_not_clear() -> None:
    runner = FakeRunner()
    runner.expect(*JLS_ALL, stdout=LISTED)
    runner.expect("jail", "-f", CONF, "-r", "w0", rc=1)
    runner.expect("jail", "-R", "w0")
    runner.expect(*JLS_ALL, stdout=GONE)
    runner.expect("rctl", "-r", "jail:w0", rc=1, stderr="rctl: Operation not permitted")
    with pytest.raises(JailError, match="rctl rules"):
        resolve(FreeBsdJails(runner).remove("w0"))
    runner.assert_all_commands_ran()


def test_removing_an_absent_jail_only_deletes_the_conf() -> None:
    runner = FakeRunner()
    runner.expect(*JLS_ALL, stdout=GONE)
    runner.expect("rm", "-f", CONF)
    resolve(FreeBsdJails(runner).remove("w0"))
    runner.assert_all_commands_ran()


def test_remove_fails_loudly_when_jls_fails() -> None:
    runner = FakeRunner()
    runner.expect(
        *JLS_ALL, rc=1, stderr="jls: sysctl(security.jail.param): Operation not permitted"
    )
    with pytest.raises(JailError, match="jls failed"):
        resolve(FreeBsdJails(runner).remove("w0"))
    runner.assert_all_commands_ran()


def test_list_returns_only_our_top_level_jails() -> None:
    runner = FakeRunner()
    runner.expect(*JLS_ALL, stdout=LISTED)
    runner.expect(*JLS_ALL, stdout=LISTED)
    # A plain name prefix; w0's build jail (w0.<name>) is never listed.
    assert [j.name for j in resolve(FreeBsdJails(runner, prefix="w").list())] == ["w0", "www"]
    assert [j.name for j in resolve(FreeBsdJails(runner).list())] == ["master", "w0", "www"]
    runner.assert_all_commands_ran()


def test_exec_runs_jexec_and_returns_the_result_whatever_the_exit_code() -> None:
    runner = FakeRunner()
    runner.expect("jexec", "-l", "w0", "freebsd-version", rc=3, stdout="14.1-RELEASE\n")
    result = resolve(FreeBsdJails(runner).exec("w0", ["freebsd-version"]))
    runner.assert_all_commands_ran()
    assert isinstance(result, Result) and result.rc == 3 and result.out == "14.1-RELEASE\n"


def test_verify_compares_jls_s_with_the_profile() -> None:
    runner = FakeRunner()
    runner.expect("jls", "-s", "-j", "w0", stdout=fixture("jls", "s_w0.txt"))
    assert resolve(FreeBsdJails(runner).verify(WORKER)) == []
    runner.assert_all_commands_ran()


def test_start_refuses_a_name_outside_the_farm_prefix() -> None:
    runner = FakeRunner()
    with pytest.raises(ValueError, match="farm prefix"):
        resolve(FreeBsdJails(runner, prefix="jf").start(WORKER))
    assert runner.calls == []


def test_capabilities_and_constructor_checks() -> None:
    jails = FreeBsdJails(FakeRunner())
    assert jails.capabilities == {CAP_ZFS_JAILED, CAP_RCTL, CAP_VNET, CAP_NESTED}
    with pytest.raises(ValueError):
        FreeBsdJails(FakeRunner(), conf_dir="relative")
    with pytest.raises(ValueError):
        FreeBsdJails(FakeRunner(), prefix="W*")
