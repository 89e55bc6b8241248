"""Uploading a catalog in the page: the file is kept under a name the server makes, then the column-mapping step
shows what it will become (the roles, the refused rows with their reasons, a sample, a file uploaded before),
and only then is it enriched, in the background, as a batch."""

from __future__ import annotations

import threading

from fastapi import APIRouter, Depends, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse

from enrich.catalog import CatalogError
from enrich.catalog.read import read_raw
from enrich.serve import uploads
from enrich.serve.render import ask_reviewer, check_csrf, page, reviewer, workbench
from enrich.serve.uploads import DELIMITERS, FORMAT_NAMES, ROLES, Check, Upload
from enrich.serve.workbench import Workbench

router = APIRouter(include_in_schema=False)


@router.post("/batches")
async def upload(request: Request, file: UploadFile, name: str = Form("", max_length=200), csrf: str = Form(""),
                 bench: Workbench = Depends(workbench)):
    """Keep the file (its bytes hashed on the way), then on to the mapping step."""
    check_csrf(request, csrf)
    try:
        kept, digest = uploads.new_upload(bench.uploads, file.filename or "upload", name.strip())
    except CatalogError as error:
        raise HTTPException(422, str(error)) from None
    size, limit = 0, bench.config.max_upload_bytes
    with open(kept.path, "wb") as out:
        while block := await file.read(2**20):
            size += len(block)
            if size > limit:
                out.close()
                kept.path.unlink()
                raise HTTPException(413, f"'{file.filename}' is over the upload limit of {limit} bytes")
            digest.update(block)
            out.write(block)
    kept.digest, kept.size = digest.hexdigest(), size
    kept.save_note()
    return RedirectResponse(f"/uploads/{kept.key}", status_code=303)


def found_upload(bench: Workbench, key: str) -> Upload:
    found = uploads.find_upload(bench.uploads, key)
    if found is None:
        raise HTTPException(404, "no such upload waiting: it was enriched already, or the address is wrong")
    return found


def checked(bench: Workbench, kept: Upload, form) -> Check:
    """The upload read with the roles the form chose (the first time: the server's, or guessed from the headers)."""
    server = bench.config.columns
    if kept.size == 0:
        return Check(server, [], error=f"'{kept.filename}' is empty: there is nothing to enrich")
    try:
        headers = read_raw(kept.path, server.encoding, server.delimiter)[0].columns
    except CatalogError:
        headers = []
    try:
        columns, image = uploads.mapped(form, uploads.first_columns(headers, server))
    except CatalogError as error:
        return Check(server, headers, error=uploads.told(error, kept))
    return uploads.check(kept, columns, image, bench.cleaning)


def mapping_page(request: Request, bench: Workbench, kept: Upload, result: Check, status_code: int = 200) -> HTMLResponse:
    chosen = uploads.role_columns(result.columns)
    chosen["image"] = [result.image or ""]
    return page(request, "upload.html", status_code=status_code, upload=kept, check=result, roles=ROLES, chosen=chosen,
                duplicate=bench.store.batch_with_digest(kept.digest), delimiters=DELIMITERS, formats=FORMAT_NAMES)


@router.get("/uploads/{key}", response_class=HTMLResponse)
def mapping(request: Request, key: str, bench: Workbench = Depends(workbench)):
    """What the file will become with these roles; change them and check again, or enrich it."""
    if not reviewer(request):
        return ask_reviewer(request)
    kept = found_upload(bench, key)
    return mapping_page(request, bench, kept, checked(bench, kept, request.query_params))


@router.post("/uploads/{key}")
async def start(request: Request, key: str, bench: Workbench = Depends(workbench)):
    """Check the upload again with the roles the form chose, or enrich it with them, as a new batch, in the
    background."""
    form = await request.form()
    check_csrf(request, str(form.get("csrf", "")))
    kept = found_upload(bench, key)
    result = await run_in_threadpool(checked, bench, kept, form)
    if form.get("step") == "check":
        return mapping_page(request, bench, kept, result)
    if not result.ready:
        return mapping_page(request, bench, kept, result, status_code=422)
    batch = await run_in_threadpool(begin, bench, kept, result)
    return RedirectResponse(f"/batches/{batch}", status_code=303)


def begin(bench: Workbench, kept: Upload, result: Check) -> int:
    store = bench.store
    batch = store.new_batch(kept.name, f"upload: {kept.filename}", rows=result.counts["rows"])
    path = bench.uploads / f"batch-{batch}{kept.path.suffix}"  # the server names the file; nothing in the request does
    kept.path.rename(path)
    kept.path.with_suffix(".json").unlink(missing_ok=True)
    kept.path = path
    store.set_upload(batch, kept.digest, result.columns, uploads.images(kept, result.columns, result.image))
    threading.Thread(target=bench.import_upload, args=(batch, path), daemon=True).start()
    return batch
