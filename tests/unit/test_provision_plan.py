"""The provisioning model (provision/plan.py): files, steps, plans, facts and their generic
parsers, the apply engine's safety rules, and the plan text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jailfarm.cmd import Cmd
from jailfarm.errors import FarmError, ParseError
from jailfarm.provision.plan import (
    BACKUP_SUFFIX,
    MARKER,
    Answer,
    ApplyError,
    Facts,
    FileWrite,
    Plan,
    PlanRefused,
    Step,
    apply_plan,
    block_between,
    exit_status,
    fact_key,
    file_text,
    format_plan,
    gather,
    is_ours,
    managed_file,
    parse_stat,
    parse_sysrc,
    with_block,
    write_cmds,
)
from jailfarm.runner import FakeRunner, RecordingRunner
from tests.support import resolve

OURS = f"# {MARKER}\nkey = 1\n"


def step(
    name: str = "one", *, destructive: bool = False, argv: tuple[str, ...] = ("true",)
) -> Step:
    return Step(name, "test", ("found",), (Cmd(argv),), destructive=destructive)


class FileWriteTests:
    def test_refuses_relative_paths_and_dot_components(self) -> None:
        for path in ("etc/pf.conf", "/etc/../pf.conf", "/etc/pf conf"):
            with pytest.raises(ValueError):
                FileWrite(path, b"x")

    def test_refuses_an_owner_that_is_not_user_colon_group(self) -> None:
        for owner in ("root", "root:wheel:x", "-o:wheel", "Root:wheel"):
            with pytest.raises(ValueError, match="owner"):
                FileWrite("/etc/x", b"", owner=owner)
        assert FileWrite("/etc/x", b"", owner="1002:1002").owner == "1002:1002"

    def test_changed_compares_with_what_the_host_holds(self) -> None:
        assert FileWrite("/etc/x", b"a").changed
        assert FileWrite("/etc/x", b"a", before=b"b").changed
        assert not FileWrite("/etc/x", b"a", before=b"a").changed

    def test_write_puts_the_content_through_stdin_into_a_file_made_with_its_mode(self) -> None:
        cmds = write_cmds(FileWrite("/etc/x.conf", b"secret", 0o600, "1002:1002"))
        assert [c.argv for c in cmds] == [
            ("rm", "-f", "/etc/x.conf.jailfarm-new"),
            ("install", "-m", "0600", "-o", "1002", "-g", "1002", "/dev/null",
             "/etc/x.conf.jailfarm-new"),
            ("dd", "of=/etc/x.conf.jailfarm-new", "status=none"),
            ("mv", "-f", "/etc/x.conf.jailfarm-new", "/etc/x.conf"),
        ]  # fmt: skip
        assert cmds[2].stdin == b"secret"
        assert all(b"secret" not in " ".join(c.argv).encode() for c in cmds)

    def test_a_replaced_foreign_file_is_backed_up_without_overwriting_an_older_backup(
        self,
    ) -> None:
        cmds = write_cmds(FileWrite("/etc/pf.conf", b"x", before=b"y", backup=True))
        assert cmds[0].argv == ("cp", "-n", "-p", "/etc/pf.conf", "/etc/pf.conf" + BACKUP_SUFFIX)


class ManagedFileTests:
    def test_a_new_file_is_not_destructive(self) -> None:
        write, destructive = managed_file("/etc/jail.conf", OURS, None)
        assert write.changed and not destructive and not write.backup

    def test_our_own_file_is_updated_in_place(self) -> None:
        write, destructive = managed_file("/etc/jail.conf", OURS, f"# {MARKER}\nkey = 0\n")
        assert write.changed and not destructive

    def test_someone_elses_file_is_destructive_and_kept(self) -> None:
        write, destructive = managed_file("/etc/pf.conf", OURS, "pass all\n")
        assert destructive and write.backup and write.before == b"pass all\n"

    def test_an_identical_file_is_left_alone(self) -> None:
        write, destructive = managed_file("/etc/jail.conf", OURS, OURS)
        assert not write.changed and not destructive

    def test_content_without_the_marker_is_refused(self) -> None:
        with pytest.raises(ValueError, match="must start"):
            managed_file("/etc/jail.conf", "key = 1\n", None)

    def test_the_marker_counts_only_near_the_top(self) -> None:
        assert is_ours(OURS)
        assert not is_ours("a\nb\nc\nd\n# " + MARKER)
        assert not is_ours(None)


class BlockTests:
    BLOCK = "# BEGIN x\nMatch User root\n# END x\n"

    def test_a_missing_block_is_appended(self) -> None:
        assert with_block("A yes", self.BLOCK, "# BEGIN x", "# END x") == "A yes\n" + self.BLOCK

    def test_an_existing_block_is_replaced_in_place(self) -> None:
        text = "A yes\n# BEGIN x\nold\n# END x\nB no\n"
        assert with_block(text, self.BLOCK, "# BEGIN x", "# END x") == (
            "A yes\n" + self.BLOCK + "B no\n"
        )

    def test_a_block_without_its_end_is_refused(self) -> None:
        with pytest.raises(ParseError, match="without"):
            block_between("# BEGIN x\nstuff\n", "# BEGIN x", "# END x")

    @given(st.text(alphabet="ab #\n", max_size=60))
    def test_adding_a_block_twice_changes_nothing_more(self, text: str) -> None:
        if "# BEGIN x" in text or "# END x" in text:
            return
        once = with_block(text, self.BLOCK, "# BEGIN x", "# END x")
        assert with_block(once, self.BLOCK, "# BEGIN x", "# END x") == once
        assert block_between(once, "# BEGIN x", "# END x") == self.BLOCK


class FactTests:
    def test_json_round_trip(self) -> None:
        facts = Facts({"cat /etc/x": Answer(1, "", "cat: /etc/x: No such file or directory\n")})
        again = Facts.from_json(facts.to_json())
        assert again == facts
        assert again.get(Cmd(("cat", "/etc/x"))).rc == 1

    def test_asking_for_a_fact_that_was_not_gathered_is_a_bug(self) -> None:
        with pytest.raises(KeyError, match="not gathered"):
            Facts().get(Cmd(("ls",)))

    def test_a_fact_query_takes_no_input(self) -> None:
        with pytest.raises(ValueError):
            fact_key(Cmd(("cat",), stdin=b"x"))

    def test_gather_asks_round_by_round_until_nothing_new(self) -> None:
        runner = FakeRunner().expect("a", stdout="1").expect("b", stdout="2")

        def queries(facts: Facts) -> list[Cmd]:
            first = Cmd(("a",))
            if not facts.has(first):
                return [first]
            return [first, Cmd(("b",))] if facts.get(first).out == "1" else [first]

        facts = resolve(gather(runner, queries))
        runner.assert_all_commands_ran()
        assert facts.get(Cmd(("b",))).out == "2"

    def test_gather_gives_up_on_queries_that_never_settle(self) -> None:
        counter = iter(range(100))
        with pytest.raises(FarmError, match="did not settle"):
            resolve(gather(RecordingRunner(), lambda f: [Cmd(("q", str(next(counter))))], 3))


class ParserTests:
    def test_file_text(self) -> None:
        assert file_text(Answer(0, "x\n"), "/p") == "x\n"
        assert file_text(Answer(1, "", "cat: /p: No such file or directory\n"), "/p") is None
        with pytest.raises(ParseError, match="cannot read"):
            file_text(Answer(1, "", "cat: /p: Permission denied\n"), "/p")

    def test_stat(self) -> None:
        st_ = parse_stat(Answer(0, "1002:1002:700:Directory\n"), "/p")
        assert st_ is not None and (st_.uid, st_.mode, st_.is_dir) == (1002, 0o700, True)
        regular = parse_stat(Answer(0, "0:0:644:Regular File\n"), "/p")
        assert regular is not None and regular.kind == "Regular File"
        assert (
            parse_stat(Answer(1, "", "stat: /p: lstat: No such file or directory\n"), "/p") is None
        )
        for bad in (Answer(0, "drwxr-xr-x root wheel\n"), Answer(1, "", "Permission denied")):
            with pytest.raises(ParseError):
                parse_stat(bad, "/p")

    def test_sysrc(self) -> None:
        out = 'kld_list="tmpfs nullfs"\npf_enable="NO"\n'
        assert parse_sysrc(Answer(1, out)) == {"kld_list": "tmpfs nullfs", "pf_enable": "NO"}
        assert parse_sysrc(Answer(0, 'x=""\n')) == {"x": ""}
        for bad in (
            Answer(0, "kld_list: tmpfs\n"),  # sysrc without -e
            Answer(1, "", "sysrc: unknown variable 'x'\n"),  # without -i
            Answer(2, ""),
        ):
            with pytest.raises(ParseError):
                parse_sysrc(bad)

    def test_exit_status(self) -> None:
        assert exit_status(Answer(0), "kldstat")
        assert not exit_status(Answer(1), "kldstat")
        with pytest.raises(ParseError, match="exit status 127"):
            exit_status(Answer(127, "", "not found"), "kldstat")


class ApplyTests:
    def test_a_plan_with_problems_runs_nothing(self) -> None:
        runner = RecordingRunner()
        with pytest.raises(PlanRefused, match="no pool"):
            resolve(apply_plan(Plan((step(),), ("no pool",)), runner, lambda s: None))
        assert runner.calls == []

    def test_destructive_steps_need_allow_destroy(self) -> None:
        runner = RecordingRunner()
        plan = Plan((step("safe"), step("pf", destructive=True)))
        with pytest.raises(PlanRefused, match=r"step pf is destructive.*--allow-destroy"):
            resolve(apply_plan(plan, runner, lambda s: None))
        assert runner.calls == []
        assert resolve(apply_plan(plan, runner, lambda s: None, allow_destroy=True)) == 2
        assert len(runner.calls) == 2

    def test_files_are_written_before_the_steps_commands_in_order(self) -> None:
        write = FileWrite("/etc/pf.conf", b"nat\n")
        plan = Plan((Step("pf", "why", (), (Cmd(("service", "pf", "reload")),), (write,)),))
        runner = RecordingRunner()
        said: list[str] = []
        resolve(apply_plan(plan, runner, said.append))
        assert [c.argv for c in runner.calls] == [
            *(c.argv for c in write_cmds(write)),
            ("service", "pf", "reload"),
        ]
        assert said == ["[1/1] pf"]

    def test_a_failing_command_stops_the_run_naming_its_step(self) -> None:
        runner = FakeRunner().expect("one").expect("two", rc=1, stderr="boom")
        plan = Plan((step("a", argv=("one",)), step("b", argv=("two",)), step("c", argv=("x",))))
        with pytest.raises(ApplyError, match=r"step b failed.*boom"):
            resolve(apply_plan(plan, runner, lambda s: None))
        runner.assert_all_commands_ran()

    def test_a_step_must_do_something(self) -> None:
        with pytest.raises(ValueError, match="nothing to do"):
            Step("empty", "why")


class FormatTests:
    def test_an_empty_plan_says_so(self) -> None:
        text = format_plan(Plan(notes=("reboot",)))
        assert text == "nothing to do: the host is as farm.toml describes\nnotes:\n  - reboot\n"

    def test_problems_come_first(self) -> None:
        text = format_plan(Plan((step(),), ("pool missing", "no ssh")))
        assert text.startswith("2 problem(s) to fix before apply:\n  - pool missing\n  - no ssh\n")

    def test_destructive_steps_are_flagged(self) -> None:
        text = format_plan(Plan((step("pf", destructive=True),)))
        assert "1 destructive (apply needs --allow-destroy)" in text
        assert "[1/1] pf  [DESTRUCTIVE]" in text

    def test_files_show_a_diff_commands_show_stdin_size_and_timeout(self) -> None:
        write = FileWrite("/etc/a", b"one\ntwo\n", before=b"one\nold\n")
        cmd = Cmd(("dd", "of=/x"), stdin=b"12345", timeout=60)
        text = format_plan(Plan((Step("s", "why", ("found it",), (cmd,), (write,)),)))
        assert "  write /etc/a (0644 root:wheel, update)\n" in text
        assert "      -old\n      +two\n" in text
        assert "  run: dd of=/x  < 5 bytes  # timeout 60s\n" in text
        assert "  found: found it\n" in text

    def test_secret_files_never_show_their_content(self) -> None:
        write = FileWrite("/k", b"PRIVATE", secret=True)
        text = format_plan(Plan((Step("s", "why", files=(write,)),)))
        assert "PRIVATE" not in text and "(content not shown)" in text
