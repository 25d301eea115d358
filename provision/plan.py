"""The provisioning model shared by every host platform: facts read from a host, the steps that
bring it to what farm.toml describes, the plan text `jailfarm provision plan` prints, and the
engine `provision apply` runs.

Pure, except `gather` and `apply_plan`, which run commands through a `Runner` (local or ssh).
A planner is a function (farm config, facts) -> `Plan`; it never touches the host. Facts are the
answers of read-only commands (`Facts`), so a plan can be computed from recorded answers, and
each fact parser raises `ParseError` on output it does not expect rather than guessing.

Rules the engine enforces (issue #8): a plan with problems is refused as a whole; a
destructive step (one that replaces or empties something jailfarm did not create) runs only
with `allow_destroy`; a file that is not jailfarm's is kept as `<path>.jailfarm-orig` before it
is replaced. A step whose facts already match is not in the plan, so applying a plan and
planning again gives an empty plan.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jailfarm.cmd import Cmd
from jailfarm.errors import CommandFailed, FarmError, ParseError
from jailfarm.host.jailconf import check_path

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

    from jailfarm.runner import Runner

    Say = Callable[[str], None]

BACKUP_SUFFIX = ".jailfarm-orig"
NEW_SUFFIX = ".jailfarm-new"
# The first line of every file jailfarm writes whole; a file without it is someone else's.
MARKER = "Managed by jailfarm"
_OWNER = re.compile(r"[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}")
_STAT = re.compile(r"([0-9]+):([0-9]+):([0-7]{3,4}):([A-Za-z ]+)")
_SYSRC_LINE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(.*)"')
MISSING = "No such file or directory"


class PlanRefused(FarmError):
    """The plan cannot be applied as it is: it has problems, or destructive steps were not
    allowed. `problems` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(f"  - {p}" for p in self.problems))


class ApplyError(FarmError):
    """A step failed while applying; steps before it are done, the rest did not run."""


# ---- the model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileWrite:
    """A whole file to write: `content`, its `mode` and `owner` ("user:group", names or ids).
    `before` is what the file held when the facts were read (None: absent), for the plan's diff;
    `secret` hides the content from the plan; `backup` keeps the file being replaced as
    `<path>.jailfarm-orig` (a file jailfarm did not write)."""

    path: str
    content: bytes
    mode: int = 0o644
    owner: str = "root:wheel"
    before: bytes | None = None
    secret: bool = False
    backup: bool = False

    def __post_init__(self) -> None:
        check_path("file", self.path)
        user, _, group = self.owner.partition(":")
        if not (_OWNER.fullmatch(user) and _OWNER.fullmatch(group)):
            raise ValueError(f"{self.path}: owner {self.owner!r} is not user:group")
        if not 0 <= self.mode <= 0o7777:
            raise ValueError(f"{self.path}: mode {self.mode:o} is out of range")

    @property
    def changed(self) -> bool:
        return self.before != self.content


@dataclass(frozen=True)
class Action:
    """A part of a step that is not one command: the Linux development host starts daemons
    and waits until they answer, and copies trees with file operations. `text` is what the
    plan prints; `run(runner, say)` does it, raising `FarmError` on failure. Planners stay
    pure: they only name the function, the adapter's engine calls it."""

    text: str
    run: Callable[[Runner, Say], Awaitable[None]] = field(compare=False, repr=False)


@dataclass(frozen=True)
class Step:
    """One change to the host. `check` says what the facts showed (why the step is needed),
    `why` cites the spec. Applying writes `files` first, then runs `commands` in order, then
    `actions`; each must succeed. `destructive` steps replace or empty something jailfarm did
    not create. `creates` names what the step makes that is jailfarm's afterwards (paths,
    datasets), for an adapter that records what to remove later."""

    name: str
    why: str
    check: tuple[str, ...] = ()
    commands: tuple[Cmd, ...] = ()
    files: tuple[FileWrite, ...] = ()
    destructive: bool = False
    actions: tuple[Action, ...] = ()
    creates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.commands and not self.files and not self.actions:
            raise ValueError(f"step {self.name}: nothing to do")


@dataclass(frozen=True)
class Plan:
    """The steps to run, in order; `problems` that stop `apply` (farm.toml or the host does not
    fit); `notes` worth reading that change nothing."""

    steps: tuple[Step, ...] = ()
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def destructive(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.destructive)


# ---- facts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What a read-only command answered."""

    rc: int
    out: str = ""
    err: str = ""


def fact_key(cmd: Cmd) -> str:
    """How a fact is keyed: the argv as a shell would show it."""
    if cmd.stdin is not None or cmd.env:
        raise ValueError(f"a fact query takes no stdin or environment: {cmd}")
    return shlex.join(cmd.argv)


@dataclass(frozen=True)
class Facts:
    """Answers of fact queries, keyed by `fact_key`. Asking for a query that was not gathered
    is a bug in the planner (KeyError), never a missing fact."""

    answers: Mapping[str, Answer] = field(default_factory=dict)

    def has(self, cmd: Cmd) -> bool:
        return fact_key(cmd) in self.answers

    def get(self, cmd: Cmd) -> Answer:
        key = fact_key(cmd)
        if key not in self.answers:
            raise KeyError(f"fact not gathered: {key}")
        return self.answers[key]

    def to_rows(self) -> list[dict[str, object]]:
        return [
            {"argv": shlex.split(k), "rc": a.rc, "stdout": a.out, "stderr": a.err}
            for k, a in sorted(self.answers.items())
        ]

    def to_json(self) -> str:
        return json.dumps(self.to_rows(), indent=1) + "\n"

    @classmethod
    def from_rows(cls, rows: object) -> Facts:
        """Recorded answers: a list of {argv, rc, stdout, stderr}; ValueError otherwise."""
        if not isinstance(rows, list):
            raise ValueError("recorded facts must be a list of {argv, rc, stdout, stderr}")
        answers = {}
        for row in rows:
            argv = row.get("argv") if isinstance(row, dict) else None
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise ValueError(f"recorded fact with a bad argv: {row!r}")
            answers[shlex.join(argv)] = Answer(int(row["rc"]), row["stdout"], row["stderr"])
        return cls(answers)

    @classmethod
    def from_json(cls, text: str) -> Facts:
        return cls.from_rows(json.loads(text))


async def gather(
    runner: Runner, queries: Callable[[Facts], Iterable[Cmd]], rounds: int = 6
) -> Facts:
    """Ask the host every query `queries(facts so far)` names until it names nothing new (later
    queries may depend on earlier answers, e.g. files below a dataset's mountpoint)."""
    answers: dict[str, Answer] = {}
    for _ in range(rounds):
        facts = Facts(dict(answers))
        todo = [q for q in queries(facts) if not facts.has(q)]
        if not todo:
            return facts
        for cmd in todo:
            result = await runner.run(cmd)
            answers[fact_key(cmd)] = Answer(result.rc, result.out, result.err)
    raise FarmError(f"the host's facts did not settle after {rounds} rounds of queries")


# ---- generic fact parsers (each raises ParseError on anything unexpected) ----------------------


def cat_cmd(path: str) -> Cmd:
    return Cmd(("cat", check_path("file", path)))


def file_text(answer: Answer, path: str) -> str | None:
    """The content `cat PATH` answered; None if the file does not exist."""
    if answer.rc == 0:
        return answer.out
    if MISSING in answer.err:
        return None
    raise ParseError("cat", 1, answer.err.strip()[:200], f"cannot read {path}")


def stat_cmd(path: str) -> Cmd:
    """BSD stat(1) of the path itself (lstat: a symlink shows as one): uid:gid:mode:type.
    GNU stat spells this `stat -c %u:%g:%a:%F` (`gnu_stat_cmd`)."""
    return Cmd(("stat", "-f", "%u:%g:%Lp:%HT", check_path("path", path)))


def gnu_stat_cmd(path: str) -> Cmd:
    """GNU stat(1) (Linux) of the path itself, in `stat_cmd`'s shape; the type is spelt in
    lower case ("directory", "regular file"), which `Stat` accepts."""
    return Cmd(("stat", "-c", "%u:%g:%a:%F", check_path("path", path)))


@dataclass(frozen=True)
class Stat:
    uid: int
    gid: int
    mode: int
    kind: str  # "Directory", "Regular File", "Symbolic Link", ...

    @property
    def is_dir(self) -> bool:
        return self.kind.lower() == "directory"  # BSD "Directory", GNU "directory"


def parse_stat(answer: Answer, path: str) -> Stat | None:
    """What `stat_cmd(path)` answered; None if the path does not exist."""
    if answer.rc != 0:
        if MISSING in answer.err:
            return None
        raise ParseError("stat", 1, answer.err.strip()[:200], f"cannot stat {path}")
    line = answer.out.strip()
    m = _STAT.fullmatch(line)
    if m is None or "\n" in line:
        raise ParseError("stat", 1, line[:200], "expected uid:gid:mode:type")
    return Stat(int(m[1]), int(m[2]), int(m[3], 8), m[4])


def parse_sysrc(answer: Answer) -> dict[str, str]:
    """rc.conf variables from `sysrc -e -i NAME...`: one `name="value"` line per variable that
    is set (defaults included); unset ones are left out, and sysrc then exits 1 (sysrc(8) -i)."""
    if answer.rc not in (0, 1) or answer.err.strip():
        raise ParseError("sysrc", 1, answer.err.strip()[:200], f"sysrc exited {answer.rc}")
    values: dict[str, str] = {}
    for no, line in enumerate(answer.out.splitlines(), 1):
        m = _SYSRC_LINE.fullmatch(line)
        if m is None:
            raise ParseError("sysrc", no, line, 'expected name="value"')
        values[m[1]] = m[2]
    return values


def exit_status(answer: Answer, tool: str, ok: Iterable[int] = (0, 1)) -> bool:
    """True for exit 0, False for the other expected codes (a yes/no query such as
    `kldstat -q -m`, `pfctl -s Running`); anything else raises."""
    if answer.rc == 0:
        return True
    if answer.rc in tuple(ok):
        return False
    raise ParseError(tool, 1, answer.err.strip()[:200], f"unexpected exit status {answer.rc}")


# ---- managed files -----------------------------------------------------------------------------


def is_ours(text: str | None) -> bool:
    """Whether a file's first lines carry jailfarm's marker."""
    return text is not None and MARKER in "\n".join(text.splitlines()[:3])


def managed_file(
    path: str, content: str, before: str | None, *, mode: int = 0o644, owner: str = "root:wheel"
) -> tuple[FileWrite, bool]:
    """A file jailfarm writes whole (its content starts with a MARKER comment), and whether
    writing it is destructive: the file exists, is someone else's and differs. Such a file is
    kept as `<path>.jailfarm-orig` first."""
    if not is_ours(content):
        raise ValueError(f"{path}: a managed file must start with the {MARKER!r} comment")
    foreign = before is not None and not is_ours(before) and before != content
    raw = None if before is None else before.encode()
    write = FileWrite(path, content.encode(), mode, owner, raw, backup=foreign)
    return write, foreign


def block_between(text: str, begin: str, end: str) -> str | None:
    """The lines from `begin` to `end` (both included) in `text`, or None."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.rstrip("\n") == begin:
            for j in range(i + 1, len(lines)):
                if lines[j].rstrip("\n") == end:
                    return "".join(lines[i : j + 1])
            raise ParseError("file", i + 1, line.rstrip("\n"), f"{begin!r} without {end!r}")
    return None


def with_block(text: str, block: str, begin: str, end: str) -> str:
    """`text` with its `begin`...`end` block replaced by `block`, or `block` appended."""
    old = block_between(text, begin, end)
    if old is not None:
        return text.replace(old, block, 1)
    sep = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{sep}{block}"


# ---- applying ----------------------------------------------------------------------------------


def write_cmds(write: FileWrite) -> list[Cmd]:
    """Commands that put a file in place atomically: an empty file with the final mode and
    owner (install(1) from /dev/null) receives the content, then is renamed over the path, so
    the content never sits in a file with looser permissions, and a symlink at the path is
    replaced rather than followed. The content goes through stdin (dd), never an argv."""
    tmp = write.path + NEW_SUFFIX
    user, _, group = write.owner.partition(":")
    cmds = []
    if write.backup:
        # -n: an older backup (the file as it was before jailfarm) is never overwritten.
        cmds.append(Cmd(("cp", "-n", "-p", write.path, write.path + BACKUP_SUFFIX)))
    cmds += [
        Cmd(("rm", "-f", tmp)),
        Cmd(("install", "-m", f"{write.mode:04o}", "-o", user, "-g", group, "/dev/null", tmp)),
        Cmd(("dd", f"of={tmp}", "status=none"), stdin=write.content),
        Cmd(("mv", "-f", tmp, write.path)),
    ]
    return cmds


async def apply_plan(
    plan: Plan,
    runner: Runner,
    say: Say,
    *,
    allow_destroy: bool = False,
    before_step: Callable[[Step], None] | None = None,
) -> int:
    """Run every step of `plan` in order; the number of steps run. Refuses (`PlanRefused`)
    before running anything if the plan has problems, or destructive steps without
    `allow_destroy`. A failing command or action stops the run with an `ApplyError` naming
    the step. `before_step` is called just before each step runs (to record what it creates,
    so a step that fails half-way is still cleaned up)."""
    if plan.problems:
        raise PlanRefused(plan.problems)
    if plan.destructive and not allow_destroy:
        raise PlanRefused(
            [
                f"step {s.name} is destructive ({'; '.join(s.check) or s.why}): review the "
                "plan, then run apply with --allow-destroy"
                for s in plan.destructive
            ]
        )
    total = len(plan.steps)
    for n, step in enumerate(plan.steps, 1):
        say(f"[{n}/{total}] {step.name}")
        if before_step is not None:
            before_step(step)
        cmds = [c for f in step.files for c in write_cmds(f)] + list(step.commands)
        for cmd in cmds:
            try:
                (await runner.run(cmd)).check()
            except CommandFailed as e:
                raise ApplyError(f"step {step.name} failed: {e}") from e
        for action in step.actions:
            try:
                await action.run(runner, say)
            except ApplyError:
                raise
            except FarmError as e:
                raise ApplyError(f"step {step.name} failed: {action.text}: {e}") from e
    return total


# ---- printing ----------------------------------------------------------------------------------


def _command_line(cmd: Cmd) -> str:
    text = str(cmd)
    if cmd.stdin is not None:
        text += f"  < {len(cmd.stdin)} bytes"
    if cmd.timeout is not None:
        text += f"  # timeout {cmd.timeout:g}s"
    return text


def _file_lines(write: FileWrite) -> list[str]:
    what = "new file" if write.before is None else "replace" if write.backup else "update"
    head = f"write {write.path} ({write.mode:04o} {write.owner}, {what})"
    if write.backup:
        head += f", keeping the old one as {write.path}{BACKUP_SUFFIX}"
    if write.secret:
        return [head, "    (content not shown)"]
    new = write.content.decode("utf-8", "replace").splitlines()
    if write.before is None:
        return [head, *(f"    + {line}".rstrip() for line in new)]
    old = write.before.decode("utf-8", "replace").splitlines()
    diff = difflib.unified_diff(old, new, lineterm="", n=1)
    body = [line for line in diff if not line.startswith(("---", "+++"))]
    return [head, *(f"    {line}".rstrip() for line in body)]


def format_step(step: Step, n: int, total: int) -> list[str]:
    flag = "  [DESTRUCTIVE]" if step.destructive else ""
    lines = [f"[{n}/{total}] {step.name}{flag}", f"  why: {step.why}"]
    lines += [f"  found: {c}" for c in step.check]
    for write in step.files:
        lines += [f"  {line}" for line in _file_lines(write)]
    lines += [f"  run: {_command_line(c)}" for c in step.commands]
    lines += [f"  do: {a.text}" for a in step.actions]
    return lines


def format_plan(plan: Plan) -> str:
    """The plan as `provision plan` prints it: problems, then each step with what the facts
    showed, the files it writes (a diff against what is there) and the commands it runs."""
    lines = []
    destructive = len(plan.destructive)
    if plan.problems:
        lines.append(f"{len(plan.problems)} problem(s) to fix before apply:")
        lines += [f"  - {p}" for p in plan.problems]
    if plan.steps:
        extra = f", {destructive} destructive (apply needs --allow-destroy)" if destructive else ""
        lines.append(f"{len(plan.steps)} step(s){extra}:")
        for n, step in enumerate(plan.steps, 1):
            lines += format_step(step, n, len(plan.steps))
    elif not plan.problems:
        lines.append("nothing to do: the host is as farm.toml describes")
    if plan.notes:
        lines.append("notes:")
        lines += [f"  - {note}" for note in plan.notes]
    return "\n".join(lines) + "\n"
