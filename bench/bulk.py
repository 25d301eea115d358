"""Benchmark: the dev-host bulk builder on the demo ports tree (not a test).

Three timings, each the median of `--repeat` runs, every run on a fresh copy of
examples/ports with a fresh etcdir and data directory: a full `bulk -a` with one builder (the
baseline), the same with two builders, and an incremental `bulk -a` (two builders) after a
PORTREVISION bump of devel/libjf, on top of a full two-builder bulk of the same copy. Figures
are printed as ratios against the baseline measured in the same run.

Run (needs bmake and cc; no root):  .venv/bin/python bench/bulk.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from jailfarm.poudriere.devbuilder import main as poudriere

TREE = Path(__file__).resolve().parents[1] / "examples" / "ports"
MASTERNAME = "j141-bench"


class Farm:
    """A temp copy of the demo tree registered in a temp etcdir (jail j141, tree bench)."""

    def __init__(self, top: Path) -> None:
        self.tree = top / "ports"
        shutil.copytree(TREE, self.tree)
        self.etc = top / "etc"
        self.etc.mkdir()
        (self.etc / "poudriere.conf").write_text(f"POUDRIERE_DATA='{top / 'data'}'\n")
        self.data = top / "data"
        self.cli("jail", "-c", "-j", "j141", "-v", "14.1-RELEASE", "-a", "amd64")
        self.cli("ports", "-c", "-p", "bench", "-m", "null", "-M", str(self.tree))

    def cli(self, *args: str) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = poudriere(["-e", str(self.etc), "-N", *args])
        if rc != 0:
            raise SystemExit(f"jailfarm-poudriere {' '.join(args)} exited {rc}:\n{out.getvalue()}")

    def bulk(self, name: str, builders: int) -> tuple[float, int]:
        """Seconds taken and the number of ports built."""
        start = time.perf_counter()
        self.cli("bulk", "-j", "j141", "-p", "bench", "-J", str(builders), "-B", name, "-a")
        elapsed = time.perf_counter() - start
        built = self.data / "logs" / "bulk" / MASTERNAME / name / ".poudriere.ports.built"
        return elapsed, len(built.read_text().splitlines())

    def bump_libjf(self) -> None:
        makefile = self.tree / "devel" / "libjf" / "Makefile"
        text = makefile.read_text()
        makefile.write_text(text.replace("CATEGORIES=", "PORTREVISION=\t1\nCATEGORIES=", 1))


def measure(repeat: int) -> dict[str, list[tuple[float, int]]]:
    runs: dict[str, list[tuple[float, int]]] = {"full -J 1": [], "full -J 2": [], "incr -J 2": []}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="jf-bench-bulk-") as top:
            runs["full -J 1"].append(Farm(Path(top)).bulk("full1", 1))
        with tempfile.TemporaryDirectory(prefix="jf-bench-bulk-") as top:
            farm = Farm(Path(top))
            runs["full -J 2"].append(farm.bulk("full2", 2))
            farm.bump_libjf()
            runs["incr -J 2"].append(farm.bulk("incr2", 2))
    return runs


def report(runs: dict[str, list[tuple[float, int]]]) -> None:
    median = {k: statistics.median(t for t, _ in v) for k, v in runs.items()}
    for key, values in runs.items():
        built = sorted({n for _, n in values})
        each = ", ".join(f"{t:.2f}" for t, _ in values)
        print(f"{key:<10} median {median[key]:6.2f} s  (runs: {each})  ports built: {built}")
    print(f"2 builders vs 1:                  {median['full -J 2'] / median['full -J 1']:.2f}x")
    print(f"incremental vs full (2 builders): {median['incr -J 2'] / median['full -J 2']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for tool in ("bmake", "cc"):
        if not shutil.which(tool):
            raise SystemExit(f"the demo ports tree needs {tool}")
    print(f"jailfarm-poudriere bulk -a on {TREE} (median of {args.repeat})")
    report(measure(args.repeat))


if __name__ == "__main__":
    main()
