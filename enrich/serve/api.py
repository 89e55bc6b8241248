"""The enrichment API, `/v1`: listings in as JSON, the output contract's rows out; health, the index's summary, and
the resumption of an interrupted upload."""

from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from enrich.serve.pool import Refused
from enrich.serve.workbench import Workbench

router = APIRouter(prefix="/v1", tags=["enrichment"])


class Listing(BaseModel):
    """A new listing, with the column roles of `enrich run` (a list is joined, as in JSON Lines)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=500, description="returned exactly as sent")
    title: str = Field(max_length=10_000)
    brand: str | None = Field(default=None, max_length=1_000)
    description: str | list[str] | None = Field(default=None, max_length=100_000)
    category: str | None = Field(default=None, max_length=2_000, description="a category it comes with, kept as it is")
    tags: str | list[str] | None = Field(default=None, description="its own tags, kept as they are")


class EnrichRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listings: list[Listing] = Field(min_length=1)


class EnrichedListing(BaseModel):
    """One row of the output contract (see the README)."""

    id: str
    status: str
    category: str | None
    category_score: float | None
    category_confident: str | None
    review: bool | None
    tags: list[str] | None
    tag_scores: list[float] | None
    neighbors: list[str] | None
    neighbor_scores: list[float] | None
    exposure_prior: float | None
    exposure_prior_low: float | None
    exposure_prior_high: float | None
    prior_evidence: float | None
    notes: str | None


class EnrichResponse(BaseModel):
    listings: list[EnrichedListing]


def workbench(request: Request) -> Workbench:
    return request.app.state.workbench


# The body is read and checked here, not by FastAPI, so that it is parsed as strict JSON (no NaN, no lone
# surrogate) by pydantic's parser, in one pass; the docs are given its schema by hand.
BODY_DOCS = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/EnrichRequest"}}}}}


@router.post("/enrich", responses={200: {"model": EnrichResponse}}, openapi_extra=BODY_DOCS)
async def enrich(request: Request) -> Response:
    """Enrich 1 to `max_listings` listings. A listing that cannot be enriched (an empty title, a repeated id) makes the
    whole request a 422 that names it by its position and id; concurrent requests are put through the models
    together. Ids come back exactly as they were sent."""
    bench = workbench(request)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send the listings as JSON, with the header Content-Type: application/json")
    try:
        body = EnrichRequest.model_validate_json(await request.body())
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]) from None
    listings = body.listings
    if len(listings) > bench.config.max_listings:
        raise HTTPException(422, f"{len(listings)} listings in one request; at most {bench.config.max_listings}")
    first: dict[str, int] = {}
    repeated = [{"listing": i, "id": listing.id, "error": f"field 'id': duplicate id '{listing.id}' (first at listing {first[listing.id]})"}
                for i, listing in enumerate(listings) if first.setdefault(listing.id, i) != i]
    if repeated:
        raise HTTPException(422, repeated)
    records = [listing.model_dump(exclude_none=True) for listing in listings]
    try:
        _, answer = await bench.client.call("enrich", json.dumps(records).encode(), len(records))
    except Refused as refused:
        raise HTTPException(422, refused.details) from None
    return Response(answer, media_type="application/json")


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/info")
async def info(request: Request) -> dict:
    """The index being served: when it was built, how many listings and categories, the models; how many listings
    the model workers have put through the models, in how many batches."""
    bench = workbench(request)
    served = [json.loads(body) for _, body in await bench.client.call_each("stats")]
    return {**bench.info(), "served": {"listings": sum(s["listings"] for s in served),
                                       "batches": sum(s["batches"] for s in served)}}


@router.post("/batches/{batch}/resume", status_code=202)
async def resume(batch: int, request: Request) -> dict:
    """Resume an upload that a stopped server left interrupted, from its kept file: the rows already stored are kept,
    the rest are enriched in the background."""
    bench = workbench(request)
    if not 0 <= batch < 2**63:
        raise HTTPException(404, "no such batch")
    found = bench.store.batch(batch)
    if found is None:
        raise HTTPException(404, "no such batch")
    if not bench.resume_upload(batch):
        raise HTTPException(409, f"batch {batch} is {found['state']}: only an interrupted upload whose file is kept"
                                 " can be resumed")
    return {"batch": batch, "state": "enriching"}
