"""Writing files so that a reader, or a killed process, never leaves or sees half of one.

Every file enrich writes goes through `atomic_path`: the content is written to a hidden temporary file
beside the target, then renamed over it in one step. Files get the permissions the umask gives a new
file (a temporary file would otherwise keep mode 0600).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from enrich.errors import ArtifactError, InputError


class OutputError(InputError):
    """An output that cannot or must not be written where it was asked for."""


class DamagedFile(ArtifactError):
    """A file of an index or model folder that is not what enrich wrote there."""


VERIFY_BYTES = 256 * 2**20  # files up to this size are hashed on every load; larger ones when asked to verify


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path`'s content to; renamed into place when the block ends without an error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except PermissionError:
        raise OutputError(f"{path}: cannot write in {path.parent} (permission denied)") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except PermissionError:
        raise OutputError(f"{path}: cannot write in {path.parent} (permission denied)") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, value, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(value, indent=indent, default=str) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return Path(path)


def spreadsheet_safe(column: pl.Expr) -> pl.Expr:
    """A text cell that a spreadsheet would run as a formula (it starts with =, +, -, @, a tab or a carriage return)
    gets a leading quote, as OWASP advises for CSV exports; a plain number such as -3 is left as it is."""
    formula = column.str.contains(r"^[=+\-@\t\r]") & ~column.str.contains(r"^[-+]?[0-9]+(\.[0-9]+)?$")
    return pl.when(formula).then(pl.lit("'") + column).otherwise(column)


def as_csv_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """List columns joined with "|", and every text cell made safe to open in a spreadsheet."""
    lists = [c for c, dtype in frame.schema.items() if isinstance(dtype, pl.List)]
    joined = frame.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join("|") for c in lists)
    return joined.with_columns(spreadsheet_safe(pl.col(c)).alias(c) for c, dtype in joined.schema.items() if dtype == pl.String)


def write_table(frame: pl.DataFrame, path: str | Path) -> Path:
    """Parquet, or CSV when the name ends in .csv (spreadsheet-safe, lists joined with "|")."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; --out takes a file name such as {path / 'enriched.parquet'}")
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            as_csv_frame(frame).write_csv(tmp)
        else:
            frame.write_parquet(tmp)
    return path


class NpyRowWriter:
    """Writes an (n, dim) float32 .npy file a block of rows at a time, through plain file writes: unlike a
    memory map, rows written do not stay in the process's memory. Write it inside a folder that is itself
    made visible in one step (an index version)."""

    def __init__(self, path: Path, rows: int, dim: int):
        self.path, self.rows, self.written = path, rows, 0
        self.file = open(path, "wb")
        np.lib.format.write_array_header_1_0(self.file, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})

    def write(self, block: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        self.written += len(block)

    def close(self) -> None:
        self.file.close()
        if self.written != self.rows:
            raise RuntimeError(f"{self.path}: {self.written} rows written of {self.rows}")


def same_file(a: str | Path, b: str | Path) -> bool:
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_path(path: str | Path, inputs: tuple[str | Path | None, ...] = (), folder: bool = False) -> Path:
    """Refuse, before any work, an output that names an input or lies inside (or, for a file, is) an index or model
    folder: it would replace or corrupt it. `folder`: the output is a folder (an index), not a file."""
    path = Path(path)
    if not folder and path.is_dir():
        raise OutputError(f"{path}: is a folder; --out takes a file name such as {path / 'enriched.parquet'}")
    for given in inputs:
        if given is not None and (same_file(given, path) or Path(given).resolve().is_relative_to(path.resolve())):
            raise OutputError(f"{path}: --out names an input file, which the output would replace; choose another name")
    for parent in path.resolve().parents:
        if is_artifact_folder(parent):
            raise OutputError(f"{path}: --out lies inside {parent}, an enrich index or model folder; write outputs elsewhere")
    return path


def is_artifact_folder(folder: Path) -> bool:
    """An index or a tagger folder: nothing but enrich's own writers may change what is in it."""
    return (folder / "hnsw.bin").exists() or (folder / "tagger.json").exists()


@contextmanager
def exclusive_lock(target: Path, what: str) -> Iterator[None]:
    """Hold `.NAME.lock` beside `target` for the block; a second writer of the same target fails at once with a clear
    message instead of racing the first. The lock goes with the process, so a killed writer leaves none held."""
    import fcntl

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    try:
        handle = open(lock_path, "a+")
    except PermissionError:
        raise OutputError(f"{target}: cannot write in {target.parent} (permission denied)") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputError(f"{target}: {what} is already being written by {holder}; wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"enrich (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path, skip: tuple[str, ...] = ("manifest.json",)) -> dict[str, dict]:
    """Every file of an artifact folder with its size and SHA-256, for its manifest."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name not in skip}


def check_files(folder: Path, recorded: dict[str, dict], what: str, verify: bool = False) -> None:
    """Refuse a damaged artifact: a recorded file missing, replaced by a link, of another size, or (where it is small
    enough to hash on every load, or with `verify`) of other content. Damaged files must never reach hnswlib or torch,
    which can crash or return garbage on them."""
    for name, expected in recorded.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise DamagedFile(f"{path}: {'a link' if path.is_symlink() else 'missing'} where {what} wrote a file:"
                              " the folder has been changed by hand")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise DamagedFile(f"{path}: {size} bytes where {what} wrote {expected['bytes']}: the file is damaged")
        if (verify or size <= VERIFY_BYTES) and sha256(path) != expected["sha256"]:
            raise DamagedFile(f"{path}: its content differs from what {what} wrote (checksum): the file is damaged")
