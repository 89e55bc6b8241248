"""Category cells as exports write them, read into one path form: levels joined by " > ", most general first.

Exports write a listing's category many ways: `A > B > C` (Amazon, Google, Shopify), `A >> B` (in-house PIMs),
`Default Category/Women/Tops` (Magento), `A | B`, `A » B`, a JSON list of such paths, or several paths in one cell
(WooCommerce's `Clothing > Hoodies, Accessories`). The form is detected from the cells unless the columns file names
it. A listing's first path is its category; its other paths join its tags. Two kinds of level are not categories
and are dropped, each counted: a root that only names the shop (`Default Category`), and a leaf that is the
listing's own title (often cut with "..."), which marketplaces append to the path of a product page: it names a
single listing, so nothing could learn it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

import polars as pl

from enrich.catalog.paths import PATH_SEPARATOR

LEVEL_SEPARATORS = (">>", "»", ">", "|", "/")  # candidates, the more specific first: '>>' also holds '>'
LIST_SEPARATOR = ","  # between several paths in a cell, where a platform writes them so
MIN_COVERAGE = 0.2  # a separator is detected where at least this share of the cells hold it
DETECTION_SAMPLE = 20_000  # distinct cells read to detect the form
_ELLIPSIS = ("...", "\u2026")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class CategoryForm:
    """How a catalog writes its category cells."""

    separator: str = ">"  # between levels
    json_list: bool = False  # each cell is a JSON list of paths
    list_separator: str = ""  # between several paths in one cell; "" for none
    source: str = "detected"  # where the form comes from: "detected" from the cells, or what named it

    def describe(self) -> str:
        how = self.source if self.source == "detected" else f"as {self.source} says"
        cell = "a JSON list of paths" if self.json_list else "a path"
        several = f", several paths separated by '{self.list_separator}'" if self.list_separator else ""
        return f"{cell} per cell, levels separated by '{self.separator}'{several} ({how})"


@dataclass
class ParsedCategories:
    """Each row's category path (None where it has none), its other paths, and what was dropped."""

    paths: list[str | None]
    other_paths: list[list[str]]
    title_leaves: int = 0  # levels dropped because they were the listing's own title
    shop_roots: int = 0  # root levels dropped because they only name the shop
    rows_with_other_paths: int = 0
    unreadable: list[int] = field(default_factory=list)  # rows whose cell looked like JSON but was not
    examples: list[tuple[str, str | None]] = field(default_factory=list)  # a few cells and the path read from each


def detect_form(cells: pl.Series, separator: str | None = None, list_separator: str | None = None,
                source: str = "the columns file") -> CategoryForm:
    """The form of a category column, from its distinct non-empty cells; a given separator is taken as it is, and
    `source` names who gave it."""
    stripped = cells.drop_nulls().str.strip_chars()
    distinct = stripped.filter(stripped != "").unique(maintain_order=True).head(DETECTION_SAMPLE).to_list()
    json_cells = [_json_paths(cell) for cell in distinct if cell.startswith("[")]
    json_list = bool(distinct) and sum(paths is not None for paths in json_cells) >= 0.5 * len(distinct)
    items = [p for paths in json_cells if paths for p in paths] if json_list else distinct
    given = separator is not None or list_separator is not None
    if separator is None:
        separator = _most_common_separator(items)
    if list_separator is None:
        list_separator = "" if json_list else _list_separator(items, separator)
    return CategoryForm(separator, json_list, list_separator, source if given else "detected")


def _most_common_separator(items: list[str]) -> str:
    if not items:
        return ">"
    coverage = {s: sum(s in item for item in items) / len(items) for s in LEVEL_SEPARATORS}
    best = max(coverage.values())
    if best < MIN_COVERAGE:
        return ">"
    return next(s for s in LEVEL_SEPARATORS if coverage[s] >= 0.9 * best)


def _list_separator(items: list[str], separator: str) -> str:
    """',' where the pieces after a comma start with a level that begins other paths (WooCommerce's "Clothing >
    Hoodies, Accessories"), not where a level's own name holds a comma ("Banners, Stickers & Confetti")."""
    with_comma = [item for item in items if LIST_SEPARATOR in item]
    if len(with_comma) < 3:
        return ""
    roots = {_levels(_split_list(item, LIST_SEPARATOR)[0], separator)[0] for item in items if _levels(item, separator)}
    later = [piece for item in with_comma for piece in _split_list(item, LIST_SEPARATOR)[1:] if _levels(piece, separator)]
    starts_a_path = sum(_levels(piece, separator)[0] in roots for piece in later)
    return LIST_SEPARATOR if later and starts_a_path >= 0.5 * len(later) else ""


def _json_paths(cell: str) -> list[str] | None:
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _split_list(cell: str, list_separator: str) -> list[str]:
    """Paths of a cell; a separator escaped with a backslash (WooCommerce writes "\\,") belongs to a name."""
    if not list_separator:
        return [cell]
    pieces = re.split(rf"(?<!\\){re.escape(list_separator)}", cell)
    return [piece.replace("\\" + list_separator, list_separator).strip() for piece in pieces if piece.strip()]


def _levels(path: str, separator: str) -> list[str]:
    return [level.strip() for level in path.split(separator) if level.strip()]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_title_leaf(level: str, title: str) -> bool:
    """A level that is the listing's title rather than a category: cut with an ellipsis, the title itself, or the
    whole title of three or more words followed by more (a colour, a size). A category named in the title ("Dice
    Games" of "Popular Dice Games") is not one."""
    if level.rstrip().endswith(_ELLIPSIS):
        return True
    words = _words(level)
    if not words or words[0] not in title.lower():  # the common case, answered without reading the title's words
        return False
    title_words = _words(title)
    return words == title_words or (len(title_words) >= 3 and words[: len(title_words)] == title_words)


def _cell_paths(cell: str, form: CategoryForm, roots: set[str]) -> tuple[list[list[str]], int, bool]:
    """A cell's distinct paths as level lists, how many shop roots were dropped, and whether it could be read."""
    readable = True
    paths = _json_paths(cell) if form.json_list and cell.startswith("[") else [cell] if cell else []
    if paths is None:
        readable, paths = False, [cell]
    found, dropped_roots = [], 0
    for path in paths:
        for piece in _split_list(path, form.list_separator):
            levels = [level.replace(">", "-") for level in _levels(piece, form.separator)]
            if len(levels) > 1 and levels[0].lower() in roots:
                levels, dropped_roots = levels[1:], dropped_roots + 1
            if levels and levels not in found:
                found.append(levels)
    return found, dropped_roots, readable


def parse_categories(cells: list[str | None], titles: list[str], form: CategoryForm,
                     shop_roots: tuple[str, ...]) -> ParsedCategories:
    """Each cell's paths in the " > " form: the first is the row's category, the rest its other paths."""
    parsed = ParsedCategories([], [])
    roots = {root.lower() for root in shop_roots}
    by_cell: dict[str, tuple[list[list[str]], int, bool]] = {}
    for row, (cell, title) in enumerate(zip(cells, titles)):
        cell = (cell or "").strip()
        if cell not in by_cell:
            by_cell[cell] = _cell_paths(cell, form, roots)
        found, dropped_roots, readable = by_cell[cell]
        parsed.shop_roots += dropped_roots
        if not readable:
            parsed.unreadable.append(row)
        paths = []
        for levels in found:
            while len(levels) > 1 and is_title_leaf(levels[-1], title):
                levels = levels[:-1]
                parsed.title_leaves += 1
            path = PATH_SEPARATOR.join(levels)
            if path not in paths:
                paths.append(path)
        parsed.paths.append(paths[0] if paths else None)
        parsed.other_paths.append(paths[1:])
        parsed.rows_with_other_paths += len(paths) > 1
        _keep_example(parsed.examples, cell, paths[0] if paths else None)
    return parsed


def _keep_example(examples: list[tuple[str, str | None]], cell: str, path: str | None, wanted: int = 3) -> None:
    """Up to `wanted` distinct cells, those the reading changed first: they show what was detected."""
    if not cell or any(cell == seen for seen, _ in examples):
        return
    if len(examples) < wanted:
        examples.append((cell, path))
    elif path != cell:
        unchanged = next((i for i, (seen, read) in enumerate(examples) if seen == read), None)
        if unchanged is not None:
            examples[unchanged] = (cell, path)


def level_counts(paths: list[str | None]) -> list[dict]:
    """Per depth: how many listings have a path that deep and how many distinct prefixes there are."""
    prefixes: list[Counter] = []
    for path in paths:
        levels = (path or "").split(PATH_SEPARATOR) if path else []
        for depth in range(len(levels)):
            if len(prefixes) <= depth:
                prefixes.append(Counter())
            prefixes[depth][PATH_SEPARATOR.join(levels[: depth + 1])] += 1
    return [{"depth": d + 1, "listings": sum(c.values()), "distinct": len(c)} for d, c in enumerate(prefixes)]
