"""The workbench's data: batches of enriched listings to review, and the team's decisions, in one SQLite file.

Decisions are append-only (triggers refuse UPDATE and DELETE): a listing's current state is its latest decision.
Every write is committed before the page says it is saved, in WAL mode with full syncs, so a saved decision
survives the server being killed at any moment.
"""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from enrich.manifest import now

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, source TEXT NOT NULL, created_at TEXT NOT NULL,
    rows INTEGER NOT NULL, enriched INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS listings (
    batch INTEGER NOT NULL REFERENCES batches(id), row INTEGER NOT NULL, id TEXT NOT NULL, status TEXT NOT NULL,
    title TEXT, brand TEXT, text TEXT, given_category TEXT, tags TEXT,
    category TEXT, category_score REAL, exposure_prior REAL, priority REAL NOT NULL, output TEXT NOT NULL,
    PRIMARY KEY (batch, row));
CREATE INDEX IF NOT EXISTS listings_by_priority ON listings (batch, priority DESC, row);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, batch INTEGER, listing TEXT NOT NULL, before TEXT, after TEXT,
    action TEXT NOT NULL, who TEXT NOT NULL, at TEXT NOT NULL, source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_by_listing ON decisions (batch, listing, seq);
CREATE TRIGGER IF NOT EXISTS decisions_are_append_only_update BEFORE UPDATE ON decisions
    BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_are_append_only_delete BEFORE DELETE ON decisions
    BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;
"""
ACTIONS = ("accept", "pick", "type", "conflict", "bulk")  # how the `after` path was chosen
SOURCES = ("queue", "conflict", "bulk")  # where in the workbench it was chosen
PAGE = 50
# A listing of a batch that has a decision (the queries alias listings as `l`).
DECIDED = "EXISTS (SELECT 1 FROM decisions d WHERE d.batch = l.batch AND d.listing = l.id)"
INSERT_DECISION = ("INSERT INTO decisions (batch, listing, before, after, action, who, at, source)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _check(action: str, source: str) -> None:
    if action not in ACTIONS or source not in SOURCES:
        raise ValueError(f"unknown action {action!r} or source {source!r}")


def review_priority(status: str, category_score: float | None, exposure_prior: float | None, given: bool) -> float:
    """What a review is worth: the chance the category is wrong (`category_score` is calibrated), so that a batch is
    right as often as the team needs after the fewest reviews; the exposure expected only breaks ties (weighing by
    it cost reviews, docs/benchmarks.md). Listings that came with their category, or could not be enriched, come last."""
    if status != "ok" or given or category_score is None:
        return -1.0
    return (1.0 - category_score) + 1e-9 * math.log1p(max(exposure_prior or 0.0, 0.0))


@dataclass(frozen=True)
class QueueFilter:
    state: str = "pending"  # pending | decided | all
    top: str = ""  # the predicted category's top level
    min_score: float = 0.0
    max_score: float = 1.0
    query: str = ""  # words of the title
    page: int = 0


class Store:
    """One SQLite file; a connection per call, so that the server's threads never share one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        try:
            yield db
        finally:
            db.close()

    # -- batches ---------------------------------------------------------------------------------------------------
    def new_batch(self, name: str, source: str, rows: int, state: str = "enriching") -> int:
        with self.connect() as db:
            return db.execute("INSERT INTO batches (name, source, created_at, rows, state) VALUES (?, ?, ?, ?, ?)",
                              (name, source, now(), rows, state)).lastrowid

    def add_listings(self, batch: int, listings: pl.DataFrame, output: pl.DataFrame) -> None:
        """Rows of a standard frame (`listings`) with their output contract rows, in the same order."""
        records = []
        for listing, out in zip(listings.iter_rows(named=True), output.iter_rows(named=True)):
            given = listing["category"] is not None
            records.append((
                batch, listing["row"], listing["id"], out["status"], listing["title"], listing["brand"], listing["text"],
                listing["category"], json.dumps(listing["tags"] or []), out["category"], out["category_score"],
                out["exposure_prior"], review_priority(out["status"], out["category_score"], out["exposure_prior"], given),
                json.dumps(out, default=str)))
        with self.connect() as db:
            db.execute("BEGIN")
            db.executemany("INSERT INTO listings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
            db.execute("UPDATE batches SET enriched = enriched + ? WHERE id = ?", (len(records), batch))
            db.execute("COMMIT")

    def set_rows(self, batch: int, rows: int) -> None:
        with self.connect() as db:
            db.execute("UPDATE batches SET rows = ? WHERE id = ?", (rows, batch))

    def finish_batch(self, batch: int, error: str | None = None) -> None:
        with self.connect() as db:
            db.execute("UPDATE batches SET state = ?, error = ? WHERE id = ?", ("failed" if error else "ready", error, batch))

    # -- resumable batches: a batch whose process stopped is marked interrupted, then resumed where it stopped -----
    def batches_in_state(self, state: str) -> list[int]:
        with self.connect() as db:
            return [r[0] for r in db.execute("SELECT id FROM batches WHERE state = ? ORDER BY id", (state,)).fetchall()]

    def mark_interrupted(self, batch: int) -> bool:
        """A batch left "enriching" by a process that stopped, marked "interrupted"; False if it had moved on."""
        with self.connect() as db:
            return db.execute("UPDATE batches SET state = 'interrupted' WHERE id = ? AND state = 'enriching'",
                              (batch,)).rowcount == 1

    def resume_batch(self, batch: int) -> bool:
        """An interrupted batch back to "enriching"; False if it was not interrupted (or is resumed already)."""
        with self.connect() as db:
            return db.execute("UPDATE batches SET state = 'enriching', error = NULL WHERE id = ? AND state = 'interrupted'",
                              (batch,)).rowcount == 1

    def stored_rows(self, batch: int) -> set[int]:
        """The rows of a batch already stored: a resumed batch skips them."""
        with self.connect() as db:
            return {r[0] for r in db.execute("SELECT row FROM listings WHERE batch = ?", (batch,)).fetchall()}

    def batches(self) -> list[dict]:
        with self.connect() as db:
            rows = db.execute("""SELECT b.*, (SELECT COUNT(DISTINCT d.listing) FROM decisions d WHERE d.batch = b.id) AS decided
                                 FROM batches b ORDER BY b.id DESC""").fetchall()
        return [dict(r) for r in rows]

    def batch(self, batch: int) -> dict | None:
        with self.connect() as db:
            row = db.execute("SELECT * FROM batches WHERE id = ?", (batch,)).fetchone()
        return dict(row) if row else None

    # -- the queue -------------------------------------------------------------------------------------------------
    def queue(self, batch: int, f: QueueFilter) -> tuple[list[dict], int]:
        """A page of the batch's listings, most worth reviewing first, with their latest decision; and how many match."""
        where, args = ["l.batch = ?", "l.status = 'ok'"], [batch]
        if f.state == "pending":
            where.append(f"NOT {DECIDED}")
        elif f.state == "decided":
            where.append(DECIDED)
        if f.top:
            where.append("(l.category = ? OR l.category LIKE ?)")
            args += [f.top, f.top + " > %"]
        where.append("COALESCE(l.category_score, 0) BETWEEN ? AND ?")
        args += [f.min_score, f.max_score]
        if f.query:
            where.append("l.title LIKE ?")
            args.append(f"%{f.query}%")
        condition = " AND ".join(where)
        with self.connect() as db:
            total = db.execute(f"SELECT COUNT(*) FROM listings l WHERE {condition}", args).fetchone()[0]
            rows = db.execute(f"""
                SELECT l.row, l.id, l.title, l.brand, l.category, l.category_score, l.exposure_prior, l.priority,
                       (SELECT d.after FROM decisions d WHERE d.batch = l.batch AND d.listing = l.id ORDER BY d.seq DESC LIMIT 1) AS decided
                FROM listings l WHERE {condition} ORDER BY l.priority DESC, l.row LIMIT ? OFFSET ?""",
                              [*args, PAGE, f.page * PAGE]).fetchall()
        return [dict(r) for r in rows], total

    def top_levels(self, batch: int) -> list[str]:
        with self.connect() as db:
            rows = db.execute("SELECT DISTINCT category FROM listings WHERE batch = ? AND category IS NOT NULL", (batch,)).fetchall()
        return sorted({r[0].split(" > ")[0] for r in rows})

    def listing(self, batch: int, row: int) -> dict | None:
        with self.connect() as db:
            found = db.execute("SELECT * FROM listings WHERE batch = ? AND row = ?", (batch, row)).fetchone()
        if found is None:
            return None
        listing = dict(found)
        listing["output"] = json.loads(listing["output"])
        listing["tags"] = json.loads(listing["tags"])
        listing["history"] = self.history(batch, listing["id"])
        return listing

    def next_pending(self, batch: int, after_priority: float, after_row: int) -> int | None:
        """The next listing of the queue's default order that has no decision yet, after the one given."""
        with self.connect() as db:
            found = db.execute(f"""
                SELECT l.row FROM listings l WHERE l.batch = ? AND l.status = 'ok'
                  AND (l.priority < ? OR (l.priority = ? AND l.row > ?)) AND NOT {DECIDED}
                ORDER BY l.priority DESC, l.row LIMIT 1""", (batch, after_priority, after_priority, after_row)).fetchone()
        return found[0] if found else None

    # -- decisions --------------------------------------------------------------------------------------------------
    def decide(self, batch: int | None, listing: str, before: str | None, after: str, action: str, who: str,
               source: str) -> int:
        """Record one decision; returns its sequence number once it is on disk."""
        _check(action, source)
        with self.connect() as db:
            return db.execute(INSERT_DECISION, (batch, listing, before, after, action, who, now(), source)).lastrowid

    def decide_many(self, rows: list[tuple], who: str, source: str, action: str) -> int:
        """Several decisions in one transaction: (batch, listing, before, after) each."""
        _check(action, source)
        with self.connect() as db:
            db.execute("BEGIN")
            db.executemany(INSERT_DECISION, [(*r, action, who, now(), source) for r in rows])
            db.execute("COMMIT")
        return len(rows)

    def bulk_accept(self, batch: int, min_score: float, who: str) -> int:
        """Accept every pending listing of the batch whose category score reaches `min_score`."""
        with self.connect() as db:
            rows = db.execute(f"""
                SELECT l.batch, l.id, l.category, l.category FROM listings l
                WHERE l.batch = ? AND l.status = 'ok' AND l.category IS NOT NULL AND l.category_score >= ?
                  AND NOT {DECIDED}""",
                              (batch, min_score)).fetchall()
        return self.decide_many([tuple(r) for r in rows], who, "bulk", "bulk")

    def history(self, batch: int | None, listing: str) -> list[dict]:
        with self.connect() as db:
            rows = db.execute("SELECT * FROM decisions WHERE batch IS ? AND listing = ? ORDER BY seq", (batch, listing)).fetchall()
        return [dict(r) for r in rows]

    def decided_paths(self) -> list[str]:
        with self.connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT after FROM decisions WHERE after IS NOT NULL").fetchall()]

    def decisions(self) -> pl.DataFrame:
        """Every decision, oldest first, with its batch's name and, for a reviewed new listing, its text (what a
        catalog relabelled by `--decisions` needs): what `enrich review export` writes."""
        with self.connect() as db:
            rows = db.execute("""SELECT d.seq, d.batch, b.name AS batch_name, d.listing, d.before, d.after, d.action,
                                        d.who, d.at, d.source, l.title, l.brand, l.text
                                 FROM decisions d LEFT JOIN batches b ON b.id = d.batch
                                 LEFT JOIN listings l ON l.batch = d.batch AND l.id = d.listing ORDER BY d.seq""").fetchall()
        schema = {"seq": pl.Int64, "batch": pl.Int64, "batch_name": pl.String, "listing": pl.String, "before": pl.String,
                  "after": pl.String, "action": pl.String, "who": pl.String, "at": pl.String, "source": pl.String,
                  "title": pl.String, "brand": pl.String, "text": pl.String}
        return pl.DataFrame([dict(r) for r in rows], schema=schema, orient="row")
