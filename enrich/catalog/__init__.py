"""Catalogs in: reading any file a team exports, cleaning it, and refusing bad rows one by one.

The readers (polars and friends) load when one of them is first asked for, so that the settings and the command's
flags, which need only `Columns`, start fast.
"""

from importlib import import_module

from enrich.catalog.columns import STANDARD_COLUMNS, CatalogError, CleaningConfig, Columns

_LAZY = {"frame_from_records": "load", "listing_texts": "load", "load_catalog": "load", "put_back": "load",
         "without_placeholder_category": "load", "read_raw": "read"}

__all__ = ["STANDARD_COLUMNS", "CatalogError", "CleaningConfig", "Columns", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"enrich.catalog.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'enrich.catalog' has no attribute {name!r}")
