import json
import shutil
import time

import numpy as np
import polars as pl
import pytest

from enrich.cli import main
from enrich.catalog import Columns, listing_texts, load_catalog
from enrich.errors import InputError
from enrich.run.score import OUTPUT_SCHEMA
from enrich.index.store import IndexMismatch, ReferenceIndex
from enrich.manifest import Summary
from enrich.index.build import build_index

def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_index_then_run_writes_the_output_contract(sample_index, sample, tmp_path, capsys):
    folder, summary = sample_index
    assert summary.ok == 1000 and summary.rows == 1000
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"]["indexed"] == 1000 and manifest["encoder"]["model_name"] == "all-MiniLM-L6-v2"
    reference_categories = pl.read_csv(sample["reference"], infer_schema=False)["amazon_category_and_sub_category"].drop_nulls()
    assert manifest["category_model"]["fit_rows"] == reference_categories.len()
    assert manifest["category_model"]["categories"] == reference_categories.n_unique()
    code, err = run_cli(capsys, "run", sample["new"], "--index", folder, "--out", tmp_path / "out.parquet",
                        "--columns", sample["columns"], "--quiet")
    assert code == 0, err
    assert "200 rows read, 200 enriched, 0 refused" in err
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.schema == pl.Schema(OUTPUT_SCHEMA)
    new_ids = pl.read_csv(sample["new"], infer_schema=False)["uniq_id"].to_list()
    assert out["id"].to_list() == new_ids
    assert (out["status"] == "ok").all()
    reference_ids = set(pl.read_csv(sample["reference"], infer_schema=False)["uniq_id"].to_list())
    first = out.row(0, named=True)
    assert len(first["neighbors"]) == 10 and set(first["neighbors"]) <= reference_ids
    assert first["tags"] and first["tags"] == first["category"].split(" > ")[: len(first["tags"])]  # its confident levels
    assert 0 < first["category_score"] <= 1
    assert (out["exposure_prior_low"] <= out["exposure_prior"]).all()
    assert (out["exposure_prior"] <= out["exposure_prior_high"]).all()
    assert (out["prior_evidence"] > 0).all()
    assert json.loads((tmp_path / "out.parquet.manifest.json").read_text())["summary"]["ok"] == 200


def test_bad_rows_are_accounted_for_in_the_output(sample_index, tmp_path, capsys):
    folder, _ = sample_index
    (tmp_path / "bad.csv").write_bytes(
        b"uniq_id,product_name,manufacturer\n"
        b"n1,Wooden toy train,Brio\n"
        b"n1,Same id again,Brio\n"
        b"n3,,Nobody\n"
        b"n4,<b>Glitter</b> slime kit &amp; tubs,Slimy\n"
        b"n5,Caf\xe9 kitchen playset,KidKraft\n"
    )
    code, err = run_cli(capsys, "run", tmp_path / "bad.csv", "--index", folder, "--out", tmp_path / "bad-out.csv",
                        "--id-col", "uniq_id", "--title-col", "product_name", "--brand-col", "manufacturer", "--quiet")
    assert code == 0, err
    out = pl.read_csv(tmp_path / "bad-out.csv")
    assert out.height == 5
    assert out["status"].to_list() == [
        "ok",
        "refused: row 2 field 'uniq_id': duplicate id 'n1' (first at row 1)",
        "refused: row 3 field 'product_name': empty title",
        "ok",
        "refused: row 5 field 'product_name': bytes that are not UTF-8 (as cp1252, the file's first such line, 6, reads"
        " \u2018n5,Caf\u00e9 kitchen playset,KidKraft\u2019; if that is right, use --encoding cp1252)",
    ]
    assert out["neighbors"][0].count("|") == 9 and out["neighbors"][1] is None
    assert "5 rows read, 2 enriched, 3 refused" in err


def test_one_shot_run_with_a_reference_catalog(sample, tmp_path, capsys):
    code, err = run_cli(capsys, "run", sample["new"], "--reference", sample["reference"], "--columns", sample["columns"],
                        "--out", tmp_path / "oneshot.csv", "--quiet", "--neighbors", "3")
    assert code == 0, err
    out = pl.read_csv(tmp_path / "oneshot.csv")
    assert out.height == 200 and out["neighbors"][0].count("|") == 2


def test_reindexing_embeds_only_changed_rows(sample_index, sample, tmp_path, encoder):
    folder, _ = sample_index
    copy = tmp_path / "index"
    shutil.copytree(folder, copy)
    changed = pl.read_csv(sample["reference"], infer_schema=False).with_columns(
        pl.when(pl.int_range(pl.len()) < 5).then(pl.col("product_name") + " (new edition)").otherwise(pl.col("product_name"))
        .alias("product_name"))
    changed.write_csv(tmp_path / "changed.csv")
    from enrich.catalog import Columns

    summary = build_index(tmp_path / "changed.csv", copy, Columns.from_file(sample["columns"]), progress=False, encoder=encoder)
    assert summary.reused_embeddings == 995
    reloaded = ReferenceIndex.load(copy, encoder)
    fresh = encoder.encode(["Mismatch"])  # any query works against the rebuilt graph
    assert reloaded.neighbors.search(fresh, 3)[0].shape == (1, 3)


def test_an_index_from_another_model_is_refused(sample_index, tmp_path, encoder):
    folder, _ = sample_index
    copy = tmp_path / "index"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["encoder"]["fingerprint"] = "0123456789abcdef"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexMismatch, match="was built with all-MiniLM-L6-v2 .fingerprint 0123456789abcdef"):
        ReferenceIndex.load(copy, encoder)


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    code, err = run_cli(capsys, "run", tmp_path / "missing.csv", "--reference", tmp_path / "ref.csv", "--out", tmp_path / "o.parquet")
    assert code == 2 and err.startswith("enrich: error:") and "file not found" in err and "Traceback" not in err
    (tmp_path / "new.csv").write_text("id,title\n1,Toy\n")
    code, err = run_cli(capsys, "run", tmp_path / "new.csv", "--index", tmp_path / "nothing", "--out", tmp_path / "o.parquet")
    assert code == 2 and "not an enrich index" in err


def test_refused_reference_rows_are_listed_beside_the_index(tmp_path, encoder, sample, sample_columns):
    reference = pl.read_csv(sample["reference"], infer_schema=False).head(60)
    reference = reference.with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("lots")).when(pl.int_range(pl.len()) == 5).then(pl.lit("n/a"))
        .otherwise(pl.col("number_of_reviews")).alias("number_of_reviews"),
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("")).otherwise(pl.col("product_name")).alias("product_name"),
    )
    reference.write_csv(tmp_path / "reference.csv")
    summary = build_index(tmp_path / "reference.csv", tmp_path / "index", sample_columns, progress=False, encoder=encoder)
    assert (summary.rows, summary.ok) == (60, 58)
    refused = pl.read_parquet(tmp_path / "index" / "refused.parquet")
    assert refused["row"].to_list() == [4, 8]
    assert refused["status"].to_list() == ["refused: row 4 field 'number_of_reviews': engagement 'lots' is not a number",
                                           "refused: row 8 field 'product_name': empty title"]
    counts = json.loads((tmp_path / "index" / "manifest.json").read_text())["counts"]
    assert counts["refused"] == 2 and counts["with_engagement"] == 57  # 'n/a' is unknown: kept, without engagement


def test_a_fine_tuned_tagger_fills_category_and_tags(sample_index, sample, sample_columns, tiny_tagger, encoder, tmp_path, capsys):
    """The tagger's probabilities join the mix: the output is the vote of all three sources, which is not what the
    vote and the TF-IDF model alone give."""
    folder, _ = sample_index
    from enrich.category.tagger import Tagger
    from enrich.category.vote import vote
    from enrich.settings import VoteConfig
    from enrich.run.score import classifier_scores, find_evidence

    tagger = Tagger.load(tiny_tagger)
    code, err = run_cli(capsys, "run", sample["new"], "--index", folder, "--model", tiny_tagger, "--out", tmp_path / "out.parquet",
                        "--columns", sample["columns"], "--quiet")
    assert code == 0, err
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.height == 200 and (out["status"] == "ok").all()
    index = ReferenceIndex.load(folder, encoder)
    found = find_evidence(load_catalog(sample["new"], sample_columns), index, encoder, index.neighbors.config.candidates)
    sources = classifier_scores(found, index, tagger)
    assert [s.source for s in sources] == ["lexical", "tagger"]
    categories = index.categories[found.positions]
    assert out["category"].to_list() == vote(categories, found.sims, VoteConfig(), sources).category
    without = vote(categories, found.sims, VoteConfig(), sources[:1]).category
    assert sum(a != b for a, b in zip(out["category"].to_list(), without)) >= 5  # the tagger moved some
    for tags, category in zip(out["tags"].to_list(), out["category"].to_list()):
        assert tags and category.split(" > ")[: len(tags)] == tags  # a shallower fallback is still a prefix of the path
    manifest = json.loads((tmp_path / "out.parquet.manifest.json").read_text())
    assert manifest["tagger"]["path"] == str(tiny_tagger) and "temperature" in manifest["tagger"]["metrics"]


def test_a_tagger_that_learned_the_catalogs_own_tags_adds_them_after_the_path(sample_index, sample, tiny_bert,
                                                                                sample_columns, tmp_path, capsys):
    from enrich.category.finetune import finetune
    from enrich.settings import FinetuneConfig
    from enrich.category.tagger import Tagger

    category = pl.col("amazon_category_and_sub_category")
    reference = pl.read_csv(sample["reference"], infer_schema=False).filter(category.is_not_null())
    top = reference["amazon_category_and_sub_category"].value_counts(sort=True).head(8)["amazon_category_and_sub_category"]
    reference.filter(category.is_in(top.implode())).with_columns(pl.concat_str([
        pl.when(category.str.starts_with("Party Supplies")).then(pl.lit("party")).otherwise(pl.lit("")),
        pl.when(category.str.starts_with("Die-Cast")).then(pl.lit("vehicle")).otherwise(pl.lit("")),
    ], separator="|").alias("tags")).write_csv(tmp_path / "tagged.csv")
    finetune(tmp_path / "tagged.csv", tmp_path / "tagger", sample_columns, FinetuneConfig(
        base_model=tiny_bert, epochs=8, batch_size=16, learning_rate=1e-2, max_length=32, warmup_ratio=0.0, patience=8,
        mixed_precision="no", tag_loss_weight=5.0), progress=False)
    tagger = Tagger.load(tmp_path / "tagger")
    assert tagger.tag_labels == ["party", "vehicle"] and tagger.info["metrics"]["tags"]["f1"] >= 0.8
    folder, _ = sample_index
    code, err = run_cli(capsys, "run", sample["new"], "--index", folder, "--model", tmp_path / "tagger",
                        "--out", tmp_path / "out.parquet", "--columns", sample["columns"], "--quiet")
    assert code == 0, err
    out = pl.read_parquet(tmp_path / "out.parquet")
    texts = listing_texts(load_catalog(sample["new"], sample_columns, reference=False))
    expected = tagger.catalog_tags(texts)
    assert sum(bool(e) for e in expected) >= 10
    for tags, scores, category, own in zip(out["tags"].to_list(), out["tag_scores"].to_list(), out["category"].to_list(), expected):
        levels = len(tags) - len(own)
        assert tags[:levels] == category.split(" > ")[:levels]  # the path's levels first
        assert tags[levels:] == [t for t, _ in own] and np.allclose(scores[levels:], [p for _, p in own], atol=1e-4)

    # A listing that comes with its own tags keeps them (score 1), as it keeps a given category; the rest are predicted.
    new = pl.read_csv(sample["new"], infer_schema=False)
    new.with_columns(pl.when(pl.int_range(pl.len()) < 3).then(pl.lit("metal; ages 3+")).otherwise(None).alias("tags")) \
        .write_csv(tmp_path / "new-with-tags.csv")
    code, err = run_cli(capsys, "run", tmp_path / "new-with-tags.csv", "--index", folder, "--model", tmp_path / "tagger",
                        "--out", tmp_path / "given.parquet", "--columns", sample["columns"], "--quiet")
    assert code == 0, err
    given = pl.read_parquet(tmp_path / "given.parquet")
    for row, (tags, scores, own) in enumerate(zip(given["tags"].to_list(), given["tag_scores"].to_list(), expected)):
        mine = [("metal", 1.0), ("ages 3+", 1.0)] if row < 3 else own
        assert tags[len(tags) - len(mine):] == [t for t, _ in mine]
        assert np.allclose(scores[len(tags) - len(mine):], [p for _, p in mine], atol=1e-4)

    # `enrich explain` shows the tags as the run wrote them, and where the listing's own tags came from.
    for row in (0, 5):
        code = main([str(a) for a in ("explain", given["id"][row], "--input", tmp_path / "new-with-tags.csv", "--index", folder,
                                      "--model", tmp_path / "tagger", "--columns", sample["columns"])])
        text = capsys.readouterr().out
        assert code == 0, text
        written = ", ".join(f"{t} ({s:.2f})" for t, s in zip(given["tags"][row], given["tag_scores"][row]))
        assert f"the listing's own tags): {written}" in text
        assert ("came with the listing and are kept: metal, ages 3+" in text) == (row == 0)
        assert ("the tagger's probabilities for the catalog's tags" in text) == (row != 0)


def test_a_new_listing_keeps_the_category_it_came_with(sample_index, sample, tmp_path, capsys):
    folder, _ = sample_index
    new = pl.read_csv(sample["new"], infer_schema=False).head(3)
    given = "Hobbies > Model Trains & Railway Sets > Rail Vehicles > Trains"
    new.with_columns(pl.Series("amazon_category_and_sub_category", [given, None, ""])).write_csv(tmp_path / "new.csv")
    code, err = run_cli(capsys, "run", tmp_path / "new.csv", "--index", folder, "--out", tmp_path / "out.parquet",
                        "--columns", sample["columns"], "--quiet")
    assert code == 0, err
    kept, missing, empty = pl.read_parquet(tmp_path / "out.parquet").to_dicts()
    assert kept["category"] == given and kept["category_score"] == 1.0 and kept["tags"] == given.split(" > ")
    assert missing["category"] not in (None, given) and missing["category_score"] < 1  # predicted
    assert empty["category"] is not None and empty["category_score"] < 1  # an empty category is no category


def test_edge_sizes_empty_input_and_tiny_reference(sample_index, sample, tmp_path, capsys):
    folder, _ = sample_index
    (tmp_path / "empty.jsonl").write_text("")
    code, err = run_cli(capsys, "run", tmp_path / "empty.jsonl", "--index", folder, "--out", tmp_path / "empty.parquet", "--quiet")
    assert code == 0 and "0 rows read" in err
    assert pl.read_parquet(tmp_path / "empty.parquet").schema == pl.Schema(OUTPUT_SCHEMA)
    pl.read_csv(sample["reference"], infer_schema=False).head(4).write_csv(tmp_path / "tiny.csv")
    code, err = run_cli(capsys, "index", tmp_path / "tiny.csv", "--out", tmp_path / "tiny-index", "--columns", sample["columns"])
    assert code == 2 and "4 usable reference listings (of 4 rows); an index needs at least 10" in err
    (tmp_path / "numeric.jsonl").write_text('{"id": 7, "title": "Wooden train"}\n{"id": 8, "title": "Kite"}\n')
    code, err = run_cli(capsys, "run", tmp_path / "numeric.jsonl", "--index", folder, "--out", tmp_path / "n.parquet", "--quiet")
    assert code == 0 and pl.read_parquet(tmp_path / "n.parquet")["id"].to_list() == ["7", "8"]


def test_readers_never_see_a_half_written_index(tmp_path, encoder, sample, sample_columns):
    import threading

    reference = pl.read_csv(sample["reference"], infer_schema=False)
    reference.head(30).write_csv(tmp_path / "small.csv")
    reference.head(45).write_csv(tmp_path / "large.csv")
    folder = tmp_path / "index"
    build_index(tmp_path / "small.csv", folder, sample_columns, progress=False, encoder=encoder)
    failures, loads, stop = [], [], threading.Event()

    def read():
        while not stop.is_set():
            try:
                index = ReferenceIndex.load(folder, encoder)
                assert len(index.neighbors) == index.reference.height == index.manifest["counts"]["indexed"]
                loads.append(index.reference.height)
            except Exception as e:  # any failure of a reader is the bug this test looks for
                failures.append(repr(e))

    reader = threading.Thread(target=read)
    reader.start()
    for round_ in range(4):
        build_index(tmp_path / ("large.csv" if round_ % 2 == 0 else "small.csv"), folder, sample_columns, progress=False,
                    encoder=encoder)
    stop.set()
    reader.join()
    assert not failures, failures[:3]
    assert loads and set(loads) <= {30, 45}
    assert len(list(tmp_path.glob(".index.v*"))) == 2  # the current version and the previous one


def test_update_adds_new_listings_and_deletes_delisted_ones_without_a_rebuild(tmp_path, encoder, sample, sample_columns, capsys):
    reference = pl.read_csv(sample["reference"], infer_schema=False)
    reference.head(40).write_csv(tmp_path / "before.csv")
    build_index(tmp_path / "before.csv", tmp_path / "index", sample_columns, progress=False, encoder=encoder)
    labels_at_build = ReferenceIndex.load(tmp_path / "index", encoder).category_model.labels
    delisted = reference.slice(35, 5)["uniq_id"].to_list()
    after = pl.concat([reference.head(35), reference.slice(40, 10)]).with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.col("product_name") + " (2026 edition)").otherwise(pl.col("product_name"))
        .alias("product_name"),
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("999")).otherwise(pl.col("number_of_reviews")).alias("number_of_reviews"),
    )
    after.write_csv(tmp_path / "after.csv")
    code, err = run_cli(capsys, "index", tmp_path / "after.csv", "--out", tmp_path / "index", "--update", "--delete-missing",
                        "--max-delete", "0.2", "--columns",
                        sample["columns"], "--quiet")
    assert code == 0, err
    assert "unchanged listings kept without re-embedding: 34" in err

    index = ReferenceIndex.load(tmp_path / "index", encoder)
    assert index.category_model.labels == labels_at_build  # kept as fitted at the build, like the prior
    live = set(index.reference.filter(~pl.col("deleted"))["category"].drop_nulls().to_list())
    unknown = len(live - set(labels_at_build))
    assert unknown and f"warning: {unknown} categories in the index are new since the last full build" in err
    assert index.reference.height == 51 and int(index.reference["deleted"].sum()) == 6 and len(index.neighbors) == 45
    assert index.manifest["updates"][-1] | {"seconds": 0, "at": "", "source": "", "embedded_with": ""} == {
        "added": 11, "deleted": 6, "replaced": 1, "refreshed": 34, "categories_unknown_to_the_model": unknown, "decisions": None,
        "seconds": 0, "at": "", "source": "", "embedded_with": ""}
    first = index.reference.with_row_index().filter(pl.col("id") == after["uniq_id"][0])
    assert first["engagement"].to_list() == [999.0]
    from enrich.catalog import listing_texts, load_catalog

    current = load_catalog(tmp_path / "after.csv", sample_columns, reference=True)
    vectors = encoder.encode(listing_texts(current))
    positions, sims = index.neighbors.search(vectors, 45)
    found = index.ids[positions]
    assert not set(found.ravel()) & set(delisted)
    assert (found[:, 0] == np.array(current["id"].to_list())).all() and (sims[:, 0] > 0.99).all()


def test_an_index_built_in_chunks_equals_one_built_whole(sample_index, sample, sample_columns, encoder, tmp_path, monkeypatch):
    import enrich.index.build

    monkeypatch.setattr(enrich.index.build, "BUILD_CHUNK_ROWS", 97)
    build_index(sample["reference"], tmp_path / "chunked", sample_columns, progress=False, encoder=encoder)
    whole, chunked = ReferenceIndex.load(sample_index[0]), ReferenceIndex.load(tmp_path / "chunked")
    assert chunked.reference["text_hash"].to_list() == whole.reference["text_hash"].to_list()
    # Batches are cut differently, so bf16 vectors may differ in the last bits; the TF-IDF rows may not.
    assert (np.asarray(chunked.embeddings) * np.asarray(whole.embeddings)).sum(1).min() > 0.999
    assert (chunked.lexical_matrix != whole.lexical_matrix).nnz == 0
    assert np.allclose(chunked.prior.coef, whole.prior.coef, atol=0.05)
    assert not list(tmp_path.glob(".chunked.embeddings-*"))  # the staged embeddings file went into the index

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not an index")
    with pytest.raises(InputError, match="is not an enrich index"):
        build_index(sample["reference"], tmp_path / "taken", sample_columns, progress=False, encoder=encoder)
    assert not list(tmp_path.glob(".taken.embeddings-*"))  # nor is it left behind by a failed build


def test_a_prior_fitted_on_a_sample_of_the_reference_agrees_with_one_fitted_on_all(sample_index, sample, sample_columns,
                                                                                   encoder, tmp_path):
    from dataclasses import replace

    from scipy.stats import spearmanr

    from enrich.settings import EnrichConfig
    from enrich.run.score import find_evidence
    from enrich.prior import reference_evidence
    from enrich.settings import PriorConfig

    config = EnrichConfig(prior=replace(PriorConfig(), fit_rows=400))
    build_index(sample["reference"], tmp_path / "sampled", sample_columns, config, progress=False, encoder=encoder)
    whole, sampled = ReferenceIndex.load(sample_index[0]), ReferenceIndex.load(tmp_path / "sampled")
    fit = json.loads((tmp_path / "sampled" / "manifest.json").read_text())["prior_fit"]
    branded = int((whole.reference["brand"].fill_null("").str.strip_chars() != "").sum())
    assert fit["rows"] == 400 and fit["brand_rows"] == branded  # the brands' statistics still cover every listing

    rows = np.array([3, 10, 500])
    evidence = reference_evidence(whole.embeddings, whole.neighbors, whole.lexical_matrix, whole.engagement,
                                  whole.reference["brand"].to_list(), 5, rows=rows)
    positions = whole.neighbors.search_excluding_self(np.asarray(whole.embeddings[rows]), 5, labels=rows)[0]
    assert not (positions == rows[:, None]).any()
    assert np.array_equal(evidence.neighbor_engagement, whole.engagement[positions])

    from enrich.catalog import load_catalog

    new = load_catalog(sample["new"], sample_columns)
    found = find_evidence(new, whole, encoder, whole.neighbors.config.candidates)
    agreement = spearmanr(whole.prior.predict(found.evidence).log_mean, sampled.prior.predict(found.evidence).log_mean)
    assert agreement.statistic > 0.85  # 0.90 here: 400 listings fit the text model less well than 1,000


def test_update_says_to_rebuild_once_much_of_the_index_has_changed(sample, sample_columns, encoder, tmp_path, capsys):
    from enrich.index.update import update_index

    reference = pl.read_csv(sample["reference"], infer_schema=False)
    reference.head(300).write_csv(tmp_path / "small.csv")
    reference.head(330).write_csv(tmp_path / "plus30.csv")
    build_index(tmp_path / "small.csv", tmp_path / "index", sample_columns, progress=False, encoder=encoder)
    warnings = update_index(tmp_path / "plus30.csv", tmp_path / "index", sample_columns, progress=False).warnings
    assert not any("have been added or deleted since" in w for w in warnings)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["changed_since_build"] == 0.1

    reference.head(400).write_csv(tmp_path / "plus100.csv")  # 100 added since the build of 300: a third
    code, err = run_cli(capsys, "index", tmp_path / "plus100.csv", "--out", tmp_path / "index", "--update",
                        "--columns", sample["columns"], "--quiet")
    assert code == 0, err
    assert "warning: 33% of the 300 listings indexed at the last full build have been added or deleted since" in err


def test_an_index_built_in_one_precision_updates_and_rebuilds_in_another_without_re_embedding(sample, sample_columns, tmp_path,
                                                                                   monkeypatch):
    """Built where fp32 is chosen, updated where bf16 is: the same listings, not all changed."""
    from enrich.index.update import update_index

    reference = pl.read_csv(sample["reference"], infer_schema=False)
    reference.head(60).write_csv(tmp_path / "before.csv")
    reference.head(65).write_csv(tmp_path / "after.csv")
    monkeypatch.setenv("ENRICH_PRECISION", "fp32")
    build_index(tmp_path / "before.csv", tmp_path / "index", sample_columns, progress=False)
    monkeypatch.setenv("ENRICH_PRECISION", "bf16")
    summary = update_index(tmp_path / "after.csv", tmp_path / "index", sample_columns, progress=False)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert summary.reused_embeddings == 60 and manifest["updates"][-1]["added"] == 5
    assert manifest["updates"][-1]["deleted"] == 0 and manifest["encoder"]["dtype"] == "float32"
    # A rebuild here reuses the fp32 build's vectors too, and records its own precision.
    rebuilt = build_index(tmp_path / "after.csv", tmp_path / "index", sample_columns, progress=False)
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert rebuilt.reused_embeddings == 65 and manifest["encoder"]["dtype"] == "bfloat16"


def test_an_index_and_its_tagger_can_be_moved_together(sample, sample_columns, encoder, tiny_tagger, tmp_path, capsys):
    reference = pl.read_csv(sample["reference"], infer_schema=False)
    reference.head(300).write_csv(tmp_path / "small.csv")
    shutil.copytree(tiny_tagger, tmp_path / "work" / "tagger")
    build_index(tmp_path / "small.csv", tmp_path / "work" / "index", sample_columns, progress=False, encoder=encoder,
                tagger_dir=tmp_path / "work" / "tagger")
    (tmp_path / "work").rename(tmp_path / "moved")  # the absolute path in the manifest is gone now

    args = ("run", sample["new"], "--index", tmp_path / "moved" / "index", "--columns", sample["columns"], "--quiet")
    code, err = run_cli(capsys, *args, "--out", tmp_path / "out.parquet")
    assert code == 0, err
    manifest = json.loads((tmp_path / "out.parquet.manifest.json").read_text())
    assert manifest["tagger"]["path"] == str(tmp_path / "moved" / "tagger")

    shutil.rmtree(tmp_path / "moved" / "tagger")
    code, err = run_cli(capsys, *args, "--out", tmp_path / "out2.parquet")
    assert code == 2 and "which is no longer there" in err and not (tmp_path / "out2.parquet").exists()


def test_appended_embeddings_are_the_old_rows_then_the_new_in_chunks(tmp_path, monkeypatch):
    import enrich.index.update

    monkeypatch.setattr(enrich.index.update, "BUILD_CHUNK_ROWS", 3)
    old, new = np.random.default_rng(0).random((10, 4), np.float32), np.ones((2, 4), np.float32)
    np.save(tmp_path / "old.npy", old)
    enrich.index.update.save_appended(tmp_path / "new.npy", np.load(tmp_path / "old.npy", mmap_mode="r"), new)
    assert np.array_equal(np.load(tmp_path / "new.npy"), np.vstack([old, new]))


def test_the_summary_counts_each_kind_of_refusal_once_whatever_its_row(tmp_path):
    path = tmp_path / "ref.csv"
    path.write_bytes(b"sku,name,orders\nx1,Tea set,4\nx2,Robot, blue,3\nx3,Kite,lots\nx4,Doll, red,2\nx5,Ball,many\n")
    frame = load_catalog(path, Columns(id="sku", title="name", engagement="orders", brand=None, text=(), category=None),
                         reference=True)
    assert Summary.of(frame, time.perf_counter()).refused == {
        "4 fields where the header has 3; an unquoted comma?": 2, "field 'orders': engagement '…' is not a number": 2}
