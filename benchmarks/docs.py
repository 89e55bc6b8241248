"""The benchmark tables in docs/ are written by the benchmarks themselves, never by hand: each run replaces its
own marked section (`<!-- bench:NAME -->` ... `<!-- /bench:NAME -->`) with the table it measured, the date, the
machine and the command that reproduces it."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from benchmarks.common import ROOT
from enrich.files import write_json, write_text

BENCHMARKS_DOC = ROOT / "docs" / "benchmarks.md"


def update_section(name: str, table: str, command: str, machine: str, doc: Path = BENCHMARKS_DOC) -> bool:
    """Replace section `name` of `doc` with `table`; False (and nothing written) where the doc has no such section."""
    if not doc.exists():
        return False
    text = doc.read_text()
    pattern = re.compile(rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        return False
    body = f"Measured {date.today().isoformat()} on {machine}, with `{command}`:\n\n{table.strip()}\n"
    write_text(doc, pattern.sub(lambda m: m.group(1) + body + m.group(2), text))
    return True


def publish(out: Path, stem: str, results, table: str) -> None:
    """A benchmark's results as out/STEM.json, its table as out/STEM.md, and the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", results)
    write_text(out / f"{stem}.md", table + "\n")
    print(table)
