"""A team's own catalog as its platform exports it: named exports, category path forms, engagement that is missing,
`enrich inspect` and its warnings, and an index and a run built from such files."""

import json
from pathlib import Path

import polars as pl
import pytest

from enrich.catalog import CatalogError, Columns, load_catalog
from enrich.catalog.inspect import catalog_warnings
from enrich.catalog.load import read_catalog
from enrich.cli import main

EXPORTS = Path(__file__).parent / "data" / "exports"
PIM = Columns(id="uniq_id", title="product_name", brand="brand", text=("description",), category="product_category_tree",
              engagement="product_rating")


def usable(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.filter(pl.col("status") == "ok")


@pytest.mark.parametrize("name, export, listings, merged, category_column, a_path", [
    ("shopify_products.csv", "shopify", 30, 54, "Product Category", "Apparel & Accessories > Clothing > Shirts & Tops"),
    ("woocommerce_products.csv", "woocommerce", 31, 24, "Categories", "Clothing > Tshirts"),
    ("google_merchant.tsv", "google-merchant", 32, 0, "google_product_category", "Home & Garden > Decor > Candles"),
    ("google_merchant.xml", "google-merchant", 30, 0, "product_type", "Home > Fragrance > Candles"),
    ("magento_products.csv", "magento", 30, 0, "categories", "Men > Tops > Tees"),
])
def test_each_named_export_reads_without_a_columns_file(name, export, listings, merged, category_column, a_path):
    catalog = read_catalog(EXPORTS / name, reference=True)
    frame, details = catalog.frame, catalog.details
    assert details.export.name == export and details.columns.format == export
    assert details.columns.category == category_column
    assert usable(frame).height == listings
    assert frame["status"].str.starts_with("merged:").sum() == merged
    assert frame["status"].str.starts_with("refused:").sum() == 0
    assert a_path in usable(frame)["category"].to_list()
    assert usable(frame)["category"].null_count() == 0
    assert not details.engagement_column and usable(frame)["engagement"].null_count() == listings
    assert not any(">" in t or "<" in t for t in usable(frame)["text"].to_list())  # HTML read as text


def test_shopify_variant_and_image_rows_join_their_product():
    frame = load_catalog(EXPORTS / "shopify_products.csv")
    tee = frame.filter(pl.col("id") == "organic-cotton-tee")
    assert tee["status"].to_list() == ["ok"] + ["merged: row {} continues the listing of row 1 (Handle 'organic-cotton-tee')"
                                               " (a variant or image row)".format(r) for r in (2, 3, 4)]
    assert tee["title"][0] == "Organic Cotton Tee" and tee["brand"][0] == "Kestrel"
    assert "made to last" in tee["text"][0] and "<p>" not in tee["text"][0]
    assert set(tee["tags"][0]) >= {"t-shirt", "kestrel"}  # Shopify's tags are separated by commas


def test_woocommerce_variations_join_their_parent_and_other_categories_become_tags():
    frame = usable(load_catalog(EXPORTS / "woocommerce_products.csv"))
    first = frame.row(0, named=True)
    assert first["category"] == "Clothing > Tshirts" and "Sale" in first["tags"]
    assert "Home > Candles, Scents & Diffusers" in frame["category"].to_list()  # an escaped comma stays in the name
    assert not frame["title"].str.contains(" - Blue").any()  # variations are not listings of their own


def test_google_feed_numeric_category_ids_fall_back_to_product_type():
    details = read_catalog(EXPORTS / "google_merchant.xml").details
    assert details.columns.category == "product_type"
    assert any("numeric taxonomy ids" in note for note in details.notes)


def test_format_can_be_forced_and_an_unknown_one_is_refused(tmp_path):
    renamed = tmp_path / "products.csv"
    pl.read_csv(EXPORTS / "magento_products.csv", infer_schema=False).write_csv(renamed)
    assert read_catalog(renamed, Columns(format="magento")).details.export.name == "magento"
    with pytest.raises(CatalogError, match="unknown format 'bigcommerce'.*shopify"):
        Columns().updated(format="bigcommerce")


def write_csv(path: Path, rows: dict) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


@pytest.mark.parametrize("cell, separator, path", [
    ("Women >> Tops >> Tees", ">>", "Women > Tops > Tees"),
    ("Women/Tops/Tees", "/", "Women > Tops > Tees"),
    ("Women | Tops | Tees", "|", "Women > Tops > Tees"),
    ("Women » Tops » Tees", "»", "Women > Tops > Tees"),
    ("Women > Tops > Tees", ">", "Women > Tops > Tees"),
    (json.dumps(["Women >> Tops >> Tees"]), ">>", "Women > Tops > Tees"),
])
def test_each_path_form_is_detected(tmp_path, cell, separator, path):
    rows = {"id": [f"p{i}" for i in range(4)], "title": ["Plain tee", "Band tee", "Soft tee", "Long tee"], "category": [cell] * 4}
    catalog = read_catalog(write_csv(tmp_path / "c.csv", rows))
    assert catalog.details.category_form.separator == separator
    assert catalog.details.category_form.source == "detected"
    assert catalog.frame["category"].to_list() == [path] * 4


def test_a_separator_named_in_the_columns_file_wins(tmp_path):
    rows = {"id": ["a", "b"], "title": ["x", "y"], "category": ["Men/Shoes > Boots", "Men/Hats"]}
    (tmp_path / "columns.toml").write_text('category_separator = " / "\n')
    frame = load_catalog(write_csv(tmp_path / "c.csv", rows), Columns.from_file(tmp_path / "columns.toml"))
    assert frame["category"].to_list() == ["Men > Shoes - Boots", "Men > Hats"]


def test_title_leaves_and_shop_roots_are_dropped_and_counted(tmp_path):
    rows = {"id": ["a", "b", "c", "d"],
            "title": ["AW Bellies", "FabHomeDecor Fabric Double Sofa Bed", "Popular Dice Games", "Plain mug"],
            "category": [json.dumps(["Footwear >> Ballerinas >> AW Bellies"]),
                         json.dumps(["Furniture >> Sofa Beds >> FabHomeDecor Fabric Double Sofa Bed (Finish Colo..."]),
                         json.dumps(["Games >> Dice & Dice Games"]),  # a category that the title names is a category
                         json.dumps(["Default Category >> Kitchen >> Mugs"])]}
    catalog = read_catalog(write_csv(tmp_path / "c.csv", rows))
    assert catalog.frame["category"].to_list() == ["Footwear > Ballerinas", "Furniture > Sofa Beds", "Games > Dice & Dice Games",
                                                   "Kitchen > Mugs"]
    assert catalog.details.categories.title_leaves == 2 and catalog.details.categories.shop_roots == 1


def test_commas_inside_level_names_are_not_read_as_several_paths(sample):
    catalog = read_catalog(sample["reference"], Columns.from_file(sample["columns"]), reference=True)
    assert catalog.details.category_form.list_separator == ""
    assert catalog.details.categories.title_leaves == 0 and catalog.details.categories.rows_with_other_paths == 0
    assert catalog_warnings(catalog) == []


def test_missing_engagement_is_unknown_and_only_a_wrong_value_is_refused():
    frame = load_catalog(EXPORTS / "pim_export.csv", PIM, reference=True)
    assert usable(frame).height == 30
    assert usable(frame)["engagement"].count() == 10  # 'No rating available', '', 'N/A': unknown, not refused
    refused = frame.filter(pl.col("status") != "ok")["status"].to_list()
    assert refused == ["refused: row 31 field 'product_rating': engagement 'lots' is not a number"]


def test_a_row_with_neither_category_nor_engagement_is_refused_with_why(tmp_path):
    rows = {"id": ["a", "b"], "title": ["x", "y"], "category": ["", "Toys"], "engagement": ["N/A", ""]}
    frame = load_catalog(write_csv(tmp_path / "c.csv", rows), reference=True)
    assert frame["status"].to_list() == ["refused: row 1 field 'engagement': no engagement value and no category: nothing"
                                         " to learn from or link to", "ok"]


def warnings_of(tmp_path, rows: dict, **columns) -> list[str]:
    return catalog_warnings(read_catalog(write_csv(tmp_path / "c.csv", rows), Columns().updated(**columns), reference=True))


def test_a_warning_for_each_trap(tmp_path):
    n = 40
    base = {"id": [str(i) for i in range(n)], "title": [f"listing {i}" for i in range(n)],
            "category": [f"Toys > Kind {i % 4}" for i in range(n)], "engagement": [str(i) for i in range(n)]}
    assert warnings_of(tmp_path, base) == []
    assert "have no category" in " ".join(warnings_of(tmp_path, base | {"category": [""] * 30 + base["category"][30:]}))
    assert "one category holds" in " ".join(warnings_of(tmp_path, base | {"category": ["Toys > A"] * 25 + base["category"][25:]}))
    own = warnings_of(tmp_path, base | {"category": [f"Toys : Kind {i}" for i in range(n)]})
    assert "nearly every listing has a category path of its own" in " ".join(own)
    assert "share their title" in " ".join(warnings_of(tmp_path, base | {"title": ["same title"] * n}))
    assert "engagement is unknown for 30" in " ".join(warnings_of(tmp_path, base | {"engagement": ["N/A"] * 30 + base["engagement"][30:]}))
    assert "are refused" in " ".join(warnings_of(tmp_path, base | {"engagement": ["lots"] * 10 + base["engagement"][10:]}))
    no_engagement = {k: v for k, v in base.items() if k != "engagement"}
    assert "no engagement column" in " ".join(warnings_of(tmp_path, no_engagement))


def test_inspect_prints_what_enrich_will_make_of_a_file(capsys):
    assert main(["inspect", str(EXPORTS / "pim_export.csv"), "--id-col", "uniq_id", "--title-col", "product_name",
                 "--category-col", "product_category_tree", "--engagement-col", "product_rating"]) == 0
    out = capsys.readouterr().out
    assert "a JSON list of paths per cell, levels separated by '>>' (detected)" in out
    assert "31 leaf levels that were the listing's own title dropped" in out  # every row's path ends in its title
    assert "engagement: unknown for 20 rows" in out and "refused (1): field 'product_rating'" in out
    assert "depth 1: 30 listings, 4 distinct paths" in out and "depth 4: 6 listings, 1 distinct paths" in out
    assert "engagement is unknown for 20 of 30 usable listings" in out


def test_an_xml_feed_cannot_expand_entities(tmp_path):
    bomb = tmp_path / "feed.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
                    "<rss><channel><item><id>1</id><title>&b;</title></item></channel></rss>")
    with pytest.raises(CatalogError, match="feed.xml: cannot be read as an XML feed"):
        load_catalog(bomb)


def test_an_index_and_a_run_from_a_shopify_export_have_categories_and_neighbours_but_no_prior(tmp_path, encoder):
    from enrich.index.build import build_index
    from enrich.index.store import ReferenceIndex
    from enrich.run.score import NO_PRIOR, enrich_frame

    summary = build_index(EXPORTS / "shopify_products.csv", tmp_path / "index", progress=False, encoder=encoder)
    assert summary.ok == 30 and summary.merged == 54
    assert any("no engagement column" in w for w in summary.warnings)
    index = ReferenceIndex.load(tmp_path / "index", encoder)
    assert index.prior is None and index.linkable.all()
    new = load_catalog(EXPORTS / "google_merchant.tsv").with_columns(pl.lit(None, pl.String).alias("category"))
    out = enrich_frame(new, index, encoder)
    assert out["exposure_prior"].null_count() == out.height
    assert out["notes"].to_list() == [NO_PRIOR] * out.height
    assert out["neighbors"].list.len().min() == 10
    candles = out.filter(pl.Series(new["title"].str.contains("Candle")))
    assert (candles["category"] == "Home & Garden > Decor > Candles").mean() >= 0.8


def test_a_run_against_an_index_with_unknown_engagement_links_only_listings_that_have_it(tmp_path, encoder):
    from enrich.index.build import build_index
    from enrich.index.store import ReferenceIndex
    from enrich.run.score import enrich_frame

    build_index(EXPORTS / "pim_export.csv", tmp_path / "index", PIM, progress=False, encoder=encoder)
    index = ReferenceIndex.load(tmp_path / "index", encoder)
    assert index.manifest["counts"]["with_engagement"] == 10 and index.prior is not None
    rated = set(index.reference.filter(pl.col("engagement").is_not_null())["id"].to_list())
    out = enrich_frame(load_catalog(EXPORTS / "pim_export.csv", PIM), index, encoder)
    linked = set(out["neighbors"].explode().drop_nulls().to_list())
    assert linked and linked <= rated
    assert out.filter(pl.col("status") == "ok")["exposure_prior"].null_count() == 0


def test_eval_scores_categories_on_every_labelled_listing_and_priors_where_engagement_is_known(tmp_path, encoder):
    from enrich.evaluation.evaluate import evaluate
    from enrich.settings import EvalConfig

    evaluation = evaluate(EXPORTS / "magento_products.csv", Columns(), EvalConfig(holdout=0.3), progress=False, encoder=encoder)
    m = evaluation.metrics
    assert m["tags"]["enrich"]["full path"]["n"] == 9 and m["priors"] is None
    assert any("no engagement column" in w for w in m["warnings"])
    assert "not measured" in evaluation.markdown()


@pytest.mark.parametrize("name", ["shopify_products.csv", "woocommerce_products.csv", "google_merchant.tsv",
                                  "google_merchant.xml", "magento_products.csv"])
def test_each_export_goes_through_inspect_index_and_run_without_a_columns_file(name, tmp_path, capsys):
    path = str(EXPORTS / name)
    assert main(["inspect", path]) == 0
    assert "format: " in capsys.readouterr().out
    assert main(["index", path, "--out", str(tmp_path / "index"), "--quiet"]) == 0
    assert main(["run", path, "--index", str(tmp_path / "index"), "--out", str(tmp_path / "out.parquet"), "--quiet"]) == 0
    out, given = pl.read_parquet(tmp_path / "out.parquet"), load_catalog(path)
    assert out["id"].to_list() == given["id"].to_list()  # every row accounted for, in order
    assert out["status"].to_list() == given["status"].to_list()
    ok = out.filter(pl.col("status") == "ok")
    assert ok["category"].null_count() == 0 and ok["neighbors"].list.len().min() > 0
    assert ok["exposure_prior"].null_count() == ok.height  # these exports carry no engagement
