"""What a reviewer does to the store: decide one listing (warned first over another reviewer's fresh decision),
accept a whole view in bulk (previewed, then recorded as one operation), and undo either."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import parse_qsl

from enrich.manifest import now
from enrich.serve.queue import FROM, ORDER, RESERVED_BY_OTHERS, View, where
from enrich.serve.store import INSERT_DECISION, Store

BULK_KINDS = {"accept": "Accept the predicted category", "safe": "Accept what enrich marks safe"}
SAMPLE = 8


def age_s(at: str) -> float:
    return time.time() - datetime.fromisoformat(at).timestamp()


@dataclass(frozen=True)
class Clash:
    """Another reviewer's decision that a new one would replace: shown before anything is saved."""

    who: str
    after: str
    at: str
    seq: int


def clash(store: Store, batch: int, listing: str, who: str, seen: int, fresh_s: float) -> Clash | None:
    """Another reviewer's decision on the listing that the deciding page did not show (`seen` is the decision it
    showed, 0 for none), or that is fresher than `fresh_s`: deciding over it warns first."""
    current = store.current(batch, listing)
    if current is None or current["after"] is None or current["who"] == who:
        return None
    if current["seq"] != seen or age_s(current["at"]) < fresh_s:
        return Clash(current["who"], current["after"], current["at"], current["seq"])
    return None


# -- bulk ------------------------------------------------------------------------------------------------------------
def bulk_view(view: View, kind: str) -> View:
    """The listings a bulk action takes: the pending ones of the view (a decided one is never overwritten in bulk);
    `safe` only those enrich marks safe."""
    return replace(view, state="pending", page=0, safe=view.safe or kind == "safe")


def bulk_preview(store: Store, batch: int, view: View, kind: str, who: str) -> dict:
    """How many listings a bulk action would decide, a sample of them, and how many of the view it leaves out
    (open in another reviewer's page; without a predicted category)."""
    condition, args = where(batch, bulk_view(view, kind), who)
    with store.connect() as db:
        counts = db.execute(f"""SELECT COUNT(*) AS matching,
                                       COALESCE(SUM(l.category IS NULL), 0) AS uncategorised,
                                       COALESCE(SUM({RESERVED_BY_OTHERS}), 0) AS reserved
                                {FROM} WHERE {condition}""", [who, time.time(), *args]).fetchone()
        sample = db.execute(f"""SELECT l.row, l.title, l.category, l.category_score {FROM}
                                WHERE {condition} AND l.category IS NOT NULL AND NOT {RESERVED_BY_OTHERS} {ORDER} LIMIT ?""",
                            [*args, who, time.time(), SAMPLE]).fetchall()
    taken = counts["matching"] - counts["uncategorised"] - counts["reserved"]
    return {"kind": kind, "label": BULK_KINDS[kind], "listings": max(taken, 0), "sample": [dict(r) for r in sample],
            **dict(counts)}


def bulk_accept(store: Store, batch: int, view: View, kind: str, who: str) -> tuple[int, int]:
    """Accept the predicted category of every listing the preview counted, as one operation; (its id, how many)."""
    condition, args = where(batch, bulk_view(view, kind), who)
    at = now()
    with store.transaction() as db:
        rows = db.execute(f"""SELECT l.id, l.category {FROM}
                              WHERE {condition} AND l.category IS NOT NULL AND NOT {RESERVED_BY_OTHERS}""",
                          [*args, who, time.time()]).fetchall()
        op = db.execute("INSERT INTO operations (batch, kind, view, listings, who, at) VALUES (?, ?, ?, ?, ?, ?)",
                        (batch, kind, bulk_view(view, kind).address(), len(rows), who, at)).lastrowid
        db.executemany(INSERT_DECISION, [(batch, r["id"], r["category"], r["category"], "bulk", who, at, "bulk", op, None)
                                         for r in rows])
    return op, len(rows)


def settle_conflict(store: Store, key: str, members: list[dict], chosen: str, who: str) -> tuple[int, int]:
    """One path for a conflict group, as one operation that can be undone: a decision for each member whose path
    differs, and one for the group's key listing (which records the settlement, a confirmation where its path was
    already the chosen one). (The operation's id, how many listings were relabelled.)"""
    at = now()
    changed = [m for m in members if m["category"] != chosen]
    rows = changed + [m for m in members if m["id"] == key and m["category"] == chosen]
    with store.transaction() as db:
        op = db.execute("INSERT INTO operations (batch, kind, view, listings, who, at) VALUES (0, 'conflict', ?, ?, ?, ?)",
                        (key, len(changed), who, at)).lastrowid
        db.executemany(INSERT_DECISION, [(None, m["id"], m["category"], chosen, "conflict", who, at, "conflict", op, None)
                                         for m in rows])
    return op, len(changed)


def operation(store: Store, op: int) -> dict | None:
    """A bulk operation or a conflict's settlement, with the id of the operation that undid it (None while it stands)."""
    with store.connect() as db:
        row = db.execute("SELECT o.*, (SELECT u.id FROM operations u WHERE u.undoes = o.id) AS undone_by"
                         " FROM operations o WHERE o.id = ?", (op,)).fetchone()
    if row is None:
        return None
    found = dict(row)
    found["view_text"] = found["view"]  # a conflict's: the group's key
    found["view"] = View.parse(dict(parse_qsl(found["view"])))[0]
    return found


def undo_operation(store: Store, op: int, who: str) -> tuple[int, int]:
    """Undo a bulk operation or a conflict's settlement as one: each listing it decided goes back to the state before, unless a later decision
    replaced the operation's since (that one stands). (How many went back, how many were left as decided since.)"""
    at = now()
    with store.transaction() as db:
        found = db.execute("SELECT batch, kind FROM operations WHERE id = ? AND kind != 'undo' AND NOT EXISTS"
                           " (SELECT 1 FROM operations u WHERE u.undoes = ?)", (op, op)).fetchone()
        if found is None:
            return 0, 0
        decided = db.execute("""SELECT d.seq, d.batch, d.listing, d.after, c.seq = d.seq AS holds,
                                       (SELECT p.after FROM decisions p WHERE p.batch IS d.batch AND p.listing = d.listing
                                        AND p.seq < d.seq ORDER BY p.seq DESC LIMIT 1) AS previous
                                FROM decisions d JOIN current c ON c.scope = COALESCE(d.batch, 0) AND c.listing = d.listing
                                WHERE d.op = ?""", (op,)).fetchall()
        standing = [d for d in decided if d["holds"]]
        undo = db.execute("INSERT INTO operations (batch, kind, view, listings, who, at, undoes) VALUES (?, 'undo', '', ?, ?, ?, ?)",
                          (found["batch"], len(standing), who, at, op)).lastrowid
        source = "conflict" if found["kind"] == "conflict" else "bulk"
        db.executemany(INSERT_DECISION, [(d["batch"], d["listing"], d["after"], d["previous"], "undo", who, at, source, undo,
                                          d["seq"]) for d in standing])
    return len(standing), len(decided) - len(standing)


def undo_last(store: Store, batch: int, who: str) -> dict | None:
    """Undo `who`'s latest decision in the batch that still holds: the listing goes back to its state before. The
    undone decision; None when there is none to undo; where the latest is part of a bulk action, nothing is undone
    and that decision (its `op`) is returned: a bulk action is undone as a whole, from the queue."""
    with store.transaction() as db:
        last = db.execute("""SELECT d.seq, d.listing, d.after, d.op, d.action FROM decisions d
                             JOIN current c ON c.scope = d.batch AND c.listing = d.listing AND c.seq = d.seq
                             WHERE d.batch = ? AND d.who = ? AND d.action != 'undo'
                             ORDER BY d.seq DESC LIMIT 1""", (batch, who)).fetchone()
        if last is None:
            return None
        if last["action"] == "bulk":
            return dict(last)
        previous = db.execute("SELECT after FROM decisions WHERE batch = ? AND listing = ? AND seq < ? ORDER BY seq DESC LIMIT 1",
                              (batch, last["listing"], last["seq"])).fetchone()
        db.execute(INSERT_DECISION, (batch, last["listing"], last["after"], previous[0] if previous else None, "undo", who,
                                     now(), "queue", None, last["seq"]))
    return store.decision(last["seq"])


def view_label(view: View) -> str:
    """A view in words, for a message: 'pending, Toys, score 0.95 to 1, "lego"'."""
    parts = [view.state] + ([view.top] if view.top else []) + (["enrich marks safe"] if view.safe else [])
    if view.min_score > 0.0 or view.max_score < 1.0:
        parts.append(f"score {view.min_score:g} to {view.max_score:g}")
    if view.q:
        parts.append(json.dumps(view.q, ensure_ascii=False))
    return ", ".join(parts)
