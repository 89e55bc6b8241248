import json

import numpy as np
import polars as pl
import pytest

from enrich.cli import main
from enrich.evaluation.evaluate import evaluate, split_catalog
from enrich.settings import EvalConfig
from enrich.evaluation.metrics import exposure_shares, tag_metrics
from enrich.evaluation.report import write_report


def test_tag_metrics_per_level():
    predicted = ["A > B > C", "A > B > D", "X > Y", None]
    truth = ["A > B > C", "A > B > C", "A > Z", "A > B"]
    metrics = tag_metrics(predicted, truth)
    assert metrics["level 1"]["accuracy"] == 0.5
    assert metrics["level 2"]["accuracy"] == 0.5
    assert metrics["level 3"] == {"n": 2, "accuracy": 0.5, "weighted_f1": pytest.approx(2 / 3), "macro_f1": pytest.approx(2 / 3)}
    assert metrics["full path"]["accuracy"] == 0.25


def test_exposure_goes_to_new_listings_only_when_they_are_scored():
    reference = np.array([100.0, 50, 10, 5, 1, 0])
    truth = np.array([80.0, 0])
    shares = exposure_shares(reference, {"unseen": np.zeros(2), "prior": np.array([60.0, 0.5])}, truth, 1.0, slate=4)
    assert shares["unseen"]["new_listings_share"] == 0
    assert shares["prior"]["new_listings_shown"] == 1 and shares["prior"]["mean_engagement_of_new_shown"] == 80


def test_time_split_holds_out_the_latest(sample_columns):
    frame = pl.DataFrame({"id": list("abcde"), "status": ["ok"] * 5})
    dates = pl.Series(["2024-05-01", "2024-01-01", "2024-03-01", "2024-02-01", "2024-04-01"]).str.to_datetime()
    reference, held_out = split_catalog(frame, EvalConfig(holdout=0.4), dates)
    assert sorted(held_out["id"].to_list()) == ["a", "e"] and reference.height == 3


def test_eval_on_the_sample_writes_the_report(sample, sample_columns, encoder, tmp_path):
    evaluation = evaluate(sample["reference"], sample_columns, EvalConfig(), progress=False, encoder=encoder)
    m = evaluation.metrics
    assert m["setup"]["held_out"] == 200 and evaluation.held_out.height == 200
    assert set(m["priors"]["ranking"]) >= {"enrich", "TF-IDF nearest neighbours", "true category's mean", "random",
                                           "popularity only (global mean)"}
    assert 0.6 <= m["priors"]["interval_coverage"]["enrich"] <= 0.95
    # On the sample, the prior ranks better than random and the vote-aware neighbours beat plain ones.
    assert m["priors"]["ranking"]["enrich"]["spearman"] > m["priors"]["ranking"]["random"]["spearman"] + 0.1
    assert m["neighbors"]["precision@10"]["enrich"] > m["neighbors"]["precision@10"]["MiniLM nearest neighbours"]
    written = write_report(evaluation, tmp_path)
    assert {p.name for p in written} == {"eval.md", "eval.json", "held_out.parquet", "calibration.png", "prior_vs_truth.png", "long_tail.png"}
    assert json.loads((tmp_path / "eval.json").read_text())["setup"]["reference"] == 800
    assert (tmp_path / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_names_neighbours_and_the_prior_parts(sample_index, sample, capsys):
    folder, _ = sample_index
    new_id = pl.read_csv(sample["new"], infer_schema=False)["uniq_id"][1]
    assert main(["explain", new_id, "--input", str(sample["new"]), "--index", str(folder), "--columns", str(sample["columns"])]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"listing {new_id} (row 2): ")
    assert "neighbours' vote (weight 0.15)" in text and "TF-IDF category model (weight 0.45)" in text
    assert "neighbours (in output order)" in text
    assert "text_model" in text and "brand_eb" in text and "80% interval" in text
    assert main(["explain", "no-such-id", "--input", str(sample["new"]), "--index", str(folder),
                 "--columns", str(sample["columns"])]) == 2


def test_synthetic_listings_recombine_the_real_catalog(amazon_catalog):
    from benchmarks.scale import synthesize

    real = pl.read_csv(amazon_catalog, infer_schema=False)
    made = synthesize(amazon_catalog, 500, seed=1, prefix="s")
    assert made.height == 500 and made["uniq_id"].n_unique() == 500
    assert set(made["manufacturer"].drop_nulls()) <= set(real["manufacturer"].drop_nulls())
    assert made["product_name"].str.len_chars().min() > 0
    assert made["product_name"].n_unique() > 450  # recombined, not copied


def test_the_tags_benchmark_reads_age_bands_and_facts_from_amazon_technical_details():
    from benchmarks.tags import product_information_tags

    details = ("Technical Details Item Weight1.2 Kg Manufacturer recommended age:8 years and up Assembly RequiredYes "
               "Batteries Required?No Batteries Included?Yes Remote Control Included?No")
    assert product_information_tags(details) == ["ages 8-11", "batteries included", "assembly required"]
    assert product_information_tags("Manufacturer recommended age:36 months - 8 years") == ["ages 3-4"]
    assert product_information_tags("Manufacturer recommended age:14 years and up") == ["ages 12+"]
    assert product_information_tags("Manufacturer recommended age:18 months") == ["ages 0-2"]
    assert product_information_tags(None) == [] and product_information_tags("Item Weight 9 g") == []


def test_label_agreement_compares_each_listing_with_its_nearest_labelled_reference_listing():
    from benchmarks.agreement import label_agreement

    # candidates in similarity order; the first of listing 1 has no category, so its nearest labelled one is second
    candidates = np.array([["A", "B"], [None, "B"], ["A", "A"], ["C", "A"]], dtype=object)
    sims = np.array([[0.99, 0.5], [0.99, 0.96], [0.97, 0.9], [0.5, 0.4]])
    truth = ["A", "C", "A", "A"]
    predicted = ["A", "B", "B", "A"]
    rows = label_agreement(candidates, sims, truth, predicted, thresholds=(0.98, 0.95))
    assert rows[0] == {"min_cosine": 0.98, "listings": 1, "labelled_as_nearest": 1.0, "enrich_accuracy": 1.0}
    assert rows[1] == {"min_cosine": 0.95, "listings": 3, "labelled_as_nearest": 2 / 3, "enrich_accuracy": 1 / 3}
    assert rows[2] == {"min_cosine": None, "listings": 1, "labelled_as_nearest": 0.0, "enrich_accuracy": 1.0}


def test_engagement_agreement_scores_the_nearest_listing_and_the_prior_by_similarity():
    from benchmarks.agreement import engagement_agreement

    truth = np.array([1.0, 5.0, 9.0, 2.0, 7.0, 3.0, np.nan])
    nearest = np.array([2.0, 4.0, 8.0, 9.0, 1.0, 5.0, 1.0])  # agrees on the first three, is reversed on the rest
    sims = np.array([0.99, 0.99, 0.99, 0.5, 0.5, 0.5, 0.99])
    prior = truth.copy()
    rows = engagement_agreement(nearest, sims, truth, prior, thresholds=(0.95,))
    assert [row["listings"] for row in rows] == [3, 3]  # the listing without engagement is left out
    assert rows[0]["nearest_spearman"] == pytest.approx(1.0) and rows[1]["nearest_spearman"] == pytest.approx(-1.0)
    assert rows[0]["enrich_spearman"] == pytest.approx(1.0) and rows[1]["enrich_spearman"] == pytest.approx(1.0)
