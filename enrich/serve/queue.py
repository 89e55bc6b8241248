"""The review queue: a view of a batch (state, department, scores, words, what enrich marks safe), the listings it
holds most worth reviewing first, and how several reviewers share it: each listing handed out is reserved to its
reviewer for a while, and a reviewer's skips are their own."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from urllib.parse import urlencode

from enrich.manifest import now
from enrich.serve.store import Store

PAGE = 50
STATES = {"pending": "pending", "skipped": "skipped by me", "decided": "decided", "all": "all"}
# The current state of a listing of the batch (the queries alias listings as `l`, its current decision as `c`).
FROM = "FROM listings l LEFT JOIN current c ON c.scope = l.batch AND c.listing = l.id"
PENDING = "c.after IS NULL"
ORDER = "ORDER BY l.priority DESC, l.row"
SKIPPED = "EXISTS (SELECT 1 FROM skips s WHERE s.batch = l.batch AND s.listing = l.id AND s.who = ?)"
RESERVED_BY_OTHERS = ("EXISTS (SELECT 1 FROM reservations r WHERE r.batch = l.batch AND r.listing = l.id"
                      " AND r.who != ? AND r.until > ?)")
WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class View:
    """What the queue shows: every field is a filter, read from the page's address."""

    state: str = "pending"  # pending | skipped (by me) | decided | all
    top: str = ""  # the predicted category's top level ("" for every department)
    min_score: float = 0.0  # the category score's range, inclusive
    max_score: float = 1.0
    q: str = ""  # words of the title, brand or category, each a prefix (FTS5)
    safe: bool = False  # only what enrich marks safe (the acceptance policy's review = false)
    page: int = 0

    @classmethod
    def parse(cls, params) -> tuple["View", list[str]]:
        """The view an address asks for, and what was wrong with it (each wrong field left at its default)."""
        errors, values = [], {}
        state = params.get("state", "pending")
        if state in STATES:
            values["state"] = state
        else:
            errors.append(f"state '{state}' is not one of {', '.join(STATES)}: showing pending")
        values["top"] = params.get("top", "")[:500]
        values["q"] = params.get("q", "")[:500]
        values["safe"] = params.get("safe", "") in ("1", "on", "true")
        for name in ("min_score", "max_score"):
            text = params.get(name, "")
            if text.strip() == "":
                continue
            try:
                number = float(text.replace(",", "."))  # 0,9 as a spreadsheet in many locales writes it
            except ValueError:
                number = float("nan")
            if 0.0 <= number <= 1.0:
                values[name] = number
            else:
                errors.append(f"{name.replace('_', ' ')} '{text}' is not a number from 0 to 1: left out")
        if values.get("min_score", 0.0) > values.get("max_score", 1.0):
            errors.append(f"min score {values['min_score']} is above max score {values['max_score']}: both left out")
            values.pop("min_score"), values.pop("max_score")
        page = params.get("page", "0")
        values["page"] = int(page) if page.isascii() and page.isdigit() and int(page) < 10**6 else 0
        return cls(**values), errors

    def address(self, **changes) -> str:
        """The query string of this view (with `changes`), defaults left out."""
        view, default = replace(self, **changes), View()
        return urlencode({f.name: ("1" if getattr(view, f.name) is True else getattr(view, f.name)) for f in fields(view)
                          if getattr(view, f.name) != getattr(default, f.name)})

    @property
    def filtered(self) -> bool:
        return replace(self, page=0, state="pending") != View()


def match_words(text: str) -> str:
    """An FTS5 query: every word a prefix that must be there ("lego advent" finds "LEGO City Advent Calendar")."""
    return " ".join(f'"{word}"*' for word in WORD.findall(text.lower()))


def where(batch: int, view: View, who: str) -> tuple[str, list]:
    """The SQL condition (and its arguments) of the listings a view holds."""
    conditions, args = ["l.batch = ?", "l.status = 'ok'"], [batch]
    if view.state in ("pending", "skipped"):
        conditions.append(PENDING)
    elif view.state == "decided":
        conditions.append(f"NOT {PENDING}")
    if view.state in ("pending", "skipped"):  # a reviewer's skips leave their pending view for their own
        conditions.append(SKIPPED if view.state == "skipped" else f"NOT {SKIPPED}")
        args.append(who)
    if view.top:
        conditions.append("(l.category = ? OR l.category LIKE ? ESCAPE '\\')")
        args += [view.top, view.top.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + " > %"]
    if view.min_score > 0.0 or view.max_score < 1.0:
        conditions.append("COALESCE(l.category_score, 0) BETWEEN ? AND ?")
        args += [view.min_score, view.max_score]
    words = match_words(view.q)
    if words:
        conditions.append("l.rowid IN (SELECT rowid FROM listing_words WHERE listing_words MATCH ?)")
        args.append(words)
    elif view.q.strip():
        conditions.append("0")  # nothing searchable in it: punctuation alone matches nothing
    if view.safe:
        conditions.append("l.review = 0")
    return " AND ".join(conditions), args


def listings(store: Store, batch: int, view: View, who: str) -> tuple[list[dict], int]:
    """A page of the view's listings, most worth reviewing first, with their current decision; and how many match."""
    condition, args = where(batch, view, who)
    with store.connect() as db:
        total = db.execute(f"SELECT COUNT(*) {FROM} WHERE {condition}", args).fetchone()[0]
        rows = db.execute(f"""SELECT l.row, l.id, l.title, l.brand, l.category, l.category_score, l.exposure_prior,
                                     l.review, c.after AS decided, c.who AS decided_by
                              {FROM} WHERE {condition} {ORDER} LIMIT ? OFFSET ?""",
                          [*args, PAGE, view.page * PAGE]).fetchall()
    return [dict(r) for r in rows], total


def top_levels(store: Store, batch: int) -> list[str]:
    with store.connect() as db:
        rows = db.execute("SELECT DISTINCT category FROM listings WHERE batch = ? AND status = 'ok' AND category IS NOT NULL",
                          (batch,)).fetchall()
    return sorted({r[0].split(" > ")[0] for r in rows})


def start_of_today() -> str:
    """Local midnight, written as the decisions write their time (UTC, ISO 8601), for comparing strings."""
    midnight = datetime.now().astimezone().replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.astimezone(timezone.utc).isoformat(timespec="seconds")


def progress(store: Store, batch: int, who: str) -> dict:
    """The batch at a glance: listings to review, pending, decided today by anyone, by this reviewer (today and in
    all), and this reviewer's skips."""
    with store.connect() as db:
        row = db.execute(f"""SELECT COUNT(*) AS listings, COALESCE(SUM({PENDING}), 0) AS remaining,
                                    COALESCE(SUM(c.after IS NOT NULL AND c.at >= ?), 0) AS today,
                                    COALESCE(SUM(c.after IS NOT NULL AND c.who = ?), 0) AS mine,
                                    COALESCE(SUM(c.after IS NOT NULL AND c.who = ? AND c.at >= ?), 0) AS mine_today
                             {FROM} WHERE l.batch = ? AND l.status = 'ok'""",
                         (start_of_today(), who, who, start_of_today(), batch)).fetchone()
        skipped = db.execute(f"SELECT COUNT(*) {FROM} WHERE l.batch = ? AND l.status = 'ok' AND {PENDING} AND {SKIPPED}",
                             (batch, who)).fetchone()[0]
    return {**dict(row), "skipped": skipped}


def recent(store: Store, batch: int, who: str, limit: int = 6) -> list[dict]:
    """This reviewer's latest decisions in the batch, newest first, each with its listing and whether it still holds."""
    with store.connect() as db:
        rows = db.execute("""SELECT d.seq, d.after, d.action, d.at, d.undoes, l.row, l.title, c.seq = d.seq AS holds
                             FROM decisions d JOIN listings l INDEXED BY listings_by_id
                                  ON l.batch = d.batch AND l.id = d.listing AND l.status = 'ok'
                             LEFT JOIN current c ON c.scope = d.batch AND c.listing = d.listing
                             WHERE d.batch = ? AND d.who = ? ORDER BY d.seq DESC LIMIT ?""", (batch, who, limit)).fetchall()
    return [dict(r) for r in rows]


# -- several reviewers -----------------------------------------------------------------------------------------------
def reserve(store: Store, batch: int, listing: str, who: str, seconds: float) -> dict | None:
    """Reserve a listing to `who` for `seconds`, unless another reviewer holds it: then their reservation (who, until)."""
    moment = time.time()
    with store.transaction(durable=False) as db:
        held = db.execute("SELECT who, until FROM reservations WHERE batch = ? AND listing = ?", (batch, listing)).fetchone()
        if held is not None and held["who"] != who and held["until"] > moment:
            return dict(held)
        db.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?)", (batch, listing, who, moment + seconds))
    return None


def release(store: Store, batch: int, listing: str, who: str) -> None:
    with store.connect(durable=False) as db:
        db.execute("DELETE FROM reservations WHERE batch = ? AND listing = ? AND who = ?", (batch, listing, who))


def next_listing(store: Store, batch: int, view: View, who: str, seconds: float) -> int | None:
    """The row of the next listing for `who` in the view's order: pending, not reserved by another reviewer, not
    skipped by `who` (in the pending view); reserved to `who` in the same transaction, so that two reviewers asking
    at once get two listings."""
    if view.state not in ("pending", "skipped"):
        view = replace(view, state="pending")
    condition, args = where(batch, view, who)
    moment = time.time()
    conditions, extra = [condition, f"NOT {RESERVED_BY_OTHERS}"], [who, moment]
    with store.transaction(durable=False) as db:
        found = db.execute(f"SELECT l.row, l.id {FROM} WHERE {' AND '.join(conditions)} {ORDER} LIMIT 1",
                           [*args, *extra]).fetchone()
        if found is None:
            return None
        db.execute("INSERT OR REPLACE INTO reservations VALUES (?, ?, ?, ?)", (batch, found["id"], who, moment + seconds))
    return found["row"]


def skip(store: Store, batch: int, listing: str, who: str) -> None:
    """`who` passes on a listing: it leaves their pending queue, not the others'."""
    with store.transaction(durable=False) as db:
        db.execute("INSERT OR REPLACE INTO skips VALUES (?, ?, ?, ?)", (batch, listing, who, now()))
        db.execute("DELETE FROM reservations WHERE batch = ? AND listing = ? AND who = ?", (batch, listing, who))


def unskip(store: Store, batch: int, who: str) -> int:
    """Every listing `who` skipped back in their queue; how many."""
    with store.connect(durable=False) as db:
        return db.execute("DELETE FROM skips WHERE batch = ? AND who = ?", (batch, who)).rowcount


def is_skipped(store: Store, batch: int, listing: str, who: str) -> bool:
    with store.connect() as db:
        found = db.execute("SELECT 1 FROM skips WHERE batch = ? AND listing = ? AND who = ?", (batch, listing, who)).fetchone()
    return found is not None
