"""The enrichment API, `/v1`: listings in as JSON, the output contract's rows out; health and the index's summary."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from enrich.serve.workbench import Refused, Workbench

router = APIRouter(prefix="/v1", tags=["enrichment"])


class Listing(BaseModel):
    """A new listing, with the column roles of `enrich run` (a list is joined, as in JSON Lines)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=500)
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


async def workbench(request: Request) -> Workbench:
    return request.app.state.workbench


@router.post("/enrich", responses={200: {"model": EnrichResponse}})
async def enrich(body: EnrichRequest, request: Request, bench: Workbench = Depends(workbench)) -> JSONResponse:
    """Enrich 1 to `max_listings` listings. A listing that cannot be enriched (an empty title, a repeated id) makes the
    whole request a 422 that names it and its field; concurrent requests are put through the models together."""
    if len(body.listings) > bench.config.max_listings:
        raise HTTPException(422, f"{len(body.listings)} listings in one request; at most {bench.config.max_listings}")
    first: dict[str, int] = {}
    repeated = [{"listing": i, "id": listing.id, "error": f"field 'id': duplicate id '{listing.id}' (first at listing {first[listing.id]})"}
                for i, listing in enumerate(body.listings) if first.setdefault(listing.id, i) != i]
    if repeated:
        raise HTTPException(422, repeated)
    try:
        rows = await request.app.state.batcher.enrich([listing.model_dump(exclude_none=True) for listing in body.listings])
    except Refused as refused:
        raise HTTPException(422, refused.details) from None
    return JSONResponse({"listings": rows})


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/info")
async def info(request: Request, bench: Workbench = Depends(workbench)) -> dict:
    """The index being served: when it was built, how many listings and categories, the models; how many listings
    the batcher has put through them, in how many batches."""
    batcher = request.app.state.batcher
    return {**bench.info(), "served": {"listings": batcher.listings, "batches": batcher.batches}}
