"""The review workbench's pages, rendered on the server: batches and uploads, the review queue and a listing (in
`review_pages`), the column-mapping step of an upload (`upload_pages`), the conflicts, the export; and errors as
pages (`install_error_pages`)."""

from __future__ import annotations

import io
from datetime import date

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from enrich.files import as_csv_frame
from enrich.serve import actions, review_pages, upload_pages
from enrich.serve.paths import normalised
from enrich.serve.render import ErrorPages, check_csrf, known_paths, page, remember_reviewer, reviewer, workbench
from enrich.serve.security import local_path
from enrich.serve.workbench import Workbench

router = APIRouter(include_in_schema=False)
router.include_router(review_pages.router)
router.include_router(upload_pages.router)
CONFLICTS_PAGE = 20


def install_error_pages(app) -> None:
    """Errors answered to a browser's page request become pages with the workbench's look (call it last in
    `create_app`, so that it sees the token guard's answers too)."""
    app.add_middleware(ErrorPages)


@router.get("/", response_class=HTMLResponse)
def home(request: Request, bench: Workbench = Depends(workbench)):
    return page(request, "home.html", batches=bench.store.batches(), info=bench.info())


@router.get("/reviewer", response_class=HTMLResponse)
def ask_name(request: Request, next: str = "/"):
    return page(request, "reviewer.html", next=local_path(next))


@router.post("/reviewer")
def set_reviewer(request: Request, name: str = Form(max_length=100), next: str = Form("/"), csrf: str = Form("")):
    check_csrf(request, csrf)
    name = " ".join(name.split())[:40]
    if not name:
        return page(request, "reviewer.html", status_code=422, next=local_path(next), error="Type a name: it is how the "
                    "team tells its decisions apart.")
    response = RedirectResponse(local_path(next), status_code=303)
    remember_reviewer(response, name)
    return response


@router.get("/paths.json")
def paths_json(request: Request):
    """Every known path, for the page's completion: its address names the version, so the browser keeps it."""
    return JSONResponse(known_paths(request).paths, headers={"Cache-Control": "private, max-age=86400"})


@router.get("/export")
def export(batch: int | None = None, history: bool = False, format: str = "csv", bench: Workbench = Depends(workbench)):
    """The decisions as a file: the latest per listing (undone ones left out), or with `history` every one."""
    if format not in ("csv", "parquet"):
        raise HTTPException(422, "format is csv or parquet")
    if batch is not None and bench.store.batch(batch) is None:
        raise HTTPException(404, f"no batch {batch}")
    decisions = bench.store.decisions(latest=not history, batch=batch)
    name = f"decisions-{'batch-' + str(batch) if batch else 'all'}{'-history' if history else ''}-{date.today()}.{format}"
    if format == "csv":
        body, kind = as_csv_frame(decisions).write_csv().encode(), "text/csv; charset=utf-8"
    else:
        buffer = io.BytesIO()
        decisions.write_parquet(buffer)
        body, kind = buffer.getvalue(), "application/vnd.apache.parquet"
    return Response(body, media_type=kind, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/conflicts", response_class=HTMLResponse)
def conflict_list(request: Request, page_number: int = 0, resolved: bool = False, settled_by: int = 0,
                  bench: Workbench = Depends(workbench)):
    """The groups still to settle (with `resolved`, the settled ones too), each with its settled path if any; after a
    settlement (`settled_by`, its operation), what it did, with a button that undoes it."""
    groups = bench.conflicts()
    settled = {g.key: found if (found := bench.store.current(None, g.key)) and found["after"] else None for g in groups}
    shown_groups = [g for g in groups if resolved or not settled[g.key]]
    shown = shown_groups[page_number * CONFLICTS_PAGE: (page_number + 1) * CONFLICTS_PAGE]
    done = actions.operation(bench.store, settled_by) if 0 < settled_by < 2**63 else None
    if done is not None and done["kind"] == "conflict":
        key = done["view_text"]
        group = next((g for g in groups if g.key == key), None)
        done = {"op": done["id"], "listings": done["listings"], "undone": bool(done["undone_by"]),
                "title": group.members[0]["title"] if group else key, "path": (settled.get(key) or {}).get("after")}
    else:
        done = None
    return page(request, "conflicts.html", groups=shown, total=len(shown_groups), page_number=page_number,
                page_size=CONFLICTS_PAGE, settled=settled, show_resolved=resolved,
                resolved_count=sum(1 for g in groups if settled[g.key]), cosine=bench.config.conflict_cosine, done=done,
                undone=request.query_params.get("undone"))


def named_reviewer(request: Request) -> str:
    """Who decides, for a form that saves: a browser that has not said is refused."""
    who = reviewer(request)
    if not who:
        raise HTTPException(403, "say who is reviewing first (the name at the top of the page)")
    return who


@router.post("/conflicts")
def resolve(request: Request, key: str = Form(max_length=2000), path: str = Form(max_length=2000), csrf: str = Form(""),
            bench: Workbench = Depends(workbench)):
    """One path for the whole group (the key travels in the form, so that any characters an id holds are safe)."""
    check_csrf(request, csrf)
    who = named_reviewer(request)
    group = next((g for g in bench.conflicts() if g.key == key), None)
    if group is None:
        raise HTTPException(404, "no such group")
    chosen = known_paths(request).resolve(path) or normalised(path)
    if chosen not in {p for p, _ in group.paths}:
        raise HTTPException(422, f"'{path}' is not one of the group's paths")
    op, _ = actions.settle_conflict(bench.store, key, group.members, chosen, who)
    return RedirectResponse(f"/conflicts?settled_by={op}", status_code=303)


@router.post("/conflicts/undo")
def undo_settlement(request: Request, op: int = Form(ge=0, lt=2**63), csrf: str = Form(""),
                    bench: Workbench = Depends(workbench)):
    check_csrf(request, csrf)
    who = named_reviewer(request)
    found = actions.operation(bench.store, op)
    if found is None or found["kind"] != "conflict":
        raise HTTPException(404, "no such settlement")
    back, _ = actions.undo_operation(bench.store, op, who)
    return RedirectResponse(f"/conflicts?undone={back}", status_code=303)
