"""Index folders as versions: `NAME` is a symlink to a hidden complete version folder beside it.

A build or an update writes a new version under a `.partial` name, renames it complete, then switches the
link in one rename: a reader resolves the link once and reads one whole version, never a mix or half of one.
The previous complete version is kept, for readers still on it and as the way back (`enrich index --rollback`).
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from enrich.errors import InputError
from enrich.files import OutputError, is_artifact_folder

def _versions(out_dir: Path, suffix: str = "") -> list[Path]:
    found = [p for p in out_dir.parent.glob(f".{out_dir.name}.v*{suffix}") if p.is_dir()]
    if not suffix:
        found = [p for p in found if p.name.rsplit(".v", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.rsplit(".v", 1)[1].split(".")[0]))


def list_versions(out_dir: Path) -> list[tuple[Path, bool]]:
    """Complete versions, oldest first, each with whether the index link points at it."""
    current = out_dir.resolve() if out_dir.is_symlink() else None
    return [(version, version.resolve() == current) for version in _versions(out_dir)]


@contextmanager
def new_version(out_dir: Path) -> Iterator[Path]:
    """A new, empty version folder to write; made the index when the block ends without an error, removed
    otherwise. Use it with the index's lock held (`files.exclusive_lock`)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_symlink():
        if is_artifact_folder(out_dir):  # an index copied as a plain folder: it becomes this link's first version
            adopted = out_dir.parent / f".{out_dir.name}.v{time.time_ns()}"
            os.replace(out_dir, adopted)
            os.symlink(adopted.name, out_dir)
        elif any(out_dir.iterdir()):
            raise InputError(f"{out_dir} exists and is not an enrich index; choose another --out")
        else:
            out_dir.rmdir()
    for stale in _versions(out_dir, ".partial"):  # left by a killed writer: the lock says none is running
        shutil.rmtree(stale, ignore_errors=True)
    name = f".{out_dir.name}.v{time.time_ns()}"
    partial = out_dir.parent / f"{name}.partial"
    try:
        partial.mkdir()
    except PermissionError:
        raise OutputError(f"{out_dir}: cannot write in {out_dir.parent} (permission denied)") from None
    try:
        yield partial
        version = partial.rename(out_dir.parent / name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    switch_to(out_dir, version)


def switch_to(out_dir: Path, version: Path) -> None:
    """Point the index link at `version` in one rename; keep it and the version the link pointed at before."""
    before = out_dir.resolve() if out_dir.is_symlink() else None
    link = out_dir.parent / f".{out_dir.name}.link-{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(version.name, link)  # relative, so the parent folder can be moved as a whole
    os.replace(link, out_dir)
    for old in _versions(out_dir):
        if old.resolve() not in (version.resolve(), before):
            shutil.rmtree(old, ignore_errors=True)


def rollback(out_dir: Path) -> Path:
    """Point the index back at the complete version before the current one; returns it."""
    versions = list_versions(Path(out_dir))
    current = [i for i, (_, is_current) in enumerate(versions) if is_current]
    if not current or current[0] == 0:
        raise InputError(f"{out_dir}: no earlier version to roll back to"
                         f" ({len(versions)} version{'s' if len(versions) != 1 else ''} kept)")
    previous = versions[current[0] - 1][0]
    switch_to(Path(out_dir), previous)
    return previous
