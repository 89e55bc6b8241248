"""Catalogs in: reading any file a team exports, cleaning it, and refusing bad rows one by one."""

from enrich.catalog.columns import STANDARD_COLUMNS, CatalogError, CleaningConfig, Columns
from enrich.catalog.load import frame_from_records, listing_texts, load_catalog, put_back, without_placeholder_category
from enrich.catalog.read import read_raw

__all__ = ["STANDARD_COLUMNS", "CatalogError", "CleaningConfig", "Columns", "frame_from_records", "listing_texts", "load_catalog", "put_back",
           "read_raw", "without_placeholder_category"]
