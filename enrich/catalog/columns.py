"""Which column of a catalog plays which role, and how its text is cleaned: the settings every reader shares."""

from __future__ import annotations

import codecs
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from enrich.errors import InputError

DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
# The standard frame every reader produces: one row per input row, `status` 'ok' or why not.
STANDARD_COLUMNS = ["row", "id", "title", "brand", "text", "category", "tags", "engagement", "status", "notes"]


class CatalogError(InputError):
    """A catalog that cannot be read at all: the message says which file, row or column, and why."""


@dataclass(frozen=True)
class Columns:
    """Which input column plays which role; every catalog names its columns its own way (and some encode
    their files their own way)."""

    id: str = "id"  # unique listing id, kept as a string
    title: str = "title"  # product title; a row without one is refused
    brand: str | None = "brand"  # manufacturer or brand; optional column
    text: tuple[str, ...] = ("description",)  # extra text columns (description, bullet points), optional
    category: str | tuple[str, ...] | None = "category"  # path "A > B > C", or its level columns in order
    engagement: str | None = "engagement"  # orders / reviews / clicks; required in a reference catalog
    tags: str | None = "tags"  # the listing's own tags ("metal; ages 3+", or a list), optional; the tagger learns them
    encoding: str = "utf-8"  # of a CSV or JSON Lines file: exports from older tools are often cp1252 or latin-1
    delimiter: str | None = None  # of a CSV: None is a comma (a tab for .tsv); spreadsheets in many locales write ';'
    # A named export (`enrich.catalog.formats`: shopify, woocommerce, google-merchant, magento) whose roles and
    # category form apply where these settings are left at their defaults; None: recognised from the headers.
    format: str | None = None
    category_separator: str | None = None  # between a path's levels: '>', '>>', '/', '|', '»'; None: detected
    # Between several paths in one cell (WooCommerce's "Clothing > Hoodies, Accessories"); None: detected, "": never.
    category_list_separator: str | None = None
    tags_separator: str | None = None  # between a listing's tags; None: ';' or '|'

    @classmethod
    def from_file(cls, path: str | Path) -> "Columns":
        """Read a TOML mapping file such as `id = "uniq_id"`, `text = ["description"]`."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CatalogError(f"column mapping file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise CatalogError(f"column mapping file {path} is not valid TOML: {e}") from None
        return cls().updated(**raw, source=str(path))

    def updated(self, source: str = "options", **changes) -> "Columns":
        """A copy with some roles renamed; unknown keys are an error, empty strings mean 'no column'."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise CatalogError(f"{source}: unknown column role(s) {unknown}; known roles: {sorted(known)}")
        clean = {}
        for key, value in changes.items():
            if value is None:
                continue
            if key == "text":
                value = tuple(v for v in ([value] if isinstance(value, str) else value) if v)
            elif key == "category" and not isinstance(value, str):
                value = tuple(v for v in value if v) or None
            elif key == "encoding":
                try:
                    codec = codecs.lookup(value)
                except LookupError:
                    codec = None
                if codec is None or not codec._is_text_encoding:  # rot13, base64...: codecs, not text encodings
                    raise CatalogError(f"{source}: unknown encoding {value!r} (for example utf-8, cp1252, latin-1)")
                value = codec.name
            elif key == "delimiter":
                value = DELIMITER_NAMES.get(value, value)
                if len(value) != 1 or value in "\"\r\n":
                    raise CatalogError(f"{source}: the delimiter must be one character such as ';' or 'tab', not {value!r}")
            elif key in ("category_separator", "tags_separator", "category_list_separator"):
                value = _separator(key, value, source)
            elif key == "format":
                from enrich.catalog.formats import format_named

                value = format_named(value, source).name if value else None
            elif value == "" and key not in ("id", "title"):
                value = None
            clean[key] = value
        return replace(self, **clean)


def _separator(key: str, value: str, source: str) -> str | None:
    """A separator as written in a columns file: surrounding spaces do not matter (' > ' is '>'), "" means none."""
    if not isinstance(value, str):
        raise CatalogError(f"{source}: {key} must be a string such as '>' or '/', not {value!r}")
    stripped = DELIMITER_NAMES.get(value.strip(), value.strip())
    if key == "category_list_separator":
        return stripped
    if not stripped or stripped in "\"\r\n":
        raise CatalogError(f"{source}: {key} must be characters such as '>', '>>', '/', '|' or ',', not {value!r}")
    return stripped


@dataclass(frozen=True)
class CleaningConfig:
    """How raw text fields are cleaned before anything reads them."""

    max_title_chars: int = 300  # longer titles are cut, with a note in `notes`
    max_engagement: float = 1e9  # a larger engagement value is refused: no listing has a billion orders or reviews
    # A reference listing with more than this many times the catalog's 99th percentile engagement is refused too.
    implausible_ratio: float = 1000.0
    max_text_chars: int = 2000  # longer descriptions are cut, with a note in `notes`
    unicode_form: str = "NFKC"  # unicode normalisation form
    # A category path made only of these words (any case) says nothing: it is read as missing, with a note, so a
    # new listing gets a predicted category and a reference listing does not vote for "Others > Others".
    placeholder_categories: tuple[str, ...] = ("other", "others", "misc", "miscellaneous", "uncategorized",
                                               "uncategorised", "unknown", "none", "n/a", "-")
    # A path's first level that only names the shop's root (Magento's "Default Category") is dropped.
    root_categories: tuple[str, ...] = ("default category", "root catalog", "root", "all products", "all categories")
    # An engagement cell saying the value is unknown: the listing is kept, as a labelled listing without engagement.
    missing_engagement: tuple[str, ...] = ("n/a", "na", "-", "--", "none", "null", "nan", "unknown", "not available",
                                           "no rating available", "no ratings", "no reviews", "no reviews yet")


