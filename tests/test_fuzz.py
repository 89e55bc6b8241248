"""Catalog reading fuzzed through the real `enrich run`: whatever file it is given, it ends with exit 0 and one
output row per input row, or exit 2 and one error line; never a traceback."""

import csv
import io
import json
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrich.cli import main

DELIMITERS = {",": ",", ";": ";", "\t": "tab", "|": "|"}
ENCODINGS = ("utf-8", "cp1252", "latin-1", "utf-16")
# Text as sellers and spreadsheets make it: accents, emoji, HTML, quotes, delimiters, line breaks, NULs, zero-width
# spaces, formula starts.
WEIRD = st.sampled_from(["é", "ß", "😀", "<b>", "&amp;", '"', "'", ",", ";", "\t", "|", "\n", "\r\n", "\x00", "\u200b",
                         "=", "+", "-", "@", " ", "1,5", "null", "NaN"])
FIELD = st.lists(st.one_of(st.text(max_size=6), WEIRD), max_size=5).map("".join)
ROWS = st.lists(st.fixed_dictionaries({"id": FIELD, "title": FIELD, "brand": st.one_of(st.none(), FIELD)}), max_size=8)


def run(index: Path, path: Path, *flags: str) -> tuple[int, str, Path]:
    out = path.with_name("out.parquet")
    err = io.StringIO()
    import contextlib

    with contextlib.redirect_stderr(err):
        code = main(["run", str(path), "--index", str(index), "--out", str(out), "--quiet", *flags])
    return code, err.getvalue(), out


def check(code: int, err: str, out: Path, rows: int | None) -> None:
    if code == 0:
        written = pl.read_parquet(out)
        assert rows is None or written.height == rows, (written.height, rows)
    else:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("enrich: error:"), (code, err[-2000:])


def csv_bytes(rows: list[dict], delimiter: str, encoding: str) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["id", "title", "brand"], delimiter=delimiter)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode(encoding, errors="replace")


def fuzz_settings(examples: int):
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("examples", [pytest.param(25, id="quick"), pytest.param(400, id="long", marks=pytest.mark.slow)])
def test_generated_catalogs_are_read_row_for_row(tiny_index, examples):
    @fuzz_settings(examples)
    @given(rows=ROWS, fmt=st.sampled_from(["csv", "jsonl", "parquet"]), delimiter=st.sampled_from(list(DELIMITERS)),
           encoding=st.sampled_from(ENCODINGS), nested=st.booleans())
    def property_(rows, fmt, delimiter, encoding, nested):
        folder = Path(tempfile.mkdtemp())
        flags = []
        if fmt == "csv":
            path = folder / "new.csv"
            path.write_bytes(csv_bytes(rows, delimiter, encoding))
            flags = ["--delimiter", DELIMITERS[delimiter], "--encoding", encoding]
        elif fmt == "jsonl":
            path = folder / "new.jsonl"
            records = [{**r, "description": [r["title"], {"k": r["brand"]}] if nested else r["brand"]} for r in rows]
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            path = folder / "new.parquet"
            frame = pl.DataFrame(rows, schema={"id": pl.String, "title": pl.String, "brand": pl.String})
            if nested:
                frame = frame.with_columns(description=pl.concat_list(pl.col("title"), pl.col("brand")),
                                           size=pl.struct(pl.col("title").str.len_chars().alias("n")))
            frame.write_parquet(path)
        check(*run(tiny_index, path, *flags), rows=len(rows))

    property_()


@pytest.mark.parametrize("examples", [pytest.param(25, id="quick"), pytest.param(400, id="long", marks=pytest.mark.slow)])
def test_random_bytes_end_in_rows_or_one_error_line(tiny_index, examples):
    @fuzz_settings(examples)
    @given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet"]),
           header=st.booleans())
    def property_(data, suffix, header):
        path = Path(tempfile.mkdtemp()) / f"new{suffix}"
        path.write_bytes((b"id,title\n" if header and suffix == ".csv" else b"") + data)
        check(*run(tiny_index, path), rows=None)

    property_()
