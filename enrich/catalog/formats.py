"""Named exports: how the platforms teams sell on write a product catalog, each a small declarative preset.

A preset says which headers recognise the export, which column plays which role, how its categories and tags are
written, and which rows continue another listing (Shopify's variant and image rows share the product's `Handle`;
WooCommerce's variations name their `Parent`). The reader (`catalog.load`) applies any preset the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import polars as pl

from enrich.catalog.columns import CatalogError, Columns


@dataclass(frozen=True)
class ExportFormat:
    name: str  # as `--format` and a columns file's `format` name it
    label: str  # as a person names it
    headers: tuple[str, ...]  # present together, they recognise the export (case and spaces as the platform writes)
    roles: dict[str, object] = field(default_factory=dict)  # Columns fields: role -> column, and separators
    category_columns: tuple[str, ...] = ()  # candidates for the category, in order: the first that holds paths is used
    group_column: str | None = None  # rows sharing a value here are one listing: the first holds it, the rest continue it
    parent_column: str | None = None  # a row naming another listing here ("id:12" or its SKU) continues that listing
    parent_keys: tuple[str, ...] = ()  # the columns a parent reference is matched against, "id:" prefixed ones first


FORMATS = (
    ExportFormat(
        name="shopify", label="Shopify product CSV",
        headers=("Handle", "Title", "Body (HTML)", "Vendor"),
        roles={"id": "Handle", "title": "Title", "brand": "Vendor", "text": ("Body (HTML)",), "tags": "Tags",
               "engagement": "", "category_separator": ">", "tags_separator": ","},
        category_columns=("Product Category", "Type"),
        group_column="Handle"),
    ExportFormat(
        name="woocommerce", label="WooCommerce product CSV",
        headers=("ID", "Type", "Name", "Categories"),
        roles={"id": "ID", "title": "Name", "brand": "Brands", "text": ("Short description", "Description"),
               "tags": "Tags", "category": "Categories", "engagement": "", "category_separator": ">",
               "category_list_separator": ",", "tags_separator": ","},
        parent_column="Parent", parent_keys=("ID", "SKU")),
    ExportFormat(
        name="google-merchant", label="Google Merchant Center feed",
        headers=("id", "title", "description", "link"),
        roles={"id": "id", "title": "title", "brand": "brand", "text": ("description",), "engagement": "",
               "category_separator": ">"},
        # Each item is an offer the platform links by its own id, so variants (`item_group_id`) stay listings.
        category_columns=("google_product_category", "product_type")),
    ExportFormat(
        name="magento", label="Magento 2 product CSV",
        headers=("sku", "name", "categories", "product_type"),
        roles={"id": "sku", "title": "name", "text": ("short_description", "description"), "category": "categories",
               "engagement": "", "category_separator": "/", "category_list_separator": ","}),
)


def format_named(name: str, source: str = "--format") -> ExportFormat:
    for export in FORMATS:
        if export.name == name.strip().lower():
            return export
    raise CatalogError(f"{source}: unknown format {name!r}; known formats: {', '.join(f.name for f in FORMATS)}")


def recognise(headers: list[str]) -> ExportFormat | None:
    """The named export whose headers these are, if any."""
    present = set(headers)
    for export in FORMATS:
        if all(header in present for header in export.headers):
            return export
    return None


def apply_format(columns: Columns, headers: list[str], raw: pl.DataFrame) -> tuple[Columns, ExportFormat | None, list[str]]:
    """`columns` with the named export's roles where they are left at their defaults (the export named by `format`,
    else the one the headers are), the category column chosen among its candidates; and notes on what was chosen."""
    export = format_named(columns.format) if columns.format else recognise(headers)
    if export is None:
        return columns, None, []
    defaults = Columns()
    changes = {role: value for role, value in export.roles.items() if getattr(columns, role) == getattr(defaults, role)}
    how = "as --format or the columns file names it" if columns.format else "recognised from its headers"
    notes = [f"format: {export.label} ({how}); roles as its preset says, where not named"]
    if columns.category == defaults.category and export.category_columns:
        changes["category"], skipped = _category_column(raw, export.category_columns)
        notes += skipped
    # Optional columns the export may leave out (WooCommerce writes `Brands` only with its brands plugin).
    for role in ("brand", "tags", "category"):
        if role in changes and changes[role] and changes[role] not in headers:
            changes[role] = ""
    if "text" in changes:
        changes["text"] = tuple(name for name in changes["text"] if name in headers)
    resolved = columns.updated(source=export.label, **changes)
    return replace(resolved, format=export.name), export, notes


def _category_column(raw: pl.DataFrame, candidates: tuple[str, ...]) -> tuple[str, list[str]]:
    """The first candidate column that holds category paths; numeric taxonomy ids are not paths."""
    notes = []
    for name in candidates:
        if name not in raw.columns:
            continue
        values = raw[name].drop_nulls().str.strip_chars()
        values = values.filter(values != "")
        if values.is_empty():
            continue
        numeric = values.str.contains(r"^\d+$").mean()
        if numeric > 0.5:
            notes.append(f"category: '{name}' holds numeric taxonomy ids, not paths (enrich has no table of them): not read")
            continue
        return name, notes
    return "", notes


def continued_rows(raw: pl.DataFrame, export: ExportFormat | None) -> list[str | None]:
    """Per row, why it continues an earlier listing ('row N (Handle 'x')'), or None where it is a listing of its own."""
    out: list[str | None] = [None] * raw.height
    if export is None:
        return out
    if export.group_column and export.group_column in raw.columns:
        first: dict[str, int] = {}
        for row, value in enumerate(raw[export.group_column].to_list()):
            value = (value or "").strip()
            if value and value in first:
                out[row] = f"row {first[value] + 1} ({export.group_column} '{value}')"
            elif value:
                first[value] = row
    if export.parent_column and export.parent_column in raw.columns:
        keys = {}
        for key_column in reversed(export.parent_keys):  # the first key column wins where two agree
            if key_column in raw.columns:
                prefix = "id:" if key_column == export.parent_keys[0] else ""
                keys |= {f"{prefix}{v.strip()}": row for row, v in enumerate(raw[key_column].to_list()) if v and v.strip()}
        for row, value in enumerate(raw[export.parent_column].to_list()):
            parent = keys.get((value or "").strip())
            if parent is not None and parent != row:
                out[row] = f"row {parent + 1} ({export.parent_column} '{value.strip()}')"
    return out
