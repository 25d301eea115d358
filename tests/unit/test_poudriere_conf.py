"""poudriere.conf / make.conf / list file rendering: golden text, sh quoting round trips,
refused keys and combinations (pure). Section numbers: shared/spec/poudriere.md."""

from __future__ import annotations

import shlex
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jailfarm.config import parse_farm
from jailfarm.errors import InvalidName
from jailfarm.poudriere.commands import Target
from jailfarm.poudriere.conf import (
    KEYS,
    EtcFile,
    PoudriereConf,
    etc_files,
    farm_conf,
    make_conf_name,
    make_conf_stack,
    render_list,
    render_make_conf,
    render_poudriere_conf,
    sh_quote,
)
from jailfarm.poudriere.status import parse_version

BASE = PoudriereConf(basefs="/jf/poudriere", zpool="jf", zrootfs="/farm/poudriere")
MASTER = parse_version("poudriere-git-3.4.99")
RELEASE_34 = parse_version("poudriere-git-3.4.8")
FARM = {
    "farm": {"platform": "linux-dev", "name": "demo"},
    "zfs": {"pool": "jailfarm", "root": "jailfarm/farm"},
    "poudriere": {"jails": [{"name": "141amd64", "version": "14.1-RELEASE"}]},
    "trees": [{"name": "default", "url": "https://git.FreeBSD.org/ports.git"}],
    "workers": {"builders": 3},
    "sets": [
        {
            "name": "server",
            "make_conf": {"DEFAULT_VERSIONS+": "ssl=openssl", "OPTIONS_UNSET+": "X11 DOCS"},
            "packages": ["www/nginx", "lang/python311"],
        }
    ],
}


def assignments(text: str) -> dict[str, str]:
    """What sh would assign: each `KEY=...` line split as sh words (shlex in POSIX mode)."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            key, _, value = line.removeprefix("export ").partition("=")
            (out[key],) = shlex.split(value)
    return out


class PoudriereConfTests:
    def test_golden(self) -> None:
        conf = PoudriereConf(
            basefs="/jf/poudriere",
            no_zfs=True,
            poudriere_data="/jf/poudriere/data",
            use_tmpfs=("wrkdir", "data"),
            tmpfs_limit=4,
            parallel_jobs=2,
            distfiles_cache="/jf/distfiles",
            nolinux=True,
            use_procfs=False,
            url_base="http://pkg.example:8080/it's",
            loip4="127.0.0.2",
            html_json_update_interval=2,
            http_proxy="http://proxy:3128",
            max_memory_per_package=(("rust", 20),),
        )
        assert render_poudriere_conf(conf) == (
            "# poudriere.conf written by jailfarm; sourced by sh (poudriere.md 2.1).\n"
            "BASEFS='/jf/poudriere'\n"
            "NO_ZFS='yes'\n"
            "POUDRIERE_DATA='/jf/poudriere/data'\n"
            "USE_TMPFS='wrkdir data'\n"
            "TMPFS_LIMIT='4'\n"
            "PARALLEL_JOBS='2'\n"
            "DISTFILES_CACHE='/jf/distfiles'\n"
            "NOLINUX='yes'\n"
            "USE_PROCFS='no'\n"
            "URL_BASE='http://pkg.example:8080/it'\\''s'\n"
            "HTML_JSON_UPDATE_INTERVAL='2'\n"
            "LOIP4='127.0.0.2'\n"
            "export HTTP_PROXY='http://proxy:3128'\n"
            "MAX_MEMORY_rust='20'\n"
        )

    def test_sh_reads_back_every_value(self) -> None:
        conf = PoudriereConf(basefs="/b", zpool="p", url_base="http://x/a'b\"c$(d)`e`")
        assert assignments(render_poudriere_conf(conf))["URL_BASE"] == "http://x/a'b\"c$(d)`e`"

    @given(st.text(st.characters(min_codepoint=32, blacklist_characters="\x7f")))
    def test_sh_quote_round_trips(self, value: str) -> None:
        assert shlex.split(sh_quote(value)) == [value]

    @pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b", "\x1b[31m"])
    def test_control_characters_are_refused(self, value: str) -> None:
        with pytest.raises(ValueError, match="control characters"):
            PoudriereConf(basefs="/b", zpool="p", builder_hostname=value)

    def test_unknown_keys_cannot_be_set(self) -> None:
        # poudriere has no BUILD_TIMEOUT (§2.2); there is no field, hence no way to render it.
        with pytest.raises(TypeError):
            PoudriereConf(basefs="/b", zpool="p", build_timeout=3600)  # type: ignore[call-arg]
        assert "BUILD_TIMEOUT" not in KEYS
        assert {"NOHANG_TIME", "MAX_EXECUTION_TIME", "ZPOOL", "SIGNING_COMMAND"} <= set(KEYS)

    def test_every_key_cites_its_section(self) -> None:
        for key in KEYS.values():
            assert key.doc
            assert all(part.strip()[0].isdigit() for part in key.section.split(","))
        keyed = {f.name.upper() for f in fields(PoudriereConf) if f.metadata}
        assert keyed == set(KEYS)

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"zpool": None}, "ZPOOL and NO_ZFS"),  # §2.2 "ZPOOL variable is not set"
            ({"no_zfs": True}, "ZPOOL and NO_ZFS"),
            ({"zpool": None, "no_zfs": True}, "ZROOTFS"),
            ({"basefs": None}, "BASEFS is required"),
            ({"zrootfs": "poudriere"}, "ZROOTFS"),
            ({"zpool": "mirror"}, "pool"),  # must start with '/' (§2.2)
            (
                {"pkg_repo_signing_key": "/k", "signing_command": ("/bin/sign",)},
                "not both",
            ),  # §5.1
            ({"pkg_repo_signing_key": "repo.key"}, r"\[type:\]/path"),
            ({"signing_command": ("sign", "$(id)")}, "SIGNING_COMMAND"),
            ({"distfiles_cache": "distfiles"}, "DISTFILES_CACHE"),
            ({"use_tmpfs": ("yes", "wrkdir")}, "stand alone"),
            ({"use_tmpfs": ("ramdisk",)}, "USE_TMPFS"),
            ({"html_type": "static"}, "HTML_TYPE"),
            ({"ccache_dir": "/cc", "build_as_non_root": True}, "CCACHE_DIR_NON_ROOT_SAFE"),
            ({"html_json_update_interval": 0}, "stale"),  # §6: stats_* go stale
            ({"loip4": "127.0.0.1/8"}, "LOIP4"),  # no /prefix (§3.2)
            ({"loip6": "127.0.0.1"}, "LOIP6"),
            ({"nolinux": False}, "NOLINUX"),  # "no" would count as set
            ({"parallel_jobs": -1}, "PARALLEL_JOBS"),
            ({"parallel_jobs": True}, "PARALLEL_JOBS"),
            ({"max_memory_per_package": (("py311-foo", 4),)}, "pkgbase"),
        ],
    )
    def test_refused(self, kwargs: dict[str, object], message: str) -> None:
        settings = {"basefs": "/b", "zpool": "p", "zrootfs": "/pd", **kwargs}
        with pytest.raises(ValueError, match=message):
            PoudriereConf(**settings)  # type: ignore[arg-type]

    def test_master_only_keys_are_refused_on_3_4(self) -> None:
        # §2.2 / §5.1: typed signing keys, LOGS_FOR_IGNORED and MUTUALLY_EXCLUSIVE_... are master.
        for conf in (
            PoudriereConf(basefs="/b", zpool="p", pkg_repo_signing_key="ecdsa:/k/repo.key"),
            PoudriereConf(basefs="/b", zpool="p", logs_for_ignored=True),
            PoudriereConf(basefs="/b", zpool="p", mutually_exclusive_build_packages=("llvm*",)),
        ):
            assert render_poudriere_conf(conf, MASTER)
            with pytest.raises(ValueError, match="needs poudriere master"):
                render_poudriere_conf(conf, RELEASE_34)
        plain_key = PoudriereConf(basefs="/b", zpool="p", pkg_repo_signing_key="/k/repo.key")
        assert "PKG_REPO_SIGNING_KEY='/k/repo.key'" in render_poudriere_conf(plain_key, RELEASE_34)


class MakeConfTests:
    def test_render(self) -> None:
        text = render_make_conf(
            [("DEFAULT_VERSIONS+", "ssl=openssl python=3.11"), ("WITH_DEBUG", "")], "set server"
        )
        assert text == "# set server\nDEFAULT_VERSIONS+=ssl=openssl python=3.11\nWITH_DEBUG=\n"

    @pytest.mark.parametrize(
        ("var", "value", "message"),
        [
            ("CFLAGS", "$(shell id)", "expected letters"),
            ("CFLAGS", "-O2\nDEVELOPER=yes", "expected letters"),
            ("CFLAGS", "`id`", "expected letters"),
            ("CFLAGS", "'quoted'", "expected letters"),
            ("BAD NAME", "x", "invalid variable name"),
            ("DEVELOPER", "yes", "poudriere's own"),  # stripped with a warning (§2.4)
            ("PACKAGES", "/tmp", "poudriere's own"),  # poudriere writes it itself (§2.4)
            ("OVERLAYS+", "/x", "poudriere's own"),
        ],
    )
    def test_refused(self, var: str, value: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            render_make_conf([(var, value)])

    def test_names_and_stacking_order(self) -> None:
        # §2.4: appended in this order; the same selectors as *-poudriere.conf (§2.1).
        assert make_conf_name() == "make.conf"
        assert make_conf_name(jail="141amd64") == "141amd64-make.conf"
        assert make_conf_name(tree="default", set_name="server") == "default-server-make.conf"
        assert make_conf_stack(Target("141amd64", "default", "server")) == (
            "make.conf",
            "server-make.conf",
            "default-make.conf",
            "141amd64-make.conf",
            "default-server-make.conf",
            "141amd64-default-make.conf",
            "141amd64-server-make.conf",
            "141amd64-default-server-make.conf",
        )
        assert make_conf_stack(Target("141amd64")) == (
            "make.conf",
            "default-make.conf",
            "141amd64-make.conf",
            "141amd64-default-make.conf",
        )
        with pytest.raises(InvalidName):
            make_conf_name(set_name="a-b")


class ListFileTests:
    def test_render(self) -> None:
        # §2.4: one origin per line, '#' comments skipped by poudriere.
        text = render_list(["www/nginx", "lang/python311@py311", "www/nginx"], "set server")
        assert text == "# set server\nwww/nginx\nlang/python311@py311\n"

    @pytest.mark.parametrize("origin", ["nginx", "www/nginx extra", "-a", "www/nginx\nx/y"])
    def test_refused(self, origin: str) -> None:
        with pytest.raises(InvalidName):
            render_list([origin])


class FarmTests:
    def test_farm_fills_builders_and_leaves_signing_out(self) -> None:
        farm = parse_farm(FARM)
        conf = farm_conf(farm, BASE)
        assert conf.parallel_jobs == 3
        assert conf.pkg_repo_signing_key is None and conf.signing_command is None

    def test_signing_key_or_command(self) -> None:
        farm = parse_farm(FARM)
        keyed = farm_conf(farm, BASE, sign=True)
        assert keyed.pkg_repo_signing_key == farm.signing.key_file
        command = {**FARM, "signing": {"command": ["/usr/local/bin/sign-pkg", "--key", "repo"]}}
        signed = farm_conf(parse_farm(command), BASE, sign=True)
        # §8: prefer SIGNING_COMMAND with PKG_REPO_FROM_HOST=yes.
        assert signed.signing_command == ("/usr/local/bin/sign-pkg", "--key", "repo")
        assert signed.pkg_repo_from_host is True
        with pytest.raises(ValueError, match="already sets"):
            farm_conf(farm, signed, sign=True)

    def test_etc_files(self) -> None:
        farm = parse_farm(FARM)
        files = etc_files(farm, farm_conf(farm, BASE))
        assert [f.path for f in files] == [
            "poudriere.conf",
            "poudriere.d/server-make.conf",
            "lists/server",
        ]
        note = "# set server of farm demo, written by jailfarm\n"
        assert files[1] == EtcFile(
            "poudriere.d/server-make.conf",
            note + "DEFAULT_VERSIONS+=ssl=openssl\nOPTIONS_UNSET+=X11 DOCS\n",
        )
        assert files[2].text == note + "www/nginx\nlang/python311\n"
        assert "PARALLEL_JOBS='3'" in files[0].text
