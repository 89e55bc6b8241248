"""Load, validate and clean a catalog of listings (CSV, Parquet or JSON Lines) with polars.

Every input row comes out as one row of the standard frame, with a `status` of `ok` or a reason it
was refused; nothing is dropped. File-level problems (missing file or column, unknown format) raise
`CatalogError` with a message that names the file and the column.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import polars as pl
from selectolax.lexbor import LexborHTMLParser

FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
STANDARD_COLUMNS = ["row", "id", "title", "brand", "text", "category", "tags", "engagement", "status", "notes"]
TAG_SEPARATORS = r"\s*[;|]\s*"  # "metal; ages 3+" or "metal|ages 3+"; a list column arrives joined with "; "
_HTML_HINT = re.compile(r"<[A-Za-z/!]|&(#\d+|#x[0-9A-Fa-f]+|[A-Za-z]+);")


class CatalogError(ValueError):
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
                    value = codecs.lookup(value).name
                except LookupError:
                    raise CatalogError(f"{source}: unknown encoding {value!r} (for example utf-8, cp1252, latin-1)") from None
            elif key == "delimiter":
                value = DELIMITER_NAMES.get(value, value)
                if len(value) != 1 or value in "\"\r\n":
                    raise CatalogError(f"{source}: the delimiter must be one character such as ';' or 'tab', not {value!r}")
            elif value == "" and key not in ("id", "title"):
                value = None
            clean[key] = value
        return replace(self, **clean)


@dataclass(frozen=True)
class CleaningConfig:
    """How raw text fields are cleaned before anything reads them."""

    max_title_chars: int = 300  # longer titles are cut, with a note in `notes`
    max_text_chars: int = 2000  # longer descriptions are cut, with a note in `notes`
    unicode_form: str = "NFKC"  # unicode normalisation form
    # A category path made only of these words (any case) says nothing: it is read as missing, with a note, so a
    # new listing gets a predicted category and a reference listing does not vote for "Others > Others".
    placeholder_categories: tuple[str, ...] = ("other", "others", "misc", "miscellaneous", "uncategorized",
                                               "uncategorised", "unknown", "none", "n/a", "-")


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(f"{path}: unknown format '{path.suffix}'; use .csv (.tsv), .parquet or .jsonl")
    return fmt


def csv_delimiter(path: Path, delimiter: str | None) -> str:
    return delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")


def read_raw(path: Path, encoding: str = "utf-8", delimiter: str | None = None
             ) -> tuple[pl.DataFrame, str | None, list[str | None] | None]:
    """All columns as strings; what is wrong with the file's bytes when some are not valid in `encoding` (they are
    replaced by U+FFFD; None when all are valid); and, for a CSV with rows polars cannot take (more fields than
    the header), each row's problem (else None)."""
    if not path.exists():
        raise CatalogError(f"{path}: file not found")
    fmt = detect_format(path)
    try:
        if fmt == "parquet":
            return _as_strings(pl.read_parquet(path)), None, None
        data = path.read_bytes()
        try:
            text = data.decode(encoding)
            bad_bytes = None
        except UnicodeDecodeError as error:
            bad_bytes = _not_valid_in(encoding, data, error.start)
            text = data.decode(encoding, errors="replace")
        data = data if encoding == "utf-8" and not bad_bytes else text.encode("utf-8")  # polars reads UTF-8
        if fmt == "csv":
            separator = csv_delimiter(path, delimiter)
            try:
                frame = pl.read_csv(data, infer_schema=False, raise_if_empty=False, separator=separator)
            except pl.exceptions.ComputeError as error:
                frame, problems = _read_ragged_csv(text, path, error, separator)
                return frame, bad_bytes, problems
        else:
            frame = _as_strings(pl.read_ndjson(data, infer_schema_length=None) if data.strip() else pl.DataFrame())
    except (pl.exceptions.PolarsError, OSError) as e:
        # Only a parse error has a line to name; a file that could not be read at all (OSError) has no data.
        where = _first_bad_json_line(data) if fmt == "jsonl" and isinstance(e, pl.exceptions.PolarsError) else ""
        raise CatalogError(f"{path}: cannot be read as {fmt}: {where or str(e).splitlines()[0]}") from None
    return frame, bad_bytes, None


def _not_valid_in(encoding: str, data: bytes, first_bad: int) -> str:
    """Why a row with bad bytes is refused. For UTF-8, show how the first bad line reads in the usual Windows
    encoding, so the user can see whether naming it is the fix (a guess from a few bytes is too often wrong)."""
    if codecs.lookup(encoding).name != "utf-8":
        return f"bytes that are not {encoding}"
    candidate = "cp1252"
    try:
        data.decode(candidate)
    except UnicodeDecodeError:
        candidate = "latin-1"  # defines every byte; cp1252 leaves five undefined
    start, end = data.rfind(b"\n", 0, first_bad) + 1, data.find(b"\n", first_bad)
    line = data[max(start, first_bad - 30): first_bad + 30 if end < 0 else min(end, first_bad + 30)]
    shown = line.decode(candidate).strip().replace("'", "\u2019")  # straight quotes delimit values in the summary
    line_number = data.count(b"\n", 0, first_bad) + 1
    return (f"bytes that are not UTF-8 (as {candidate}, the file's first such line, {line_number}, reads "
            f"\u2018{shown}\u2019; if that is right, use --encoding {candidate})")


def _read_ragged_csv(text: str, path: Path, error: Exception, delimiter: str) -> tuple[pl.DataFrame, list[str | None]]:
    """The slow path for a CSV polars refuses, usually a row with an unquoted comma: such rows are kept, cut to
    the header's width, with their problem, so that they are refused one by one and the rest go through."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=delimiter)
    try:
        header = next(reader, [])
        records, problems = [], []
        start = reader.line_num + 1
        for record in reader:
            if record:
                problem = None
                if len(record) > len(header):
                    problem = (f"(line {start}): {len(record)} fields where the header has {len(header)}; an unquoted "
                               f"{'comma' if delimiter == ',' else repr(delimiter)}?")
                records.append(record[: len(header)] + [None] * (len(header) - len(record)))
                problems.append(problem)
            start = reader.line_num + 1
    except csv.Error as e:
        raise CatalogError(f"{path}: cannot be read as csv: the record from line {start}: {e}") from None
    if len(set(header)) != len(header) or not any(problems):
        raise CatalogError(f"{path}: cannot be read as csv: {str(error).splitlines()[0]}") from None
    return pl.DataFrame(records, schema={name: pl.String for name in header}, orient="row"), problems


def _as_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """Every column as text: lists (bullet points) joined with "; ", nested objects as JSON, the rest cast."""
    def as_string(name: str, dtype: pl.DataType) -> pl.Expr:
        if isinstance(dtype, (pl.List, pl.Array)):
            if isinstance(dtype.inner, (pl.List, pl.Array, pl.Struct)):
                return pl.col(name).map_elements(json.dumps, return_dtype=pl.String)
            return pl.col(name).cast(pl.List(pl.String)).list.join("; ")
        if isinstance(dtype, pl.Struct):
            return pl.col(name).struct.json_encode()
        return pl.col(name).cast(pl.String)

    return frame.select(as_string(name, dtype).alias(name) for name, dtype in frame.schema.items())


def _first_bad_json_line(data: bytes) -> str:
    """'line N is not ...' for the first line of a JSON Lines file that is not a JSON object, else ''."""
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            return f"line {number} is not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(value, dict):
            return f"line {number} is not a JSON object"
    return ""


def _html_to_text(value: str) -> str:
    if not _HTML_HINT.search(value):
        return value
    parsed = LexborHTMLParser(value)
    parsed.strip_tags(["script", "style"])
    return parsed.text(separator=" ")


def _clean(column: pl.Expr, form: str) -> pl.Expr:
    return (
        column.fill_null("")
        .map_elements(_html_to_text, return_dtype=pl.String)
        .str.normalize(form)
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
    )


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
        pl.col("engagement_raw").str.replace_all(",", "").cast(pl.Float64, strict=False).alias("engagement"),
        pl.when(pl.col("category") == "").then(None).otherwise(pl.col("category")).alias("category"),
        pl.col("notes").str.strip_chars_end("; "),
    )
    first_row = frame.group_by("id").agg(pl.col("row").min().alias("first_row"))
    frame = frame.join(first_row, on="id", how="left").sort("row")
    checked = [c for c in [columns.id, columns.title, columns.brand, *text_cols, *_category_columns(columns), columns.tags] if c]
    if reference:
        checked.append(columns.engagement)
    frame = frame.with_columns(_status(raw, checked, columns, reference, bad_bytes, problems).alias("status"))
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


def _status(raw: pl.DataFrame, checked: list[str], columns: Columns, reference: bool, bad_bytes: str | None,
            problems: list[str | None] | None = None) -> pl.Expr:
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
        rules += [
            (pl.col("engagement_raw").fill_null("") == "", refused(pl.lit(f"field '{name}': no engagement value"))),
            (pl.col("engagement").is_null(),
             refused(pl.format(f"field '{name}': engagement '{{}}' is not a number", pl.col("engagement_raw")))),
            ((pl.col("engagement") < 0) | pl.col("engagement").is_infinite() | pl.col("engagement").is_nan(),
             refused(pl.format(f"field '{name}': engagement '{{}}' is not a finite count >= 0", pl.col("engagement_raw")))),
        ]
    status = pl.lit("ok")
    for condition, message in reversed(rules):
        status = pl.when(condition).then(message).otherwise(status)
    return status


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


def check_output_path(path: str | Path, inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """Refuse, before any work, an output name that is a folder or one of the inputs (it would be replaced)."""
    path = Path(path)
    if path.is_dir():
        raise CatalogError(f"{path}: is a folder; --out takes a file name such as {path / 'enriched.parquet'}")
    for given in inputs:
        if given is not None and Path(given).resolve() == path.resolve():
            raise CatalogError(f"{path}: --out names an input file, which the output would replace; choose another name")
    return path


def write_table(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write Parquet (or CSV when the name ends in .csv) atomically: a reader sees the old file or the new."""
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() == ".csv":
            # CSV has no lists: list columns are written as "a|b|c".
            lists = [c for c, dtype in frame.schema.items() if isinstance(dtype, pl.List)]
            frame.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join("|") for c in lists).write_csv(tmp)
        else:
            frame.write_parquet(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write a text file through a temporary file and a rename, like `write_table`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path
