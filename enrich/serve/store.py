"""The workbench's data: batches of enriched listings to review, and the team's decisions, in one SQLite file.

Decisions are append-only (triggers refuse UPDATE and DELETE): a listing's current state is its latest decision,
which a trigger copies into `current` as each one is written, so that the queue reads one row per listing. An undo
is a decision too (`undoes` names the one it reverts, `after` is the state it restores: null is pending), and a
bulk action is an `operation` whose decisions carry its id, undone as one. Every write is committed before the
page says it is saved, in WAL mode with full syncs, so a saved decision survives the server being killed at any
moment. Reservations (who has a listing open) and per-reviewer skips are working state, not history.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from contextlib import closing, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import polars as pl

from enrich.catalog.columns import Columns
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
# What the workbench added to the first schema: columns (added to an older store in place), and tables.
ADDED_COLUMNS = {
    "batches": {"digest": "TEXT", "columns": "TEXT"},  # the uploaded file's sha256; the column roles it was read with
    "decisions": {"op": "INTEGER", "undoes": "INTEGER"},  # the bulk operation it is part of; the decision it reverts
    # The acceptance policy's verdict, read from the output row: 0 is "enrich marks it safe".
    "listings": {"review": "INTEGER GENERATED ALWAYS AS (json_extract(output, '$.review')) VIRTUAL"},
}
WORKBENCH = """
CREATE INDEX IF NOT EXISTS decisions_by_who ON decisions (batch, who, seq);
CREATE INDEX IF NOT EXISTS listings_by_id ON listings (batch, id);
-- Everything the queue filters and orders by, so that counting a view never reads the rows' output JSON.
CREATE INDEX IF NOT EXISTS listings_for_queue ON listings
    (batch, status, priority DESC, row, id, category, category_score, review);
CREATE INDEX IF NOT EXISTS decisions_by_op ON decisions (op);
CREATE TABLE IF NOT EXISTS current (
    scope INTEGER NOT NULL, listing TEXT NOT NULL, seq INTEGER NOT NULL, after TEXT, who TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (scope, listing)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS decisions_make_current AFTER INSERT ON decisions BEGIN
    INSERT OR REPLACE INTO current VALUES (COALESCE(new.batch, 0), new.listing, new.seq, new.after, new.who, new.at); END;
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, kind TEXT NOT NULL, view TEXT NOT NULL, listings INTEGER NOT NULL,
    who TEXT NOT NULL, at TEXT NOT NULL, undoes INTEGER);
CREATE TABLE IF NOT EXISTS skips (
    batch INTEGER NOT NULL, listing TEXT NOT NULL, who TEXT NOT NULL, at TEXT NOT NULL,
    PRIMARY KEY (batch, who, listing)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    batch INTEGER NOT NULL, listing TEXT NOT NULL, who TEXT NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (batch, listing)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    batch INTEGER NOT NULL, row INTEGER NOT NULL, url TEXT NOT NULL, PRIMARY KEY (batch, row)) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS listing_words USING fts5(
    title, brand, category, content='listings', content_rowid='rowid', tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS listings_into_words AFTER INSERT ON listings BEGIN
    INSERT INTO listing_words (rowid, title, brand, category) VALUES (new.rowid, new.title, new.brand, new.category); END;
CREATE TRIGGER IF NOT EXISTS listings_out_of_words AFTER DELETE ON listings BEGIN
    INSERT INTO listing_words (listing_words, rowid, title, brand, category)
    VALUES ('delete', old.rowid, old.title, old.brand, old.category); END;
"""
# How the `after` path was chosen: the prediction, a parent level of it, an alternative, a typed known path, a new
# category confirmed as new, a conflict settled, a bulk action, or an undo (which restores the state before).
ACTIONS = ("accept", "parent", "pick", "type", "new", "conflict", "bulk", "undo")
SOURCES = ("queue", "conflict", "bulk")  # where in the workbench it was chosen
INSERT_DECISION = ("INSERT INTO decisions (batch, listing, before, after, action, who, at, source, op, undoes)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


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


def columns_json(columns: Columns) -> str:
    return json.dumps(asdict(columns))


def columns_from_json(text: str) -> Columns:
    """The roles `columns_json` wrote, exactly (lists back to tuples)."""
    raw = json.loads(text)
    category = raw.get("category")
    return Columns(**{**raw, "text": tuple(raw.get("text") or ()),
                      "category": tuple(category) if isinstance(category, list) else category})


class Store:
    """One SQLite file; a connection per thread (and process), so that the server's threads never share one. A
    connection stays open: opening one per call would cost a checkpoint of the log, with its disk syncs, each time
    the last one closed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.local = threading.local()
        with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._migrate(db)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """A store written before the workbench's tables: its columns added, its current states and words filled."""
        fresh = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        for table, added in ADDED_COLUMNS.items():
            present = {r[1] for r in db.execute(f"PRAGMA table_xinfo({table})")}
            for name, kind in added.items():
                if name not in present:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        db.executescript(WORKBENCH)
        if "current" not in fresh:
            db.execute("INSERT OR REPLACE INTO current SELECT COALESCE(batch, 0), listing, seq, after, who, at"
                       " FROM decisions ORDER BY seq")
        if "listing_words" not in fresh:
            db.execute("INSERT INTO listing_words (listing_words) VALUES ('rebuild')")

    @contextmanager
    def connect(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """This thread's connection. `durable=False` for working state (reservations): a commit then skips the disk
        sync that decisions get. A transaction left open by an error is rolled back."""
        db = getattr(self.local, "db", None)
        if db is None or self.local.pid != os.getpid():
            db = self.local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.local.pid = os.getpid()
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
        try:
            yield db
        finally:
            if db.in_transaction:
                db.execute("ROLLBACK")

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (BEGIN IMMEDIATE): what it reads cannot change before it commits."""
        with self.connect(durable) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

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
            rows = db.execute("""SELECT b.*, (SELECT COUNT(*) FROM current c WHERE c.scope = b.id AND c.after IS NOT NULL)
                                        AS decided,
                                        (SELECT COUNT(*) FROM listings l WHERE l.batch = b.id AND l.status >= 'refused:'
                                         AND l.status < 'refused;') AS refused
                                 FROM batches b ORDER BY b.id DESC""").fetchall()
        return [dict(r) for r in rows]

    def batch(self, batch: int) -> dict | None:
        with self.connect() as db:
            row = db.execute("SELECT * FROM batches WHERE id = ?", (batch,)).fetchone()
        return dict(row) if row else None

    # -- an upload's file: its digest and the column roles it is read with --------------------------------------------
    def set_upload(self, batch: int, digest: str, columns: Columns, images: dict[int, str]) -> None:
        """What an uploaded catalog is read with, kept with its batch (an import resumed later reads it the same way),
        and the image address of each row that has one (shown by the browser, never fetched by the server)."""
        with self.transaction() as db:
            db.execute("UPDATE batches SET digest = ?, columns = ? WHERE id = ?", (digest, columns_json(columns), batch))
            db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?)", [(batch, r, u) for r, u in images.items()])

    def batch_columns(self, batch: int) -> Columns | None:
        """The column roles an upload was mapped with in the page; None where the server's own apply."""
        found = self.batch(batch)
        return columns_from_json(found["columns"]) if found and found.get("columns") else None

    def batch_with_digest(self, digest: str) -> dict | None:
        """The latest batch made from a file with these bytes."""
        with self.connect() as db:
            row = db.execute("SELECT id FROM batches WHERE digest = ? ORDER BY id DESC LIMIT 1", (digest,)).fetchone()
        return next((b for b in self.batches() if b["id"] == row[0]), None) if row else None

    # -- listings ----------------------------------------------------------------------------------------------------
    def listing(self, batch: int, row: int) -> dict | None:
        with self.connect() as db:
            found = db.execute("""SELECT l.*, i.url AS image FROM listings l
                                  LEFT JOIN images i ON i.batch = l.batch AND i.row = l.row
                                  WHERE l.batch = ? AND l.row = ?""", (batch, row)).fetchone()
        if found is None:
            return None
        listing = dict(found)
        listing["output"] = json.loads(listing["output"])
        listing["tags"] = json.loads(listing["tags"])
        listing["history"] = self.history(batch, listing["id"])
        return listing

    def refused(self, batch: int, limit: int = 200) -> tuple[list[dict], int]:
        """The rows of a batch that could not be enriched, with why, and how many there are."""
        with self.connect() as db:
            refused = "batch = ? AND status >= 'refused:' AND status < 'refused;'"  # a range the index answers
            rows = db.execute(f"SELECT row, id, title, status FROM listings WHERE {refused} ORDER BY row LIMIT ?",
                              (batch, limit)).fetchall()
            total = db.execute(f"SELECT COUNT(*) FROM listings WHERE {refused}", (batch,)).fetchone()[0]
        return [dict(r) for r in rows], total

    # -- decisions --------------------------------------------------------------------------------------------------
    def decide(self, batch: int | None, listing: str, before: str | None, after: str, action: str, who: str,
               source: str) -> int:
        """Record one decision; returns its sequence number once it is on disk."""
        _check(action, source)
        with self.connect() as db:
            return db.execute(INSERT_DECISION, (batch, listing, before, after, action, who, now(), source, None, None)).lastrowid

    def decide_many(self, rows: list[tuple], who: str, source: str, action: str) -> int:
        """Several decisions in one transaction: (batch, listing, before, after) each."""
        _check(action, source)
        with self.transaction() as db:
            db.executemany(INSERT_DECISION, [(*r, action, who, now(), source, None, None) for r in rows])
        return len(rows)

    def current(self, batch: int | None, listing: str) -> dict | None:
        """A listing's latest decision (seq, after, who, at); its `after` is null where it went back to pending."""
        with self.connect() as db:
            row = db.execute("SELECT * FROM current WHERE scope = ? AND listing = ?", (batch or 0, listing)).fetchone()
        return dict(row) if row else None

    def decision(self, seq: int) -> dict | None:
        """One decision with its listing's title and row, for the message that names it."""
        with self.connect() as db:
            row = db.execute("""SELECT d.*, l.title, l.row FROM decisions d
                                LEFT JOIN listings l INDEXED BY listings_by_id ON l.batch = d.batch AND l.id = d.listing
                                WHERE d.seq = ? ORDER BY l.row LIMIT 1""", (seq,)).fetchone()
        return dict(row) if row else None

    def history(self, batch: int | None, listing: str) -> list[dict]:
        with self.connect() as db:
            rows = db.execute("SELECT * FROM decisions WHERE batch IS ? AND listing = ? ORDER BY seq", (batch, listing)).fetchall()
        return [dict(r) for r in rows]

    def new_paths(self) -> list[str]:
        """The paths the team confirmed as new categories: known paths from then on."""
        with self.connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT after FROM decisions WHERE action = 'new'").fetchall()]

    def decisions(self, latest: bool = True, batch: int | None = None) -> pl.DataFrame:
        """The decisions, oldest first, with their batch's name and, for a reviewed new listing, its text (what a
        catalog relabelled by `--decisions` needs): by default the latest one per listing, left out where it was
        undone back to pending; `latest=False`: every decision, undos included. What `enrich review export` writes."""
        where = ["(? IS NULL OR d.batch = ?)"]
        if latest:
            where.append("d.seq IN (SELECT seq FROM current WHERE after IS NOT NULL)")
        with self.connect() as db:
            rows = db.execute(f"""SELECT d.seq, d.batch, b.name AS batch_name, d.listing, d.before, d.after, d.action,
                                         d.who, d.at, d.source, d.undoes, l.title, l.brand, l.text
                                  FROM decisions d LEFT JOIN batches b ON b.id = d.batch
                                  LEFT JOIN listings l INDEXED BY listings_by_id
                                       ON l.batch = d.batch AND l.id = d.listing AND l.status = 'ok'
                                  WHERE {' AND '.join(where)} ORDER BY d.seq""", (batch, batch)).fetchall()
        schema = {"seq": pl.Int64, "batch": pl.Int64, "batch_name": pl.String, "listing": pl.String, "before": pl.String,
                  "after": pl.String, "action": pl.String, "who": pl.String, "at": pl.String, "source": pl.String,
                  "undoes": pl.Int64, "title": pl.String, "brand": pl.String, "text": pl.String}
        return pl.DataFrame([dict(r) for r in rows], schema=schema, orient="row")
