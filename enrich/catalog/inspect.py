"""`enrich inspect`: what enrich will make of a catalog file before anything is built, and the warnings a team must
read (`enrich index` and `eval` print the same ones)."""

from __future__ import annotations

from collections import Counter

import polars as pl

from enrich.catalog.categories import level_counts
from enrich.catalog.columns import Columns
from enrich.catalog.load import Catalog, CatalogDetails, _category_columns
from enrich.manifest import refusal_reasons

MOST_UNLABELLED = 0.5  # a warning where more than this share of usable listings has no category
ONE_CATEGORY = 0.5  # ... where one path holds at least this share of the labelled listings
OWN_PATH = 0.9  # ... where at least this share of labelled listings has a path of its own
REPEATED_TITLES = 0.1  # ... where at least this share of usable listings shares its title with another
MOST_UNKNOWN_ENGAGEMENT = 0.5  # ... where engagement is unknown for more than this share of usable listings
MANY_REFUSED = 0.1  # ... where at least this share of rows is refused
MIN_LABELLED = 20  # fewer labelled listings say too little about a catalog's categories to warn about them


def reading_notes(details: CatalogDetails) -> list[str]:
    """What was detected while reading, a sentence each: the export, the category form, the levels dropped."""
    notes = list(details.notes)
    parsed = details.categories
    if details.category_form is not None:
        notes.append(f"category: {details.category_form.describe()}")
    if parsed is not None:
        if parsed.title_leaves:
            notes.append(f"category: {parsed.title_leaves} leaf levels that were the listing's own title dropped "
                         "(a level naming one listing is not a category)")
        if parsed.shop_roots:
            notes.append(f"category: {parsed.shop_roots} root levels that only name the shop (such as 'Default Category')"
                         " dropped")
        if parsed.rows_with_other_paths:
            notes.append(f"category: {parsed.rows_with_other_paths} listings have several paths: the first is the "
                         "listing's category, the others join its tags")
        if parsed.unreadable:
            notes.append(f"category: {len(parsed.unreadable)} cells looked like JSON lists but were not; each read as one path")
    unknown = sum(details.engagement_unknown.values())
    if unknown:
        values = ", ".join(f"'{v}' {n}" for v, n in list(details.engagement_unknown.items())[:4])
        notes.append(f"engagement: unknown for {unknown} rows ({values}): kept as labelled listings without engagement")
    return notes


def catalog_warnings(catalog: Catalog) -> list[str]:
    """The traps a team must know of before trusting what enrich says about this catalog."""
    frame, details = catalog.frame, catalog.details
    usable = frame.filter(pl.col("status") == "ok")
    warnings = []
    refused = int(frame["status"].str.starts_with("refused:").sum())
    if frame.height and refused >= MANY_REFUSED * frame.height:
        warnings.append(f"{refused} of {frame.height} rows ({refused / frame.height:.0%}) are refused: read the reasons"
                        " (enrich inspect FILE lists them)")
    if usable.height:
        warnings += _category_warnings(usable, details)
        warnings += _title_warnings(usable)
        warnings += _engagement_warnings(usable, details)
    return warnings


def _category_warnings(usable: pl.DataFrame, details: CatalogDetails) -> list[str]:
    if details.category_form is None:
        if details.engagement_column or details.columns.engagement is None:
            return ["no category column: enrich can link similar listings and give priors, not categories"
                    " (name it with --category-col or `category` in a columns file)"]
        return []
    labelled = usable["category"].drop_nulls()
    warnings = []
    if labelled.len() < (1 - MOST_UNLABELLED) * usable.height:
        warnings.append(f"{usable.height - labelled.len()} of {usable.height} usable listings have no category: enrich "
                        "learns categories only from the labelled ones")
    if labelled.len() < MIN_LABELLED:
        return warnings
    top, count = Counter(labelled.to_list()).most_common(1)[0]
    if count >= ONE_CATEGORY * labelled.len():
        warnings.append(f"one category holds {count / labelled.len():.0%} of the labelled listings ('{top}'): predicting it"
                        " alone would score that well; check the category column and its separator")
    distinct = labelled.n_unique()
    if distinct >= OWN_PATH * labelled.len():
        separator = details.category_form.separator
        warnings.append(f"nearly every listing has a category path of its own ({distinct} distinct among {labelled.len()}):"
                        f" is '{separator}' the path's separator? (set category_separator in a columns file)")
    return warnings


def _title_warnings(usable: pl.DataFrame) -> list[str]:
    repeated = int(usable["title"].str.to_lowercase().is_duplicated().sum())
    if repeated >= REPEATED_TITLES * usable.height and repeated > 1:
        return [f"{repeated} listings share their title with another ({repeated / usable.height:.0%}): variants exported"
                " as listings of their own? They will find each other as neighbours"]
    return []


def _engagement_warnings(usable: pl.DataFrame, details: CatalogDetails) -> list[str]:
    if not details.engagement_column:
        if details.columns.engagement is None or details.columns.engagement not in details.headers:
            return ["no engagement column: categories, tags and similar listings only; the exposure prior's columns"
                    " will be null (name one with --engagement-col)"] if details.reference else []
        return []
    unknown = int(usable["engagement"].is_null().sum())
    if unknown > MOST_UNKNOWN_ENGAGEMENT * usable.height:
        return [f"engagement is unknown for {unknown} of {usable.height} usable listings: they teach categories but are"
                f" never linked as popular neighbours, and the prior learns from the {usable.height - unknown} others"]
    return []


def inspect_text(catalog: Catalog) -> str:
    """The report `enrich inspect` prints."""
    frame, details = catalog.frame, catalog.details
    lines = [f"file: {details.path} ({details.path.suffix.lstrip('.') or 'no suffix'}, {details.columns.encoding}: "
             + (details.bad_bytes or "every byte valid") + ")"]
    lines += [f"  {note}" for note in reading_notes(details)]
    lines.append("columns:")
    lines += [f"  {role:<11}{name}" for role, name in _roles(details)]
    unused = [h for h in details.headers if h not in _used(details.columns)]
    if unused:
        lines.append(f"  {'not read':<11}{', '.join(unused[:12])}{f' and {len(unused) - 12} more' if len(unused) > 12 else ''}")
    usable = frame.filter(pl.col("status") == "ok")
    merged = int(frame["status"].str.starts_with("merged:").sum())
    refused = frame.height - usable.height - merged
    lines.append(f"rows: {frame.height} read: {usable.height} usable" + (f", {merged} merged into their product's listing"
                                                                         if merged else "") + f", {refused} refused")
    lines += [f"  refused ({n}): {reason}" for reason, n in sorted(refusal_reasons(frame).items(), key=lambda x: -x[1])[:8]]
    lines += _category_lines(usable, details) + _engagement_lines(usable, details)
    warnings = catalog_warnings(catalog)
    lines += ["warnings:"] + [f"  {w}" for w in warnings] if warnings else ["warnings: none"]
    return "\n".join(lines)


def _roles(details: CatalogDetails) -> list[tuple[str, str]]:
    c = details.columns
    named = {"id": c.id, "title": c.title, "brand": c.brand, "text": ", ".join(c.text), "category": ", ".join(_category_columns(c)),
             "tags": c.tags, "engagement": c.engagement if details.engagement_column else None}
    present = set(details.headers)
    out = []
    for role, name in named.items():
        if not name or not all(n.strip() in present for n in name.split(", ")):
            name = "(none)"
        out.append((role, name))
    return out


def _used(columns: Columns) -> set[str]:
    return {columns.id, columns.title, columns.brand, *columns.text, *_category_columns(columns), columns.tags,
            columns.engagement} - {None}


def _category_lines(usable: pl.DataFrame, details: CatalogDetails) -> list[str]:
    if details.categories is None:
        return []
    labelled = usable["category"].drop_nulls()
    lines = [f"categories: {labelled.len()} of {usable.height} usable listings labelled"]
    for level in level_counts(labelled.to_list()):
        lines.append(f"  depth {level['depth']}: {level['listings']} listings, {level['distinct']} distinct paths")
    singletons = int((labelled.value_counts()["count"] == 1).sum()) if labelled.len() else 0
    lines.append(f"  paths held by one listing only: {singletons}")
    lines += [f"  e.g. {cell[:90]!r} -> {path!r}" for cell, path in details.categories.examples]
    return lines


def _engagement_lines(usable: pl.DataFrame, details: CatalogDetails) -> list[str]:
    if not details.engagement_column:
        return ["engagement: none (the prior's columns will be null)"] if details.reference else []
    known = usable["engagement"].drop_nulls()
    if not usable.height:
        return [f"engagement ('{details.columns.engagement}'): no usable listings"]
    line = f"engagement ('{details.columns.engagement}'): known for {known.len()} of {usable.height} usable listings"
    if known.len():
        line += f"; median {known.median():g}, 99th percentile {known.quantile(0.99):g}, max {known.max():g}"
    return [line]
