"""The review queue and a listing's page: filters and search, the next listing handed out to each reviewer,
decisions checked against the known paths, another reviewer's fresh decision warned of, undo, bulk actions on the
filtered view (previewed, confirmed, undone as one)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from enrich.serve import actions, queue
from enrich.serve.actions import BULK_KINDS
from enrich.serve.paths import KnownPaths, normalised, parents
from enrich.serve.queue import PAGE, STATES, View
from enrich.serve.render import address_number, ask_reviewer, check_csrf, known_paths, page, reviewer, workbench
from enrich.serve.workbench import Workbench

router = APIRouter(include_in_schema=False)
ALTERNATIVES = 9  # keys 1-9


def found_batch(bench: Workbench, batch: int) -> dict:
    found = bench.store.batch(batch)
    if found is None:
        raise HTTPException(404, f"there is no batch {batch}")
    return found


def posted_view(text: str) -> View:
    return View.parse(dict(parse_qsl(text)))[0]


def reserve_s(bench: Workbench) -> float:
    return bench.config.reserve_seconds


def strip(request: Request, bench: Workbench, batch: int, who: str) -> dict:
    """What the progress strip and the recent decisions show."""
    return {"progress": queue.progress(bench.store, batch, who), "recent": queue.recent(bench.store, batch, who)}


# -- the queue ------------------------------------------------------------------------------------------------------
@router.get("/batches/{batch}", response_class=HTMLResponse)
def queue_page(request: Request, batch: int, bench: Workbench = Depends(workbench)):
    who = reviewer(request)
    if not who:
        return ask_reviewer(request)
    found = found_batch(bench, batch)
    view, errors = View.parse(request.query_params)
    tops = queue.top_levels(bench.store, batch)
    if view.top and view.top not in tops:
        errors.append(f"no listing of this batch is predicted in the department '{view.top}'")
    rows, total = queue.listings(bench.store, batch, view, who)
    refused, refused_total = bench.store.refused(batch)
    return page(request, "queue.html", batch=found, rows=rows, total=total, page_size=PAGE, view=view, errors=errors,
                states=STATES, tops=tops, refused=refused, refused_total=refused_total,
                bulk_kinds=BULK_KINDS, message=queue_message(request, bench), **strip(request, bench, batch, who))


def queue_message(request: Request, bench: Workbench) -> dict | None:
    """What the last action did, from the address it came back with."""
    params, store = request.query_params, bench.store
    if (number := address_number(params.get("op"))) is not None and (op := actions.operation(store, number)):
        return {"kind": "bulk", "op": op, "view": actions.view_label(op["view"])}
    if (number := address_number(params.get("undid"))) is not None and (op := actions.operation(store, number)):
        undo = actions.operation(store, op["undone_by"]) if op["undone_by"] else None
        back = undo["listings"] if undo else 0
        return {"kind": "undid", "op": op, "back": back, "kept": op["listings"] - back}
    if (number := address_number(params.get("done"))) is not None:
        return {"kind": "done", "decision": store.decision(number)}
    for kind in ("empty", "unskipped", "nothing"):
        if kind in params:
            return {"kind": kind, "count": params.get(kind)}
    return None


@router.get("/batches/{batch}/next")
def next_page(request: Request, batch: int, bench: Workbench = Depends(workbench)):
    """The next listing of the view for this reviewer, reserved to them."""
    who = reviewer(request)
    if not who:
        return ask_reviewer(request)
    found_batch(bench, batch)
    return to_next(bench, batch, View.parse(request.query_params)[0], who, "")


def to_next(bench: Workbench, batch: int, view: View, who: str, done: str) -> RedirectResponse:
    row = queue.next_listing(bench.store, batch, view, who, reserve_s(bench))
    address = "&".join(p for p in (view.address(page=0), done) if p)
    if row is None:
        return RedirectResponse(f"/batches/{batch}?{'&'.join(p for p in (view.address(page=0), done, 'empty=1') if p)}",
                                status_code=303)
    return RedirectResponse(f"/batches/{batch}/listings/{row}?{address}", status_code=303)


@router.post("/batches/{batch}/resume")
def resume_batch(request: Request, batch: int, csrf: str = Form(""), bench: Workbench = Depends(workbench)):
    """Enrich the rest of an upload a stopped server left interrupted (as `POST /v1/batches/N/resume`)."""
    check_csrf(request, csrf)
    found = found_batch(bench, batch)
    if not bench.resume_upload(batch):
        raise HTTPException(409, f"this batch is {found['state']}: only an interrupted upload whose file is kept can be"
                                 " resumed")
    return RedirectResponse(f"/batches/{batch}", status_code=303)


# -- a listing ------------------------------------------------------------------------------------------------------
@router.get("/batches/{batch}/listings/{row}", response_class=HTMLResponse)
def listing_page(request: Request, batch: int, row: int, bench: Workbench = Depends(workbench)):
    who = reviewer(request)
    if not who:
        return ask_reviewer(request)
    listing = found_listing(bench, batch, row)
    current = bench.store.current(batch, listing["id"])
    holder = None
    if listing["status"] == "ok" and (current is None or current["after"] is None):
        holder = queue.reserve(bench.store, batch, listing["id"], who, reserve_s(bench))
    message = None
    for kind in ("done", "undone"):
        if (number := address_number(request.query_params.get(kind))) is not None:
            message = {"kind": kind, "decision": bench.store.decision(number)}
    return listing_view(request, bench, listing, View.parse(request.query_params)[0], who, holder=holder, message=message)


def found_listing(bench: Workbench, batch: int, row: int) -> dict:
    found_batch(bench, batch)
    listing = bench.store.listing(batch, row)
    if listing is None:
        raise HTTPException(404, f"batch {batch} has no row {row}")
    return listing


def listing_view(request: Request, bench: Workbench, listing: dict, view: View, who: str, status_code: int = 200,
                 **context) -> HTMLResponse:
    """A listing's page: the evidence first, the decision beside it, the model's workings folded."""
    batch = listing["batch"]
    explained = bench.explain(listing) if listing["status"] == "ok" else None
    out = listing["output"]
    current = bench.store.current(batch, listing["id"])
    alternatives = [(p, s) for p, s in (explained.alternatives if explained else []) if p != out.get("category")]
    neighbors = sorted(explained.neighbors, key=lambda n: -n["cosine"]) if explained else []
    return page(request, "listing.html", status_code=status_code, batch=found_batch(bench, batch), listing=listing,
                out=out, explained=explained, neighbors=neighbors, alternatives=alternatives[:ALTERNATIVES],
                levels=parents(out["category"]) if out.get("category") else [], current=current,
                seen=current["seq"] if current else 0, view=view, paths_version=len(known_paths(request)),
                skipped=queue.is_skipped(bench.store, batch, listing["id"], who), reserve_minutes=reserve_s(bench) / 60,
                **strip(request, bench, batch, who), **context)


def choose(listing: dict, action: str, path: str, known: KnownPaths) -> tuple[str | None, str]:
    """The path a decision names and how it was chosen; None where a typed path is not a known one."""
    predicted = listing["output"].get("category")
    if action == "accept":
        if not predicted:
            raise HTTPException(422, "this listing has no predicted category to accept: type one")
        return predicted, "accept"
    if action == "parent":
        if path not in parents(predicted or ""):
            raise HTTPException(422, f"'{path}' is not a parent level of the prediction '{predicted}'")
        return path, "parent"
    if action in ("pick", "type", "new"):
        resolved = known.resolve(path)
        if resolved:
            return resolved, "pick" if action == "pick" else "type"
        if action == "new" and normalised(path):
            return normalised(path), "new"
        return None, action
    raise HTTPException(422, f"unknown action '{action}': accept, parent, pick, type, new or skip")


@router.post("/batches/{batch}/listings/{row}")
def decide(request: Request, batch: int, row: int, action: str = Form(), path: str = Form("", max_length=2000),
           seen: int = Form(0), confirm: int = Form(0), view: str = Form("", max_length=4000), csrf: str = Form(""),
           bench: Workbench = Depends(workbench)):
    """Accept the prediction or a parent level of it, pick an alternative, type a known path (or confirm a new
    one), or skip; then the next listing of the view."""
    check_csrf(request, csrf)
    who = reviewer(request)
    if not who:
        return ask_reviewer(request)
    listing, shown = found_listing(bench, batch, row), posted_view(view)
    if action == "skip":
        queue.skip(bench.store, batch, listing["id"], who)
        return to_next(bench, batch, shown, who, "")
    if listing["status"] != "ok":
        raise HTTPException(422, f"row {row} was not enriched ({listing['status']}): there is nothing to decide")
    known = known_paths(request)
    chosen, how = choose(listing, action, path, known)
    if chosen is None:
        return listing_view(request, bench, listing, shown, who, status_code=422,
                            refusal={"typed": path, "normalised": normalised(path), "suggestions": known.suggestions(path)})
    clash = actions.clash(bench.store, batch, listing["id"], who, seen, reserve_s(bench))
    if clash is not None and confirm != clash.seq:
        return listing_view(request, bench, listing, shown, who, status_code=409,
                            clash={"other": clash, "chosen": chosen, "action": action, "path": path})
    seq = bench.store.decide(batch, listing["id"], listing["category"], chosen, how, who, "queue")
    queue.release(bench.store, batch, listing["id"], who)
    return to_next(bench, batch, shown, who, f"done={seq}")


@router.post("/batches/{batch}/undo")
def undo(request: Request, batch: int, view: str = Form("", max_length=4000), csrf: str = Form(""),
         bench: Workbench = Depends(workbench)):
    """Undo this reviewer's latest decision that still holds: back to its listing, to decide it again."""
    check_csrf(request, csrf)
    who = reviewer(request)
    found_batch(bench, batch)
    undone = actions.undo_last(bench.store, batch, who) if who else None
    shown = posted_view(view).address(page=0)
    if undone is None:
        return RedirectResponse(f"/batches/{batch}?{shown}&nothing=1", status_code=303)
    if undone.get("action") == "bulk":  # the queue's message for it has the button that undoes it as a whole
        return RedirectResponse(f"/batches/{batch}?{shown}&op={undone['op']}", status_code=303)
    return RedirectResponse(f"/batches/{batch}/listings/{undone['row']}?{shown}&undone={undone['seq']}", status_code=303)


@router.post("/batches/{batch}/unskip")
def unskip(request: Request, batch: int, csrf: str = Form(""), bench: Workbench = Depends(workbench)):
    check_csrf(request, csrf)
    found_batch(bench, batch)
    count = queue.unskip(bench.store, batch, reviewer(request))
    return RedirectResponse(f"/batches/{batch}?unskipped={count}", status_code=303)


# -- bulk actions on the view ----------------------------------------------------------------------------------------
@router.get("/batches/{batch}/bulk", response_class=HTMLResponse)
def bulk_preview(request: Request, batch: int, kind: str = "accept", bench: Workbench = Depends(workbench)):
    """What a bulk action would do to the view: how many listings, a sample, what it leaves out; then confirm."""
    who = reviewer(request)
    if not who:
        return ask_reviewer(request)
    if kind not in BULK_KINDS:
        raise HTTPException(422, f"unknown bulk action '{kind}': {', '.join(BULK_KINDS)}")
    view, errors = View.parse(request.query_params)
    if errors:
        raise HTTPException(422, "the view's filters are not valid: " + "; ".join(errors))
    return bulk_page(request, bench, batch, view, kind, who)


def bulk_page(request: Request, bench: Workbench, batch: int, view: View, kind: str, who: str, status_code: int = 200,
              changed: int | None = None) -> HTMLResponse:
    preview = actions.bulk_preview(bench.store, batch, view, kind, who)
    return page(request, "bulk.html", status_code=status_code, batch=found_batch(bench, batch), view=view, preview=preview,
                view_label=actions.view_label(actions.bulk_view(view, kind)), changed=changed)


@router.post("/batches/{batch}/bulk")
def bulk_apply(request: Request, batch: int, kind: str = Form(), view: str = Form("", max_length=4000),
               expected: int = Form(), csrf: str = Form(""), bench: Workbench = Depends(workbench)):
    """Apply a previewed bulk action, as one operation; where the view changed since the preview, preview again."""
    check_csrf(request, csrf)
    who = reviewer(request)
    if not who:
        return ask_reviewer(request)
    if kind not in BULK_KINDS:
        raise HTTPException(422, f"unknown bulk action '{kind}'")
    found_batch(bench, batch)
    shown = posted_view(view)
    preview = actions.bulk_preview(bench.store, batch, shown, kind, who)
    if preview["listings"] != expected:
        return bulk_page(request, bench, batch, shown, kind, who, status_code=409, changed=expected)
    op, _ = actions.bulk_accept(bench.store, batch, shown, kind, who)
    return RedirectResponse(f"/batches/{batch}?{'&'.join(p for p in (shown.address(page=0), f'op={op}') if p)}",
                            status_code=303)


@router.post("/batches/{batch}/operations/{op}/undo")
def bulk_undo(request: Request, batch: int, op: int, view: str = Form("", max_length=4000), csrf: str = Form(""),
              bench: Workbench = Depends(workbench)):
    check_csrf(request, csrf)
    found = actions.operation(bench.store, op)
    if found is None or found["batch"] != batch:
        raise HTTPException(404, f"batch {batch} has no bulk action {op}")
    actions.undo_operation(bench.store, op, reviewer(request) or "reviewer")
    shown = posted_view(view).address(page=0)
    return RedirectResponse(f"/batches/{batch}?{'&'.join(p for p in (shown, f'undid={op}') if p)}", status_code=303)
