#!/usr/bin/env python3
"""Mutation audit: do the tests notice when important behaviour changes?

Each entry of ``tests/mutations.yaml`` is one small, realistic bug: a file, the exact text to replace (found
exactly once), its replacement, the tests that must fail because of it, and one line saying what breaks. The
audit copies the repository into a temporary directory (the working tree's tracked and untracked, not ignored,
files as they are now; or, with ``--source head``, the last commit), checks that the unchanged copy passes the
listed tests, then applies one mutation at a time there, runs only its tests (``pytest -x -q``) with
``PYTHONPATH`` on the copy, and puts the file back. The working tree is never written to.

    python scripts/mutation_audit.py                  # every mutation, then a table; exit 1 if any survived
    python scripts/mutation_audit.py -k checksum -k kv  # only mutations whose name contains one of these
    python scripts/mutation_audit.py --list           # what would run
    python scripts/mutation_audit.py --check          # is every old text still in the code (no test run)

A mutation is *caught* when its tests fail (or error, or time out), *survived* when they pass, and *stale* when
its old text is no longer in the file exactly once (the code moved: update the entry). Exit status: 0 when every
mutation run was caught, 1 when any survived or is stale, 2 when the unchanged copy fails its tests.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIST = REPO / "tests" / "mutations.yaml"
# The audit's own model cache: a mutated run must never write into the cache other test runs share.
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "gr-audit-cache"
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)(?: - (.*))?$", re.M)


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


@dataclass
class Outcome:
    mutation: Mutation
    status: str  # caught | survived | stale | timeout
    seconds: float
    detail: str = ""  # the first failing test, or why it is stale


def read_mutations(path: Path) -> list[Mutation]:
    import yaml

    entries = yaml.safe_load(path.read_text())
    out, seen = [], set()
    for i, e in enumerate(entries):
        missing = {"name", "file", "old", "new", "tests", "what"} - set(e)
        if missing:
            raise SystemExit(f"{path}: entry {i} lacks {', '.join(sorted(missing))}")
        if e["name"] in seen:
            raise SystemExit(f"{path}: the name {e['name']!r} is used twice")
        seen.add(e["name"])
        out.append(Mutation(e["name"], e["file"], e["old"], e["new"], tuple(e["tests"]), e["what"]))
    return out


def copy_repo(dest: Path, source: str) -> None:
    """Into ``dest``: the working tree's files (tracked and untracked, minus ignored ones) as they are now
    (``source="worktree"``), or the last commit's (``"head"``)."""
    if source == "head":
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    else:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                check=True, capture_output=True).stdout.decode().split("\0")
        for rel in filter(None, listed):
            src = REPO / rel
            if not src.is_file():  # deleted in the working tree
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def environment(copy: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["GEMMA_RUN_TEST_CACHE"] = str(cache)
    env["OMP_NUM_THREADS"] = "1"
    env["COLUMNS"] = "400"  # pytest cuts its summary lines (the failing assertion) to the terminal's width
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def check_imports(copy: Path, env: dict[str, str]) -> None:
    """gemma_run and its configs must come from the copy, or every mutation would test the working tree."""
    probe = "import gemma_run, gemma_run.conf; print(gemma_run.__file__); print(list(gemma_run.conf.__path__)[0])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    for found in out:
        if not Path(found).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"the copy imports {found}, not its own files: the audit would test the working tree")
    print(f"copy: {copy} (gemma_run: {out[0]}; configs: {out[1]})", flush=True)


def run_tests(copy: Path, env: dict[str, str], tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-rfE", *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout or ""
        return None, out.decode(errors="replace") if isinstance(out, bytes) else out
    return proc.returncode, proc.stdout + proc.stderr


def stale(m: Mutation, root: Path) -> str | None:
    """Why ``m`` cannot be applied to the tree at ``root`` (None when its old text is there exactly once)."""
    path = root / m.file
    if not path.is_file():
        return f"{m.file} does not exist"
    count = path.read_text().count(m.old)
    return None if count == 1 else f"old text found {count} times in {m.file}"


def audit(m: Mutation, copy: Path, env: dict[str, str], timeout: float) -> Outcome:
    path = copy / m.file
    start = time.monotonic()
    why = stale(m, copy)
    if why:
        return Outcome(m, "stale", 0.0, why)
    original = path.read_text()
    path.write_text(original.replace(m.old, m.new))
    try:
        rc, output = run_tests(copy, env, m.tests, timeout)
    finally:
        path.write_text(original)
        for cached in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
            cached.unlink()
    seconds = time.monotonic() - start
    if rc is None:
        return Outcome(m, "timeout", seconds, f"tests ran past {timeout:.0f} s (counted as caught)")
    if rc == 0:
        return Outcome(m, "survived", seconds)
    if rc == 5:
        return Outcome(m, "stale", seconds, "no test collected: check the test ids")
    failed = _FAILED.search(output)
    if not failed:
        return Outcome(m, "caught", seconds, f"pytest exit {rc}")
    test = failed[1].split("::", 1)[-1]
    reason = (failed[2] or "").replace("|", "/")[:70]
    return Outcome(m, "caught", seconds, f"{test}: {reason}" if reason else test)


def table(outcomes: list[Outcome]) -> str:
    rows = ["| # | mutation | file | result | caught by | s |", "|---|---|---|---|---|---|"]
    for i, o in enumerate(outcomes, 1):
        rows.append(f"| {i} | {o.mutation.name}: {o.mutation.what} | {o.mutation.file} | {o.status} | "
                    f"{o.detail} | {o.seconds:.0f} |")
    counts = {s: sum(o.status == s for o in outcomes) for s in ("caught", "timeout", "survived", "stale")}
    rows.append("")
    rows.append(f"{counts['caught'] + counts['timeout']} of {len(outcomes)} caught "
                f"({counts['timeout']} by timeout), {counts['survived']} survived, {counts['stale']} stale")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutations", type=Path, default=DEFAULT_LIST, help="the list (default: %(default)s)")
    parser.add_argument("-k", dest="only", action="append", default=[],
                        help="run only mutations whose name contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--check", action="store_true",
                        help="only check that every old text is in the working tree exactly once")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation's tests")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="the tiny model's cache, apart from other test runs' (default: %(default)s)")
    parser.add_argument("--source", choices=("worktree", "head"), default="worktree",
                        help="what to copy: the working tree as it is (default) or the last commit")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not first run the tests on the unchanged copy")
    parser.add_argument("--keep", action="store_true", help="keep the copy (its path is printed)")
    parser.add_argument("--report", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)

    mutations = [m for m in read_mutations(args.mutations) if not args.only or any(k in m.name for k in args.only)]
    if not mutations:
        print("no mutation matches", file=sys.stderr)
        return 1
    if args.list:
        for m in mutations:
            print(f"{m.name}: {m.file}: {m.what}\n    tests: {' '.join(m.tests)}")
        return 0
    if args.check:
        problems = [(m.name, why) for m in mutations if (why := stale(m, REPO))]
        for name, why in problems:
            print(f"stale: {name}: {why}")
        print(f"{len(mutations) - len(problems)} of {len(mutations)} mutations apply to {REPO}")
        return 1 if problems else 0
    copy = Path(tempfile.mkdtemp(prefix="gemma-run-mutants-"))
    try:
        copy_repo(copy, args.source)
        env = environment(copy, args.cache)
        check_imports(copy, env)
        if not args.skip_baseline:
            tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
            print(f"baseline: {len(tests)} test ids on the unchanged copy ...", flush=True)
            rc, output = run_tests(copy, env, tests, args.timeout * 2)
            if rc != 0:
                print(output[-4000:], file=sys.stderr)
                print(f"baseline failed (pytest exit {rc}): fix the tests first", file=sys.stderr)
                return 2
        outcomes = []
        for i, m in enumerate(mutations, 1):
            print(f"[{i}/{len(mutations)}] {m.name} ...", end=" ", flush=True)
            outcome = audit(m, copy, env, args.timeout)
            print(f"{outcome.status} ({outcome.seconds:.0f} s) {outcome.detail}", flush=True)
            outcomes.append(outcome)
    finally:
        if args.keep:
            print(f"kept the copy: {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)
    report = table(outcomes)
    print("\n" + report)
    if args.report:
        args.report.write_text(report + "\n")
    return 1 if any(o.status in ("survived", "stale") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
