"""Load, validate and clean a catalog of listings into the standard frame.

Every input row comes out as one row of the standard frame, with a `status` of `ok` or a reason it
was refused; nothing is dropped. File-level problems (missing file or column, unknown format) raise
`CatalogError` with a message that names the file and the column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from selectolax.lexbor import LexborHTMLParser

from enrich.catalog.categories import CategoryForm, ParsedCategories, detect_form, parse_categories
from enrich.catalog.columns import STANDARD_COLUMNS, CatalogError, CleaningConfig, Columns
from enrich.catalog.formats import ExportFormat, apply_format, continued_rows
from enrich.catalog.read import as_text, read_raw
from enrich.catalog.paths import PATH_SEPARATOR

TAG_SEPARATORS = r"\s*[;|]\s*"  # "metal; ages 3+" or "metal|ages 3+"; a list column arrives joined with "; "
_HTML_HINT = re.compile(r"<[A-Za-z/!]|&(#\d+|#x[0-9A-Fa-f]+|[A-Za-z]+);")


def _html_to_text(value: str) -> str:
    if not _HTML_HINT.search(value):
        return value
    parsed = LexborHTMLParser(value)
    parsed.strip_tags(["script", "style"])
    return parsed.text(separator=" ")


def _clean(column: pl.Expr, form: str) -> pl.Expr:
    """HTML to text, unicode normalised; control characters (NUL, tabs) become spaces and invisible format
    characters (zero-width spaces, soft hyphens) go, so that a title made only of them is an empty title."""
    return (
        column.fill_null("")
        .map_elements(_html_to_text, return_dtype=pl.String)
        .str.normalize(form)
        .str.replace_all(r"\p{Cc}", " ")
        .str.replace_all(r"\p{Cf}", "")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


def _is_unknown(raw: pl.Expr, missing: tuple[str, ...]) -> pl.Expr:
    """An engagement cell that is empty or says the value is unknown ("N/A", "No rating available")."""
    return raw.is_null() | (raw == "") | raw.str.to_lowercase().is_in(list(missing))


def _engagement(raw: pl.Expr, missing: tuple[str, ...] = ()) -> pl.Expr:
    """The number in an engagement field; null where it is unknown. A comma is a thousands separator only between
    groups of three digits (1,234,567): "1,5" is not read as 15, nor guessed to be 1.5."""
    grouped = raw.str.contains(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
    number = pl.when(grouped).then(raw.str.replace_all(",", "")).otherwise(raw).cast(pl.Float64, strict=False)
    return pl.when(_is_unknown(raw, missing)).then(None).otherwise(number)


def _tag_list(text: pl.Expr, separator: str | None = None) -> pl.Expr:
    """A tags field as a list: split, empty ones dropped, repeats (whatever their case) removed, first kept."""
    pattern = TAG_SEPARATORS if separator is None else rf"\s*{re.escape(separator)}\s*"
    return (text.str.replace_all(pattern, "\x1f").str.split("\x1f")
            .list.eval(pl.element().filter((pl.element() != "") & pl.element().str.to_lowercase().is_first_distinct())))


def _truncate(frame: pl.DataFrame, field: str, max_chars: int) -> pl.DataFrame:
    too_long = pl.col(field).str.len_chars() > max_chars
    note = pl.when(too_long).then(pl.lit(f"{field} truncated to {max_chars} chars; ")).otherwise(pl.lit(""))
    return frame.with_columns(pl.col(field).str.slice(0, max_chars), (pl.col("notes") + note).alias("notes"))


def without_placeholder_category(frame: pl.DataFrame, placeholders: tuple[str, ...] = CleaningConfig.placeholder_categories
                                 ) -> pl.DataFrame:
    """`category` set to null where every level of its path is a placeholder word, with a note saying so."""
    levels = pl.col("category").str.to_lowercase().str.split(PATH_SEPARATOR).list.eval(pl.element().str.strip_chars())
    placeholder = (pl.col("category") != "") & levels.list.eval(pl.element().is_in(list(placeholders))).list.all()
    note = pl.lit("category '") + pl.col("category") + pl.lit("' is a placeholder, read as missing; ")
    return frame.with_columns(pl.when(placeholder).then(None).otherwise(pl.col("category")).alias("category"),
                              pl.when(placeholder).then(pl.col("notes") + note).otherwise(pl.col("notes")).alias("notes"))


def _check_columns(frame: pl.DataFrame, columns: Columns, path: Path, reference: bool) -> None:
    wanted = {"id": columns.id, "title": columns.title}
    defaults = Columns()
    optional = {"brand": (columns.brand, defaults.brand), "tags": (columns.tags, defaults.tags)}
    # New listings rarely come with a category or engagement; a reference catalog that names one must have it.
    if reference:
        optional["engagement"] = (columns.engagement, defaults.engagement)
    for name in _category_columns(columns):
        optional[f"category ({name})"] = (name, defaults.category if reference else name)
    optional.update({f"text ({c})": (c, c if c in defaults.text else None) for c in columns.text})
    present = set(frame.columns)
    for role, name in wanted.items():
        if name not in present:
            raise CatalogError(
                f"{path}: no column '{name}' for the {role} (columns are: {', '.join(frame.columns) or 'none'});"
                f" name it with --{role}-col or a --columns mapping file{_delimiter_hint(frame)}"
            )
    for role, (name, default) in optional.items():
        if name and name not in present and name != default:
            raise CatalogError(f"{path}: no column '{name}' for the {role.split(' ')[0]} (columns are: {', '.join(frame.columns)})")


def _delimiter_hint(frame: pl.DataFrame) -> str:
    """A header read as one column that holds another separator is a file split by that separator."""
    if frame.width == 1:
        for name, character in (("';'", ";"), ("tab", "\t"), ("'|'", "|")):
            if character in frame.columns[0]:
                return f"; the header is one column: is the file separated by {name}? say so with --delimiter {name}"
    return ""


def _category_columns(columns: Columns) -> list[str]:
    if not columns.category:
        return []
    return [columns.category] if isinstance(columns.category, str) else list(columns.category)


@dataclass
class CatalogDetails:
    """What reading a catalog found besides its rows: `enrich inspect` shows it, `index` and `eval` warn from it."""

    path: Path
    reference: bool  # read as a reference catalog (engagement read)
    columns: Columns  # as read: a named export's roles applied
    headers: list[str]
    export: ExportFormat | None = None  # the named export the file is, if any
    notes: list[str] = field(default_factory=list)  # what was chosen while reading, in a sentence each
    bad_bytes: str | None = None  # what is wrong with the file's bytes, where some are not valid in its encoding
    category_form: CategoryForm | None = None  # None: no category column
    categories: ParsedCategories | None = None
    engagement_column: bool = False  # a reference catalog with an engagement column
    engagement_unknown: dict[str, int] = field(default_factory=dict)  # cells read as unknown engagement, by value


@dataclass
class Catalog:
    frame: pl.DataFrame  # the standard frame: one row per input row, `status` 'ok' or why not
    details: CatalogDetails


def read_catalog(path: str | Path, columns: Columns = Columns(), cleaning: CleaningConfig = CleaningConfig(),
                 reference: bool = False) -> Catalog:
    """Read a catalog into the standard frame, with what was detected on the way (see `CatalogDetails`).

    A named export (Shopify, WooCommerce, Google Merchant Center, Magento) is recognised from its headers unless
    `columns` names one. `reference=True` reads engagement: a value that is missing or says it is unknown ("N/A",
    "No rating available") leaves the listing without engagement; only a present, wrong value is refused.
    """
    path = Path(path)
    raw, bad_bytes, problems = read_raw(path, columns.encoding, columns.delimiter)
    return standard_catalog(raw, path, columns, cleaning, reference, bad_bytes, problems)


def load_catalog(path: str | Path, columns: Columns = Columns(), cleaning: CleaningConfig = CleaningConfig(),
                 reference: bool = False) -> pl.DataFrame:
    """`read_catalog`'s standard frame alone."""
    return read_catalog(path, columns, cleaning, reference).frame


def frame_from_records(records: list[dict], columns: Columns = Columns(), cleaning: CleaningConfig = CleaningConfig(),
                       source: str = "request") -> pl.DataFrame:
    """The standard frame of listings given as JSON objects (an API request), read as a JSON Lines file would be."""
    names = list(dict.fromkeys(name for record in records for name in record))
    raw = pl.DataFrame({name: [as_text(record.get(name)) for record in records] for name in names},
                       schema={name: pl.String for name in names})
    return standard_catalog(raw, Path(source), columns, cleaning, reference=False).frame


def standard_catalog(raw: pl.DataFrame, path: Path, columns: Columns, cleaning: CleaningConfig, reference: bool,
                     bad_bytes: str | None = None, problems: list[str | None] | None = None) -> Catalog:
    """`read_catalog` past reading: raw string columns to the standard frame, cleaned, each row's status set."""
    headers = raw.columns
    columns, export, notes = apply_format(columns, headers, raw)
    if raw.width == 0:  # an empty JSON Lines file has no header to name its columns: zero rows of every role
        named = [columns.id, columns.title, columns.brand, *columns.text, *_category_columns(columns), columns.tags, columns.engagement]
        raw = pl.DataFrame(schema={name: pl.String for name in dict.fromkeys(n for n in named if n)})
    _check_columns(raw, columns, path, reference)
    details = CatalogDetails(path, reference, columns, headers, export, notes, bad_bytes,
                             engagement_column=reference and bool(columns.engagement) and columns.engagement in raw.columns)
    frame = _cleaned(raw, columns, cleaning, details.engagement_column)
    frame, details.category_form, details.categories = _with_categories(frame, raw, columns, cleaning, export)
    frame = frame.with_columns(_engagement(pl.col("engagement_raw"), cleaning.missing_engagement).alias("engagement"),
                               pl.col("notes").str.strip_chars_end("; "))
    if details.engagement_column:
        unknown = frame.filter(_is_unknown(pl.col("engagement_raw"), cleaning.missing_engagement))["engagement_raw"]
        details.engagement_unknown = dict(unknown.fill_null("").value_counts(sort=True).iter_rows())
    first_row = frame.group_by("id").agg(pl.col("row").min().alias("first_row"))
    frame = frame.join(first_row, on="id", how="left").sort("row")
    frame = frame.with_columns(pl.Series("continues", continued_rows(raw, export), dtype=pl.String))
    text_cols = [c for c in columns.text if c in raw.columns]
    checked = [c for c in [columns.id, columns.title, columns.brand, *text_cols, *_category_columns(columns), columns.tags] if c]
    if details.engagement_column:
        checked.append(columns.engagement)
    rules = _row_rules(raw, checked, columns, cleaning, details.engagement_column, bad_bytes, problems)
    frame = frame.with_columns(_status(rules).alias("status"))
    if details.engagement_column:
        frame = refuse_implausible_engagement(frame, columns.engagement, cleaning.implausible_ratio)
    return Catalog(frame.select(STANDARD_COLUMNS), details)


def _cleaned(raw: pl.DataFrame, columns: Columns, cleaning: CleaningConfig, with_engagement: bool) -> pl.DataFrame:
    """The standard columns, each cleaned, and the engagement cell as it is; the category still as the cell writes it."""
    def col(name: str | None) -> pl.Expr:
        return pl.col(name) if name and name in raw.columns else pl.lit(None, dtype=pl.String)

    text_cols = [c for c in columns.text if c in raw.columns]
    text = pl.concat_str([col(c).fill_null("") for c in text_cols], separator=" ") if text_cols else pl.lit("")
    form = cleaning.unicode_form
    frame = raw.select(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("row"),
        col(columns.id).fill_null("").str.strip_chars().alias("id"),
        _clean(col(columns.title), form).alias("title"),
        _clean(col(columns.brand), form).alias("brand"),
        _clean(text, form).alias("text"),
        _clean(_category_cell(raw, columns), form).alias("category"),
        _tag_list(_clean(col(columns.tags), form), columns.tags_separator).alias("tags"),
        col(columns.engagement if with_engagement else None).str.strip_chars().alias("engagement_raw"),
        pl.lit("").alias("notes"),
    )
    frame = _truncate(frame, "title", cleaning.max_title_chars)
    return _truncate(frame, "text", cleaning.max_text_chars)


def _category_cell(raw: pl.DataFrame, columns: Columns) -> pl.Expr:
    """One category column as it is, or level columns joined into "A > B > C", empty levels skipped."""
    names = [name for name in _category_columns(columns) if name in raw.columns]
    if not names:
        return pl.lit(None, dtype=pl.String)
    if len(names) == 1:
        return pl.col(names[0])
    levels = pl.concat_list([pl.col(name).fill_null("").str.strip_chars().str.replace_all(">", "-") for name in names])
    return levels.list.eval(pl.element().filter(pl.element() != "")).list.join(PATH_SEPARATOR)


def _with_categories(frame: pl.DataFrame, raw: pl.DataFrame, columns: Columns, cleaning: CleaningConfig,
                     export: ExportFormat | None) -> tuple[pl.DataFrame, CategoryForm | None, ParsedCategories | None]:
    """Category cells read into paths (see `catalog.categories`): the first path is the category, the others join
    the tags; placeholders ("Others") are read as missing."""
    names = [name for name in _category_columns(columns) if name in raw.columns]
    if not names:
        return frame.with_columns(pl.lit(None, dtype=pl.String).alias("category")), None, None
    if len(names) > 1:  # level columns: already joined into the path form
        form = CategoryForm(">", source="the level columns")
    else:
        source = f"the {export.label} preset" if export is not None else "the columns file"
        form = detect_form(frame["category"], columns.category_separator, columns.category_list_separator, source)
    parsed = parse_categories(frame["category"].to_list(), frame["title"].to_list(), form, cleaning.root_categories)
    unreadable = pl.Series([False] * frame.height).scatter(parsed.unreadable, True) if parsed.unreadable else None
    frame = frame.with_columns(
        pl.Series("category", parsed.paths, dtype=pl.String),
        pl.concat_list(pl.col("tags"), pl.Series(parsed.other_paths, dtype=pl.List(pl.String))).list.unique(maintain_order=True)
        .alias("tags"))
    if unreadable is not None:
        frame = frame.with_columns(pl.when(unreadable).then(pl.col("notes") + pl.lit("category cell is not a JSON list of paths, "
                                                                                      "read as one path; ")).otherwise(pl.col("notes")))
    return without_placeholder_category(frame, cleaning.placeholder_categories), form, parsed


def _row_rules(raw: pl.DataFrame, checked: list[str], columns: Columns, cleaning: CleaningConfig, with_engagement: bool,
               bad_bytes: str | None, problems: list[str | None] | None = None) -> list[tuple[pl.Expr, pl.Expr]]:
    """(condition, status) in order: the first that holds is a row's status."""

    def refused(message: pl.Expr) -> pl.Expr:
        return pl.format("refused: row {} ", pl.col("row")) + message

    rules: list[tuple[pl.Expr, pl.Expr]] = []
    if problems is not None:
        problem = pl.lit(pl.Series(problems, dtype=pl.String))
        rules.append((problem.is_not_null(), refused(problem)))
    if bad_bytes:
        for name in checked:
            if name in raw.columns:
                has_bad = pl.lit(raw[name].fill_null("").str.contains("\ufffd", literal=True))
                rules.append((has_bad, refused(pl.lit(f"field '{name}': {bad_bytes}"))))
    rules += [
        (pl.col("continues").is_not_null(),
         pl.format("merged: row {} continues the listing of {} (a variant or image row)", pl.col("row"), pl.col("continues"))),
        (pl.col("id") == "", refused(pl.lit(f"field '{columns.id}': empty id"))),
        (pl.col("row") != pl.col("first_row"),
         refused(pl.format(f"field '{columns.id}': duplicate id '{{}}' (first at row {{}})", pl.col("id"), pl.col("first_row")))),
        (pl.col("title") == "", refused(pl.lit(f"field '{columns.title}': empty title"))),
    ]
    if with_engagement:
        rules += _engagement_rules(columns.engagement, cleaning, refused)
    return rules


def _engagement_rules(name: str, cleaning: CleaningConfig, refused) -> list[tuple[pl.Expr, pl.Expr]]:
    """A value present and wrong is refused; a missing one ("", "N/A") leaves the listing without engagement, which a
    listing without a category too cannot be indexed with: it would neither vote nor be linked."""
    value, raw = pl.col("engagement"), pl.col("engagement_raw")
    unknown = _is_unknown(raw, cleaning.missing_engagement)
    return [
        (unknown & pl.col("category").is_null(),
         refused(pl.lit(f"field '{name}': no engagement value and no category: nothing to learn from or link to"))),
        (~unknown & value.is_null() & raw.str.contains(r"^\d+,\d{1,2}$|^\d+,\d{4,}$"),
         refused(pl.format(f"field '{name}': engagement '{{}}' is not a number (a decimal comma? write it with a point)", raw))),
        (~unknown & value.is_null(), refused(pl.format(f"field '{name}': engagement '{{}}' is not a number", raw))),
        ((value < 0) | value.is_infinite() | value.is_nan(),
         refused(pl.format(f"field '{name}': engagement '{{}}' is not a finite count >= 0", raw))),
        (value > cleaning.max_engagement,
         refused(pl.format(f"field '{name}': engagement '{{}}' is more than {cleaning.max_engagement:g}, not a plausible"
                           " count (CleaningConfig.max_engagement)", raw))),
    ]


def _status(rules: list[tuple[pl.Expr, pl.Expr]]) -> pl.Expr:
    """The first reason a row cannot be enriched, naming the row and the field; 'ok' otherwise."""
    status = pl.lit("ok")
    for condition, message in reversed(rules):
        status = pl.when(condition).then(message).otherwise(status)
    return status


def refuse_implausible_engagement(frame: pl.DataFrame, column: str, ratio: float, typical: float | None = None) -> pl.DataFrame:
    """Refuse usable rows whose engagement is more than `ratio` times `typical` (default: the 99th percentile of the
    usable rows' own): a typo or a bot's clicks, which would otherwise drag the priors of every listing near it."""
    usable = frame.filter(pl.col("status") == "ok")["engagement"].drop_nulls()
    if typical is None:
        typical = float(usable.quantile(0.99)) if usable.len() else 0.0
    limit = ratio * max(typical, 1.0)
    implausible = (pl.col("status") == "ok") & (pl.col("engagement") > limit)
    message = pl.format(f"refused: row {{}} field '{column}': engagement '{{}}' is more than {ratio:g} times the catalog's"
                        f" 99th percentile ({typical:g}): not plausible here", pl.col("row"), pl.col("engagement_raw"))
    return frame.with_columns(pl.when(implausible).then(message).otherwise(pl.col("status")).alias("status"))


def put_back(frame: pl.DataFrame, ok_mask: np.ndarray, computed: pl.DataFrame, keep: list[str]) -> pl.DataFrame:
    """`computed` (one row per ok row, in order) placed among all of frame's rows, in input order; the rows
    that were not ok get nulls. `keep` are frame's own columns to carry along."""
    slot = np.full(frame.height, -1)
    slot[ok_mask] = np.arange(int(ok_mask.sum()))
    rows = frame.select(keep).with_columns(pl.Series("_slot", slot))
    computed = computed.with_row_index("_slot").with_columns(pl.col("_slot").cast(pl.Int64))
    return rows.join(computed, on="_slot", how="left", maintain_order="left").drop("_slot")


def listing_texts(frame: pl.DataFrame) -> list[str]:
    """The text the encoder reads: title first, so truncation only ever cuts the tail."""
    return (
        frame.select(
            pl.concat_str([pl.col("title"), pl.col("brand").fill_null(""), pl.col("text").fill_null("")], separator=" | ")
            .str.replace_all(r"( \| )+$", "")
            .str.replace_all(r" \|  \| ", " | ")
        )
        .to_series()
        .to_list()
    )


