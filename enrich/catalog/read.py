"""A catalog file's raw rows as strings: CSV (any delimiter, any encoding), Parquet, JSON Lines or an XML feed.

What cannot be read at all raises `CatalogError` naming the file (and the line where there is one); rows that
can be read but are damaged (bytes not valid in the encoding, too many fields) are kept and marked, so that
they are refused one by one later and nothing is lost.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path

import polars as pl

from enrich.catalog.columns import CatalogError

FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".xml": "xml", ".rss": "xml"}


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(f"{path}: unknown format '{path.suffix}'; use .csv (.tsv), .parquet, .jsonl or an .xml feed")
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
        elif fmt == "xml":
            frame = read_xml_feed(data, path)
        else:
            frame = _read_json_lines(data, path)
    except (pl.exceptions.PolarsError, OSError) as e:
        # Only a parse error has a line to name; a file that could not be read at all (OSError) has no data.
        where = _first_bad_json_line(data) if fmt == "jsonl" and isinstance(e, pl.exceptions.PolarsError) else ""
        raise CatalogError(f"{path}: cannot be read as {fmt}: {where or str(e).splitlines()[0]}") from None
    return frame, bad_bytes, None


def read_xml_feed(data: bytes, path: Path) -> pl.DataFrame:
    """An RSS 2.0 or Atom product feed (Google Merchant Center's XML): one row per `item` or `entry`, a column per
    child element named without its namespace (`g:id` is `id`); an element repeated in an item is joined with ', ',
    as the feed's tab-separated form writes it. Parsed with defusedxml: a feed cannot expand entities or reach out."""
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        root = ElementTree.fromstring(data)
    except (ElementTree.ParseError, DefusedXmlException) as e:
        raise CatalogError(f"{path}: cannot be read as an XML feed: {e}") from None
    items = [element for element in root.iter() if _local_name(element.tag) in ("item", "entry")]
    if not items:
        raise CatalogError(f"{path}: an XML file with no <item> or <entry> elements: not a product feed")
    records = []
    for item in items:
        record: dict[str, list[str]] = {}
        for child in item:
            text = " ".join(part.strip() for part in child.itertext() if part.strip())
            record.setdefault(_local_name(child.tag), []).append(text)
        records.append({name: ", ".join(v for v in values if v) for name, values in record.items()})
    names = list(dict.fromkeys(name for record in records for name in record))
    return pl.DataFrame({name: [record.get(name) for record in records] for name in names},
                        schema={name: pl.String for name in names})


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


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


def _read_json_lines(data: bytes, path: Path) -> pl.DataFrame:
    """polars' reader, or, where the lines disagree in shape (a field a string in one line and a list in the next),
    each line read on its own: every value becomes text the same way whatever its shape."""
    if not data.strip():
        return pl.DataFrame()
    try:
        return _as_strings(pl.read_ndjson(data, infer_schema_length=None))
    except pl.exceptions.PolarsError:
        if problem := _first_bad_json_line(data):
            raise CatalogError(f"{path}: cannot be read as jsonl: {problem}") from None
    records = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    names = list(dict.fromkeys(name for record in records for name in record))
    return pl.DataFrame({name: [as_text(record.get(name)) for record in records] for name in names},
                        schema={name: pl.String for name in names})


def as_text(value) -> str | None:
    """A JSON value as a field's text: a list of plain values joined with "; ", anything nested as JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
        return "; ".join(str(v) for v in value if v is not None)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _as_strings(frame: pl.DataFrame) -> pl.DataFrame:
    """Every column as text: lists (bullet points) joined with "; ", nested objects as JSON, the rest cast."""
    def as_string(name: str, dtype: pl.DataType) -> pl.Expr:
        if isinstance(dtype, (pl.List, pl.Array)):
            if isinstance(dtype.inner, (pl.List, pl.Array, pl.Struct)):
                return pl.col(name).map_elements(lambda v: json.dumps(v.to_list(), ensure_ascii=False, default=str),
                                                  return_dtype=pl.String)
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


