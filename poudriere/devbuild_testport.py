"""`jailfarm-poudriere testport` (shell: runs bmake, writes the build's files): a bulk of the
port's dependencies, committed, then the port itself in the reference root (§1.4).

Honest limits: the demo framework has no install/deinstall, stage-qa or leftovers checks,
so the tested port runs the bulk phases (with PORTTESTING=1 and TRYBROKEN=yes). A failed
testport ends with `stopped:<failed phase status>` where poudriere writes
`stopped:failed/<phase>:…` or `stopped:failed/depends:…`: jailfarm.poudriere.status does not
accept a `/` in the status word, and the PoudriereTestport step must parse what it reads.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from jailfarm.poudriere import devbuild_graph as graph
from jailfarm.poudriere.devbuild_run import Bulk

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from jailfarm.poudriere.commands import Target

# testport.sh exports these for the tested port only.
TEST_VARS = ("PORTTESTING=1", "TRYBROKEN=yes")


class Testport(Bulk):
    """One testport run: `full` is the plan of a bulk of `origin` alone; the tested port is
    queued with the dependencies but built after them, and its package stays in the build
    root (`ref/tmp/pkgs`), never in the repository. Exit 0 on success, 1 on any failure."""

    def __init__(
        self,
        target: Target,
        buildname: str,
        data: Path,
        tree: Path,
        ports: Mapping[str, graph.PortInfo],
        full: graph.Plan,
        builders: int,
        make_vars: Sequence[str],
        abi: str,
        existing: Mapping[str, frozenset[str]],
        origin: str,
    ) -> None:
        deps = graph.plan_testport_deps(full, origin)
        super().__init__(
            target, buildname, data, tree, ports, deps, builders, make_vars, abi, existing
        )
        self.origin, self.blocked_by = origin, full.skipped.get(origin, "")
        # Its up-to-date package stays in the repository; a stale one goes, as in a bulk.
        self.keep = graph.packages_to_keep(ports, full, existing)
        self.counts["queued"] += 1
        self.counts["tobuild"] += 1

    def prepare(self) -> None:
        super().prepare()
        line = self.port_line(self.origin, "listed")
        self.d.badd("ports.queued", line)
        self.d.badd("ports.tobuild", line)

    def body(self, jail_version: str, keep_old: int) -> int:
        self.prepare()
        self.build_all()
        port = self.ports[self.origin]
        if self.blocked_by:
            cause = self.ports[self.blocked_by].pkgname
            self.d.badd("ports.skipped", self.port_line(self.origin, cause))
            self.counts["skipped"] += 1
        if self.counts["failed"] or self.counts["skipped"]:
            self.say("Error: Depends failed to build")
            failed = self.d.path / ".poudriere.ports.failed"
            self.say("Failed ports: " + " ".join(_words(failed.read_text(), 0, 2)))
            skipped = _words((self.d.path / ".poudriere.ports.skipped").read_text(), 0)
            if skipped:
                self.say("Skipped ports: " + " ".join(sorted(set(skipped))))
            self.update_json()
            return 1
        self.commit(jail_version, keep_old)
        # The dependencies are installed from the committed repository now.
        self.building = self.pkgdir / ".latest"
        now = int(time.monotonic())
        self.d.status(f"testing:{self.origin}:{port.pkgname}:{now}:{now}")
        self.say(f"Building {self.origin} | {port.pkgname} for testing")
        phase, elapsed = self.build_port(self.origin, "", TEST_VARS)
        if phase:
            self.d.badd("ports.failed", self.port_line(self.origin, phase, phase, str(elapsed)))
            self.d.link_log("errors", port.pkgname)
            self.counts["failed"] += 1
            self.update_json()
            self.say(f"Error: Build failed in phase: {phase}")
            return 1
        self.d.badd("ports.built", self.port_line(self.origin, str(elapsed)))
        self.d.link_log("built", port.pkgname)
        self.counts["built"] += 1
        self.d.status("done:")
        self.say(f"Finished {self.origin} | {port.pkgname}: Success")
        return 0

    def package_dir(self, origin: str) -> str:
        """The tested port's package: `/tmp/pkgs` in its build root, never committed."""
        return "/tmp/pkgs" if origin == self.origin else super().package_dir(origin)


def _words(text: str, *fields: int) -> list[str]:
    """`awk '{print $1 ":" $3}'` over a ports list: the given fields of each line, `:`-joined."""
    return [":".join(line.split()[f] for f in fields) for line in text.splitlines() if line]
