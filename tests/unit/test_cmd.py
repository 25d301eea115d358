"""Commands as data: `Cmd`, `Result`, `Secret` and the messages of `jailfarm.errors` (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jailfarm.cmd import Cmd, Result, Secret
from jailfarm.errors import (
    CommandFailed,
    ConfigError,
    FarmError,
    InvalidName,
    JailError,
    ParseError,
    UnsafeOperation,
    ZfsError,
)

secret_text = st.text(min_size=1).filter(lambda s: "***" not in s)


class SecretTests:
    def test_str_repr_and_format_print_stars(self) -> None:
        s = Secret("hunter2")
        assert str(s) == "***"
        assert repr(s) == "Secret('***')"
        assert f"{s}" == "***"
        assert f"{s:>10}" == "***"
        assert f"{s}" == "***"
        assert f"{s}" == "***"

    def test_reveal_returns_the_plain_value(self) -> None:
        revealed = Secret("hunter2").reveal()
        assert revealed == "hunter2"
        assert type(revealed) is str

    def test_compares_equal_to_its_value(self) -> None:
        assert Secret("hunter2") == "hunter2"

    @given(secret_text)
    def test_no_printing_path_shows_the_value(self, value: str) -> None:
        s = Secret(value)
        assert {str(s), f"{s}", f"{s}", f"{s}"} == {"***"}
        assert {repr(s), f"{s!r}"} == {"Secret('***')"}
        assert s.reveal() == value


class CmdTests:
    def test_argv_list_becomes_a_tuple(self) -> None:
        cmd = Cmd(["zfs", "list"])  # type: ignore[arg-type]
        assert cmd.argv == ("zfs", "list")

    def test_empty_argv_is_rejected(self) -> None:
        with pytest.raises(TypeError, match="non-empty tuple of str"):
            Cmd(())

    def test_non_string_argv_element_is_rejected(self) -> None:
        with pytest.raises(TypeError, match="non-empty tuple of str"):
            Cmd(("sleep", 5))  # type: ignore[arg-type]

    def test_bare_string_argv_is_rejected(self) -> None:
        with pytest.raises(TypeError, match="non-empty tuple of str"):
            Cmd("zfs list")  # type: ignore[arg-type]

    def test_nul_in_argv_is_rejected(self) -> None:
        with pytest.raises(ValueError, match="NUL"):
            Cmd(("printf", "a\0b"))

    def test_env_is_a_read_only_copy(self) -> None:
        env = {"A": "1"}
        cmd = Cmd(("true",), env=env)
        env["A"] = "2"
        assert cmd.env["A"] == "1"
        with pytest.raises(TypeError):
            cmd.env["B"] = "x"  # type: ignore[index]

    def test_is_frozen(self) -> None:
        cmd = Cmd(("true",))
        with pytest.raises(AttributeError):
            cmd.argv = ("false",)  # type: ignore[misc]

    def test_str_quotes_words_for_display(self) -> None:
        cmd = Cmd(("sh", "-c", "printf 'x'; exit 3", ""))
        assert str(cmd) == "sh -c 'printf '\\''x'\\''; exit 3' ''"

    def test_str_leaves_plain_words_unquoted(self) -> None:
        assert str(Cmd(("zfs", "get", "-o", "name,value", "pool/a@1"))) == (
            "zfs get -o name,value pool/a@1"
        )

    def test_str_puts_sorted_env_first(self) -> None:
        cmd = Cmd(("make",), env={"B": "two words", "A": "1"})
        assert str(cmd) == "A=1 B='two words' make"

    def test_str_and_repr_mask_secret_argv_and_env(self) -> None:
        cmd = Cmd(("login", "--password", Secret("hunter2")), env={"TOKEN": Secret("t0k3n")})
        for shown in (str(cmd), repr(cmd)):
            assert "hunter2" not in shown
            assert "t0k3n" not in shown
        assert str(cmd) == "TOKEN=*** login --password ***"
        assert repr(cmd) == "Cmd(TOKEN=*** login --password ***)"

    def test_revealed_argv_and_env_unmask_secrets(self) -> None:
        cmd = Cmd(("login", Secret("hunter2")), env={"TOKEN": Secret("t0k3n"), "A": "1"})
        argv = cmd.revealed_argv()
        env = cmd.revealed_env()
        assert argv == ["login", "hunter2"]
        assert env == {"TOKEN": "t0k3n", "A": "1"}
        assert not any(isinstance(v, Secret) for v in [*argv, *env.values()])

    @given(st.lists(st.text(st.characters(blacklist_characters="\0#")), min_size=1))
    def test_str_never_contains_a_secret_value(self, words: list[str]) -> None:
        # The words cannot contain '#', so any '#' in the output would be the secret's.
        secret = Secret("#s3cr3t \u2603#")
        cmd = Cmd((*words, secret), env={"K": secret})
        assert "#" not in str(cmd)
        assert cmd.revealed_argv() == [*words, "#s3cr3t \u2603#"]
        assert cmd.revealed_env() == {"K": "#s3cr3t \u2603#"}


class ResultTests:
    def test_ok_needs_rc_zero_and_no_timeout(self) -> None:
        cmd = Cmd(("true",))
        assert Result(cmd, 0).ok
        assert not Result(cmd, 1).ok
        assert not Result(cmd, -1).ok
        assert not Result(cmd, 0, timed_out=True).ok

    def test_out_and_err_decode_with_replacement(self) -> None:
        result = Result(Cmd(("x",)), 0, stdout="caf\u00e9\n".encode(), stderr=b"bad \xff byte")
        assert result.out == "caf\u00e9\n"
        assert result.err == "bad \ufffd byte"

    def test_check_returns_self_on_success(self) -> None:
        result = Result(Cmd(("true",)), 0)
        assert result.check() is result

    def test_check_raises_command_failed_with_rc_and_stderr(self) -> None:
        cmd = Cmd(("zfs", "destroy", "pool/a"))
        with pytest.raises(CommandFailed) as info:
            Result(cmd, 1, stderr=b"cannot destroy 'pool/a': dataset is busy\n").check()
        err = info.value
        assert err.cmd is cmd
        assert err.rc == 1
        assert not err.timed_out
        assert str(err) == "zfs destroy pool/a exited 1: cannot destroy 'pool/a': dataset is busy"

    def test_check_raises_timed_out_even_with_rc_zero(self) -> None:
        cmd = Cmd(("sleep", "5"), timeout=0.5)
        with pytest.raises(CommandFailed, match=r"^sleep 5 timed out after 0\.5s$") as info:
            Result(cmd, 0, timed_out=True).check()
        assert info.value.timed_out


class ErrorMessageTests:
    def test_every_error_is_a_farm_error(self) -> None:
        for cls in (
            CommandFailed,
            ParseError,
            UnsafeOperation,
            InvalidName,
            ConfigError,
            JailError,
            ZfsError,
        ):
            assert issubclass(cls, FarmError)

    def test_value_errors_are_value_errors(self) -> None:
        for cls in (ParseError, InvalidName, ConfigError):
            assert issubclass(cls, ValueError)

    def test_command_failed_without_stderr_has_no_trailing_colon(self) -> None:
        assert str(CommandFailed(Cmd(("false",)), 1, "  \n")) == "false exited 1"

    def test_command_failed_keeps_only_the_stderr_tail(self) -> None:
        stderr = "x" * 5000 + "THE END"
        err = CommandFailed(Cmd(("noisy",)), 2, stderr)
        assert len(err.stderr_tail) == 2000
        assert err.stderr_tail.endswith("THE END")
        assert str(err).endswith("THE END")

    def test_command_failed_masks_secrets(self) -> None:
        err = CommandFailed(Cmd(("login", Secret("hunter2"))), 1, "denied")
        assert str(err) == "login *** exited 1: denied"

    def test_parse_error_names_tool_line_and_reason(self) -> None:
        err = ParseError("zfs get", 3, "pool\tused", "expected 3 fields")
        assert (err.tool, err.line_no, err.line) == ("zfs get", 3, "pool\tused")
        assert str(err) == "zfs get: line 3: expected 3 fields: 'pool\\tused'"

    def test_config_error_lists_every_problem(self) -> None:
        err = ConfigError("farm.toml", ["[zfs] root is missing", "[jails] x: bad name"])
        assert err.problems == ["[zfs] root is missing", "[jails] x: bad name"]
        assert str(err) == (
            "farm.toml: 2 error(s):\n  - [zfs] root is missing\n  - [jails] x: bad name"
        )


def test_command_failed_masks_secrets_echoed_in_its_output() -> None:
    cmd = Cmd(("tool", Secret("--password=s3cret")), env={"TOKEN": Secret("t0k3n")})
    failed = Result(cmd, 2, b"", b"bad password s3cret for token t0k3n").check
    with pytest.raises(CommandFailed) as info:
        failed()
    assert "s3cret" not in str(info.value)
    assert "t0k3n" not in str(info.value)
    assert "bad password *** for token ***" in str(info.value)
