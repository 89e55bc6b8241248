"""The review workbench's pages, rendered on the server: batches, the review queue, a listing, the conflicts."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import APIRouter, Depends, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from enrich.serve.security import local_path, same_secret
from enrich.serve.store import PAGE, QueueFilter
from enrich.serve.workbench import Workbench

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")  # autoescapes every value
UPLOAD_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".ndjson")
REVIEWER = "enrich_reviewer"


async def workbench(request: Request) -> Workbench:
    return request.app.state.workbench


def reviewer(request: Request) -> str:
    return request.cookies.get(REVIEWER) or "reviewer"


def check_csrf(request: Request, token: str) -> None:
    if not same_secret(token or "", request.app.state.csrf):
        raise HTTPException(403, "the form is stale or came from another site: reload the page")


def page(request: Request, name: str, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"csrf": request.app.state.csrf, "reviewer": reviewer(request),
                                                      **context})


@router.get("/", response_class=HTMLResponse)
def home(request: Request, bench: Workbench = Depends(workbench)):
    return page(request, "home.html", batches=bench.store.batches(), info=bench.info())


@router.post("/reviewer")
def set_reviewer(request: Request, name: str = Form(max_length=100), csrf: str = Form("")):
    check_csrf(request, csrf)
    response = RedirectResponse(local_path(request.headers.get("referer"), request.headers.get("host")), status_code=303)
    response.set_cookie(REVIEWER, name.strip() or "reviewer", samesite="strict", httponly=True)
    return response


@router.post("/batches")
async def upload(request: Request, file: UploadFile, name: str = Form("", max_length=200), csrf: str = Form(""),
                 bench: Workbench = Depends(workbench)):
    """A catalog uploaded in the page, enriched in the background: the queue shows its progress."""
    check_csrf(request, csrf)
    suffix = Path(file.filename or "").suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise HTTPException(422, f"upload a catalog file: {', '.join(UPLOAD_SUFFIXES)}")
    batch = bench.store.new_batch(name.strip() or file.filename or "upload", f"upload: {file.filename}", rows=0)
    bench.uploads.mkdir(parents=True, exist_ok=True)
    path = bench.uploads / f"batch-{batch}{suffix}"  # the server names the file; nothing in the request does
    size = 0
    with open(path, "wb") as out:
        while block := await file.read(2**20):
            size += len(block)
            if size > bench.config.max_upload_bytes:
                bench.store.finish_batch(batch, error="the file is over the upload limit")
                out.close()
                path.unlink()  # a refused upload leaves nothing behind
                raise HTTPException(413, f"the file is over {bench.config.max_upload_bytes} bytes")
            out.write(block)
    threading.Thread(target=bench.import_upload, args=(batch, path), daemon=True).start()
    return RedirectResponse(f"/batches/{batch}", status_code=303)


@router.get("/batches/{batch}", response_class=HTMLResponse)
def queue(request: Request, batch: int, state: str = "pending", top: str = "", min_score: float = 0.0,
          max_score: float = 1.0, q: str = "", page_number: int = 0, bench: Workbench = Depends(workbench)):
    found = bench.store.batch(batch)
    if found is None:
        raise HTTPException(404, "no such batch")
    rows, total = bench.store.queue(batch, QueueFilter(state, top, min_score, max_score, q, max(page_number, 0)))
    return page(request, "queue.html", batch=found, rows=rows, total=total, page_size=PAGE, tops=bench.store.top_levels(batch),
                filters={"state": state, "top": top, "min_score": min_score, "max_score": max_score, "q": q,
                         "page_number": page_number})


@router.post("/batches/{batch}/bulk")
def bulk_accept(request: Request, batch: int, min_score: float = Form(ge=0.0, le=1.0), csrf: str = Form(""),
                bench: Workbench = Depends(workbench)):
    check_csrf(request, csrf)
    accepted = bench.store.bulk_accept(batch, min_score, reviewer(request))
    return RedirectResponse(f"/batches/{batch}?saved={accepted}", status_code=303)


@router.get("/batches/{batch}/listings/{row}", response_class=HTMLResponse)
def listing(request: Request, batch: int, row: int, bench: Workbench = Depends(workbench)):
    found = bench.store.listing(batch, row)
    if found is None:
        raise HTTPException(404, "no such listing")
    explained = bench.explain(found) if found["status"] == "ok" else None
    return page(request, "listing.html", batch=bench.store.batch(batch), listing=found, explained=explained,
                paths=bench.known_paths, saved=request.query_params.get("saved"))


@router.post("/batches/{batch}/listings/{row}")
def decide(request: Request, batch: int, row: int, action: str = Form(), path: str = Form("", max_length=2000),
           csrf: str = Form(""), bench: Workbench = Depends(workbench)):
    """Accept the predicted path, pick an alternative, type one, or skip; then on to the next listing of the queue."""
    check_csrf(request, csrf)
    found = bench.store.listing(batch, row)
    if found is None:
        raise HTTPException(404, "no such listing")
    chosen = found["category"] if action == "accept" else " > ".join(p.strip() for p in path.split(">") if p.strip())
    saved = ""
    if action != "skip":
        if action not in ("accept", "pick", "type") or not chosen:
            raise HTTPException(422, "choose a path: accept, pick an alternative or type one")
        saved = f"saved={bench.store.decide(batch, found['id'], found['category'], chosen, action, reviewer(request), 'queue')}"
    following = bench.store.next_pending(batch, found["priority"], row)
    target = f"/batches/{batch}/listings/{following}" if following is not None else f"/batches/{batch}"
    return RedirectResponse(f"{target}?{saved}", status_code=303)


@router.get("/conflicts", response_class=HTMLResponse)
def conflict_list(request: Request, page_number: int = 0, bench: Workbench = Depends(workbench)):
    groups = bench.conflicts()
    shown = groups[page_number * 20: page_number * 20 + 20]
    return page(request, "conflicts.html", groups=shown, total=len(groups), page_number=page_number,
                resolved={g.key: bench.store.history(None, g.key)[-1:] for g in shown},
                cosine=bench.config.conflict_cosine, saved=request.query_params.get("saved"))


@router.post("/conflicts/{key}")
def resolve(request: Request, key: str, path: str = Form(max_length=2000), csrf: str = Form(""),
            bench: Workbench = Depends(workbench)):
    """One path for the whole group: a decision for each member whose path differs, and one for the group's key."""
    check_csrf(request, csrf)
    group = next((g for g in bench.conflicts() if g.key == key), None)
    if group is None:
        raise HTTPException(404, "no such group")
    chosen = " > ".join(p.strip() for p in path.split(">") if p.strip())
    rows = [(None, m["id"], m["category"], chosen) for m in group.members if m["category"] != chosen or m["id"] == key]
    saved = bench.store.decide_many(rows, reviewer(request), "conflict", "conflict")
    return RedirectResponse(f"/conflicts?saved={saved}#{key}", status_code=303)
