"""The team's decisions as labels: what `enrich review export` writes, read back to relabel a catalog.

A listing's latest decision is its category. A reference listing it names is relabelled; a decided listing the
catalog does not hold (a new listing reviewed in the workbench) joins it as a labelled listing without engagement:
it teaches categories (the neighbours' vote, the category model, the tagger), never the prior.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from enrich.catalog.columns import CatalogError

TEAM_NOTE = "labelled by the team"


def read_decisions(path: str | Path) -> pl.DataFrame:
    """id, category, title, brand, text of each decided listing, by its latest decision (an export with its history
    too: a listing whose latest decision undid the others is left out)."""
    path = Path(path)
    if not path.exists():
        raise CatalogError(f"{path}: no decisions file there (`enrich review export` writes one)")
    try:
        decisions = pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path, infer_schema=False)
    except pl.exceptions.PolarsError as e:
        raise CatalogError(f"{path}: cannot be read as decisions: {str(e).splitlines()[0]}") from None
    missing = [c for c in ("seq", "listing", "after", "title", "brand", "text") if c not in decisions.columns]
    if missing:
        raise CatalogError(f"{path}: no column {', '.join(missing)}; it is not an `enrich review export`")
    # The latest decision per listing, then those that leave it without a category (an undo back to pending) out.
    return (decisions.with_columns(pl.col("seq").cast(pl.Int64)).sort("seq")
            .group_by("listing", maintain_order=True).last()
            .filter(pl.col("after").is_not_null() & (pl.col("after") != ""))
            .select(pl.col("listing").cast(pl.String).alias("id"), pl.col("after").alias("category"), "title", "brand", "text"))


def relabel(frame: pl.DataFrame, decisions: pl.DataFrame, among: pl.Expr) -> pl.DataFrame:
    """`frame` with the decided category of each listing that `among` selects and the decisions name."""
    decided = dict(zip(decisions["id"].to_list(), decisions["category"].to_list()))
    return frame.with_columns(pl.when(among & pl.col("id").is_in(list(decided)))
                              .then(pl.col("id").replace_strict(decided, default=None))
                              .otherwise(pl.col("category")).alias("category"))


def apply_decisions(frame: pl.DataFrame, decisions: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """A standard frame with the decided categories: its own listings relabelled, the others it lacks appended as
    labelled listings without engagement. Returns the counts of each."""
    ok = pl.col("status") == "ok"
    relabelled = int(frame.select((ok & pl.col("id").is_in(decisions["id"].implode())).sum()).item())
    frame = relabel(frame, decisions, ok)
    joining = decisions.filter(~pl.col("id").is_in(frame["id"].implode()) & (pl.col("title").fill_null("") != ""))
    added = joining.select(
        (pl.int_range(1, pl.len() + 1, dtype=pl.Int64) + frame.height).alias("row"), "id", "title",
        pl.col("brand").fill_null(""), pl.col("text").fill_null(""), "category",
        pl.lit([], dtype=pl.List(pl.String)).alias("tags"), pl.lit(None, dtype=pl.Float64).alias("engagement"),
        pl.lit("ok").alias("status"), pl.lit(TEAM_NOTE).alias("notes"))
    return pl.concat([frame, added.select(frame.columns).cast(frame.schema)]), {"relabelled": relabelled,
                                                                                 "labelled_listings": added.height}
