"""Load, validate and clean a catalog of listings into the standard frame.

Every input row comes out as one row of the standard frame, with a `status` of `ok` or a reason it
was refused; nothing is dropped. File-level problems (missing file or column, unknown format) raise
`CatalogError` with a message that names the file and the column.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
from selectolax.lexbor import LexborHTMLParser

from enrich.catalog.columns import STANDARD_COLUMNS, CatalogError, CleaningConfig, Columns
from enrich.catalog.read import as_text, read_raw

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


def _engagement(raw: pl.Expr) -> pl.Expr:
    """The number in an engagement field. A comma is a thousands separator only between groups of three digits
    (1,234,567): "1,5" is not read as 15, nor guessed to be 1.5."""
    grouped = raw.str.contains(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
    return pl.when(grouped).then(raw.str.replace_all(",", "")).otherwise(raw).cast(pl.Float64, strict=False)


def _tag_list(text: pl.Expr) -> pl.Expr:
    """A tags field as a list: split, empty ones dropped, repeats (whatever their case) removed, first kept."""
    return (text.str.replace_all(TAG_SEPARATORS, ";").str.split(";")
            .list.eval(pl.element().filter((pl.element() != "") & pl.element().str.to_lowercase().is_first_distinct())))


def _truncate(frame: pl.DataFrame, field: str, max_chars: int) -> pl.DataFrame:
    too_long = pl.col(field).str.len_chars() > max_chars
    note = pl.when(too_long).then(pl.lit(f"{field} truncated to {max_chars} chars; ")).otherwise(pl.lit(""))
    return frame.with_columns(pl.col(field).str.slice(0, max_chars), (pl.col("notes") + note).alias("notes"))


def without_placeholder_category(frame: pl.DataFrame, placeholders: tuple[str, ...] = CleaningConfig.placeholder_categories
                                 ) -> pl.DataFrame:
    """`category` set to null where every level of its path is a placeholder word, with a note saying so."""
    levels = pl.col("category").str.to_lowercase().str.split(">").list.eval(pl.element().str.strip_chars())
    placeholder = (pl.col("category") != "") & levels.list.eval(pl.element().is_in(list(placeholders))).list.all()
    note = pl.lit("category '") + pl.col("category") + pl.lit("' is a placeholder, read as missing; ")
    return frame.with_columns(pl.when(placeholder).then(None).otherwise(pl.col("category")).alias("category"),
                              pl.when(placeholder).then(pl.col("notes") + note).otherwise(pl.col("notes")).alias("notes"))


def _check_columns(frame: pl.DataFrame, columns: Columns, path: Path, need_engagement: bool) -> None:
    wanted = {"id": columns.id, "title": columns.title}
    if need_engagement:
        if not columns.engagement:
            raise CatalogError(f"{path}: a reference catalog needs an engagement column (--engagement-col)")
        wanted["engagement"] = columns.engagement
    defaults = Columns()
    optional = {"brand": (columns.brand, defaults.brand), "tags": (columns.tags, defaults.tags)}
    # New listings rarely come with a category; a reference catalog that names one must have it.
    for name in _category_columns(columns):
        optional[f"category ({name})"] = (name, defaults.category if need_engagement else name)
    optional.update({f"text ({c})": (c, c if c in defaults.text else None) for c in columns.text})
    present = set(frame.columns)
    for role, name in wanted.items():
        if name not in present:
            raise CatalogError(
                f"{path}: no column '{name}' for the {role} (columns are: {', '.join(frame.columns) or 'none'});"
                f" name it with --{role.split('[')[0]}-col or a --columns mapping file{_delimiter_hint(frame)}"
            )
    # An optional role left at its default name may be absent; one the user named must exist.
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


def load_catalog(
    path: str | Path,
    columns: Columns = Columns(),
    cleaning: CleaningConfig = CleaningConfig(),
    reference: bool = False,
) -> pl.DataFrame:
    """Read a catalog into the standard frame: one row per input row, `status` 'ok' or why not.

    `reference=True` requires a numeric engagement value per row (rows without one are refused);
    for new listings the engagement column is ignored.
    """
    path = Path(path)
    raw, bad_bytes, problems = read_raw(path, columns.encoding, columns.delimiter)
    return standard_frame(raw, path, columns, cleaning, reference, bad_bytes, problems)


def frame_from_records(records: list[dict], columns: Columns = Columns(), cleaning: CleaningConfig = CleaningConfig(),
                       source: str = "request") -> pl.DataFrame:
    """The standard frame of listings given as JSON objects (an API request), read as a JSON Lines file would be."""
    names = list(dict.fromkeys(name for record in records for name in record))
    raw = pl.DataFrame({name: [as_text(record.get(name)) for record in records] for name in names},
                       schema={name: pl.String for name in names})
    return standard_frame(raw, Path(source), columns, cleaning, reference=False)


def standard_frame(raw: pl.DataFrame, path: Path, columns: Columns, cleaning: CleaningConfig, reference: bool,
                   bad_bytes: str | None = None, problems: list[str | None] | None = None) -> pl.DataFrame:
    """`load_catalog` past reading: raw string columns to the standard frame, cleaned, each row's status set."""
    if raw.width == 0:  # an empty JSON Lines file has no header to name its columns: zero rows of every role
        named = [columns.id, columns.title, columns.brand, *columns.text, *_category_columns(columns), columns.tags, columns.engagement]
        raw = pl.DataFrame(schema={name: pl.String for name in dict.fromkeys(n for n in named if n)})
    _check_columns(raw, columns, path, need_engagement=reference)

    def col(name: str | None) -> pl.Expr:
        return pl.col(name) if name and name in raw.columns else pl.lit(None, dtype=pl.String)

    text_cols = [c for c in columns.text if c in raw.columns]
    text = pl.concat_str([col(c).fill_null("") for c in text_cols], separator=" ") if text_cols else pl.lit("")
    engagement_raw = col(columns.engagement if reference else None)
    form = cleaning.unicode_form
    frame = raw.select(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("row"),
        col(columns.id).fill_null("").str.strip_chars().alias("id"),
        _clean(col(columns.title), form).alias("title"),
        _clean(col(columns.brand), form).alias("brand"),
        _clean(text, form).alias("text"),
        _clean(_category_path(raw, columns), form).alias("category"),
        _tag_list(_clean(col(columns.tags), form)).alias("tags"),
        engagement_raw.str.strip_chars().alias("engagement_raw"),
        pl.lit("").alias("notes"),
    )
    frame = _truncate(frame, "title", cleaning.max_title_chars)
    frame = _truncate(frame, "text", cleaning.max_text_chars)
    frame = without_placeholder_category(frame, cleaning.placeholder_categories)
    frame = frame.with_columns(
        _engagement(pl.col("engagement_raw")).alias("engagement"),
        pl.when(pl.col("category") == "").then(None).otherwise(pl.col("category")).alias("category"),
        pl.col("notes").str.strip_chars_end("; "),
    )
    first_row = frame.group_by("id").agg(pl.col("row").min().alias("first_row"))
    frame = frame.join(first_row, on="id", how="left").sort("row")
    checked = [c for c in [columns.id, columns.title, columns.brand, *text_cols, *_category_columns(columns), columns.tags] if c]
    if reference:
        checked.append(columns.engagement)
    frame = frame.with_columns(_status(raw, checked, columns, cleaning, reference, bad_bytes, problems).alias("status"))
    if reference:
        frame = refuse_implausible_engagement(frame, columns.engagement, cleaning.implausible_ratio)
    return frame.select(STANDARD_COLUMNS)


def _category_path(raw: pl.DataFrame, columns: Columns) -> pl.Expr:
    """One category column as it is, or level columns joined into "A > B > C", empty levels skipped."""
    names = [name for name in _category_columns(columns) if name in raw.columns]
    if not names:
        return pl.lit(None, dtype=pl.String)
    if len(names) == 1:
        return pl.col(names[0])
    levels = pl.concat_list([pl.col(name).fill_null("").str.strip_chars() for name in names])
    return levels.list.eval(pl.element().filter(pl.element() != "")).list.join(" > ")


def _status(raw: pl.DataFrame, checked: list[str], columns: Columns, cleaning: CleaningConfig, reference: bool,
            bad_bytes: str | None, problems: list[str | None] | None = None) -> pl.Expr:
    """The first reason a row cannot be enriched, naming the row and the field; 'ok' otherwise."""

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
        (pl.col("id") == "", refused(pl.lit(f"field '{columns.id}': empty id"))),
        (pl.col("row") != pl.col("first_row"),
         refused(pl.format(f"field '{columns.id}': duplicate id '{{}}' (first at row {{}})", pl.col("id"), pl.col("first_row")))),
        (pl.col("title") == "", refused(pl.lit(f"field '{columns.title}': empty title"))),
    ]
    if reference:
        name = columns.engagement
        value = pl.col("engagement")
        rules += [
            (pl.col("engagement_raw").fill_null("") == "", refused(pl.lit(f"field '{name}': no engagement value"))),
            (value.is_null() & pl.col("engagement_raw").str.contains(r"^\d+,\d{1,2}$|^\d+,\d{4,}$"),
             refused(pl.format(f"field '{name}': engagement '{{}}' is not a number (a decimal comma? write it with a point)",
                               pl.col("engagement_raw")))),
            (value.is_null(), refused(pl.format(f"field '{name}': engagement '{{}}' is not a number", pl.col("engagement_raw")))),
            ((value < 0) | value.is_infinite() | value.is_nan(),
             refused(pl.format(f"field '{name}': engagement '{{}}' is not a finite count >= 0", pl.col("engagement_raw")))),
            (value > cleaning.max_engagement,
             refused(pl.format(f"field '{name}': engagement '{{}}' is more than {cleaning.max_engagement:g}, not a plausible"
                               " count (CleaningConfig.max_engagement)", pl.col("engagement_raw")))),
        ]
    status = pl.lit("ok")
    for condition, message in reversed(rules):
        status = pl.when(condition).then(message).otherwise(status)
    return status


def refuse_implausible_engagement(frame: pl.DataFrame, column: str, ratio: float, typical: float | None = None) -> pl.DataFrame:
    """Refuse usable rows whose engagement is more than `ratio` times `typical` (default: the 99th percentile of the
    usable rows' own): a typo or a bot's clicks, which would otherwise drag the priors of every listing near it."""
    usable = frame.filter(pl.col("status") == "ok")["engagement"]
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


