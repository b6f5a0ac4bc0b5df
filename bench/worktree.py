"""Another revision's source tree for `--baseline REV`: a detached `git worktree` in the bench's
temporary directory, removed again however the run ends, and a check that a sidecar started
from it really imports that tree's `proxy` package rather than the installed (editable) one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .procs import REPO, HarnessError

GIT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Revision:
    """A commit to compare the working tree against: `name` as the user wrote it."""

    name: str
    commit: str  # full hash
    subject: str

    @property
    def short(self) -> str:
        return self.commit[:7]


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(REPO), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        check=False,
    )


def resolve(name: str) -> Revision:
    """The commit `name` (a hash, branch, tag or `HEAD~5`) stands for in this repository."""
    found = _git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}")
    if found.returncode != 0 or not found.stdout.strip():
        why = found.stderr.strip()
        raise HarnessError(f"{name!r} is not a commit of {REPO}" + (f": {why}" if why else ""))
    commit = found.stdout.strip()
    subject = _git("log", "-1", "--format=%s", commit).stdout.strip()
    return Revision(name=name, commit=commit, subject=subject)


def _remove(path: Path) -> None:
    """Unregisters and deletes the worktree; `--force` twice also removes one left locked by
    an interrupted `git worktree add`."""
    removed = _git("worktree", "remove", "--force", "--force", str(path))
    if removed.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        _git("worktree", "prune")


@contextmanager
def checkout(revision: Revision, parent: Path) -> Iterator[Path]:
    """`revision` checked out (detached) under `parent`; removed on exit, Ctrl-C included."""
    path = parent / f"baseline-{revision.short}"
    print(f"bench: checking out {revision.name} ({revision.short}) in {path}", file=sys.stderr)
    try:
        added = _git("worktree", "add", "--detach", "--quiet", str(path), revision.commit)
        if added.returncode != 0:
            raise HarnessError(f"git worktree add {revision.short} failed: {added.stderr.strip()}")
        yield path
    finally:
        _remove(path)


def proxy_imported_from(source: Path, env: Mapping[str, str]) -> Path:
    """Where `import proxy` resolves for a child started in `source` with `env`, as the
    sidecar is; a HarnessError unless that file lies inside `source`."""
    probe = [sys.executable, "-c", "import proxy; print(proxy.__file__)"]
    done = subprocess.run(
        probe, cwd=source, env=dict(env), capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise HarnessError(f"`import proxy` failed in {source}: {done.stderr.strip()[-500:]}")
    imported = Path(done.stdout.strip()).resolve()
    if not imported.is_relative_to(source.resolve()):
        raise HarnessError(f"a sidecar started in {source} would import proxy from {imported}")
    return imported
