"""Benchmark: the repository catalogue and publishing, full against incremental (not a test).

Synthetic packages (small but valid .pkg files with realistic manifests: dependencies,
options, licenses, a description) are written once into a temp directory and hard-linked
into a packages directory of each size. Per size, each step runs in a fresh process, so its
peak RSS is its own:

  catalogue full   write_repository + sign, no cache: every package unpacked and verified
  catalogue incr   the same after 100 packages changed, with the cache of the previous run
  publish first    publish() into an empty root: pool, hashed links, catalogue, verify, swap
  publish nocache  republish after 100 changed with the cache deleted (full catalogue)
  publish incr     republish after 100 changed with the cache

Figures are printed as ratios against the full runs measured in the same run.

Run (no root):  .venv/bin/python bench/catalogue.py [--sizes 1000,10000,35000] [--changed 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jailfarm.poudriere.pkgfile import PackageMeta, PayloadFile, file_sum, pack

STEPS = ("catalogue full", "catalogue incr", "publish first", "publish nocache", "publish incr")
DESC = "A synthetic package for the catalogue benchmark. " * 4


def meta(i: int, revision: int) -> PackageMeta:
    deps = {f"lib{j}": {"origin": f"devel/lib{j}", "version": f"{j}.0"} for j in range(i % 6)}
    version = f"{1 + i % 9}.{i % 13}.{i % 7}" + (f"_{revision}" if revision else "")
    return PackageMeta(
        name=f"port{i:05d}",
        origin=f"misc/port{i:05d}",
        version=version,
        comment=f"Synthetic port number {i}",
        desc=DESC,
        maintainer="ports@example.org",
        www=f"https://example.org/port{i}",
        abi="FreeBSD:14:amd64",
        deps=deps,
        options={"DOCS": "on", "EXAMPLES": "off", "NLS": "on"},
        categories=("misc", "devel"),
        licenses=("BSD2CLAUSE",),
    )


def write_pkg(where: Path, i: int, revision: int = 0) -> Path:
    m = meta(i, revision)
    body = f"{m.name} {m.version}\n".encode() * 16
    payload = PayloadFile(f"/usr/local/share/{m.name}/README", file_sum(body), 0o644, 0, len(body))
    path = where / m.filename
    path.write_bytes(pack(m, [(payload, body)]))
    return path


def make_store(top: Path, count: int, changed: int) -> None:
    """`count` packages in top/pkgs, and three changed revisions of the first `changed`."""
    for revision in range(4):
        out = top / f"pkgs{revision}"
        out.mkdir()
        for i in range(count if revision == 0 else changed):
            write_pkg(out, i, revision)


def packages_dir(top: Path, n: int, revision: int, changed: int) -> Path:
    """A packages directory (All/*.pkg, hard links) of the first n, with the first `changed`
    at `revision`."""
    src = top / f"src{n}" / "All"
    shutil.rmtree(src.parent, ignore_errors=True)
    src.mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(top / "pkgs0"))[:n]):
        origin = top / "pkgs0" / name
        if revision and i < changed:
            origin = top / f"pkgs{revision}" / meta(i, revision).filename
        os.link(origin, src / origin.name)
    return src.parent


def child(step: str, top: Path, src: Path, n: int) -> None:
    """One measured step, in this (fresh) process; prints seconds and peak RSS as JSON."""
    from jailfarm.poudriere.generations import publish
    from jailfarm.poudriere.pkgrepo import write_repository
    from jailfarm.poudriere.pkgsign import KeyFileSigner
    from tests.support import resolve

    signer = KeyFileSigner(top / "repo.key")
    start = time.perf_counter()
    if step.startswith("catalogue"):
        resolve(write_repository(src, signer=signer, cache=top / f"cache{n}.tsv"))
    else:
        resolve(publish(top / f"root{n}", "main", src, signer, 2))
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": elapsed, "peak_mb": peak}))


def measure(step: str, top: Path, src: Path, n: int) -> dict[str, float]:
    argv = [sys.executable, __file__, "--child", step, str(top), str(src), str(n)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def run_size(top: Path, n: int, changed: int) -> dict[str, dict[str, float]]:
    figures = {}
    src = packages_dir(top, n, 0, changed)
    figures["catalogue full"] = measure("catalogue full", top, src, n)
    src = packages_dir(top, n, 1, changed)
    figures["catalogue incr"] = measure("catalogue incr", top, src, n)
    src = packages_dir(top, n, 0, changed)
    figures["publish first"] = measure("publish first", top, src, n)
    src = packages_dir(top, n, 2, changed)
    (top / f"root{n}" / "main" / ".catalogue-cache.tsv").unlink()
    figures["publish nocache"] = measure("publish nocache", top, src, n)
    src = packages_dir(top, n, 3, changed)
    figures["publish incr"] = measure("publish incr", top, src, n)
    shutil.rmtree(top / f"root{n}")
    shutil.rmtree(src)
    return figures


def report(n: int, figures: dict[str, dict[str, float]], changed: int) -> None:
    print(f"\n{n} packages ({changed} changed for the incremental runs)")
    for step in STEPS:
        f = figures[step]
        print(f"  {step:<16} {f['seconds']:7.2f} s   peak RSS {f['peak_mb']:6.0f} MB")
    cat = figures["catalogue incr"]["seconds"] / figures["catalogue full"]["seconds"]
    pub = figures["publish incr"]["seconds"] / figures["publish nocache"]["seconds"]
    print(f"  catalogue incremental / full:          {cat:.3f}")
    print(f"  publish incremental / full catalogue:  {pub:.3f}")


def report_key(pem: bytes) -> None:
    """The fixed cost in every figure: parsing the key file, which pkgsign does per signature."""
    from jailfarm.poudriere.pkgsign import rsa_signature

    start = time.perf_counter()
    rsa_signature(b"catalogue", pem)
    took = time.perf_counter() - start
    print(f"parsing the 4096-bit key and one signature: {took:.3f} s (once per publish:")
    print("  KeyFileSigner keeps the parsed key for its three signatures)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,35000", help="comma-separated counts")
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, top, src, n = args.child
        child(step, Path(top), Path(src), int(n))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="jf-bench-catalogue-") as tmp:
        top = Path(tmp)
        key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        (top / "repo.key").write_bytes(pem)
        report_key(pem)
        start = time.perf_counter()
        make_store(top, sizes[-1], args.changed)
        print(f"wrote {sizes[-1]} synthetic packages in {time.perf_counter() - start:.1f} s")
        for n in sizes:
            report(n, run_size(top, n, args.changed), args.changed)


if __name__ == "__main__":
    main()
