import polars as pl
import pytest

from enrich.catalog import CatalogError, CleaningConfig, Columns, listing_texts, load_catalog
from enrich.files import OutputError, check_output_path, write_table

COLUMNS = Columns(id="sku", title="name", brand="maker", text=("description",), category="path", engagement="orders")


def write_rows(path, rows):
    pl.DataFrame(rows).write_csv(path)
    return path


def good_rows():
    return {
        "sku": ["a1", "a2", "a3"],
        "name": ["Red racing car", "Wooden  train\tset", "<b>Puzzle</b> &amp; game"],
        "maker": ["Hot Wheels", "Brio", ""],
        "description": ["<p>Die-cast <i>metal</i></p><script>track()</script>", "", "1000 pieces"],
        "path": ["Vehicles > Cars", "Trains > Sets", ""],
        "orders": ["12", "1,204", "0"],
    }


def test_reads_csv_parquet_and_jsonl_alike(tmp_path):
    csv = write_rows(tmp_path / "c.csv", good_rows())
    pl.DataFrame(good_rows()).write_parquet(tmp_path / "c.parquet")
    pl.DataFrame(good_rows()).write_ndjson(tmp_path / "c.jsonl")
    frames = [load_catalog(p, COLUMNS, reference=True) for p in (csv, tmp_path / "c.parquet", tmp_path / "c.jsonl")]
    assert frames[0].equals(frames[1]) and frames[0].equals(frames[2])
    frame = frames[0]
    assert frame["status"].to_list() == ["ok", "ok", "ok"]
    assert frame["title"].to_list() == ["Red racing car", "Wooden train set", "Puzzle & game"]
    assert frame["text"][0] == "Die-cast metal"  # HTML to text, scripts dropped
    assert frame["engagement"].to_list() == [12.0, 1204.0, 0.0]
    assert frame["category"].to_list() == ["Vehicles > Cars", "Trains > Sets", None]


def test_list_and_nested_fields_become_text_in_jsonl_and_parquet(tmp_path):
    """Bullet points often come as a list: they are joined, not refused; a nested object is kept as JSON."""
    rows = pl.DataFrame({"sku": [1, 2], "name": ["Kite", "Ball"], "bullets": [["Ripstop nylon", "30 m line"], []],
                         "specs": [{"age": "8+"}, {"age": None}]})
    rows.write_ndjson(tmp_path / "c.jsonl")
    rows.write_parquet(tmp_path / "c.parquet")
    columns = Columns(id="sku", title="name", brand=None, text=("bullets", "specs"))
    for path in (tmp_path / "c.jsonl", tmp_path / "c.parquet"):
        frame = load_catalog(path, columns)
        assert frame["id"].to_list() == ["1", "2"] and frame["status"].to_list() == ["ok", "ok"]
        assert frame["text"][0].startswith("Ripstop nylon; 30 m line") and '"age":"8+"' in frame["text"][0]


def test_a_broken_jsonl_line_is_named(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"sku": "a1", "name": "Kite"}\n\n{"sku": "a2", "name": Ball}\n')
    with pytest.raises(CatalogError, match=r"c.jsonl: cannot be read as jsonl: line 3 is not valid JSON"):
        load_catalog(tmp_path / "c.jsonl", Columns(id="sku", title="name", brand=None, text=()))
    (tmp_path / "folder.jsonl").mkdir()  # unreadable as a file: no line to name, still one clear error
    with pytest.raises(CatalogError, match=r"folder.jsonl: cannot be read as jsonl: .*Is a directory"):
        load_catalog(tmp_path / "folder.jsonl", Columns(id="sku", title="name", brand=None, text=()))


def test_a_row_with_too_many_fields_is_refused_alone(tmp_path):
    """An unquoted comma in a title splits it into more fields than the header has: that row is refused, the
    others are read, and none is lost."""
    (tmp_path / "c.csv").write_text("sku,name,maker\na1,Kite,Acme\na2,Doll, pink,Barbie\n\na3,Ball\n")
    frame = load_catalog(tmp_path / "c.csv", Columns(id="sku", title="name", brand="maker", text=()))
    assert frame["id"].to_list() == ["a1", "a2", "a3"]
    assert frame["status"][0] == "ok" and frame["status"][2] == "ok" and frame["brand"][2] == ""
    assert frame["status"][1] == "refused: row 2 (line 3): 4 fields where the header has 3; an unquoted comma?"
    (tmp_path / "q.csv").write_text('sku,name\na1,Kite\na2,"Doll\na3,Ball\n')
    with pytest.raises(CatalogError, match="q.csv: cannot be read as csv: the record from line 3"):
        load_catalog(tmp_path / "q.csv", Columns(id="sku", title="name", brand=None, text=()))


def test_an_output_name_that_is_a_folder_or_an_input_is_refused(tmp_path):
    with pytest.raises(OutputError, match="is a folder; --out takes a file name"):
        write_table(pl.DataFrame({"id": ["a"]}), tmp_path)
    listings = write_rows(tmp_path / "new.csv", good_rows())
    with pytest.raises(OutputError, match="--out names an input file"):
        check_output_path(tmp_path / "." / "new.csv", inputs=(None, listings))
    assert check_output_path(tmp_path / "out.csv", inputs=(listings,)) == tmp_path / "out.csv"


def test_bad_rows_are_refused_with_row_and_field_and_none_lost(tmp_path):
    rows = good_rows()
    rows["sku"] += ["a1", "b5", "", "b7", "b8"]
    rows["name"] += ["Duplicate", "   ", "No id", "Bad orders", "Negative"]
    rows["maker"] += [""] * 5
    rows["description"] += [""] * 5
    rows["path"] += [""] * 5
    rows["orders"] += ["3", "4", "5", "lots", "-2"]
    frame = load_catalog(write_rows(tmp_path / "bad.csv", rows), COLUMNS, reference=True)
    assert frame.height == 8
    status = frame["status"].to_list()
    assert status[:3] == ["ok"] * 3
    assert status[3] == "refused: row 4 field 'sku': duplicate id 'a1' (first at row 1)"
    assert status[4] == "refused: row 5 field 'name': empty title"
    assert status[5] == "refused: row 6 field 'sku': empty id"
    assert status[6] == "refused: row 7 field 'orders': engagement 'lots' is not a number"
    assert status[7] == "refused: row 8 field 'orders': engagement '-2' is not a finite count >= 0"


def test_new_listings_ignore_engagement_and_may_lack_category(tmp_path):
    rows = good_rows()
    rows["orders"] = ["x", "y", "z"]
    del rows["path"]
    frame = load_catalog(write_rows(tmp_path / "new.csv", rows), COLUMNS, reference=False)
    assert frame["status"].to_list() == ["ok"] * 3
    assert frame["engagement"].null_count() == 3


def test_bytes_that_are_not_utf8_refuse_only_their_row(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"sku,name,orders\nx1,Caf\xe9 kitchen,3\nx2,Tea set,4\n")
    frame = load_catalog(path, Columns(id="sku", title="name", engagement="orders", brand=None, text=(), category=None),
                         reference=True)
    assert frame["status"].to_list() == ["refused: row 1 field 'name': bytes that are not UTF-8 (as cp1252, the file's first"
                                         " such line, 2, reads \u2018x1,Caf\u00e9 kitchen,3\u2019; if that is right, use"
                                         " --encoding cp1252)", "ok"]


def test_the_not_utf8_refusal_shows_the_first_bad_line_as_latin1_where_cp1252_cannot_read_the_file(tmp_path):
    """A byte cp1252 leaves undefined (0x81) means the file is not cp1252; latin-1 reads every byte. The line shown is
    cut to 30 bytes either side of the first bad byte, and a straight quote in it is shown curly (the summary elides
    what is between straight quotes)."""
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"sku,name,orders\nx1,Tea set,4\nx2," + b"a" * 40 + b" it's Gr\xfc\x81n " + b"b" * 40 + b",3\n")
    frame = load_catalog(path, Columns(id="sku", title="name", engagement="orders", brand=None, text=(), category=None),
                         reference=True)
    assert frame["status"].to_list() == ["ok", "refused: row 2 field 'name': bytes that are not UTF-8 (as latin-1, the file's"
                                         f" first such line, 3, reads \u2018{'a' * 22} it\u2019s Gr\u00fc\x81n {'b' * 26}\u2019;"
                                         " if that is right, use --encoding latin-1)"]


def test_a_catalog_in_another_encoding_reads_when_it_is_named(tmp_path, capsys):
    """A cp1252 export (a pound sign, curly quotes) reads whole once its encoding is named, by flag or mapping file;
    a byte that cp1252 leaves undefined still refuses only its row."""
    (tmp_path / "cp1252.csv").write_bytes("sku,name,orders\nx1,Caf\u00e9 set \u00a35 \u2019best\u2019,3\n".encode("cp1252")
                                          + b"x2,Tea\x81set,4\n")
    columns = Columns(id="sku", title="name", engagement="orders", brand=None, text=(), category=None)
    frame = load_catalog(tmp_path / "cp1252.csv", columns.updated(encoding="CP1252"), reference=True)
    assert frame["title"][0] == "Caf\u00e9 set \u00a35 \u2019best\u2019" and frame["status"][0] == "ok"
    assert frame["status"][1] == "refused: row 2 field 'name': bytes that are not cp1252"
    (tmp_path / "map.toml").write_text('id = "sku"\ntitle = "name"\nencoding = "latin-1"\n')
    assert Columns.from_file(tmp_path / "map.toml").encoding == "iso8859-1"
    for name in ("klingon", "rot13", "base64"):  # the last two are codecs, not text encodings
        with pytest.raises(CatalogError, match=f"unknown encoding '{name}'"):
            columns.updated(encoding=name)


def test_a_spreadsheet_export_separated_by_semicolons_or_tabs_reads_like_a_comma_csv(tmp_path):
    """Spreadsheets in many locales write ';'; a .tsv is split by tabs without being told."""
    expected = load_catalog(write_rows(tmp_path / "c.csv", good_rows()), COLUMNS, reference=True)
    pl.DataFrame(good_rows()).write_csv(tmp_path / "semi.csv", separator=";")
    pl.DataFrame(good_rows()).write_csv(tmp_path / "tabs.tsv", separator="\t")
    with pytest.raises(CatalogError, match="the header is one column: is the file separated by ';'\\? say so with --delimiter ';'"):
        load_catalog(tmp_path / "semi.csv", COLUMNS, reference=True)
    (tmp_path / "map.toml").write_text('id = "sku"\ntitle = "name"\nbrand = "maker"\ncategory = "path"\n'
                                       'engagement = "orders"\ndelimiter = "semicolon"\n')
    for frame in (load_catalog(tmp_path / "semi.csv", COLUMNS.updated(delimiter=";"), reference=True),
                  load_catalog(tmp_path / "semi.csv", Columns.from_file(tmp_path / "map.toml"), reference=True),
                  load_catalog(tmp_path / "tabs.tsv", COLUMNS, reference=True)):
        assert frame.equals(expected)


def test_a_row_with_a_stray_delimiter_names_that_delimiter(tmp_path):
    (tmp_path / "semi.csv").write_text("sku;name;orders\nx1;Tea set;4\nx2;Robot; blue;3\n")
    frame = load_catalog(tmp_path / "semi.csv", Columns(id="sku", title="name", engagement="orders", brand=None, text=(),
                                                        category=None, delimiter=";"), reference=True)
    assert frame["status"].to_list() == ["ok", "refused: row 2 (line 3): 4 fields where the header has 3; an unquoted ';'?"]


@pytest.mark.parametrize("delimiter", [";;", "", "\n"])
def test_a_delimiter_that_is_not_one_character_is_refused(delimiter):
    with pytest.raises(CatalogError, match="the delimiter must be one character"):
        COLUMNS.updated(delimiter=delimiter)


def test_a_catalogs_own_tags_are_read_as_lists_from_text_or_list_columns(tmp_path):
    (tmp_path / "t.csv").write_text("sku,name,labels\nx1,Car,metal; ages 3+ | Metal\nx2,Doll,\nx3,Kite,; |\n")
    columns = Columns(id="sku", title="name", brand=None, text=(), category=None, tags="labels")
    assert load_catalog(tmp_path / "t.csv", columns)["tags"].to_list() == [["metal", "ages 3+"], [], []]  # one metal
    pl.DataFrame({"sku": ["x1", "x2"], "name": ["Car", "Doll"], "labels": [["metal", "red"], []]}).write_ndjson(tmp_path / "t.jsonl")
    assert load_catalog(tmp_path / "t.jsonl", columns)["tags"].to_list() == [["metal", "red"], []]
    assert load_catalog(tmp_path / "t.jsonl", columns.updated(tags=""))["tags"].to_list() == [[], []]  # no tags column
    with pytest.raises(CatalogError, match="no column 'tagz' for the tags"):
        load_catalog(tmp_path / "t.csv", columns.updated(tags="tagz"))


def test_long_fields_are_truncated_with_a_note(tmp_path):
    rows = good_rows()
    rows["description"][1] = "word " * 1000
    frame = load_catalog(write_rows(tmp_path / "long.csv", rows), COLUMNS, CleaningConfig(max_text_chars=100))
    assert len(frame["text"][1]) == 100
    assert frame["notes"][1] == "text truncated to 100 chars"
    assert frame["status"][1] == "ok"


def test_file_level_errors_name_the_file_and_column(tmp_path):
    with pytest.raises(CatalogError, match="file not found"):
        load_catalog(tmp_path / "missing.csv", COLUMNS)
    (tmp_path / "catalog.xlsx").write_bytes(b"PK")
    with pytest.raises(CatalogError, match="unknown format '.xlsx'"):
        load_catalog(tmp_path / "catalog.xlsx", COLUMNS)
    path = write_rows(tmp_path / "c.csv", good_rows())
    with pytest.raises(CatalogError, match=r"no column 'title' for the title .*columns are: sku, name"):
        load_catalog(path, Columns(id="sku"))
    with pytest.raises(CatalogError, match="no column 'clicks' for the engagement"):
        load_catalog(path, Columns(id="sku", title="name", engagement="clicks"), reference=True)
    # an engagement column left at its default name may be absent: a reference catalog without engagement
    assert load_catalog(path, Columns(id="sku", title="name"), reference=True)["engagement"].null_count() == 3
    with pytest.raises(CatalogError, match=r"no column 'blurb' for the text"):
        load_catalog(path, Columns(id="sku", title="name", text=("description", "blurb")))


def test_mapping_file_and_its_errors(tmp_path):
    mapping = tmp_path / "columns.toml"
    mapping.write_text('id = "sku"\ntitle = "name"\nbrand = "maker"\ntext = ["description"]\ncategory = "path"\nengagement = "orders"\n')
    assert Columns.from_file(mapping) == COLUMNS
    mapping.write_text('id = "sku"\nprice = "p"\n')
    with pytest.raises(CatalogError, match=r"unknown column role\(s\) \['price'\]"):
        Columns.from_file(mapping)


def test_listing_text_puts_the_title_first(tmp_path):
    frame = load_catalog(write_rows(tmp_path / "c.csv", good_rows()), COLUMNS)
    assert listing_texts(frame) == ["Red racing car | Hot Wheels | Die-cast metal", "Wooden train set | Brio",
                                    "Puzzle & game | 1000 pieces"]


def test_write_table_is_atomic_and_writes_lists_into_csv(tmp_path):
    frame = pl.DataFrame({"id": ["a"], "tags": [["x", "y"]], "scores": [[0.5, 0.25]]})
    write_table(frame, tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().splitlines() == ["id,tags,scores", "a,x|y,0.5|0.25"]
    write_table(frame, tmp_path / "out.parquet")
    assert pl.read_parquet(tmp_path / "out.parquet").equals(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.parquet"]  # no temp files left


def test_a_second_real_catalog_loads_with_column_flags_only(amazon_catalog):
    path = amazon_catalog.parent / "with_descriptions.csv"
    columns = Columns(id="product_id", title="product_name", brand="manufacturer",
                      text=("product_description", "product_information"), engagement="number_of_reviews",
                      category=("category", "subcategory_1", "subcategory_2", "subcategory_3", "subcategory_4"))
    frame = load_catalog(path, columns, reference=True)
    assert frame.height == pl.read_csv(path, infer_schema=False).height == 694
    assert (frame["status"] == "ok").mean() > 0.95
    assert frame["text"].str.len_chars().max() <= CleaningConfig().max_text_chars
    assert not frame["text"].str.contains("  ").any()
    assert frame["category"][0] == "Hobbies > Model Trains & Railway Sets > Lighting & Signal Engineering > Lamps & Lighting"


def test_category_from_level_columns(tmp_path):
    rows = {"id": ["1", "2"], "title": ["Lamp post", "Driver figure"], "top": ["Hobbies", "Hobbies"],
            "sub1": ["Model Trains", "Model Trains"], "sub2": ["Lighting", ""], "engagement": ["1", "2"]}
    frame = load_catalog(write_rows(tmp_path / "levels.csv", rows), Columns().updated(category=["top", "sub1", "sub2"]),
                         reference=True)
    assert frame["category"].to_list() == ["Hobbies > Model Trains > Lighting", "Hobbies > Model Trains"]


def test_a_placeholder_category_is_read_as_missing_with_a_note(tmp_path):
    rows = {"id": ["1", "2", "3", "4"], "title": ["Kite", "Yo-yo", "Top", "Ball"], "top": ["others", "Toys", "MISC", ""],
            "sub1": ["others", "Other", "", ""], "engagement": ["1", "2", "3", "4"]}
    path = write_rows(tmp_path / "placeholders.csv", rows)
    columns = Columns().updated(category=["top", "sub1"])
    frame = load_catalog(path, columns, reference=True)
    assert frame["category"].to_list() == [None, "Toys > Other", None, None]  # only a path of placeholders alone
    assert frame["notes"].to_list() == ["category 'others > others' is a placeholder, read as missing",
                                        "", "category 'MISC' is a placeholder, read as missing", ""]
    assert (frame["status"] == "ok").all()
    kept = load_catalog(path, columns, CleaningConfig(placeholder_categories=()), reference=True)
    assert kept["category"].to_list() == ["others > others", "Toys > Other", "MISC", None]
